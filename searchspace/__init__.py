"""The search space: genomes, the module library, the model builder and the cost model."""

from .build import build, set_kw_epoch
from .cost import Cost, cost
from .errors import UserError
from .genome import Genome, Plugin, Stage, make_plugin, uniform
from .plugins import register
from .recipe import Recipe

__all__ = [
    "UserError",
    "Genome",
    "Plugin",
    "Stage",
    "make_plugin",
    "uniform",
    "register",
    "Recipe",
    "build",
    "set_kw_epoch",
    "Cost",
    "cost",
]
