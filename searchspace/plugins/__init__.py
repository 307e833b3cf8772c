"""The module library. Importing this package registers every built-in plugin."""

# Built-in modules register themselves on import (one file per family).
from . import dsnet, msa, msca, sda, se  # noqa: E402,F401
from .registry import BLOCK_POSITIONS, PluginInfo, Site, get, import_modules, names, register, unregister

__all__ = [
    "BLOCK_POSITIONS",
    "PluginInfo",
    "Site",
    "get",
    "import_modules",
    "names",
    "register",
    "unregister",
]
