"""The search space as data, and its Optuna define-by-run sampler.

A `SpaceSpec` (the `[space]` table of a study config) narrows what may vary. `suggest(trial, spec)`
asks an Optuna trial for one genome; parameters are conditional (a plugin's position and r exist
only where that plugin is placed; a KernelWarehouse budget only where KW is allowed), and their
names carry the choice they depend on, so each name always has one distribution. `to_params` is
the inverse, for `study.enqueue_trial` and Ray's `points_to_evaluate`.

A space may instead give each stage its own menu of complete block-plugin choices
(`stage_menus`, one list per stage; parameter `s{i}_menu`), for spaces built around published
per-stage layouts. A menu item is "none" or `type@position[:r<int>][:option=value]...`, with a
bare `:option` meaning option=true: "se@after_conv3:r16", "dsm@after_conv2:r2:bias". Omitted r and
options take the plugin's defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from math import prod
from typing import Any

from .backbones.specs import BACKBONE_SPECS
from .errors import UserError
from .genome import _NO_MATCH, KW_BUDGETS, Genome, Plugin, Stage, kw_backbones, match_choice
from .plugins import registry

NONE = "none"
KW_OFF = "off"


@dataclass(frozen=True)
class SpaceSpec:
    backbone: str = "resnet50"
    stems: tuple[str, ...] = ()  # empty = the backbone's default only
    downsampling: tuple[str, ...] = ()
    plugins: tuple[str, ...] = (NONE,)  # block plugins a stage may get ("none" = no plugin)
    positions: tuple[str, ...] = registry.BLOCK_POSITIONS  # restricts every plugin's positions
    r: tuple[int, ...] = (16,)
    plugin_options: Mapping[str, Mapping[str, tuple]] = field(default_factory=dict)
    fusions: tuple[str, ...] = (NONE,)
    stage_modules: tuple[str, ...] = (NONE,)
    kw: tuple[Any, ...] = (KW_OFF,)
    kw_per_stage: bool = False
    stage_menus: tuple[
        tuple[str, ...], ...
    ] = ()  # per stage: block-plugin choices; replaces plugins/positions/r
    imports: tuple[str, ...] = ()  # user modules registering plugins, imported before the rest is checked

    @classmethod
    def from_dict(cls, d: Mapping) -> SpaceSpec:
        if not isinstance(d, Mapping):
            raise UserError(f"space: expected a table, got {d!r}")
        known = set(cls.__dataclass_fields__)
        extra = sorted(set(d) - known)
        if extra:
            raise UserError(f"space.{extra[0]}: unknown key (known: {', '.join(sorted(known))})")
        kw: dict[str, Any] = {}
        if "stage_menus" in d:
            clash = sorted({"plugins", "positions", "r", "plugin_options"} & set(d))
            if clash:
                raise UserError(
                    f"space.stage_menus: replaces space.{clash[0]} (each menu item gives type, "
                    f"position, r and options); leave space.{clash[0]} out"
                )
        for key, v in d.items():
            where = f"space.{key}"
            if key == "backbone":
                if not isinstance(v, str):
                    raise UserError(
                        f"{where}: expected a backbone name (a string), got {v!r} "
                        f"(allowed: {', '.join(sorted(BACKBONE_SPECS))})"
                    )
                kw[key] = v
            elif key == "kw_per_stage":
                if not isinstance(v, bool):
                    raise UserError(f"{where}: expected true or false, got {v!r}")
                kw[key] = v
            elif key == "plugin_options":
                kw[key] = _options_table(v)
            elif key == "kw":
                kw[key] = tuple(
                    KW_OFF if b in (KW_OFF, None) else _kw_budget(b) for b in _list(where, v, "budgets")
                )
            elif key == "r":
                kw[key] = _list(where, v, "integers >= 1")
            elif key == "imports":
                kw[key] = _list(where, v, "module names", str)
            elif key == "stage_menus":
                kw[key] = tuple(
                    _list(f"{where}[{i}]", m, "menu items", str)
                    for i, m in enumerate(_list(where, v, "per-stage lists"))
                )
            else:  # stems, downsampling, plugins, positions, fusions, stage_modules: lists of names
                kw[key] = _list(where, v, "names", str)
        return cls(**kw).validate()

    def validate(self) -> SpaceSpec:
        registry.import_modules(self.imports, "space.imports")  # first: they register plugins named below
        spec = BACKBONE_SPECS.get(self.backbone) if isinstance(self.backbone, str) else None
        if spec is None:
            raise UserError(
                f"space.backbone: unknown {self.backbone!r} (allowed: {', '.join(sorted(BACKBONE_SPECS))})"
            )
        _subset("space.stems", self.stems, spec.stems)
        _subset("space.downsampling", self.downsampling, spec.downsampling)
        if spec.supports_plugins:
            _subset("space.plugins", self.plugins, (NONE, *registry.names("block")), empty_ok=False)
            _subset("space.fusions", self.fusions, (NONE, *registry.names("fusion")), empty_ok=False)
            _subset(
                "space.stage_modules", self.stage_modules, (NONE, *registry.names("stage")), empty_ok=False
            )
        else:
            why = f"; plugins are not supported on {spec.name}"
            _subset("space.plugins", self.plugins, (NONE,), empty_ok=False, why=why)
            _subset("space.fusions", self.fusions, (NONE,), empty_ok=False, why=why)
            _subset("space.stage_modules", self.stage_modules, (NONE,), empty_ok=False, why=why)
        _subset("space.positions", self.positions, registry.BLOCK_POSITIONS)
        if spec.supports_kw:
            _subset("space.kw", self.kw, (KW_OFF, *KW_BUDGETS), empty_ok=False)
        else:
            _subset(
                "space.kw",
                self.kw,
                (KW_OFF,),
                empty_ok=False,
                why=f"; KernelWarehouse is not supported on {spec.name}, only on {', '.join(kw_backbones())}",
            )
        if not self.r or any(not isinstance(r, int) or isinstance(r, bool) or r < 1 for r in self.r):
            raise UserError(f"space.r: {list(self.r)!r} must be a non-empty list of integers >= 1")
        for p, opts in self.plugin_options.items():
            if p not in registry.names():
                raise UserError(
                    f"space.plugin_options.{p}: unknown plugin {p!r} (known: {', '.join(registry.names())})"
                )
            info = registry.get(p)
            for o, vals in opts.items():
                if o not in info.options:
                    raise UserError(
                        f"space.plugin_options.{p}.{o}: unknown option for {p!r} "
                        f"(known: {', '.join(info.options) or 'none'})"
                    )
                _subset(f"space.plugin_options.{p}.{o}", vals, info.options[o], empty_ok=False)
        for p in self.plugins:
            if p != NONE and not self.positions_for(p):
                raise UserError(
                    f"space.plugins: {p!r} has no position allowed by space.positions on {self.backbone}"
                )
        if self.stage_menus:
            if len(self.stage_menus) != spec.num_stages:
                raise UserError(
                    f"space.stage_menus: {spec.name} has {spec.num_stages} stages, "
                    f"got {len(self.stage_menus)} menus"
                )
            for i, items in enumerate(self.stage_menus):
                if not items:
                    raise UserError(
                        f'space.stage_menus[{i}]: must not be empty (write ["none"] for no plugin)'
                    )
                seen: dict = {}
                for item in items:
                    plugin = parse_menu_item(item, self.backbone, f"space.stage_menus[{i}]")
                    if plugin in seen:
                        raise UserError(
                            f"space.stage_menus[{i}]: {item!r} is the same choice as {seen[plugin]!r}"
                        )
                    seen[plugin] = item
        return self

    # -- per-choice domains ---------------------------------------------------------------------
    @property
    def stem_choices(self) -> tuple[str, ...]:
        return self.stems or BACKBONE_SPECS[self.backbone].stems[:1]

    @property
    def downsampling_choices(self) -> tuple[str, ...]:
        return self.downsampling or BACKBONE_SPECS[self.backbone].downsampling[:1]

    def positions_for(self, plugin: str) -> tuple[str, ...]:
        bottleneck = BACKBONE_SPECS[self.backbone].block == "bottleneck"
        return tuple(
            p
            for p in registry.get(plugin).positions
            if p in self.positions and (bottleneck or p != "after_conv3")
        )

    def options_for(self, plugin: str) -> dict[str, tuple]:
        """Options that vary; the rest stay at their defaults."""
        return {o: tuple(v) for o, v in self.plugin_options.get(plugin, {}).items()}

    def r_for(self, plugin: str) -> tuple[int, ...]:
        return self.r if registry.get(plugin).default_r is not None else ()

    def num_stages(self) -> int:
        return BACKBONE_SPECS[self.backbone].num_stages

    def menu(self, stage: int) -> tuple[tuple[str, Plugin | None], ...]:
        """Stage `stage`'s menu as (item text, plugin or None); empty when the space has no menus."""
        if not self.stage_menus:
            return ()
        return tuple((item, parse_menu_item(item, self.backbone)) for item in self.stage_menus[stage])


@lru_cache(maxsize=4096)
def parse_menu_item(item: str, backbone: str, where: str = "space.stage_menus") -> Plugin | None:
    """ "none" -> None; "type@position[:r<int>][:option=value|:option]..." -> a validated block Plugin."""
    text = item.strip() if isinstance(item, str) else item
    if not isinstance(text, str) or not text:
        raise UserError(f'{where}: menu item {item!r} must be "none" or "type@position[:r16][:option=value]"')
    if text == NONE:
        return None
    head, *fields = text.split(":")
    type_, at, position = head.partition("@")
    if not at or not type_ or not position:
        raise UserError(f'{where}: menu item {item!r} needs a position, as in "se@after_conv3:r16"')
    if type_ not in registry.names("block"):
        raise UserError(
            f"{where}: menu item {item!r}: unknown block plugin {type_!r} "
            f"(known: {', '.join(registry.names('block'))})"
        )
    info = registry.get(type_)
    r, options = None, {}
    for f in fields:
        name, eq, value = f.partition("=")
        if not eq and len(f) > 1 and f[0] == "r" and f[1:].isdigit():
            r = int(f[1:])
            continue
        if name not in info.options:
            raise UserError(
                f"{where}: menu item {item!r}: {f!r} is neither r<int> nor an option of {type_!r} "
                f"(options: {', '.join(info.options) or 'none'})"
            )
        allowed = info.options[name]
        by_text = {str(a).lower(): a for a in allowed}
        if not eq:
            value = "true"
        if value.lower() not in by_text:
            raise UserError(
                f"{where}: menu item {item!r}: {name}={value} is not allowed "
                f"(allowed: {', '.join(map(str, allowed))})"
            )
        options[name] = by_text[value.lower()]
    plugin = Plugin(type_, position, r, options)
    try:
        Genome(
            backbone, tuple(Stage(plugins=(plugin,)) for _ in range(BACKBONE_SPECS[backbone].num_stages))
        ).validate()
    except UserError as e:
        raise UserError(f"{where}: menu item {item!r}: {e}") from None
    return plugin


def _subset(where: str, values, allowed, empty_ok: bool = True, why: str = "") -> None:
    if not empty_ok and not values:
        raise UserError(f"{where}: must not be empty (allowed: {', '.join(map(str, allowed))}{why})")
    for v in values:
        if match_choice(v, allowed) is _NO_MATCH:  # strict: true is not 1.0
            raise UserError(f"{where}: {v!r} is not allowed (allowed: {', '.join(map(str, allowed))}{why})")


def _list(where: str, v, what: str, item_type: type | None = None) -> tuple:
    """A TOML array as a tuple; a bare string or number is refused rather than read letter by letter."""
    if not isinstance(v, (list, tuple)):
        hint = (
            f" (write [{v!r}])".replace("'", '"')
            if isinstance(v, (str, int, float)) and not isinstance(v, bool)
            else ""
        )
        raise UserError(f"{where}: expected a list of {what}, got {v!r}{hint}")
    if item_type is not None:
        for x in v:
            if not isinstance(x, item_type):
                raise UserError(f"{where}: expected a list of {what}, got {x!r} in {list(v)!r}")
    return tuple(v)


def _kw_budget(b):
    if isinstance(b, (int, float)) and not isinstance(b, bool):
        try:
            return float(b)
        except OverflowError:
            pass
    raise UserError(f"space.kw: {b!r} is not allowed (allowed: {KW_OFF}, {', '.join(map(str, KW_BUDGETS))})")


def _options_table(v) -> dict:
    """[space.plugin_options]: {plugin: {option: [values]}}."""
    where = "space.plugin_options"
    if not isinstance(v, Mapping):
        raise UserError(f"{where}: expected a table {{plugin = {{option = [values]}}}}, got {v!r}")
    out = {}
    for p, opts in v.items():
        if not isinstance(opts, Mapping):
            raise UserError(f"{where}.{p}: expected a table {{option = [values]}}, got {opts!r}")
        out[p] = {o: _list(f"{where}.{p}.{o}", vals, "option values") for o, vals in opts.items()}
    return out


def _choose(trial, name: str, choices: tuple):
    """A categorical that is only asked when there is a choice to make."""
    return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, list(choices))


def _suggest_module(
    trial, spec: SpaceSpec, prefix: str, kind_choices: tuple[str, ...], kind: str
) -> Plugin | None:
    name = _choose(trial, f"{prefix}_{kind}", kind_choices)
    if name == NONE:
        return None
    positions = (
        spec.positions_for(name) if kind == "plugin" else (kind if kind != "stage_module" else "stage",)
    )
    position = _choose(trial, f"{prefix}_{name}_position", positions)
    rs = spec.r_for(name) if kind != "stage_module" else ()
    r = _choose(trial, f"{prefix}_{name}_r", rs) if rs else None
    options = {o: _choose(trial, f"{prefix}_{name}_{o}", vals) for o, vals in spec.options_for(name).items()}
    return Plugin(name, position, r, options)


def suggest(trial, spec: SpaceSpec) -> Genome:
    """Ask an Optuna trial (or FixedTrial) for one genome inside `spec`."""
    stem = _choose(trial, "stem", spec.stem_choices)
    downsampling = _choose(trial, "downsampling", spec.downsampling_choices)
    shared_kw = None if spec.kw_per_stage else _choose(trial, "kw", spec.kw)
    stages = []
    for i in range(spec.num_stages()):
        p = f"s{i}"
        if spec.stage_menus:
            menu = dict(spec.menu(i))
            plugin = menu[_choose(trial, f"{p}_menu", tuple(menu))]
        else:
            plugin = _suggest_module(trial, spec, p, spec.plugins, "plugin")
        fusion = _suggest_module(trial, spec, p, spec.fusions, "fusion")
        stage_module = _suggest_module(trial, spec, p, spec.stage_modules, "stage_module")
        kw = _choose(trial, f"{p}_kw", spec.kw) if spec.kw_per_stage else shared_kw
        stages.append(Stage((plugin,) if plugin else (), fusion, stage_module, None if kw == KW_OFF else kw))
    return Genome(spec.backbone, tuple(stages), stem, downsampling).validate()


def to_params(genome: Genome, spec: SpaceSpec) -> dict[str, Any]:
    """The flat Optuna parameters that make `suggest` return `genome`; UserError if outside `spec`."""
    if not contains(spec, genome):
        raise UserError(f"genome {genome.key} lies outside the study's space")
    return _params(genome, spec)


def _params(genome: Genome, spec: SpaceSpec) -> dict[str, Any]:
    params: dict[str, Any] = {}

    def put(name, value, choices):
        if len(choices) > 1:
            params[name] = value

    def put_module(prefix, kind, module, kind_choices):
        put(f"{prefix}_{kind}", module.type if module else NONE, kind_choices)
        if module is None:
            return
        if kind == "plugin":
            put(f"{prefix}_{module.type}_position", module.position, spec.positions_for(module.type))
        if kind != "stage_module" and spec.r_for(module.type):
            put(f"{prefix}_{module.type}_r", module.r, spec.r_for(module.type))
        for o, vals in spec.options_for(module.type).items():
            put(f"{prefix}_{module.type}_{o}", module.opts[o], vals)

    put("stem", genome.stem, spec.stem_choices)
    put("downsampling", genome.downsampling, spec.downsampling_choices)
    kws = [KW_OFF if s.kw is None else s.kw for s in genome.stages]
    if not spec.kw_per_stage:
        put("kw", kws[0], spec.kw)
    for i, st in enumerate(genome.stages):
        p = f"s{i}"
        if spec.stage_menus:
            have = st.plugins[0] if st.plugins else None
            items = [item for item, plugin in spec.menu(i) if plugin == have]
            put(f"{p}_menu", items[0] if items else "<not in this stage's menu>", spec.stage_menus[i])
        else:
            put_module(p, "plugin", st.plugins[0] if st.plugins else None, spec.plugins)
        put_module(p, "fusion", st.fusion, spec.fusions)
        put_module(p, "stage_module", st.stage_module, spec.stage_modules)
        if spec.kw_per_stage:
            put(f"{p}_kw", kws[i], spec.kw)
    return params


def contains(spec: SpaceSpec, genome: Genome) -> bool:
    """Whether `suggest` can return this genome (no Optuna needed)."""
    if genome.backbone != spec.backbone or any(len(s.plugins) > 1 for s in genome.stages):
        return False
    if not spec.kw_per_stage and len({s.kw for s in genome.stages}) > 1:
        return False
    try:
        return suggest(_FixedAnswers(_params(genome, spec)), spec) == genome
    except UserError:  # a value outside the choices, or a genome that does not validate
        return False


def _module_count(spec: SpaceSpec, names: tuple[str, ...], kind: str) -> int:
    total = 0
    for n in names:
        if n == NONE:
            total += 1
            continue
        positions = len(spec.positions_for(n)) if kind == "plugin" else 1
        rs = len(spec.r_for(n)) if kind != "stage_module" and spec.r_for(n) else 1
        total += positions * rs * prod(len(v) for v in spec.options_for(n).values())
    return total


def count(spec: SpaceSpec) -> int:
    """How many distinct genomes `suggest` can return."""
    n = spec.num_stages()
    others = _module_count(spec, spec.fusions, "fusion") * _module_count(
        spec, spec.stage_modules, "stage_module"
    )
    if spec.stage_menus:
        stages = prod(len(m) * others for m in spec.stage_menus)
    else:
        stages = (_module_count(spec, spec.plugins, "plugin") * others) ** n
    kw = len(spec.kw) ** n if spec.kw_per_stage else len(spec.kw)
    return len(spec.stem_choices) * len(spec.downsampling_choices) * kw * stages


def enumerate_genomes(spec: SpaceSpec, limit: int = 10_000):
    """Every genome of a small space (tests, exhaustive baselines); refuses large spaces."""
    if count(spec) > limit:
        raise UserError(f"space has {count(spec)} genomes, more than the limit {limit}")
    seen = {}

    def walk(fixed):
        trial = _Recorder(fixed)
        g = suggest(trial, spec)
        if trial.branch is None:
            seen[g.key] = g
            return
        name, choices = trial.branch
        for c in choices:
            walk({**fixed, name: c})

    walk({})
    return list(seen.values())


class _FixedAnswers:
    """A trial that answers from fixed parameters, like optuna.trial.FixedTrial (which `suggest` also takes),
    but refuses a value outside the choices instead of warning."""

    def __init__(self, params: Mapping[str, Any]):
        self.params = params

    def suggest_categorical(self, name, choices):
        if name not in self.params:
            raise UserError(f"parameter {name!r}: no value given")
        value = match_choice(self.params[name], choices)
        if value is _NO_MATCH:
            raise UserError(
                f"parameter {name!r}: {self.params[name]!r} is not allowed "
                f"(allowed: {', '.join(map(str, choices))})"
            )
        return value


class _Recorder:
    """A trial that follows fixed answers and stops at the first open question (for enumeration)."""

    def __init__(self, fixed):
        self.fixed, self.branch = fixed, None

    def suggest_categorical(self, name, choices):
        if name in self.fixed:
            return self.fixed[name]
        if self.branch is None:
            self.branch = (name, tuple(choices))
        return choices[0]


class _Answers:
    """A trial that answers from given parameters, the first choice for any other, and records what it was asked."""

    def __init__(self, params: Mapping[str, Any]):
        self.params, self.asked = params, {}

    def suggest_categorical(self, name, choices):
        self.asked[name] = tuple(choices)
        value = match_choice(self.params[name], choices) if name in self.params else _NO_MATCH
        return choices[0] if value is _NO_MATCH else value


def neighbours(genome: Genome, spec: SpaceSpec) -> list[Genome]:
    """The genomes one edit away from `genome` inside `spec`: one parameter `suggest` asks for it set to
    another of its choices. A parameter the edit newly opens (the position, r and options of a
    plugin put where there was none) takes its first choice, so each edit gives one genome."""
    base = to_params(genome, spec)
    asker = _Answers(base)
    suggest(asker, spec)
    out: dict[str, Genome] = {}
    for name, choices in asker.asked.items():
        for c in choices:
            if c == base.get(name, choices[0]) and type(c) is type(base.get(name, choices[0])):
                continue
            try:
                g = suggest(_Answers({**base, name: c}), spec)
            except UserError:  # an edit that does not validate (e.g. a module the backbone refuses there)
                continue
            if g.key != genome.key:
                out.setdefault(g.key, g)
    return list(out.values())


__all__ = ["SpaceSpec", "suggest", "to_params", "contains", "count", "enumerate_genomes", "neighbours"]
