"""Genome -> nn.Module. The one entry point trainers and the cost model use."""

from __future__ import annotations

import importlib

from torch import nn

from .backbones.convs import StaticConvs
from .backbones.specs import BACKBONE_SPECS
from .genome import Genome
from .recipe import Recipe


def conv_maker(genome: Genome):
    """Static convolutions, or KernelWarehouse convolutions with the genome's per-stage budgets."""
    if not genome.uses_kw:
        return StaticConvs()
    from .backbones.kernelwarehouse import KernelWarehouseConvs

    return KernelWarehouseConvs({i: s.kw for i, s in enumerate(genome.stages)}, **dict(genome.kw_options))


def build(
    genome: Genome, num_classes: int | None = None, width_mult: float = 1.0, recipe: Recipe | None = None
) -> nn.Module:
    """Build the network a genome describes.

    num_classes defaults to the backbone's target (1000 for ImageNet backbones); width_mult < 1
    narrows every stage for proxy training without changing what the genome means. `recipe` says
    how the weights start and which parameter-free regularisers (dropout, drop-path) the network
    trains with (searchspace.recipe; default Recipe()); it never changes params, FLOPs or the key.
    """
    genome.validate()
    recipe = (recipe or Recipe()).validate()
    spec = BACKBONE_SPECS[genome.backbone]
    num_classes = spec.target_classes if num_classes is None else num_classes
    convs = conv_maker(genome)
    module, _, name = spec.builder.partition(":")
    model = getattr(importlib.import_module(module), name)(
        genome, spec, num_classes, width_mult, convs, recipe
    )
    for m in _temperature_modules(model):
        m.set_temperature(recipe.kw_start_temperature)
    return model


def set_kw_epoch(model: nn.Module, epoch: float, temperature_epochs: float = 20.0) -> float:
    """KernelWarehouse temperature tau = 1 -> 0 linearly over `temperature_epochs`; call every step.

    Returns tau; a model without KernelWarehouse convs is left as it is.
    """
    tau = max(0.0, 1.0 - epoch / temperature_epochs) if temperature_epochs > 0 else 0.0
    for m in _temperature_modules(model):
        m.set_temperature(tau)
    return tau


def _temperature_modules(model: nn.Module) -> list[nn.Module]:
    cached = getattr(model, "_kw_temperature_modules", None)
    if cached is None:
        cached = [m for m in model.modules() if m is not model and hasattr(m, "set_temperature")]
        object.__setattr__(model, "_kw_temperature_modules", cached)  # plain attribute, not a submodule
    return cached
