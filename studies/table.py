"""A benchmark table: every genome of a small space trained under one protocol, with several seeds.

    python -m studies.table build placement_table [--seeds 2] [--limit N]   # train what is missing
    python -m studies.table export placement_table                          # write the shipped CSV

`build` enumerates the config's space (published designs first, then the rest in a seeded random
order, so a partial table is a uniform sample of the space that holds every published design),
enqueues each (genome, seed) that is neither in the shipped CSV nor already in the run folder's
storage into the Optuna study `<name>.table`, and trains them with the project's own machinery: Ray
Tune, studies.search.StudySearch over a RandomSampler (which asks the enqueued trials first) and
studies.trainable.run_trial with a per-trial seed and top-1/top-5 evaluated after every epoch. A
killed build resumes: rerun the command (studies.storage.recover requeues the dead driver's trials).

`export` merges the storage's finished trials into the CSV (one row per genome and seed; rows
already in the CSV are kept as they are), so the CSV in the repository is the table's checkpoint:
a fresh checkout resumes from it. See docs/placement_table.md.
"""

from __future__ import annotations

import contextlib
import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

from searchspace import catalog
from searchspace.cli import argument_parser, cli_main
from searchspace.cost import stagewise
from searchspace.errors import UserError
from trainers import checksum
from trainers.record import TRAINED, Status

from . import config as config_mod
from .config import REPO, TABLE_DIR, default_csv, prior_path
from .session import StopWhen

CONVENTIONS = ("paper", "full")  # costs stored for each (the target's resolution and classes)
META = ("table", "genome_key", "seed", "design", "menu")
TAIL = (
    "top1",
    "top5",
    "status",
    "wall_s",
    "train_s",
    "device",
    "environment",
    "device_model",
    "capability",
    "code",
    "protocol",
    "torch",
    "optuna",
    "ray",
    "trial_number",
    "genome",
)


def protocol(cfg) -> dict:
    """What a row's accuracy depends on besides the genome and the seed; rows of one table share it."""
    return dict(cfg.protocol)


def protocol_text(cfg) -> str:
    return json.dumps(protocol(cfg), sort_keys=True, separators=(",", ":"))


def columns(epochs: int) -> list[str]:
    costs = [f"{m}_{c}" for c in CONVENTIONS for m in ("params", "flops", "activations")]
    curves = [f"{k}_e{e}" for k in ("top1", "top5") for e in range(1, epochs + 1)]
    return [*META, *costs, "epochs", *curves, *TAIL]


def versions() -> dict:
    import optuna
    import ray
    import torch

    return {"torch": torch.__version__, "optuna": optuna.__version__, "ray": ray.__version__}


# -- the space, in generation order ---------------------------------------------------------------
def generation_order(cfg) -> list:
    """Every genome of the space: the published designs first, then the rest shuffled by the config's seed."""
    from searchspace import space

    spec = cfg.space
    everything = space.enumerate_genomes(spec, limit=space.count(spec))
    first = []
    for d in catalog.inside(spec):
        if d.genome.key not in {g.key for g in first}:
            first.append(d.genome)
    keys = {g.key for g in first}
    rest = sorted((g for g in everything if g.key not in keys), key=lambda g: g.key)
    random.Random(cfg.seed).shuffle(rest)
    return first + rest


def pick_genomes(order: list, names: str, cfg) -> list:
    """The genomes of `order` named in a comma-separated list of genome keys or catalog design names."""
    by_name = {d.name: d.genome.key for d in catalog.designs()}
    given = [n.strip() for n in names.split(",") if n.strip()]
    wanted = {by_name.get(n, n) for n in given}
    known = {g.key for g in order}
    missing = [n for n in given if by_name.get(n, n) not in known]
    if missing:
        raise UserError(
            f"--genomes: {', '.join(missing)} not in the space of table {cfg.name!r} ({cfg.source})"
        )
    return [g for g in order if g.key in wanted]


def menu_label(spec, genome) -> str:
    """The genome as its per-stage menu items ("none | none | dam@after_conv2:r16 | ...")."""
    from searchspace import space

    params = space.to_params(genome, spec)
    out = []
    for i, st in enumerate(genome.stages):
        items = spec.stage_menus[i] if spec.stage_menus else ()
        if f"s{i}_menu" in params:
            out.append(params[f"s{i}_menu"])
        elif len(items) == 1:
            out.append(items[0])
        else:
            out.append(",".join(f"{p.type}@{p.position}:r{p.r}" for p in st.plugins) or "none")
    return " | ".join(out)


# -- the CSV ----------------------------------------------------------------------------------------
def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    try:
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"table {str(path)!r}: cannot read ({e})") from None


def write_rows(path: Path, rows: list[dict], fields: list[str]) -> None:
    """The table's CSV, then its sha256 beside it (trainers.checksum: checked where it is a prior)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    tmp.replace(path)
    checksum.write(path)


def check_protocol(rows: list[dict], cfg, path: Path) -> None:
    want = protocol_text(cfg)
    for r in rows:
        if r.get("protocol") != want:
            raise UserError(
                f"table {str(path)!r}: row {r.get('genome_key')}/seed {r.get('seed')} was made with protocol "
                f"{r.get('protocol')}; config {cfg.name!r} asks for {want} (a table holds one protocol: "
                "write a new table with --csv)"
            )


def prior_csv(cfg) -> Path | None:
    """The CSV of the config's [prior] table, checked whole before anything is written: its sha256
    against the one shipped beside it (where there is one: a user's own table has none), every row
    complete and readable by the effects model, and made with the config's protocol (prior runs
    measured another way would bias the model)."""
    from effects import runs_from_table

    name, path = cfg.prior.table, prior_path(cfg)
    if path is None:
        return None
    where = f"prior.table {name!r}"
    if path.is_file():
        checksum.check(path, where if relative(path) == name else f"{where} ({relative(path)})")
    rows = read_rows(path)
    cut = next((i for i, r in enumerate(rows, 1) if None in r or None in r.values()), None)
    if cut is not None:
        raise UserError(
            f"{where}: row {cut} lacks some of the header's {len(rows[0])} fields; the file is cut or damaged"
        )
    rows = [r for r in rows if r.get("status") == Status.OK]
    if not rows:
        shipped = ", ".join(sorted(p.stem for p in TABLE_DIR.glob("*.csv")))
        raise UserError(
            f"prior.table {name!r}: no table rows at {relative(path)} (shipped tables: {shipped})"
        )
    want = protocol_text(cfg)
    other = next((r for r in rows if r.get("protocol") != want), None)
    if other is not None:
        raise UserError(
            f"prior.table {name!r}: row {other.get('genome_key')}/seed {other.get('seed')} was made with protocol "
            f"{other.get('protocol')}; config {cfg.name!r} measures with {want} (a prior must share the protocol)"
        )
    try:
        runs_from_table(path)  # what the effects model will read at the run's end
    except UserError as e:
        why = str(e).removeprefix(f"--table {str(path)!r}: ")
        raise UserError(f"{where}: {why}; the file is cut or damaged") from None
    return path


# -- costs ------------------------------------------------------------------------------------------
_COST_CACHE: dict = {}  # (genome key, convention, resolution, classes) -> counts; export loads/saves it


def _cost(genome, conv: str, cfg) -> dict:
    import searchspace

    t = cfg.target
    key = f"{genome.key}/{conv}/{t.resolution}/{t.num_classes}"
    if key not in _COST_CACHE:
        c = searchspace.cost(genome, convention=conv, resolution=t.resolution, num_classes=t.num_classes)
        _COST_CACHE[key] = {m: getattr(c, m) for m in ("params", "flops", "activations")}
    return _COST_CACHE[key]


def stagewise_cost(genome, conv: str, cfg) -> dict:
    """searchspace.cost.stagewise under convention `conv` (checked on every exported row against the
    trial's own direct count, see costs()): 16 fvcore traces for the 480-genome table."""
    return stagewise(genome, lambda g: _cost(g, conv, cfg))


def costs(genome, cfg, direct: dict, log=print) -> dict:
    """Params / FLOPs / activations of the full-size target under each convention.

    `direct`: the trial's own counts under the study's convention. The others are stagewise_cost,
    trusted only if stagewise_cost reproduces `direct` exactly; otherwise counted directly."""
    conv = cfg.target.convention
    out = {f"{m}_{conv}": int(direct[m]) for m in ("params", "flops", "activations")}
    exact = stagewise_cost(genome, conv, cfg) == {
        m: int(direct[m]) for m in ("params", "flops", "activations")
    }
    if not exact:
        log(f"  {genome.key}: stagewise counts differ from the trial's; counting directly")
    for c in CONVENTIONS:
        if c != conv:
            got = stagewise_cost(genome, c, cfg) if exact else _cost(genome, c, cfg)
            out.update({f"{m}_{c}": v for m, v in got.items()})
    return out


# -- build ------------------------------------------------------------------------------------------
def study_name(cfg) -> str:
    return f"{cfg.name}.table"


def _have(study) -> set[tuple[str, int]]:
    """(genome key, seed) pairs done, running or waiting in the storage (failed ones are retried)."""
    from optuna.trial import TrialState

    have = set()
    for t in study.get_trials(deepcopy=False):
        seed = t.user_attrs.get("table_seed")
        if seed is None:
            continue
        if t.state == TrialState.COMPLETE and t.user_attrs.get("status") in TRAINED:
            have.add((t.user_attrs["genome_key"], int(seed)))
        elif t.state in (TrialState.WAITING, TrialState.RUNNING):
            key = t.user_attrs.get("table_key")
            have.add((key, int(seed)))
    return have


def build(args) -> int:
    cfg = config_mod.load(args.study)
    if args.seeds < 1:
        raise UserError(f"--seeds: expected an integer >= 1, got {args.seeds}")
    if args.concurrency is not None and args.concurrency < 0:
        raise UserError(f"--concurrency: expected an integer >= 0, got {args.concurrency}")
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        raise UserError(f"--gpus-per-trial: expected >= 0, got {args.gpus_per_trial}")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit: expected an integer >= 1, got {args.limit}")
    order = generation_order(cfg)
    if args.limit:
        order = order[: args.limit]
    if args.genomes:
        order = pick_genomes(order, args.genomes, cfg)
    return build_table(
        cfg,
        order,
        args.seeds,
        Path(args.csv) if args.csv else default_csv(cfg.name),
        Path(args.out or REPO / "runs" / study_name(cfg)).expanduser().resolve(),
        args.address,
        overrides={"budget.concurrency": args.concurrency, "resources.gpus_per_trial": args.gpus_per_trial},
        export=not args.no_export,
    )


def build_table(
    cfg,
    genomes: list,
    seeds: int,
    csv_path: Path,
    run_dir: Path,
    address: str | None = None,
    overrides: dict | None = None,
    export: bool = True,
    progress: bool = False,
) -> int:
    """Train every (genome, seed 0..seeds-1) of `genomes` that is neither in the CSV nor in the run
    folder's storage, through a studies.session.Session on Ray (`address`: a cluster to join); export
    the rows to the CSV. Returns the exit status: 0, or 130 / 143 when a signal stopped it (what was
    done is exported, the stopped trials requeued).
    `overrides` change how it runs (concurrency, GPUs per trial), never what is stored; `progress`:
    a line per trial with the count and the ETA."""
    from optuna.trial import TrialState

    from searchspace import space

    # Ray and Optuna only where trials run: reading a table (the table backend, bench/gpu_ladder.py on
    # a GPU machine without them) imports this module too
    from .ray_backend import RayBackend
    from .search import SamplerSpec, StudySearch
    from .session import Session, record_config

    spec = cfg.space
    rows = read_rows(csv_path)
    check_protocol(rows, cfg, csv_path)
    url = str(run_dir / "study.journal")
    shipped = {(r["genome_key"], int(r["seed"])) for r in rows}
    stop = StopWhen().reset()  # Ctrl-C / SIGTERM: export what is done, then status 130 / 143
    with Session(url, run_dir, RayBackend(address), stop) as session:
        log = session.log
        study = session.open(study_name(cfg), [o["direction"] for o in cfg.objectives])
        record_config(study, cfg)
        study.set_user_attr("table", {"name": cfg.name, "protocol": protocol(cfg)})
        requeued = session.recover(study)
        if requeued:
            log(f"resuming: trial(s) {requeued} of a stopped driver requeued")
        have = _have(study) | shipped
        todo = [(g, s) for g in genomes for s in range(seeds) if (g.key, s) not in have]
        for g, s in todo:
            study.enqueue_trial(
                space.to_params(g, spec),
                user_attrs={"table_seed": s, "table_key": g.key},
                skip_if_exists=False,
            )
        waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        log(
            f"table {cfg.name}: {space.count(spec)} genomes in the space, {len(genomes)} targeted x {seeds} seed(s); "
            f"{len(shipped)} row(s) in {relative(csv_path)}, {len(todo)} enqueued now, {waiting} waiting; storage {relative(url)}"
        )
        if waiting:
            # after the study's attrs: these flags change how it runs, not what is stored
            cfg = config_mod.with_overrides(cfg, overrides or {})
            res = session.start(cfg)
            attrs = {
                "fidelity": cfg.protocol["fidelity"],
                "seed": cfg.seed,
                "reference": None,
                "versions": versions(),
            }
            search = StudySearch(
                TableSpace(spec, session.driver_id),
                cfg.objectives,
                study.study_name,
                url,
                SamplerSpec("random", cfg.seed),
                cfg.fidelity.epochs,
                attrs,
                log,
            )
            log(f"training {waiting} trial(s), up to {res['concurrency']} at a time on {res['device']}")
            total = len(genomes) * seeds
            if progress:
                search.progress = session.progress(total, total - waiting, cfg.name)
            with search.progress or contextlib.nullcontext():
                # every epoch's top-1/top-5 is a column
                session.run(cfg, search, waiting, "table", ctx_overrides={"evaluate_every_epoch": True})
    if session.stopped:
        log(f"{stop.reason}: trial(s) {session.stopped} stopped and requeued")
    if export:
        export_rows(cfg, url, csv_path, log)
    return stop.exit_status()


class TableSpace:
    """The define-by-run space of studies.search.GenomeSpace, plus the table's per-trial seed (set at enqueue)."""

    def __init__(self, spec, driver: str | None = None):
        from .search import GenomeSpace

        self.inner = GenomeSpace(spec, driver)

    def __call__(self, trial) -> dict:
        return self.ask(trial)[1]

    def ask(self, trial):
        genome, out = self.inner.ask(trial)
        seed = trial.user_attrs.get("table_seed")
        if seed is not None:
            out["seed"] = int(seed)
        return genome, out


# -- export -----------------------------------------------------------------------------------------
def export_rows(cfg, url: str, csv_path: Path, log=print) -> list[dict]:
    """Merge the storage's finished table trials into the CSV; returns all rows."""
    from optuna.trial import TrialState

    from searchspace import Genome

    from . import storage as st

    rows = read_rows(csv_path)
    check_protocol(rows, cfg, csv_path)
    cache = Path(url).with_name("costs.json") if "://" not in url else None  # fvcore traces are slow: kept
    if cache and cache.is_file():
        _COST_CACHE.update(json.loads(cache.read_text()))
    spec = cfg.space
    have = {(r["genome_key"], int(r["seed"])) for r in rows}
    known_costs = {
        r["genome_key"]: {
            k: r[k]
            for k in r
            if k.split("_")[0] in ("params", "flops", "activations") and k.endswith(CONVENTIONS)
        }
        for r in rows
    }
    names = {d.genome.key: d.name for d in catalog.inside(spec)}
    epochs = cfg.fidelity.epochs
    proto = protocol_text(cfg)
    study = (
        st.find_study(st.open_or_create(url), study_name(cfg)) if Path(url).exists() or "://" in url else None
    )
    new = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if study else []:
        a = t.user_attrs
        if a.get("table_seed") is None or a.get("status") not in TRAINED:
            continue
        pair = (a["genome_key"], int(a["table_seed"]))
        if pair in have:
            continue
        have.add(pair)
        g = Genome.from_json(a["genome"])
        if g.key not in known_costs:
            known_costs[g.key] = costs(g, cfg, a, log)
        c = known_costs[g.key]
        top1s, top5s = a.get("top1_per_epoch") or [], a.get("top5_per_epoch") or []
        if len(top1s) != epochs:
            log(f"  trial {t.number}: {len(top1s)} per-epoch values for {epochs} epochs; left out")
            continue
        row = {
            "table": cfg.name,
            "genome_key": g.key,
            "seed": pair[1],
            "design": names.get(g.key, ""),
            "menu": menu_label(spec, g),
            **c,
            "epochs": epochs,
            **{f"top1_e{e + 1}": v for e, v in enumerate(top1s)},
            **{f"top5_e{e + 1}": v for e, v in enumerate(top5s)},
            "top1": a["top1"],
            "top5": a.get("top5"),
            "status": a["status"],
            "wall_s": round(a.get("wall_s") or 0, 2),
            "train_s": round(a.get("train_s") or 0, 2),
            "device": a.get("device"),
            **_environment_columns(a.get("environment")),
            "protocol": proto,
            **(a.get("versions") or {}),
            "trial_number": t.number,
            "genome": g.to_json(),
        }
        new.append(row)
    order = {g.key: i for i, g in enumerate(generation_order(cfg))}
    rows = sorted(rows + new, key=lambda r: (order.get(r["genome_key"], len(order)), int(r["seed"])))
    write_rows(csv_path, rows, columns(epochs))
    if cache and cache.parent.is_dir():
        cache.write_text(json.dumps(_COST_CACHE))
    log(f"table {cfg.name}: {len(rows)} row(s) ({len(new)} new) -> {relative(csv_path)}")
    return rows


def _environment_columns(env: dict | None) -> dict:
    from trainers.environment import key

    env = env or {}
    return {"environment": key(env), **{k: env.get(k) for k in ("device_model", "capability", "code")}}


def export(args) -> int:
    cfg = config_mod.load(args.study)
    csv_path = Path(args.csv) if args.csv else default_csv(cfg.name)
    run_dir = Path(args.out or REPO / "runs" / study_name(cfg)).expanduser().resolve()
    export_rows(cfg, str(run_dir / "study.journal"), csv_path)
    return 0


def relative(p) -> str:
    p = Path(p).resolve()
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


# -- loading a table (the table backend, the strategy bench, tests) ----------------------------------
@dataclass
class Table:
    """A table in memory: per genome key, its rows (one per seed), with the curves as lists."""

    name: str
    path: Path
    rows: dict  # genome key -> list of row dicts (seed order)
    epochs: int
    protocol: dict

    @classmethod
    def load(cls, path: str | Path, cfg=None) -> Table:
        path = Path(path)
        if not path.is_file():
            raise UserError(
                f"table {str(path)!r}: no such file (build it: python -m studies.table build NAME)"
            )
        raw = read_rows(path)
        if not raw:
            raise UserError(f"table {str(path)!r}: no rows")
        if cfg is not None:
            check_protocol(raw, cfg, path)
        try:
            epochs = int(raw[0]["epochs"])
            by_key: dict = {}
            for r in raw:
                row = dict(r)
                row["seed"] = int(r["seed"])
                row["top1_curve"] = [float(r[f"top1_e{e}"]) for e in range(1, epochs + 1)]
                row["top5_curve"] = [
                    float(r[f"top5_e{e}"]) if r.get(f"top5_e{e}") else None for e in range(1, epochs + 1)
                ]
                for k in ("top1", "wall_s", "train_s"):
                    row[k] = float(r[k])
                for c in CONVENTIONS:
                    for m in ("params", "flops", "activations"):
                        row[f"{m}_{c}"] = int(r[f"{m}_{c}"])
                by_key.setdefault(r["genome_key"], []).append(row)
        except (KeyError, ValueError, TypeError) as e:
            raise UserError(f"table {str(path)!r}: malformed ({type(e).__name__}: {e})") from None
        for v in by_key.values():
            v.sort(key=lambda r: r["seed"])
        return cls(raw[0]["table"], path, by_key, epochs, json.loads(raw[0]["protocol"]))

    def complete(self, seeds: int | None = None) -> dict:
        """Genomes with every seed the table has most often (a partial table's finished genomes)."""
        if seeds is None:
            counts = [len(v) for v in self.rows.values()]
            seeds = max(set(counts), key=counts.count)
        return {k: v for k, v in self.rows.items() if len(v) >= seeds}

    def mean(self, key: str, field: str = "top1") -> float:
        rows = self.rows[key]
        return sum(r[field] for r in rows) / len(rows)


def main(argv=None) -> int:
    ap = argument_parser(prog="python -m studies.table", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("build", "export"):
        p = sub.add_parser(name)
        p.add_argument("study", help="the table's study config (e.g. placement_table)")
        p.add_argument("--csv", help="the table file (default: studies/tables/<name>.csv)")
        p.add_argument("--out", help="run folder with the table's storage (default: runs/<name>.table)")
        if name == "build":
            p.add_argument("--seeds", type=int, default=2, help="seeds per genome (0 .. N-1)")
            p.add_argument("--limit", type=int, help="only the first N genomes of the generation order")
            p.add_argument(
                "--genomes",
                help="only these genomes: comma-separated keys or catalog names (more seeds for some)",
            )
            p.add_argument(
                "--concurrency",
                type=int,
                help="trials at the same time (default: the config's; 0 = what the resources hold)",
            )
            p.add_argument(
                "--gpus-per-trial",
                type=float,
                help="GPUs per trial, fractions pack trials (default: 1 when Ray sees GPUs)",
            )
            p.add_argument("--address", help="join a running Ray cluster (e.g. auto)")
            p.add_argument("--no-export", action="store_true", help="leave the CSV alone when done")
    args = ap.parse_args(argv)
    return build(args) if args.command == "build" else export(args)


if __name__ == "__main__":
    cli_main(main)
