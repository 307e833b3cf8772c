"""The recipe: how a network's weights start and which parameter-free regularisers it trains with.

A genome describes what a network computes, and its key names that architecture. Two authors can
build the same architecture and start it differently (DSNet's backbone zeroes the last BatchNorm of
every residual branch, FcaNet's does not), or train it with stochastic depth or dropout, which have
no parameters and do nothing at evaluation. None of that changes the parameters, the FLOPs or what
the trained network computes, so it lives here and not in the genome: a genome's key stays the same
whatever recipe it is built with, and a study's trials (keyed by genome) are not split by it.

Each catalog design records the recipe its authors used (`catalog.get(name).recipe`);
`build(genome, recipe=...)` applies one, and the trainer applies a catalog design's recipe when it
trains that design by name. `Recipe()`, the common recipe, is the default for searched genomes:
torchvision's ResNet initialisation, no dropout, no drop-path. In a study, [references] recipe
chooses whether the published designs train with their authors' recipe or the common one
(`reference_recipe`; docs/effects.md). See docs/modules.md ("Initialisation and recipes").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

from .errors import UserError

COMMON = "common"
AUTHORS = "authors"
# [references] recipe: which recipe the published designs of a study are trained with
REFERENCE_RECIPES = (COMMON, AUTHORS)


@dataclass(frozen=True)
class Recipe:
    zero_init_residual: bool = False  # the last BN of every residual branch starts at 0 (ResNet only)
    zero_conv_bias: bool = False  # conv biases start at 0, not PyTorch's uniform (DSNet's DSM/DAM convs)
    dropout: float | None = None  # before the classifier; None = the backbone's own default
    drop_path: float = 0.0  # stochastic depth on every residual branch, one rate for all blocks (ResNet only)
    kw_start_temperature: float = 1.0  # KernelWarehouse tau before the schedule (set_kw_epoch) first sets it

    def validate(self) -> Recipe:
        for name in ("zero_init_residual", "zero_conv_bias"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"recipe.{name}: expected true or false, got {getattr(self, name)!r}")
        # (field, may be null, upper bound included)
        for name, nullable, closed in (
            ("dropout", True, False),
            ("drop_path", False, False),
            ("kw_start_temperature", False, True),
        ):
            v = getattr(self, name)
            if v is None and nullable:
                continue
            number = isinstance(v, (int, float)) and not isinstance(v, bool)
            if not number or not (0 <= v <= 1 if closed else 0 <= v < 1):
                allowed = ("a number in [0, 1]" if closed else "a number in [0, 1)") + (
                    " or null" if nullable else ""
                )
                raise UserError(f"recipe.{name}: expected {allowed}, got {v!r}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """ "common" for the default recipe, else the fields that differ from it ("zero_init_residual,
        zero_conv_bias", "drop_path=0.1, kw_start_temperature=0.5"): what a report prints."""
        changed = [f for f in fields(self) if getattr(self, f.name) != f.default]
        if not changed:
            return COMMON
        return ", ".join(
            f.name if isinstance(f.default, bool) else f"{f.name}={getattr(self, f.name)}" for f in changed
        )

    @classmethod
    def from_dict(cls, d: Mapping | None) -> Recipe:
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise UserError(f"recipe: expected an object, got {d!r}")
        known = [f.name for f in fields(cls)]
        extra = sorted(set(d) - set(known))
        if extra:
            raise UserError(f"recipe: unknown field {extra[0]!r} (known: {', '.join(known)})")
        return cls(**d).validate()


def reference_recipe(design_recipe: Recipe, choice: str) -> Recipe:
    """The recipe a published design is trained with in a study: its authors' under [references]
    recipe = "authors", the common one (Recipe()) under "common" (see docs/effects.md)."""
    if choice not in REFERENCE_RECIPES:
        raise UserError(
            f"references.recipe: expected one of {', '.join(map(repr, REFERENCE_RECIPES))}, got {choice!r}"
        )
    return design_recipe if choice == AUTHORS else Recipe()


__all__ = ["Recipe", "reference_recipe", "REFERENCE_RECIPES", "COMMON", "AUTHORS"]
