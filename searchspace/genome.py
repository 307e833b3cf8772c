"""The genome: one point of the search space, i.e. one complete network description.

A genome is a frozen value. Its canonical JSON writes every default out, so equal networks have
equal JSON and an equal `key`. `validate()` raises UserError naming the field, the bad value and
what is allowed; a genome is checked once (build, cost and the trainer all ask), and JSON text is
parsed once per process (`from_json` caches). The views `summary()`, `flat()` and
`distance_fields()` are what tables, reports and rediscovery read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from .backbones.specs import BACKBONE_SPECS
from .errors import UserError
from .plugins import registry

KW_BUDGETS = (0.25, 0.5, 1.0, 2.0, 4.0)  # None = static convolutions
KW_OPTIONS = {"nonlocal_basis": (False, True)}  # ResNet-50 1/2x uses the nonlocal basis attention

Options = tuple[tuple[str, Any], ...]
# Per stage, the columns of Genome.flat() (s1.plugin, s1.position, ...).
STAGE_FLAT_FIELDS = ("plugin", "position", "r", "fusion", "stage_module", "kw")


def _freeze(opts: Mapping[str, Any] | Options | None) -> Options:
    return tuple(sorted(dict(opts or {}).items()))


_NO_MATCH = object()


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def match_choice(value, allowed):
    """The element of `allowed` equal to `value`, or _NO_MATCH. Stricter than `in`: a bool never
    matches a number (True == 1 in Python), a string only a string; ints and floats match by value
    (so 1 finds 1.0 and the canonical value is the allowed one)."""
    for a in allowed:
        if isinstance(a, bool) != isinstance(value, bool):
            continue
        if (_is_number(a) and _is_number(value)) or type(a) is type(value):
            if a == value:
                return a
    return _NO_MATCH


def _allowed(values) -> str:
    return ", ".join("null" if v is None else str(v) for v in values)


def _name_field(d: Mapping, key: str, where: str, what: str, allowed=(), default=None):
    """d[key] when it is a string (or absent/null: default); else a UserError naming field and value."""
    v = d.get(key)
    if v is None:
        return default
    if isinstance(v, str):
        return v
    hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
    raise UserError(f"{where}: expected {what} (a string), got {v!r}{hint}")


def _mapping_field(d: Mapping, key: str, where: str, what: str) -> Mapping:
    v = d.get(key)
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise UserError(f"{where}: expected {what} (an object), got {v!r}")
    return v


@dataclass(frozen=True)
class Plugin:
    """A module placed in a stage: `position` is a block position, "fusion" or "stage"."""

    type: str
    position: str
    r: int | None = None
    options: Options = ()

    def __post_init__(self):
        # Defaults are written out so that equal networks have equal JSON and keys.
        info = registry._REGISTRY.get(self.type) if isinstance(self.type, str) else None
        opts = dict(self.options)
        if info is not None:
            opts = {**info.default_options(), **opts}
            for k, v in opts.items():  # an allowed value in its canonical form (4.0 -> 4)
                m = match_choice(v, info.options.get(k, ()))
                if m is not _NO_MATCH:
                    opts[k] = m
            if self.r is None:
                object.__setattr__(self, "r", info.default_r)
            for k in info.implicit_defaults:  # left out at their default: older keys stay valid
                if k in opts and match_choice(opts[k], info.options[k][:1]) is not _NO_MATCH:
                    del opts[k]
        object.__setattr__(self, "options", _freeze(opts))

    @property
    def opts(self) -> dict[str, Any]:
        """Every option's value, implicit defaults included (what the plugin is built with)."""
        info = registry._REGISTRY.get(self.type) if isinstance(self.type, str) else None
        return {**(info.default_options() if info else {}), **dict(self.options)}

    def to_dict(self) -> dict:
        return {"type": self.type, "position": self.position, "r": self.r, "options": dict(self.options)}

    def _r_suffix(self, form: str) -> str:
        return "" if self.r is None else form.format(self.r)

    def _fields(self) -> tuple:
        return self.type, self.r, _canon(dict(self.options))

    @classmethod
    def from_dict(cls, d: Mapping, where: str, strict: bool = True) -> Plugin:
        if not isinstance(d, Mapping):
            raise UserError(f"{where}: expected an object with 'type' and 'position', got {d!r}")
        if strict:
            _no_unknown_keys(d, {"type", "position", "r", "options"}, where)
        type_ = _name_field(d, "type", f"{where}.type", "a plugin name", registry.names())
        if type_ is None:
            raise UserError(f"{where}.type: missing (known: {', '.join(registry.names())})")
        if not strict and type_ not in registry.names():  # a module this process has not imported: as stored
            return cls(
                type_,
                _name_field(d, "position", f"{where}.position", "a position"),
                d.get("r"),
                _mapping_field(d, "options", f"{where}.options", "option values"),
            )
        info = _plugin_info(type_, f"{where}.type")
        position = _name_field(
            d,
            "position",
            f"{where}.position",
            "a position",
            info.positions,
            default=info.positions[0] if len(info.positions) == 1 else None,
        )
        if position is None:
            raise UserError(
                f"{where}.position: missing (allowed for {info.name!r}: {', '.join(info.positions)})"
            )
        r = d.get("r")
        if r is not None and (not isinstance(r, int) or isinstance(r, bool)):
            raise UserError(f"{where}.r: {r!r} must be an integer >= 1 (or null for the default)")
        return cls(type_, position, r, _mapping_field(d, "options", f"{where}.options", "option values"))


@dataclass(frozen=True)
class Stage:
    plugins: tuple[Plugin, ...] = ()  # chained in this order where positions coincide
    fusion: Plugin | None = None  # replaces the residual add in every block of the stage
    stage_module: Plugin | None = None  # e.g. SDA over all block outputs
    kw: float | None = None  # KernelWarehouse budget b of this stage's warehouse; None = static

    def __post_init__(self):
        object.__setattr__(self, "plugins", tuple(self.plugins))
        if _is_number(self.kw) and not isinstance(self.kw, float):  # kw 1 and 1.0 are one network, one key
            try:
                object.__setattr__(self, "kw", float(self.kw))
            except OverflowError:
                pass  # validate() rejects it

    # -- views (see Genome) ---------------------------------------------------------------------
    def summary(self) -> str:
        bits = [f"{p.type}@{p.position}" + p._r_suffix(" r{}") for p in self.plugins]
        bits += [p.type + p._r_suffix(" r{}") for p in (self.fusion, self.stage_module) if p is not None]
        if self.kw is not None:
            bits.append(f"kw b={self.kw:g}")
        return ", ".join(bits) or "-"

    def flat(self) -> dict[str, Any]:
        rs = [p.r for p in self.plugins]
        modules = [
            ("none" if p is None else p.type + p._r_suffix("(r={})"))
            for p in (self.fusion, self.stage_module)
        ]
        values = (
            "+".join(p.type for p in self.plugins) or "none",
            "+".join(p.position for p in self.plugins) or None,
            rs[0] if len(rs) == 1 else ("+".join(map(str, rs)) if rs else None),
            *modules,
            self.kw,
        )
        return dict(zip(STAGE_FLAT_FIELDS, values))

    def distance_fields(self) -> tuple:
        ps = self.plugins
        return (
            tuple(p.type for p in ps),
            tuple(p.position for p in ps),
            tuple(p.r for p in ps),
            tuple(_canon(dict(p.options)) for p in ps),
            *((None,) if p is None else p._fields() for p in (self.fusion, self.stage_module)),
            self.kw,
        )

    def placements(self) -> list[str]:
        """'module@position' per module (a fusion at '@fusion', a stage module at '@stage_module'), the
        KW budget as 'kw b=B'; ['none'] for an empty stage."""
        toks = [f"{p.type}@{p.position}" for p in self.plugins]
        toks += [
            f"{p.type}@{k}"
            for k, p in (("fusion", self.fusion), ("stage_module", self.stage_module))
            if p is not None
        ]
        if self.kw is not None:
            toks.append(f"kw b={self.kw:g}")
        return toks or ["none"]

    def to_dict(self) -> dict:
        return {
            "plugins": [p.to_dict() for p in self.plugins],
            "fusion": self.fusion.to_dict() if self.fusion else None,
            "stage_module": self.stage_module.to_dict() if self.stage_module else None,
            "kw": self.kw,
        }

    @classmethod
    def from_dict(cls, d: Mapping, where: str, strict: bool = True) -> Stage:
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise UserError(f"{where}: expected an object, got {d!r}")
        if strict:
            _no_unknown_keys(d, {"plugins", "fusion", "stage_module", "kw"}, where)
        plugins = d.get("plugins")
        if plugins is None:
            plugins = []
        if not isinstance(plugins, (list, tuple)):
            raise UserError(f"{where}.plugins: expected a list of plugin objects, got {plugins!r}")
        kw = d.get("kw")
        if kw is not None and not _is_number(kw):
            raise UserError(
                f"{where}.kw: expected a number or null, got {kw!r} "
                f"(allowed: null, {', '.join(str(b) for b in KW_BUDGETS)})"
            )
        fusion, stage_module = d.get("fusion"), d.get("stage_module")
        return cls(
            tuple(Plugin.from_dict(p, f"{where}.plugins[{i}]", strict) for i, p in enumerate(plugins)),
            None if fusion is None else Plugin.from_dict(fusion, f"{where}.fusion", strict),
            None if stage_module is None else Plugin.from_dict(stage_module, f"{where}.stage_module", strict),
            kw,
        )


@dataclass(frozen=True)
class Genome:
    backbone: str = "resnet50"
    stages: tuple[Stage, ...] = ()  # empty = plain backbone (filled to the backbone's stage count)
    stem: str | None = None  # None = the backbone's default
    downsampling: str | None = None  # None = the backbone's default
    kw_options: Options = ()

    def __post_init__(self):
        spec = BACKBONE_SPECS.get(self.backbone) if isinstance(self.backbone, str) else None
        stages = tuple(self.stages)
        if spec is not None:
            if not stages:
                stages = tuple(Stage() for _ in range(spec.num_stages))
            object.__setattr__(self, "stem", self.stem or spec.stems[0])
            object.__setattr__(self, "downsampling", self.downsampling or spec.downsampling[0])
        object.__setattr__(self, "stages", stages)
        object.__setattr__(
            self, "kw_options", _freeze({**{k: v[0] for k, v in KW_OPTIONS.items()}, **dict(self.kw_options)})
        )

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "backbone": self.backbone,
            "stem": self.stem,
            "downsampling": self.downsampling,
            "kw_options": dict(self.kw_options),
            "stages": [s.to_dict() for s in self.stages],
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(
            self.to_dict(), sort_keys=True, indent=indent, separators=None if indent else (",", ":")
        )

    @property
    def key(self) -> str:
        """A short stable id: the same network always has the same key."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, d: Mapping, strict: bool = True) -> Genome:
        """The genome `d` describes, validated. strict=False reads a stored genome as it is (analysis):
        unknown fields are ignored, a plugin this process has not imported is kept by name, and the
        result is not validated."""
        if not isinstance(d, Mapping):
            raise UserError(f"genome: expected a JSON object, got {type(d).__name__}")
        if strict:
            _no_unknown_keys(d, {"backbone", "stem", "downsampling", "kw_options", "stages"}, "genome")
        backbone = _name_field(
            d, "backbone", "backbone", "a backbone name", sorted(BACKBONE_SPECS), "resnet50"
        )
        spec = BACKBONE_SPECS.get(backbone)
        stem = _name_field(d, "stem", "stem", "a stem name", spec.stems if spec else ())
        downsampling = _name_field(
            d, "downsampling", "downsampling", "a downsampling style", spec.downsampling if spec else ()
        )
        kw_options = _mapping_field(
            d, "kw_options", "kw_options", 'KernelWarehouse options such as {"nonlocal_basis": false}'
        )
        stages = d.get("stages")
        if stages is None:
            stages = []
        if not isinstance(stages, (list, tuple)):
            raise UserError(f"stages: expected a list of stage objects, got {stages!r}")
        g = cls(
            backbone=backbone,
            stages=tuple(Stage.from_dict(s, f"stages[{i}]", strict) for i, s in enumerate(stages)),
            stem=stem,
            downsampling=downsampling,
            kw_options=kw_options,
        )
        return g.validate() if strict else g

    @classmethod
    def from_json(cls, text: str, strict: bool = True) -> Genome:
        """from_dict of JSON text, parsed once per distinct text in this process (the result is frozen)."""
        return _from_json(text, strict, registry.generation())

    # -- editing helpers -----------------------------------------------------------------------
    def with_stage(self, index: int, **changes) -> Genome:
        stages = list(self.stages)
        stages[index] = replace(stages[index], **changes)
        return replace(self, stages=tuple(stages))

    @property
    def uses_kw(self) -> bool:
        return any(s.kw is not None for s in self.stages)

    # -- views: what tables, reports and rediscovery read ---------------------------------------
    def summary(self) -> str:
        """One line, e.g. 'resnet50 | s1 se@after_conv3 r16 | s2 -': the backbone (and its stem and
        downsampling unless standard and v1.5), then per stage its modules and KW budget."""
        head = " ".join(
            [
                self.backbone,
                *(x for x in (self.stem, self.downsampling) if x not in (None, "standard", "v1.5")),
            ]
        )
        return " | ".join([head] + [f"s{i} {st.summary()}" for i, st in enumerate(self.stages, start=1)])

    def flat(self) -> dict[str, Any]:
        """Table columns: backbone, stem, downsampling and s{i}.plugin/position/r/fusion/stage_module/kw
        (i from 1). Several plugins in a stage are joined by '+' in chain order; r is an int for one
        plugin, a '+'-joined string for several, None for none; a fusion or stage module reads
        'type(r=R)', or 'none'."""
        row: dict[str, Any] = {
            "backbone": self.backbone,
            "stem": self.stem,
            "downsampling": self.downsampling,
        }
        for i, st in enumerate(self.stages, start=1):
            row.update({f"s{i}.{k}": v for k, v in st.flat().items()})
        return row

    def distance_fields(self) -> tuple:
        """The fields a genome distance compares one by one (analysis.rediscovery): stem, downsampling,
        KW options, then per stage 7: plugin types, positions, r values and options (each in chain
        order), the fusion (type, r, options), the stage module (type, r, options), the KW budget."""
        out = [self.stem, self.downsampling, _canon(dict(self.kw_options))]
        for st in self.stages:
            out += st.distance_fields()
        return tuple(out)

    # -- validation ----------------------------------------------------------------------------
    def validate(self) -> Genome:
        if self.__dict__.get("_valid") == registry.generation():  # checked already, against the same plugins
            return self
        spec = BACKBONE_SPECS.get(self.backbone) if isinstance(self.backbone, str) else None
        if spec is None:
            raise UserError(
                f"backbone: unknown {self.backbone!r} (allowed: {', '.join(sorted(BACKBONE_SPECS))})"
            )
        if self.stem not in spec.stems:
            raise UserError(
                f"stem: {self.stem!r} is not available for {spec.name} (allowed: {', '.join(spec.stems)})"
            )
        if self.downsampling not in spec.downsampling:
            raise UserError(
                f"downsampling: {self.downsampling!r} is not available for {spec.name} "
                f"(allowed: {', '.join(spec.downsampling)})"
            )
        for k, v in self.kw_options:
            if k not in KW_OPTIONS:
                raise UserError(f"kw_options.{k}: unknown option (known: {', '.join(KW_OPTIONS)})")
            if match_choice(v, KW_OPTIONS[k]) is _NO_MATCH:
                raise UserError(f"kw_options.{k}: {v!r} not allowed (allowed: {_allowed(KW_OPTIONS[k])})")
        if len(self.stages) != spec.num_stages:
            raise UserError(
                f"stages: {spec.name} has {spec.num_stages} stages, the genome gives {len(self.stages)}"
            )
        for i, st in enumerate(self.stages):
            where = f"stages[{i}]"
            if not spec.supports_plugins:
                for field_, mods in (
                    ("plugins", st.plugins),
                    ("fusion", st.fusion),
                    ("stage_module", st.stage_module),
                ):
                    if mods:
                        raise UserError(
                            f"{where}.{field_}: block, fusion and stage plugins are not supported on "
                            f"{spec.name} (allowed: none; {spec.family} backbones take KernelWarehouse, "
                            f"stems and downsampling styles only)"
                        )
            for j, p in enumerate(st.plugins):
                _check_plugin(p, "block", f"{where}.plugins[{j}]", spec)
            if st.fusion is not None:
                _check_plugin(st.fusion, "fusion", f"{where}.fusion", spec)
            if st.stage_module is not None:
                _check_plugin(st.stage_module, "stage", f"{where}.stage_module", spec)
            if st.kw is not None and match_choice(st.kw, KW_BUDGETS) is _NO_MATCH:
                raise UserError(
                    f"{where}.kw: {st.kw!r} is not a KernelWarehouse budget "
                    f"(allowed: null, {', '.join(str(b) for b in KW_BUDGETS)})"
                )
            if st.kw is not None and not spec.supports_kw:
                raise UserError(
                    f"{where}.kw: {st.kw!r} not allowed: KernelWarehouse is not supported on {spec.name} "
                    f"(allowed: null; KW backbones: {', '.join(kw_backbones())})"
                )
        object.__setattr__(
            self, "_valid", registry.generation()
        )  # not a field: equality, hash and JSON ignore it
        return self

    def __getstate__(self) -> dict:
        # Another process checks again: it may not have registered the same plugins.
        return {k: v for k, v in self.__dict__.items() if k != "_valid"}


@lru_cache(maxsize=8192)
def _from_json(text: str, strict: bool, plugins_generation: int) -> Genome:  # the registry is part of the key
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"genome JSON does not parse: {e}") from None
    return Genome.from_dict(d, strict)


def _canon(x) -> str:
    return json.dumps(x, sort_keys=True)


def kw_backbones() -> list[str]:
    return sorted(n for n, s in BACKBONE_SPECS.items() if s.supports_kw)


def _plugin_info(name, where: str):
    if not isinstance(name, str) or name not in registry.names():
        raise UserError(f"{where}: unknown plugin {name!r} (known: {', '.join(registry.names())})")
    return registry.get(name)


def _check_plugin(p: Plugin, kind: str, where: str, spec) -> None:
    info = _plugin_info(p.type, f"{where}.type")
    if info.kind != kind:
        raise UserError(
            f"{where}.type: {p.type!r} is a {info.kind} module, not a {kind} module "
            f"(allowed here: {', '.join(registry.names(kind))})"
        )
    if p.position not in info.positions:
        raise UserError(
            f"{where}.position: {p.position!r} is not supported by {p.type!r} "
            f"(allowed: {', '.join(info.positions)})"
        )
    if p.position == "after_conv3" and spec.block != "bottleneck":
        raise UserError(
            f"{where}.position: 'after_conv3' needs a Bottleneck backbone; {spec.name} has "
            f"{spec.block} blocks (use after_conv1, after_conv2 or after_add)"
        )
    if info.default_r is not None and (not isinstance(p.r, int) or isinstance(p.r, bool) or p.r < 1):
        raise UserError(f"{where}.r: {p.r!r} must be an integer >= 1")
    for k, v in p.options:
        if k not in info.options:
            raise UserError(
                f"{where}.options.{k}: unknown option for {p.type!r} "
                f"(known: {', '.join(info.options) or 'none'})"
            )
        if match_choice(v, info.options[k]) is _NO_MATCH:
            raise UserError(
                f"{where}.options.{k}: {v!r} not allowed (allowed: {', '.join(map(str, info.options[k]))})"
            )


def _no_unknown_keys(d: Mapping, known: set[str], where: str) -> None:
    extra = sorted(set(d) - known)
    if extra:
        raise UserError(f"{where}: unknown field {extra[0]!r} (known: {', '.join(sorted(known))})")


def make_plugin(type: str, position: str | None = None, r: int | None = None, **options) -> Plugin:
    """A Plugin with the registry's defaults filled in (position when unambiguous, r, options)."""
    info = registry.get(type)
    return Plugin(type, position or info.positions[0], r, options)


def uniform(backbone: str, plugin: Plugin | None = None, **genome_fields) -> Genome:
    """The same plugin in every stage (the common published layout)."""
    n = BACKBONE_SPECS[backbone].num_stages
    if plugin is None:
        stage = Stage()
    elif plugin.position == "fusion":
        stage = Stage(fusion=plugin)
    elif plugin.position == "stage":
        stage = Stage(stage_module=plugin)
    else:
        stage = Stage(plugins=(plugin,))
    return Genome(backbone, tuple(stage for _ in range(n)), **genome_fields).validate()


__all__ = ["Genome", "Stage", "Plugin", "make_plugin", "uniform", "KW_BUDGETS", "KW_OPTIONS"]
