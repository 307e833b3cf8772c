"""The plugin registry: which modules exist, where they may sit, how they are built.

A plugin is registered once with the decorator; the genome validator, the search space and the
model builder all read this table, so a user-registered module is searchable like a built-in one:

    @register("my_gate", positions=("after_conv3",), options={"act": ("sigmoid", "hard")})
    def my_gate(channels, r, site, act="sigmoid"):
        return MyGate(channels, channels // r, act)

Kinds:
- "block":  sits at a position inside a block; forward(x) -> x'.
- "fusion": replaces a block's residual add; forward(branch, identity) -> fused (pre-ReLU).
- "stage":  sees the pre-ReLU outputs of all blocks of a stage; forward(list[Tensor]) -> Tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError

BLOCK_POSITIONS = ("after_conv1", "after_conv2", "after_conv3", "after_add")
KINDS = ("block", "fusion", "stage")


@dataclass(frozen=True)
class Site:
    """Where a plugin is being built; handed to the factory.

    target_hw is the spatial size of the map the plugin sees when the *target* network runs at its
    target resolution (e.g. 56 for ResNet-50 stage 1 at 224): FcaNet's DCT filters are sized by it.
    """

    stage: int
    block: int
    position: str
    target_hw: int
    num_blocks: int = 1


@dataclass(frozen=True)
class PluginInfo:
    name: str
    kind: str
    positions: tuple[str, ...]
    factory: Callable[..., Any]
    default_r: int | None
    options: dict[str, tuple] = field(default_factory=dict)  # option -> allowed values; first is default
    # Options added after genomes using the plugin were stored: at their default they are left out
    # of the canonical JSON, so those genomes (same network) keep their keys.
    implicit_defaults: tuple[str, ...] = ()

    def default_options(self) -> dict[str, Any]:
        return {k: v[0] for k, v in self.options.items()}


_REGISTRY: dict[str, PluginInfo] = {}


def register(
    name: str,
    *,
    kind: str = "block",
    positions: tuple[str, ...] = (),
    default_r: int | None = 16,
    options: dict[str, tuple] | None = None,
    implicit_defaults: tuple[str, ...] = (),
):
    """Decorator registering `factory(channels, r, site, **options) -> nn.Module` under `name`.

    implicit_defaults: options added to an already-published plugin; their default is not written
    into genomes, so existing genome keys stay valid.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "block":
        bad = [p for p in positions if p not in BLOCK_POSITIONS]
        if not positions or bad:
            raise ValueError(f"block plugin {name!r} needs positions from {BLOCK_POSITIONS}, got {positions}")
    else:
        positions = (kind,)

    def deco(factory):
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ValueError(f"plugin {name!r} is already registered")
        unknown = [o for o in implicit_defaults if o not in (options or {})]
        if unknown:
            raise ValueError(f"plugin {name!r}: implicit_defaults {unknown} are not among its options")
        _REGISTRY[name] = PluginInfo(
            name, kind, tuple(positions), factory, default_r, dict(options or {}), tuple(implicit_defaults)
        )
        _changed()
        return factory

    return deco


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)
    _changed()


_generation = 0  # bumped on every change: genomes parsed or checked before it are checked again


def _changed() -> None:
    global _generation
    _generation += 1


def generation() -> int:
    return _generation


def get(name: str) -> PluginInfo:
    if not isinstance(name, str):
        raise UserError(
            f"plugin: expected a plugin name (a string), got {name!r} (known: {', '.join(sorted(_REGISTRY))})"
        )
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown plugin {name!r} (known: {', '.join(sorted(_REGISTRY))})") from None


def names(kind: str | None = None) -> list[str]:
    return sorted(n for n, p in _REGISTRY.items() if kind is None or p.kind == kind)


def import_modules(modules, where: str = "imports") -> None:
    """Import user modules that register plugins (a study's `[space] imports`), by module name as on
    sys.path. Every process that validates or builds a genome using them must run this first: the
    study driver does when it reads the config, each Ray worker before it builds the trial's model.
    A module that cannot be imported is one UserError naming it and the reason."""
    import importlib

    for name in modules:
        if not isinstance(name, str) or not name.strip():
            raise UserError(f"{where}: expected module names (strings), got {name!r}")
        try:
            importlib.import_module(name.strip())
        except Exception as e:  # the user's code: any error while importing it is the user's to fix
            reason = f"{type(e).__name__}: {e}".strip().splitlines()[0]
            raise UserError(
                f"{where}: cannot import {name!r} ({reason}); it must be importable on "
                "sys.path (PYTHONPATH) in the driver and every Ray worker"
            ) from None
