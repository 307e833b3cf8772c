"""`python -m studies.run NAME [flags]`: a multi-objective architecture search distributed by Ray Tune.

NAME is a shipped config (studies/configs/NAME.toml) or a path to a .toml. Everything the user
gave is checked before any storage is opened or created; re-running the same command continues an
interrupted study (finished trials kept, trials of a dead driver requeued, none counted twice).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from searchspace.cli import argument_parser, cli_main
from searchspace.errors import UserError

from . import config as config_mod
from . import storage as st
from .ray_backend import RayBackend, check_address


def parse_args(argv=None) -> argparse.Namespace:
    ap = argument_parser(prog="python -m studies.run", description=__doc__.splitlines()[0])
    ap.add_argument(
        "study", nargs="?", help=f"shipped config ({', '.join(config_mod.shipped())}) or a .toml path"
    )
    ap.add_argument(
        "--list",
        action="store_true",
        help="list the shipped studies: size, published designs inside, description",
    )
    ap.add_argument("--trials", type=int, help="total trials the study should reach")
    ap.add_argument(
        "--minutes",
        type=float,
        help="wall-clock budget of this run; it ends at --trials or this, whichever comes first "
        "(trials still training then are stopped and requeued)",
    )
    ap.add_argument(
        "--sampler",
        help=f"the study's sampler ({', '.join(config_mod.SAMPLERS)}); designed: screen, fit, confirm "
        "(docs/search_design.md)",
    )
    ap.add_argument("--epochs", type=int, help="proxy epochs per trial")
    ap.add_argument("--resolution", type=int, help="proxy training resolution")
    ap.add_argument("--width", type=float, help="proxy width multiplier")
    ap.add_argument(
        "--data-root", help="ImageFolder tree with train/ and val/ (default: bundled Imagenette-64)"
    )
    ap.add_argument("--out", help="run folder (default: runs/<study name>)")
    ap.add_argument("--name", help="study name (default: the config's)")
    ap.add_argument("--storage", help="Optuna storage: an RDB URL (postgresql://...) or a journal file path")
    ap.add_argument(
        "--gpus-per-trial",
        type=float,
        help="GPUs per trial, fractions allowed (default: 1 if the cluster has GPUs)",
    )
    ap.add_argument("--cpus-per-trial", type=float, help="CPUs per trial")
    ap.add_argument("--address", help="join a running Ray cluster (e.g. auto or 10.0.0.1:6379)")
    ap.add_argument(
        "--resume", action="store_true", help="continue an existing study (an error if there is none)"
    )
    ap.add_argument("--seed", type=int, help="seed of the sampler, the data order and the initialisation")
    ap.add_argument(
        "--reference",
        action="store_true",
        help="also evaluate the catalog designs inside the space "
        "(stored in '<name>.references', never seen by the sampler)",
    )
    ap.add_argument(
        "--no-reference",
        action="store_true",
        help="do not evaluate the reference designs, even where the config's [references] evaluate = true",
    )
    ap.add_argument(
        "--recipe",
        choices=("common", "authors"),
        help="which recipe the reference designs train with: common (the searched genomes'; default) or "
        "authors (each design's own, where it has one); overrides [references] recipe (docs/effects.md)",
    )
    ap.add_argument(
        "--seed-known", action="store_true", help="enqueue the catalog designs inside the space as trials"
    )
    ap.add_argument(
        "--concurrency", type=int, help="trials at the same time (default: what the resources allow)"
    )
    ap.add_argument(
        "--asha",
        action="store_true",
        default=None,
        help="early stopping by [early_stopping] rule (default pareto)",
    )
    ap.add_argument(
        "--backend",
        default="ray",
        help="ray (train every trial; default) or table[:PATH]: answer "
        "trials from a benchmark table in seconds (default PATH: studies/tables/<name>.csv)",
    )
    ap.add_argument("--quiet", action="store_true", help="no per-trial lines")
    return ap.parse_args(argv)


def _positive(name, v, kind=int):
    if v is not None and (v <= 0 if kind is float else v < 1):
        raise UserError(f"--{name}: expected a positive {'number' if kind is float else 'integer'}, got {v}")


def prepare(args) -> dict:
    """Every check that needs no storage and no Ray: returns the plan, or raises UserError."""
    for n in ("trials", "epochs", "resolution", "concurrency"):
        _positive(n, getattr(args, n))
    for n in ("width", "cpus_per_trial", "minutes"):
        _positive(n.replace("_", "-"), getattr(args, n), float)
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        raise UserError(f"--gpus-per-trial: expected >= 0, got {args.gpus_per_trial}")
    if args.seed is not None and args.seed < 0:
        raise UserError(f"--seed: expected >= 0, got {args.seed}")
    cfg = config_mod.load(
        args.study,
        {
            "budget.trials": args.trials,
            "budget.minutes": args.minutes,
            "sampler.name": args.sampler,
            "fidelity.epochs": args.epochs,
            "fidelity.resolution": args.resolution,
            "fidelity.width": args.width,
            "data.root": args.data_root,
            "budget.concurrency": args.concurrency,
            "resources.cpus_per_trial": args.cpus_per_trial,
            "resources.gpus_per_trial": args.gpus_per_trial,
            "early_stopping.asha": args.asha,
            "references.recipe": args.recipe,
            "seed": args.seed,
        },
    )
    if args.name:
        cfg = config_mod.with_overrides(cfg, {"name": args.name}, "--name")
    root = cfg.data.root
    if root:
        p = Path(root).expanduser()
        if not p.is_dir():
            raise UserError(f"data root {root!r}: no such folder")
        for split in ("train", "val"):
            if not (p / split).is_dir():
                raise UserError(f"data root {root!r}: no {split}/ folder (expected {split}/<class>/<image>)")
        cfg = config_mod.with_overrides(cfg, {"data.root": str(p.resolve())})
    run_dir, url = st.locate(args.out, cfg.name, args.storage)
    if args.address:
        check_address(args.address)
    if args.resume and "://" not in url and not Path(url).is_file():
        raise UserError(
            f"--resume: no study storage at {st.describe(url)} (run without --resume to start one)"
        )
    backend = _backend(args, cfg)
    cfg = _checked_prior(cfg, args.study)
    return {"cfg": cfg, "run_dir": run_dir, "url": url, "backend": backend}


def _checked_prior(cfg, study: str):
    """The config's [prior] table, checked before anything is written. When flags (--epochs,
    --data-root, ...) changed the protocol the file pairs it with, the table no longer measures what
    this run measures: the run goes on without it and says so."""
    from dataclasses import replace

    from .table import prior_csv

    if cfg.prior.table is None:
        return cfg
    as_written = config_mod.load(study)
    if as_written.protocol != cfg.protocol and as_written.prior == cfg.prior:
        prior_csv(as_written)  # the file's own pairing must still hold
        print(
            f"note: prior.table {cfg.prior.table!r} left out: the flags changed the protocol it was measured with",
            file=sys.stderr,
        )
        return replace(cfg, prior=config_mod.Prior())
    prior_csv(cfg)
    return cfg


def _backend(args, cfg):
    """The backend --backend asks for: Ray Tune (on --address), or a studies.table_backend.TableBackend
    answering from a table (table[:PATH])."""
    kind, _, path = (args.backend or "ray").partition(":")
    if kind == "ray" and not path:
        return RayBackend(args.address)
    if kind != "table":
        raise UserError(f"--backend {args.backend!r}: expected ray, table or table:PATH")
    if args.address:
        raise UserError("--backend table runs in this process; --address (a Ray cluster) does not apply")
    references = not args.no_reference and (args.reference or cfg.references.evaluate)
    if references and cfg.references.recipe != "common":
        raise UserError(
            f'--backend table: a table holds results under the common recipe; references.recipe = "{cfg.references.recipe}" '
            "needs --backend ray (or --no-reference)"
        )
    from .table import default_csv
    from .table_backend import TableBackend

    return TableBackend.open(Path(path).expanduser() if path else default_csv(cfg.name), cfg)


def _toml(d: dict) -> str:
    """A small TOML writer for the config (scalars, lists, inline tables, one level of tables)."""

    def val(v):
        if v is None:
            return '""'
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return (
            "{ "
            + ", ".join(f"{json.dumps(k) if not k.isidentifier() else k} = {val(x)}" for k, x in v.items())
            + " }"
        )

    top = [f"{k} = {val(v)}" for k, v in d.items() if not isinstance(v, dict) and v is not None]
    tables = [
        f"\n[{k}]\n" + "\n".join(f"{kk} = {val(vv)}" for kk, vv in v.items() if vv is not None)
        for k, v in d.items()
        if isinstance(v, dict)
    ]
    return "\n".join(top) + "\n" + "\n".join(tables) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _open_study(storage, name: str, cfg, resume: bool, ref: bool = False):
    """Load the study if it exists (checking it was run with the same protocol), else None."""
    study = st.find_study(storage, name)
    if study is None:
        if resume and not ref:
            raise UserError(f"--resume: no study {name!r} in the storage")
        return None
    for key, want in (
        ("objectives", cfg.objectives),
        ("fidelity", cfg.protocol["fidelity"]),
        ("target", cfg.protocol["target"]),
    ):
        have = study.user_attrs.get(key)
        if have is not None and have != want:
            raise UserError(
                f"study {name!r} was run with {key} {json.dumps(have)}; this run asks for "
                f"{json.dumps(want)} (use --name for a new study)"
            )
    # The space (a changed choice list breaks Optuna's distributions inside Ray), the data subset and
    # the seed. Not the sampler: switching it, or its population, on resume is legitimate and safe.
    stored_space = (study.user_attrs.get("config") or {}).get("space")
    for key, have, want in (
        ("[space]", stored_space, cfg.space_table),
        ("[data]", study.user_attrs.get("data"), cfg.protocol["data"]),
        ("seed", study.user_attrs.get("seed"), cfg.seed),
    ):
        want = json.loads(json.dumps(want))  # as stored (tuples -> lists)
        if have is not None and have != want:
            diff = (
                ", ".join(sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k)))
                if isinstance(have, dict) and isinstance(want, dict)
                else f"stored {have}, asked {want}"
            )
            raise UserError(
                f"study {name!r}: {key} differs from the stored study ({diff}); use --name for a new study"
            )
    return study


def list_studies(out=print) -> None:
    """One block per shipped config: name, genomes in its space, the catalog designs inside, description."""
    from searchspace import catalog, space

    for name in config_mod.shipped():
        cfg = config_mod.load(name)
        spec = cfg.space
        inside = [d.name for d in catalog.designs() if space.contains(spec, d.genome)]
        out(f"{name:24} {space.count(spec):>14,} genomes  {cfg.description}")
        out(f"{'':24} designs: {', '.join(inside) or '-'}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        list_studies()
        return 0
    if not args.study:
        raise UserError(
            "give a study (a shipped config name or a .toml path), or --list to see the shipped ones"
        )
    plan = prepare(args)  # nothing has been opened or written up to here
    cfg, run_dir, url, backend = plan["cfg"], plan["run_dir"], plan["url"], plan["backend"]
    t_start = time.perf_counter()
    from . import driver  # Optuna, Ray and analysis only once the flags passed (bad input fails fast)
    from .session import Session, StopWhen

    # A cluster given with --address is joined before anything is written: if it cannot be joined,
    # the run folder and the storage are as they were.
    if args.address:
        backend.start()
    # From here a first Ctrl-C or SIGTERM ends the run cleanly: summary, report, status 130 / 143
    # (installed after ray.init, which sets a SIGTERM handler of its own).
    stop = StopWhen(cfg.budget.minutes).reset().install()
    try:
        with Session(url, run_dir, backend, stop, quiet=args.quiet) as session:
            _check_stored(session.storage, cfg, args.resume)
            _write_atomic(
                run_dir / "config.toml",
                f"# {cfg.name}: effective config (from {cfg.source})\n" + _toml(config_mod.to_storable(cfg)),
            )
            summary = driver.run(cfg, session, args)
    finally:
        backend.close()
    summary["wall_s"] = time.perf_counter() - t_start
    driver.print_summary(cfg, st.open_or_create(url), url, run_dir, summary)
    return stop.exit_status()


def _check_stored(storage, cfg, resume: bool) -> None:
    """The stored study and its references, if any, were run with this protocol (nothing written yet)."""
    _open_study(storage, cfg.name, cfg, resume)
    _open_study(storage, cfg.name + ".references", cfg, resume, ref=True)


if __name__ == "__main__":
    cli_main(main)
