"""The module library. Importing this package registers every built-in plugin."""

from .registry import BLOCK_POSITIONS, PluginInfo, Site, get, import_modules, names, register, unregister

# Built-in modules register themselves on import (one file per family).
from . import se, msca, dsnet, msa, sda  # noqa: E402,F401

__all__ = ["BLOCK_POSITIONS", "PluginInfo", "Site", "get", "import_modules", "names", "register", "unregister"]
