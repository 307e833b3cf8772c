"""Orchestration overhead of a study: Ray + Optuna + storage time per trial, beyond training.

Runs the smoke study with trivially short trials (2 images per class, 1 epoch, batch 2) through the
real command line, once per --trials size, and reads the storage:
    overhead per trial = (first trial start to last trial end - the trials' training time) / trials
That span still holds the one-off start of Ray's worker processes (imports), so two sizes are run
and the last line is the marginal cost of one more trial, which is what a long study pays:
    marginal_overhead_s_per_trial=<x>
Usage: python bench/orchestration.py [--trials 12 36] [--concurrency 2]
       python bench/orchestration.py --quick    # 2 and 3 trials: checks the script (a minute: Ray starts twice)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_study(trials: int, concurrency: int) -> dict:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    with tempfile.TemporaryDirectory() as tmp:
        cfg = (REPO / "studies/configs/smoke.toml").read_text()
        cfg = (
            cfg.replace("max_per_class = 8", "max_per_class = 2")
            .replace("max_val_per_class = 8", "max_val_per_class = 2")
            .replace("batch_size = 16", "batch_size = 2")
        )
        (Path(tmp) / "bench_orchestration.toml").write_text(cfg)
        t0 = time.perf_counter()
        argv = [sys.executable, "-m", "studies.run", str(Path(tmp) / "bench_orchestration.toml"), "--quiet",
                "--trials", str(trials), "--concurrency", str(concurrency), "--out", tmp]  # fmt: skip
        subprocess.run(argv, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        storage = JournalStorage(JournalFileBackend(f"{tmp}/study.journal"))
        study = optuna.load_study(study_name="bench_orchestration", storage=storage)
        done = [t for t in study.trials if t.state.is_finished()]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    train = sum(t.user_attrs.get("train_s", 0) for t in done)
    own = sum(t.user_attrs.get("wall_s", 0) for t in done)
    return {"trials": len(done), "wall": wall, "span": span, "train": train, "own": own}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, nargs="+", default=[12, 36])
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument(
        "--quick", action="store_true", help="two tiny studies of 2 and 3 trials: checks the script runs"
    )
    a = ap.parse_args()
    if a.quick:
        a.trials = [2, 3]
    runs = [run_study(n, a.concurrency) for n in a.trials]
    for r in runs:
        n = r["trials"]
        print(f"trials={n} concurrency={a.concurrency} command_wall_s={r['wall']:.1f} trials_span_s={r['span']:.1f} "
              f"sum_train_s={r['train']:.1f} sum_trial_wall_s={r['own']:.1f}  "
              f"overhead per trial: {(r['span'] - r['train']) / n:.2f}s without Ray's start, "
              f"{(r['wall'] - r['train']) / n:.2f}s with it")  # fmt: skip
    if len(runs) >= 2:
        a_, b_ = runs[0], runs[-1]
        marginal = ((b_["span"] - b_["train"]) - (a_["span"] - a_["train"])) / (b_["trials"] - a_["trials"])
        print(f"marginal_overhead_s_per_trial={marginal:.3f}")


if __name__ == "__main__":
    main()
