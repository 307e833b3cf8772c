"""`python -m studies.ladder NAME|file.toml`: the same genomes at rungs that raise one knob of the
study's protocol at a time: do the proxy's effects and verdicts hold when the proxy grows?

Each rung is the study's config with a few [fidelity] / [data] keys raised, trained as a benchmark
table of its own (studies.table.build_table: one resumable CSV per rung, `studies/tables/<name>_<rung>.csv`,
every row with its protocol, environment and wall time). The genomes are the same at every rung: a
balanced D-optimal exchange design over the space's stage choices (studies.designed.screen) plus
the published designs inside the space; the seeds 0..k-1 are shared by every rung, so a seed is
one block across the ladder. The default rungs, from the study's own protocol:

    shipped   the protocol as it is (trained again on this machine, so no rung is confounded with it)
    res<2r>   twice the resolution: every stage's maps twice as wide (from the bundled 64 px images
              this is upsampling: twice the pixels, no new detail)
    width<k>  twice the channels (width 1/k) at the same epochs: partly how fast a wider net trains
    train4x   twice the epochs on twice the images per class (4x the optimiser steps)

`--rung NAME:KEY=VALUE,...` replaces them (repeat it; `shipped:` is the protocol as it is). A
killed climb resumes where it stopped: run the same command again. `--dry-run` prints what each rung
would train and what it should cost, and trains nothing. `--merge` writes the rows of every rung
into one table, `studies/tables/<name>.csv`, with a `rung` column (docs/fidelity.md).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from searchspace import catalog
from searchspace.cli import argument_parser, cli_main
from searchspace.errors import UserError

from . import config as config_mod
from . import table as tbl

BUNDLED_RESOLUTION = 64  # the bundled Imagenette-64 images: a larger resolution is upsampled


@dataclass(frozen=True)
class Rung:
    name: str
    overrides: dict = field(default_factory=dict)  # dotted [fidelity] / [data] keys
    note: str = ""

    def config(self, base):
        """The base config with this rung's knobs raised, named `<base>_<rung>` (its table's name)."""
        return config_mod.with_overrides(
            base, {**self.overrides, "name": f"{base.name}_{self.name}"}, f"ladder rung {self.name!r}"
        )


def default_rungs(cfg) -> list[Rung]:
    f, d = cfg.fidelity, cfg.data
    res = 2 * f.resolution
    upsampled = d.root is None and res > BUNDLED_RESOLUTION
    rungs = [
        Rung("shipped", {}, "the study's protocol, trained again on this machine"),
        Rung(
            f"res{res}",
            {"fidelity.resolution": res},
            f"{res} px: every stage's maps twice as wide"
            + (
                f" (upsampled from the bundled {BUNDLED_RESOLUTION} px images: no new detail)"
                if upsampled
                else ""
            ),
        ),
        Rung(
            f"width{1 / (2 * f.width):g}",
            {"fidelity.width": 2 * f.width},
            f"width {2 * f.width:g} at {f.epochs} epochs: partly how fast a wider net trains",
        ),
    ]
    train = {"fidelity.epochs": 2 * f.epochs}
    if d.max_per_class is not None:
        train["data.max_per_class"] = 2 * d.max_per_class
        note = f"{2 * f.epochs} epochs x {2 * d.max_per_class} images per class (4x the steps)"
    else:
        train["fidelity.epochs"] = 4 * f.epochs
        note = f"{4 * f.epochs} epochs on every image (4x the steps)"
    rungs.append(Rung("train4x", train, note))
    return rungs


def parse_rung(text: str) -> Rung:
    """NAME:KEY=VALUE,KEY=VALUE (values read as JSON where they parse: numbers, true, null)."""
    name, sep, rest = text.partition(":")
    if not sep or not name.isidentifier():
        raise UserError(f"--rung {text!r}: expected NAME:KEY=VALUE[,KEY=VALUE...] (NAME a plain word)")
    overrides = {}
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key.split(".")[0] not in ("fidelity", "data"):
            raise UserError(f"--rung {text!r}: {item!r} is not a [fidelity] or [data] KEY=VALUE")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return Rung(
        name, overrides, ", ".join(f"{k}={v}" for k, v in overrides.items()) or "the study's protocol"
    )


def genomes(cfg, n: int) -> tuple[list, dict]:
    """The ladder's genomes: n from the balanced exchange design, then the published designs in the
    space not among them; with the design's balance and largest correlation between factor columns."""
    from . import designed  # pandas and the effects model: only where genomes are chosen (not --merge)

    screen = designed.screen(cfg.space, n=n, seed=cfg.seed)
    keys = {g.key for g in screen}
    published = [d.genome for d in catalog.inside(cfg.space) if d.genome.key not in keys]
    published = list({g.key: g for g in published}.values())
    facts = {
        "design": len(screen),
        "published": len(published),
        "balance": designed.balance(screen),
        "max_correlation": designed.max_correlation(screen),
    }
    return [*published, *screen], facts


def nominal_cost(cfg, base) -> float:
    """Training compute relative to `base`: pixels x channels^2 x epochs x training images."""
    f, b = cfg.fidelity, base.fidelity
    capped = cfg.data.max_per_class and base.data.max_per_class
    images = cfg.data.max_per_class / base.data.max_per_class if capped else 1.0
    return (f.resolution / b.resolution) ** 2 * (f.width / b.width) ** 2 * (f.epochs / b.epochs) * images


def plan(cfg, rungs: list[Rung], n_genomes: int, seeds: int, tables: Path = tbl.TABLE_DIR) -> dict:
    """What the climb trains per rung (runs left, seconds per run measured or scaled), nothing run."""
    order, facts = genomes(cfg, n_genomes)
    want = {(g.key, s) for g in order for s in range(seeds)}
    steps, measured = [], {}
    for r in rungs:
        rcfg = r.config(cfg)
        path = Path(tables) / f"{rcfg.name}.csv"
        rows = tbl.read_rows(path)
        tbl.check_protocol(rows, rcfg, path)
        walls = [float(x["wall_s"]) for x in rows if x.get("wall_s")]
        if walls:
            measured[r.name] = (sum(walls) / len(walls), rcfg)
        have = {(x["genome_key"], int(x["seed"])) for x in rows}
        steps.append({"rung": r, "cfg": rcfg, "csv": path, "left": len(want - have), "rows": len(rows)})
    for s in steps:  # seconds per run: this rung's rows, else a measured rung's scaled by nominal cost
        name = s["rung"].name
        if name in measured:
            s["run_s"], s["how"] = measured[name][0], "measured"
        elif measured:
            ref, (wall, rcfg) = next(iter(measured.items()))
            s["run_s"], s["how"] = wall * nominal_cost(s["cfg"], rcfg), f"scaled from {ref}"
        else:
            s["run_s"], s["how"] = math.nan, "no rows yet"
    return {"order": order, "facts": facts, "steps": steps, "seeds": seeds}


def print_plan(p: dict, concurrency: int, out=print) -> None:
    f = p["facts"]
    out(
        f"ladder: {len(p['order'])} genomes ({f['design']} of a balanced exchange design, largest correlation "
        f"between factor columns {f['max_correlation']:.3f}; {f['published']} published designs) x seeds "
        f"0..{p['seeds'] - 1}, the same at every rung"
    )
    total = 0.0
    for s in p["steps"]:
        eta = s["left"] * s["run_s"] / max(1, concurrency)
        total += 0 if math.isnan(eta) else eta
        out(
            f"  {s['rung'].name:10} {s['rung'].note}\n"
            f"  {'':10} {s['rows']} row(s) in {tbl.relative(s['csv'])}, {s['left']} run(s) left; "
            f"{s['run_s']:.0f} s per run ({s['how']}) -> about {eta / 60:.0f} min at {concurrency} at a time"
        )
    out(f"about {total / 3600:.1f} h of training left in all")


def climb(p: dict, args) -> int:
    """Each rung with runs left, in order; a signal ends the climb after its rung's rows are exported."""
    for i, s in enumerate(p["steps"]):
        if not s["left"]:
            continue
        print(f"rung {i + 1} of {len(p['steps'])}: {s['rung'].name} ({s['rung'].note})", flush=True)
        status = tbl.build_table(
            s["cfg"],
            p["order"],
            p["seeds"],
            s["csv"],
            (Path(args.out).expanduser() if args.out else tbl.REPO / "runs") / tbl.study_name(s["cfg"]),
            args.address,
            overrides={
                "budget.concurrency": args.concurrency,
                "resources.gpus_per_trial": args.gpus_per_trial,
            },
            progress=True,
        )
        if status:
            return status
    return 0


def merge(cfg, rungs: list[Rung], tables: Path, log=print) -> int:
    """Every rung's rows in one CSV, `<tables>/<name>.csv`, with a `rung` column: the given rungs,
    then any other `<name>_<rung>.csv` there (a GPU rung's, bench/gpu_ladder.py). Rows of the ladder's
    genomes in other tables of a rung's exact protocol (the placement table for `shipped`) join that
    rung as what they are: another environment, another table name."""

    tables = Path(tables)
    names = [r.name for r in rungs]
    names += sorted(p.stem.removeprefix(f"{cfg.name}_") for p in tables.glob(f"{cfg.name}_*.csv"))
    rows, columns = [], ["rung"]
    for rung in dict.fromkeys(names):
        own = tbl.read_rows(tables / f"{cfg.name}_{rung}.csv")
        rows += [{"rung": rung, **row} for row in own]
        columns += [c for row in own[:1] for c in row if c not in columns]
    ladder_files = {f"{cfg.name}.csv", *(f"{cfg.name}_{n}.csv" for n in names)}
    by_protocol = {r["protocol"]: r["rung"] for r in rows}
    genomes = {r["genome_key"] for r in rows}
    for other in sorted(p for p in tables.glob("*.csv") if p.name not in ladder_files):
        for row in tbl.read_rows(other):
            if row.get("protocol") in by_protocol and row["genome_key"] in genomes:
                rows.append({"rung": by_protocol[row["protocol"]], **row})
    if not rows:
        raise UserError(
            f"ladder {cfg.name!r}: no rung has rows yet (run python -m studies.ladder {cfg.name})"
        )
    for row in rows:  # rows written before environments were stored are one environment
        row["environment"] = row.get("environment") or "unrecorded"
    out = tables / f"{cfg.name}.csv"
    tbl.write_rows(out, rows, columns)
    log(
        f"ladder {cfg.name}: {len(rows)} row(s) of {len({r['rung'] for r in rows})} rung(s) -> {tbl.relative(out)}"
    )
    return 0


def main(argv=None) -> int:
    ap = argument_parser(prog="python -m studies.ladder", description=__doc__.splitlines()[0])
    ap.add_argument("study", help=f"shipped config ({', '.join(config_mod.shipped())}) or a .toml path")
    ap.add_argument("--rung", action="append", help="NAME:KEY=VALUE,... (repeat; default: see --help)")
    ap.add_argument("--genomes", type=int, default=32, help="genomes of the exchange design (default 32)")
    ap.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 at every rung (default 2)")
    ap.add_argument("--concurrency", type=int, help="trials at the same time (default: the config's)")
    ap.add_argument("--gpus-per-trial", type=float, help="GPUs per trial (default: 1 when Ray sees GPUs)")
    ap.add_argument("--address", help="join a running Ray cluster (e.g. auto)")
    ap.add_argument("--out", help="folder of the rungs' run folders (default: runs/)")
    ap.add_argument("--tables", help="folder of the rungs' CSVs (default: studies/tables)")
    ap.add_argument("--dry-run", action="store_true", help="print each rung's runs and cost; train nothing")
    ap.add_argument(
        "--merge", action="store_true", help="write studies/tables/<name>.csv from the rungs' rows"
    )
    args = ap.parse_args(argv)
    for flag in ("genomes", "seeds"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag}: expected an integer >= 1, got {getattr(args, flag)}")
    if args.concurrency is not None and args.concurrency < 0:
        raise UserError(f"--concurrency: expected an integer >= 0, got {args.concurrency}")
    cfg = config_mod.load(args.study)
    rungs = [parse_rung(r) for r in args.rung] if args.rung else default_rungs(cfg)
    if len({r.name for r in rungs}) < len(rungs):
        raise UserError("--rung: two rungs share a name")
    for r in rungs:
        r.config(cfg)  # a bad key or value: one line before anything runs
    tables = Path(args.tables).expanduser() if args.tables else tbl.TABLE_DIR
    if args.merge:
        return merge(cfg, rungs, tables)
    p = plan(cfg, rungs, args.genomes, args.seeds, tables)
    print_plan(p, args.concurrency or cfg.budget.concurrency or 1)
    if args.dry_run:
        return 0
    return climb(p, args)


if __name__ == "__main__":
    cli_main(main)
