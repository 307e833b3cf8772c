"""What finished study runs found: per published design, and per run (epochs spent, front hypervolume).

    python bench/rediscovery_runs.py RUN_DIR [RUN_DIR ...]
    python bench/rediscovery_runs.py --quick    # seconds: a smoke_table run answered by its table

For each run folder (a studies.run --out): the wall time is not stored, so pass it in the log;
this prints the trials counted, skipped (infeasible) and pruned, the epochs spent training, the
lowest-FLOPs trial on the front, and the front's hypervolume over (top-1, FLOPs) against one
reference point shared by every run given (top-1 0, the largest FLOPs seen in any of them), so
runs of one study compare. Then, per published design inside the space: its proxy top-1 and
FLOPs (the '<name>.references' study), the best searched top-1 at no more FLOPs, the verdict
(analysis.rediscovery), the nearest searched genome's distance, and after how many trained trials
the design itself or a trial equalling or dominating it was first found.

The proxy's noise: with V validation images a top-1 has a binomial standard error of about
sqrt(p (1 - p) / V); seed-to-seed noise of the whole protocol is larger (see studies.calibrate
where present). Differences under two standard errors are reported as within noise.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np

from analysis import completed, hypervolume, load_study, rediscovery
from effects import pareto_mask
from trainers.record import Status


def _first_found(design_vals, design_key, searched, dirs) -> int | None:
    """1-based position among trained searched trials (in trial order) of the first that is the design or
    equals / dominates its proxy values."""
    trained = searched[
        searched["status"].isin([Status.OK, Status.PRUNED, Status.DIVERGED])
        | (searched["state"] == "COMPLETE")
    ]
    trained = trained[trained["status"] != Status.INFEASIBLE].sort_values("number")
    p = np.array([-design_vals[0], design_vals[1]])
    for i, (_, r) in enumerate(trained.iterrows(), 1):
        if r.get("genome_key") == design_key:
            return i
        if r["state"] == "COMPLETE" and r["status"] == Status.OK:
            q = np.array([-r["top1"], r["flops"]])
            if (q <= p).all():
                return i
    return None


def main(run_dirs: list[str]) -> None:
    frames = [load_study(d) for d in run_dirs]
    flops_ref = max(float(completed(df)["flops"].max()) for df in frames if len(completed(df)))
    for d, df in zip(run_dirs, frames):
        search = df[df["study"] == "search"]
        done = completed(df)
        epochs = int(search["epochs_completed"].fillna(0).sum())
        status = search["status"].value_counts().to_dict()
        front = (
            done[pareto_mask(done[["top1", "flops"]].to_numpy(float), ["maximize", "minimize"])]
            if len(done)
            else done
        )
        hv = hypervolume(
            done[["top1", "flops"]].to_numpy(float), ["maximize", "minimize"], [0.0, flops_ref * 1.0001]
        )
        print(
            f"\n{d}: study {df.attrs['study_name']}: {len(search)} searched trial(s) {status}; "
            f"{epochs} epochs trained; front {len(front)} trial(s); hypervolume {hv / 1e9:.4f} (top-1 x GFLOPs, "
            f"ref top-1 0, {flops_ref / 1e9:.3f} G)"
        )
        if len(front):
            low = front.sort_values("flops").iloc[0]
            print(
                f"  lowest-FLOPs front trial: #{int(low['number'])} {low['flops'] / 1e9:.3f} G top-1 {low['top1']:.3f}"
                f"  {low['genome_summary']}"
            )
        val = (df.attrs.get("config") or {}).get("data", {}).get("max_val_per_class")
        classes = (df.attrs.get("config") or {}).get("data", {}).get("num_classes")
        red = rediscovery(df)
        if red.empty:
            continue
        print(
            f"  {'design':24} {'proxy':>6} {'GFLOPs':>7} {'best<=F':>8} {'margin':>7} {'verdict':16} {'dist':>5} {'found@':>6}"
        )
        for r in red.to_dict("records"):
            top1, flops = r.get("top1_proxy"), r.get("flops_proxy")
            if top1 is None or not math.isfinite(top1):
                print(f"  {r['design']:24} not evaluated")
                continue
            cheaper = done[done["flops"] <= flops]
            best = float(cheaper["top1"].max()) if len(cheaper) else float("nan")
            found = _first_found((top1, flops), r["genome_key"], search, None)
            se = math.sqrt(top1 * (1 - top1) / (val * classes)) if val and classes else float("nan")
            margin = best - top1
            note = "" if not math.isfinite(margin) else (" (within 2 SE)" if abs(margin) < 2 * se else "")
            print(
                f"  {r['design']:24} {top1:6.3f} {flops / 1e9:7.3f} {best:8.3f} {margin:+7.3f} {r['verdict']:16} "
                f"{r['nearest_distance'] if r['nearest_distance'] is not None else float('nan'):5.3f} "
                f"{found if found else '-':>6}{note}"
            )
        if val and classes:
            print(
                f"  (binomial SE of a top-1 near 0.25 on {val * classes} validation images: "
                f"{math.sqrt(0.25 * 0.75 / (val * classes)):.3f})"
            )


def cli(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="run folders of studies.run (--out)")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="first run the smoke_table study with its references, answered by its table (seconds); report on it",
    )
    a = ap.parse_args(argv)
    if a.quick:
        with tempfile.TemporaryDirectory() as tmp:
            argv = [sys.executable, "-m", "studies.run", "smoke_table", "--backend", "table", "--reference",
                    "--quiet", "--out", tmp]  # fmt: skip
            subprocess.run(argv, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
            main([tmp, *a.run_dirs])
        return 0
    if not a.run_dirs:
        ap.error("give at least one RUN_DIR (or --quick)")
    main(a.run_dirs)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
