"""Study configs: load a TOML file, check every field once, return a frozen, typed `StudyConfig`.

A config names the search space ([space], handed to searchspace.space.SpaceSpec.from_dict), the
objectives, the full-size target the costs are counted on, the proxy fidelity accuracy is measured
at, the data, the budget, the sampler and optional ASHA early stopping. Any mistake is one
UserError line naming the field; nothing is opened or written while loading.
"""

from __future__ import annotations

import copy
import json
import math
import re
import sys
import tomllib
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis import metrics
from searchspace.catalog import Target  # its backbone is the space's
from searchspace.errors import UserError
from searchspace.recipe import REFERENCE_RECIPES

if TYPE_CHECKING:  # imported when a config is built: listing the shipped configs needs no trainer
    from searchspace.space import SpaceSpec
    from trainers.data import DataSpec
    from trainers.train import Fidelity

CONFIG_DIR = Path(__file__).with_name("configs")
REPO = CONFIG_DIR.parent.parent
TABLE_DIR = REPO / "studies" / "tables"  # the shipped benchmark tables (studies.table)
OBJECTIVES = metrics.OBJECTIVES  # {name: default direction}, read live from analysis.metrics' table
SAMPLERS = ("nsga2", "tpe", "gp", "random", "designed")  # designed: studies.designed (screen, fit, confirm)
LIMITS = ("flops", "params")  # [constraints] <name>_max
ES_RULES = ("pareto", "top1")

# The study's own proxy defaults; any other trainers.Fidelity setting may be given in [fidelity] too.
FIDELITY_DEFAULTS = {"epochs": 2, "resolution": 32, "width": 0.25, "batch_size": 64, "lr": 0.1}


@dataclass(frozen=True)
class Budget:
    trials: int = 32
    concurrency: int = 0  # 0 = as many as the cluster's resources allow
    minutes: float | None = None  # wall clock; the run ends at the trial count or this, whichever first
    confirm: float = 0.25  # sampler "designed": the share of the trials kept for confirmation seeds


@dataclass(frozen=True)
class Sampler:
    name: str = "nsga2"
    population: int = 16


@dataclass(frozen=True)
class EarlyStopping:
    asha: bool = False
    grace_period: int = 1
    reduction_factor: int = 2
    rule: str = "pareto"


@dataclass(frozen=True)
class Constraints:
    """Upper limits on a genome's full-size cost: a number, or "<factor> x <catalog design>" (that
    design's cost at the study's target). A genome over a limit is recorded infeasible, never trained."""

    flops_max: float | str | None = None
    params_max: float | str | None = None


@dataclass(frozen=True)
class References:
    """evaluate: train the in-space catalog designs with the same proxy (study '<name>.references');
    neighbours: the search's first trials are this many one-edit variants of those designs;
    recipe: "common" (every design with the recipe the searched genomes get) or "authors" (each
    design with its authors' recipe, searchspace.recipe; docs/effects.md)."""

    evaluate: bool = False
    neighbours: int = 0
    recipe: str = "common"


@dataclass(frozen=True)
class Prior:
    """table: a benchmark table of the same protocol (a name under studies/tables, or a CSV path) whose
    runs join the study's in the effects model (docs/effects.md), checked by studies.table.prior_csv."""

    table: str | None = None


@dataclass(frozen=True)
class Resources:
    cpus_per_trial: float = 1
    gpus_per_trial: float | str = "auto"  # auto = 1 GPU per trial if any


@dataclass(frozen=True)
class Calibration:
    """studies.calibrate: K random genomes besides the published designs, S seeds each, and the longer
    reference protocol as {"fidelity.epochs": 16, ...} overrides (checked by studies.calibrate)."""

    designs: int = 8
    seeds: int = 3
    versus: dict = field(default_factory=dict)


DEFAULTS: dict[str, Any] = {
    "description": "",
    "seed": 0,
    "objectives": {"top1": "maximize", "flops": "minimize"},
    "target": asdict(Target()),
    "fidelity": FIDELITY_DEFAULTS,
    "data": {
        "root": None,
        "num_classes": 10,
        "max_per_class": None,
        "max_val_per_class": None,
        "classes_file": None,
    },
    "budget": asdict(Budget()),
    "sampler": asdict(Sampler()),
    "early_stopping": asdict(EarlyStopping()),
    "constraints": asdict(Constraints()),
    "references": asdict(References()),
    "prior": asdict(Prior()),
    "resources": asdict(Resources()),
    "calibration": asdict(Calibration()),
}
SECTIONS = {k for k, v in DEFAULTS.items() if isinstance(v, dict)} | {"space"}
_TYPED = {
    "target": Target,
    "budget": Budget,
    "sampler": Sampler,
    "early_stopping": EarlyStopping,
    "constraints": Constraints,
    "references": References,
    "prior": Prior,
    "resources": Resources,
    "calibration": Calibration,
}


@dataclass(frozen=True)
class StudyConfig:
    """A study config, validated: typed sections, nothing to edit. A change (a CLI flag, a resolved data
    root, another protocol) is a new config from `with_overrides`, checked by the same rules."""

    name: str
    source: str  # the file it came from
    space: SpaceSpec
    fidelity: Fidelity  # the proxy protocol's training settings (trainers.Fidelity)
    data: DataSpec  # root resolved by studies.run; None = bundled Imagenette-64
    target: Target
    directions: tuple[tuple[str, str], ...]  # (objective, "maximize" | "minimize"), in the file's order
    budget: Budget = Budget()
    sampler: Sampler = Sampler()
    early_stopping: EarlyStopping = EarlyStopping()
    constraints: Constraints = Constraints()
    references: References = References()
    prior: Prior = Prior()
    resources: Resources = Resources()
    calibration: Calibration = Calibration()
    description: str = ""
    seed: int = 0
    # What is stored with the study besides the typed values: [space] as written (the study's "config"
    # attr keeps it so), and the [fidelity] keys set by the defaults or the file (the stored protocol).
    space_table: dict = field(default_factory=dict)
    fidelity_keys: tuple[str, ...] = tuple(FIDELITY_DEFAULTS)

    @property
    def objectives(self) -> list[dict]:
        return [{"name": k, "direction": v} for k, v in self.directions]

    @property
    def protocol(self) -> dict:
        """What a proxy result depends on besides the genome and the seed, as stored with the study
        (user attrs "fidelity", "data", "target"): the fidelity with its data subset, the data, the
        full-size target with its backbone."""
        fid = {k: getattr(self.fidelity, k) for k in self.fidelity_keys}
        data = {k: getattr(self.data, k) for k in DEFAULTS["data"]}
        return {
            "fidelity": {**fid, "num_classes": data["num_classes"], "max_per_class": data["max_per_class"]},
            "data": data,
            "target": {"backbone": self.space.backbone, **asdict(self.target)},
        }


def default_csv(name: str) -> Path:
    """The shipped table called `name`."""
    return TABLE_DIR / f"{name}.csv"


def prior_path(cfg) -> Path | None:
    """Where the config's [prior] table is: a name under studies/tables, or a CSV path."""
    name = cfg.prior.table
    if name is None:
        return None
    path = default_csv(name) if "/" not in name and not name.endswith(".csv") else Path(name).expanduser()
    return path.resolve()


def shipped() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def resolve(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.parent != Path("."):
        if not p.is_file():
            raise UserError(f"study config {name_or_path!r}: no such file")
        return p
    p = CONFIG_DIR / f"{name_or_path}.toml"
    if not p.is_file():
        raise UserError(
            f"unknown study {name_or_path!r} (shipped: {', '.join(shipped())}; or give a path to a .toml)"
        )
    return p


def load(name_or_path: str, overrides: dict | None = None) -> StudyConfig:
    """Read, merge with the defaults, apply `overrides` ({"fidelity.epochs": 3, ...}), validate."""
    path = resolve(name_or_path)
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: invalid TOML ({e})") from None
    return from_dict(doc, name=path.stem, source=str(path), overrides=overrides)


def from_dict(
    doc: dict, name: str, source: str = "<dict>", overrides: dict | None = None, where: str | None = None
) -> StudyConfig:
    """Merge `doc` with the defaults, apply `overrides` ({"fidelity.epochs": 3, "seed": 1, ...}; None
    values are skipped), validate, build. Errors name `where` (default: the source's file name)."""
    where = where or Path(source).name
    unknown = sorted(set(doc) - set(DEFAULTS) - {"space", "name"})
    if unknown:
        raise UserError(
            f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(set(DEFAULTS) | {'space', 'name'}))})"
        )
    raw = copy.deepcopy(DEFAULTS)
    for key, val in doc.items():
        if key in SECTIONS and key != "space":
            if not isinstance(val, dict):
                raise UserError(f"{where}: [{key}] must be a table")
            if key == "objectives":
                raw[key] = dict(val)  # replaces the default list, keeps the file's order
                continue
            bad = sorted(set(val) - set(raw[key]))
            if bad and key != "fidelity":  # other trainer settings are checked by trainers.Fidelity
                raise UserError(f"{where}: [{key}] unknown key {bad[0]!r} (known: {', '.join(raw[key])})")
            raw[key].update(val)
        else:
            raw[key] = copy.deepcopy(val)
    for dotted, val in (overrides or {}).items():
        if val is not None:
            sec, dot, key = dotted.partition(".")
            if sec not in raw and sec not in ("name", "space"):
                raise UserError(f"{where}: override {dotted!r}: unknown section {sec!r}")
            if dot:
                raw[sec][key] = val
            else:
                raw[sec] = val
    raw["name"] = str(raw.get("name") or name)
    if "space" not in raw or not isinstance(raw["space"], dict):
        raise UserError(f"{where}: missing [space] table")
    return _build(raw, source, where)


def with_overrides(cfg: StudyConfig, overrides: dict, where: str | None = None) -> StudyConfig:
    """A new config: `cfg` as stored with dotted overrides ({"budget.concurrency": 4, "name": "b"}),
    validated by the same rules as a file (errors name `where`, default the config's file)."""
    return from_dict(to_storable(cfg), name=cfg.name, source=cfg.source, overrides=overrides, where=where)


def _int(v, what, lo=1, none_ok=False):
    if v is None and none_ok:
        return
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise UserError(f"{what}: expected an integer >= {lo}, got {v!r}")


def _num(v, what, lo=0.0, hi=None, strict=True):
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (v > lo if strict else v >= lo)
    if not ok or (hi is not None and v > hi):
        raise UserError(
            f"{what}: expected a number {'>' if strict else '>='} {lo}{f' and <= {hi}' if hi else ''}, got {v!r}"
        )


def _build(raw: dict, source: str, where: str) -> StudyConfig:
    """Check every field of the merged config (one UserError naming the first bad one), then build it."""
    from searchspace.space import SpaceSpec
    from trainers.data import DataSpec
    from trainers.train import Fidelity

    if not re.fullmatch(r"[A-Za-z0-9_.-]+", raw["name"]):
        raise UserError(f"{where}: name {raw['name']!r} may only use letters, digits, '_', '-' and '.'")
    if not isinstance(raw["description"], str):
        raise UserError(f"{where}: description: expected a string, got {raw['description']!r}")
    _int(raw["seed"], f"{where}: seed", lo=0)
    obj = raw["objectives"]
    if not obj:
        raise UserError(f"{where}: [objectives] is empty (known: {', '.join(OBJECTIVES)})")
    for k, d in obj.items():
        if k not in OBJECTIVES:
            raise UserError(f"{where}: objective {k!r} unknown (known: {', '.join(OBJECTIVES)})")
        if d not in ("maximize", "minimize"):
            raise UserError(f'{where}: objective {k} = {d!r}; expected "maximize" or "minimize"')
    if "top1" not in obj:
        raise UserError(f"{where}: the objectives must include top1")
    t = raw["target"]
    _int(t["resolution"], f"{where}: target.resolution", lo=8)
    _int(t["num_classes"], f"{where}: target.num_classes", lo=2)
    from searchspace.cost import CONVENTIONS

    if t["convention"] not in CONVENTIONS:
        raise UserError(
            f"{where}: target.convention {t['convention']!r} unknown (known: {', '.join(CONVENTIONS)})"
        )
    try:  # trainers.Fidelity holds the rules of every [fidelity] key
        fidelity = Fidelity.from_dict(raw["fidelity"])
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    d = raw["data"]
    if d["root"] is not None and not isinstance(d["root"], str):
        raise UserError(f"{where}: data.root: expected a path string, got {d['root']!r}")
    if d["root"] == "":
        d["root"] = None  # "" = the bundled Imagenette-64
    _int(d["num_classes"], f"{where}: data.num_classes", lo=2, none_ok=True)
    _int(d["max_per_class"], f"{where}: data.max_per_class", none_ok=True)
    _int(d["max_val_per_class"], f"{where}: data.max_val_per_class", none_ok=True)
    if d["classes_file"] is not None and not isinstance(d["classes_file"], str):
        raise UserError(f"{where}: data.classes_file: expected a path string, got {d['classes_file']!r}")
    b = raw["budget"]
    _int(b["trials"], f"{where}: budget.trials (trials)")
    _int(b["concurrency"], f"{where}: budget.concurrency", lo=0)
    if b["minutes"] is not None:
        _num(b["minutes"], f"{where}: budget.minutes (minutes)")
        if not math.isfinite(b["minutes"]):
            raise UserError(
                f"{where}: budget.minutes (minutes): expected a finite number, got {b['minutes']!r}"
            )
    if (
        not isinstance(b["confirm"], (int, float))
        or isinstance(b["confirm"], bool)
        or not 0 <= b["confirm"] < 1
    ):
        raise UserError(f"{where}: budget.confirm: expected a share >= 0 and < 1, got {b['confirm']!r}")
    s = raw["sampler"]
    if s["name"] not in SAMPLERS:
        raise UserError(f"{where}: sampler.name {s['name']!r} unknown (known: {', '.join(SAMPLERS)})")
    if s["name"] == "gp":
        import importlib.util

        if (
            importlib.util.find_spec("scipy") is None
        ):  # Optuna's GPSampler optimises its acquisition with scipy
            raise UserError(
                f'{where}: sampler.name "gp" needs scipy, which is not installed (pip install scipy)'
            )
    _int(s["population"], f"{where}: sampler.population", lo=2)
    e = raw["early_stopping"]
    if not isinstance(e["asha"], bool):
        raise UserError(f"{where}: early_stopping.asha: expected true or false, got {e['asha']!r}")
    _int(e["grace_period"], f"{where}: early_stopping.grace_period")
    _int(e["reduction_factor"], f"{where}: early_stopping.reduction_factor", lo=2)
    if e["rule"] not in ES_RULES:
        raise UserError(f"{where}: early_stopping.rule {e['rule']!r} unknown (known: {', '.join(ES_RULES)})")
    for k, v in raw["constraints"].items():
        _limit(v, f"{where}: constraints.{k}")
    ref = raw["references"]
    if not isinstance(ref["evaluate"], bool):
        raise UserError(f"{where}: references.evaluate: expected true or false, got {ref['evaluate']!r}")
    _int(ref["neighbours"], f"{where}: references.neighbours", lo=0)
    if ref["recipe"] not in REFERENCE_RECIPES:
        raise UserError(
            f"{where}: references.recipe: expected "
            + " or ".join(f'"{r}"' for r in REFERENCE_RECIPES)
            + f", got {ref['recipe']!r}"
        )
    table = raw["prior"]["table"]
    if table is not None and (not isinstance(table, str) or not table.strip()):
        raise UserError(f"{where}: prior.table: expected a table name or a CSV path, got {table!r}")
    r = raw["resources"]
    _num(r["cpus_per_trial"], f"{where}: resources.cpus_per_trial")
    if r["gpus_per_trial"] != "auto":
        _num(r["gpus_per_trial"], f"{where}: resources.gpus_per_trial", strict=False)
    cal = raw["calibration"]
    for key in ("designs", "seeds"):
        _int(cal[key], f"{where}: calibration.{key}", lo=0 if key == "designs" else 1)
    if not isinstance(cal["versus"], dict):
        raise UserError(
            f'{where}: calibration.versus: expected a table of overrides, e.g. {{ "fidelity.epochs" = 16 }}'
        )
    if "padding_free" in (raw["space"].get("downsampling") or []) and not _padding_free_fits(
        raw["space"], fidelity.resolution
    ):
        # its unpadded stride-2 convs shrink the map faster: the last stage must keep at least 1 pixel
        raise UserError(
            f"{where}: downsampling 'padding_free' shrinks the map to nothing at fidelity.resolution "
            f"{fidelity.resolution} for backbone {raw['space'].get('backbone', 'resnet50')!r}; raise it"
        )
    # the space last: its own messages already name the field
    try:
        space = SpaceSpec.from_dict(raw["space"])
    except UserError as e:
        raise UserError(f"{where}: [space] {e}") from None
    return StudyConfig(
        name=raw["name"],
        source=source,
        space=space,
        fidelity=fidelity,
        data=DataSpec(**d),
        target=Target(**t),
        directions=tuple(obj.items()),
        **{k: cls(**raw[k]) for k, cls in _TYPED.items() if k != "target"},
        description=raw["description"],
        seed=raw["seed"],
        space_table=raw["space"],
        fidelity_keys=tuple(raw["fidelity"]),
    )


def parse_limit(v, where: str = "limit") -> tuple[float, str | None]:
    """A [constraints] value as (number, None) or (factor, catalog design name): 4.5e9, "1.10 x resnet50"."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
        return float(v), None
    if isinstance(v, str):
        factor, sep, design = (x.strip() for x in v.partition("x"))
        try:
            f = float(factor)
        except ValueError:
            f = None
        if sep and f is not None and f > 0 and design:
            from searchspace import catalog

            catalog.get(design)  # UserError naming the unknown design
            return f, design
    raise UserError(
        f'{where}: expected a positive number or "<factor> x <catalog design>" '
        f'(e.g. "1.10 x resnet50"), got {v!r}'
    )


def _limit(v, where: str) -> None:
    if v is None:
        return
    try:
        parse_limit(v, where)
    except UserError as e:
        raise UserError(f"{where}: {e}" if not str(e).startswith(where) else str(e)) from None


def _padding_free_fits(space: dict, resolution: int) -> bool:
    """Whether the last stage of a padding-free network keeps a map of >= 1 pixel at `resolution`
    (searchspace's one map-size rule); an unknown backbone is left to the [space] check."""
    from searchspace.backbones.specs import BACKBONE_SPECS

    b = BACKBONE_SPECS.get(space.get("backbone", "resnet50"))
    return b is None or b.last_map_size(resolution, "padding_free") >= 1


def to_storable(cfg: StudyConfig) -> dict:
    """The config as JSON-able data, as the study's "config" user attr has always held it (the
    sections' keys, [fidelity] as set by the defaults and the file, [space] as written)."""
    sections = {k: asdict(getattr(cfg, k)) for k in _TYPED}
    out = {
        "description": cfg.description,
        "seed": cfg.seed,
        "objectives": dict(cfg.directions),
        "target": sections["target"],
        "fidelity": {k: getattr(cfg.fidelity, k) for k in cfg.fidelity_keys},
        "data": cfg.protocol["data"],
        **{k: sections[k] for k in DEFAULTS if k in sections and k != "target"},
        "space": cfg.space_table,
        "name": cfg.name,
    }
    return json.loads(json.dumps(out))  # a deep copy, tuples as lists


# -- the README's table of shipped configs ------------------------------------------------------------
README = REPO / "README.md"
README_BEGIN = (
    "<!-- shipped configs: generated by `python -m studies.config --write-readme`; do not edit by hand -->"
)
README_END = "<!-- end of shipped configs -->"


def _width(w: float) -> str:
    f = Fraction(w).limit_denominator(64)
    return str(f.numerator) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"


def readme_row(name: str) -> dict[str, str]:
    """What the README says of one shipped config, each value read from it."""
    from searchspace import catalog, space

    cfg = load(name)
    spec = cfg.space
    d, f = cfg.data, cfg.fidelity
    images = f"{d.max_per_class} train images" if d.max_per_class else "all train images"
    data = "bundled Imagenette-64" if not d.root else d.root
    designs = [d.name for d in catalog.designs() if space.contains(spec, d.genome)]
    return {
        "config": f"`{name}`",
        "searches": cfg.description or "",
        "genomes": f"{space.count(spec):,}",
        "catalog designs inside": ", ".join(designs) or "none",
        "proxy": (
            f"{data}, {d.num_classes} classes x {images}, {_width(f.width)} width, "
            f"{f.resolution} px, {f.epochs} epoch{'s' if f.epochs != 1 else ''}, batch {f.batch_size}"
        ),
        "objectives": ", ".join(o["name"] for o in cfg.objectives),
        "trials": f"{cfg.budget.trials} ({cfg.sampler.name})",
    }


def readme_table() -> str:
    """The README's table of shipped configs, every value read from the configs."""
    rows = [readme_row(n) for n in shipped()]
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r[k].replace("|", "/") for k in head) + " |" for r in rows]
    return "\n".join(lines)


def readme_block(text: str) -> str | None:
    """The table as it stands in the README text (None when the markers are missing)."""
    if README_BEGIN not in text or README_END not in text:
        return None
    return text.split(README_BEGIN, 1)[1].split(README_END, 1)[0].strip("\n")


def main(argv=None) -> int:
    """python -m studies.config [--write-readme]: print the README's table of shipped configs, or
    rewrite it in README.md between its two marker lines (tests/test_studies.py fails when they differ)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv not in ([], ["--write-readme"]):
        print("usage: python -m studies.config [--write-readme]", file=sys.stderr)
        return 2
    if not argv:
        print(readme_table())
        return 0
    text = README.read_text()
    if readme_block(text) is None:
        print(f"error: {README} has no marker lines {README_BEGIN!r} ... {README_END!r}", file=sys.stderr)
        return 2
    head, rest = text.split(README_BEGIN, 1)
    README.write_text(
        head + README_BEGIN + "\n" + readme_table() + "\n" + README_END + rest.split(README_END, 1)[1]
    )
    print(f"wrote the shipped-configs table into {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
