"""Orchestration overhead of a study: Ray + Optuna + storage time per trial, beyond training.

Runs the smoke study with trivially short trials (2 images per class, 1 epoch) through the real
command line, then reads the storage:
    overhead per trial = (study wall time - sum of the trials' own training time) / trials
Last line: overhead_s_per_trial=<x>. Usage: python bench/orchestration.py [--trials 12] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--concurrency", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = (REPO / "studies/configs/smoke.toml").read_text()
        cfg = (
            cfg.replace("max_per_class = 8", "max_per_class = 2")
            .replace("max_val_per_class = 8", "max_val_per_class = 2")
            .replace("batch_size = 16", "batch_size = 2")
        )
        tomllib.loads(cfg)
        (Path(tmp) / "bench_orchestration.toml").write_text(cfg)
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "studies.run",
                str(Path(tmp) / "bench_orchestration.toml"),
                "--quiet",
                "--trials",
                str(a.trials),
                "--concurrency",
                str(a.concurrency),
                "--out",
                tmp,
            ],
            cwd=REPO,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - t0
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        study = optuna.load_study(
            study_name="bench_orchestration",
            storage=JournalStorage(JournalFileBackend(f"{tmp}/study.journal")),
        )
        trials = [t for t in study.trials if t.state.is_finished()]
        train = sum(t.user_attrs.get("train_s", 0) for t in trials)
        own = sum(t.user_attrs.get("wall_s", 0) for t in trials)
        first = min(t.datetime_start for t in trials)
        last = max(t.datetime_complete for t in trials)
        span = (last - first).total_seconds()
    n = len(trials)
    print(
        f"trials={n} concurrency={a.concurrency} command_wall_s={wall:.1f} trials_span_s={span:.1f} "
        f"sum_train_s={train:.1f} sum_trial_wall_s={own:.1f}"
    )
    print(
        f"overhead without Ray start-up (first trial start to last end, per trial) = {(span - train) / n:.2f}s"
    )
    print(f"overhead_s_per_trial={(wall - train) / n:.2f}")


if __name__ == "__main__":
    main()
