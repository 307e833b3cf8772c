"""Faults at scale: a fifth of a study's trials fail four ways while its driver is SIGKILLed once.

Through the real command line, Ray and journal storage; the driver is resumed with the same command.
The genomes are enqueued (Optuna's enqueue_trial) before the run, so which trial fails how is known:
a [space] imports module (fault_plugins, written to a temp folder) registers four plugins whose
forward, in training only, raises an exception, makes the loss NaN, raises torch.OutOfMemoryError,
or SIGKILLs its own Ray worker process. Every other genome is a plain smoke genome. The driver is
SIGKILLed (with its Ray processes) once some trials are stored and others run, then the same
command resumes it. Read back from the storage:
    asked, completed, failed by cause, interrupted (requeued), duplicates, lost, wrong status
Every enqueued genome must end counted exactly once, with the status its fault implies.
Usage: python bench/faults_at_scale.py [--trials 40] [--fault-share 0.2] [--concurrency 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainers.record import Status

NAME = "faults"

FAULT_PLUGINS = '''
"""Plugins that fail in training (never in the eval-mode cost count), one way each."""
import os
import signal

import torch
from torch import nn

from searchspace.plugins import register


class Fault(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        if not self.training:
            return x
        if self.kind == "raise":
            raise RuntimeError("injected failure: this module raises in training")
        if self.kind == "nan":
            return x * float("nan")
        if self.kind == "oom":
            raise torch.OutOfMemoryError("injected: simulated out of memory")
        os.kill(os.getpid(), signal.SIGKILL)  # "kill": the Ray worker process dies mid-trial
        return x


for _kind in ("raise", "nan", "oom", "kill"):
    register(f"fault_{_kind}", positions=("after_conv2",))(lambda channels, r, site, _k=_kind: Fault(_k))
'''
KINDS = ("raise", "nan", "oom", "kill")
# What each fault must become in the storage: (Optuna state, user attr status, words in its error)
EXPECTED = {
    None: ("COMPLETE", Status.OK, ""),
    "raise": ("FAIL", Status.ERROR, "injected failure"),
    "nan": ("COMPLETE", Status.DIVERGED, ""),
    "oom": ("FAIL", Status.OOM, "out of memory"),
    "kill": ("FAIL", Status.ERROR, "worker died"),
}


def write_config(folder: Path, trials: int, concurrency: int) -> Path:
    (folder / "fault_plugins.py").write_text(FAULT_PLUGINS)
    cfg = (REPO / "studies/configs/smoke.toml").read_text()
    cfg = (
        cfg.replace('plugins = ["none", "se"]', 'imports = ["fault_plugins"]\nplugins = ["none", "se"'
                    + "".join(f', "fault_{k}"' for k in KINDS) + "]")
        .replace("max_per_class = 8", "max_per_class = 4")
        .replace("max_val_per_class = 8", "max_val_per_class = 4")
        .replace("trials = 4", f"trials = {trials}")
        .replace("concurrency = 2", f"concurrency = {concurrency}")
        .replace('name = "nsga2"', 'name = "random"')
    )  # fmt: skip
    path = folder / f"{NAME}.toml"
    path.write_text(cfg)
    return path


def fault_of(genome_json: str) -> str | None:
    types = {p["type"] for s in json.loads(genome_json)["stages"] for p in s["plugins"]}
    faults = [k for k in KINDS if f"fault_{k}" in types]
    return faults[0] if faults else None


def plan(
    cfg_path: Path, trials: int, fault_share: float, seed: int = 0
) -> list[tuple[str | None, str, dict]]:
    """`trials` distinct genomes as (fault kind or None, genome key, Optuna params), round(share * trials) with one fault each (the kinds
    in turn, one stage each), shuffled."""
    import optuna

    from searchspace import Genome, space
    from studies import config

    sys.path.insert(0, str(cfg_path.parent))
    spec = config.load(str(cfg_path)).space
    clean = config.load("smoke").space
    rng = random.Random(seed)
    draw = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    genomes, keys = [], set()
    n_faulty = round(fault_share * trials)
    while len(genomes) < trials:
        g = space.suggest(draw.ask(), clean)
        kind = KINDS[len(genomes) % len(KINDS)] if len(genomes) < n_faulty else None
        if kind:
            d = json.loads(g.to_json())
            stage = rng.randrange(len(d["stages"]))
            d["stages"][stage]["plugins"] = [
                {"type": f"fault_{kind}", "position": "after_conv2", "r": 4, "options": {}}
            ]
            g = Genome.from_dict(d)
        if g.key not in keys:
            keys.add(g.key)
            genomes.append((kind, g.key, space.to_params(g, spec)))
    rng.shuffle(genomes)
    return genomes


def _storage(out: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(out / "study.journal")))


def _driver(cfg_path: Path, out: Path) -> subprocess.Popen:
    # fault_plugins lives beside the config: the driver imports it from PYTHONPATH, its workers too
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(cfg_path.parent)]),
        "RAY_DEDUP_LOGS": "0",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "studies.run", str(cfg_path), "--quiet", "--out", str(out)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def run(
    out: Path,
    trials: int = 40,
    fault_share: float = 0.2,
    concurrency: int = 2,
    kill_after: int | None = None,
    log=print,
) -> dict:
    """Run the study in `out` (a new folder), kill its driver once after `kill_after` counted trials
    (default: a third of them), resume it, and return the figures read back from the storage."""
    import optuna
    from optuna.trial import TrialState

    out.mkdir(parents=True)
    cfg_path = write_config(out, trials, concurrency)
    genomes = plan(cfg_path, trials, fault_share)
    study = optuna.create_study(study_name=NAME, storage=_storage(out), directions=["maximize", "minimize"])
    for _, _, params in genomes:
        study.enqueue_trial(params, skip_if_exists=False)
    kill_after = trials // 3 if kill_after is None else kill_after

    def counted(s):
        return [
            t for t in s.trials if t.state.is_finished() and t.user_attrs.get("status") != Status.INTERRUPTED
        ]

    t0 = time.perf_counter()
    proc = _driver(cfg_path, out)
    killed_at = None
    try:
        while proc.poll() is None:
            s = optuna.load_study(study_name=NAME, storage=_storage(out))
            running = [t for t in s.trials if t.state == TrialState.RUNNING and "driver" in t.user_attrs]
            if len(counted(s)) >= kill_after and running:
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = (len(counted(s)), len(running))
                break
            time.sleep(0.2)
        proc.wait(30)
    finally:
        try:  # its Ray processes, by the driver's own group id
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if killed_at is None:
        raise RuntimeError(f"the driver ended before it could be killed: {proc.communicate()[1][-2000:]}")
    log(f"driver SIGKILLed with {killed_at[0]} trials counted and {killed_at[1]} running; resuming")
    resumed = _driver(cfg_path, out)
    stdout, stderr = resumed.communicate(timeout=1800)
    wall = time.perf_counter() - t0
    if resumed.returncode != 0:
        raise RuntimeError(f"the resumed driver failed ({resumed.returncode}): {stderr[-2000:]}")

    s = optuna.load_study(study_name=NAME, storage=_storage(out))
    final = counted(s)
    from searchspace import Genome

    # from the genome stored at ask: a trial whose worker died reported nothing, its genome_key included
    by_key = Counter(Genome.from_json(t.user_attrs["genome"]).key for t in final)
    planned = {key: kind for kind, key, _ in genomes}
    wrong = []
    for t in final:
        kind = fault_of(t.user_attrs["genome"])
        state, status, words = EXPECTED[kind]
        if (t.state.name, t.user_attrs.get("status")) != (state, status) or words not in (
            t.user_attrs.get("error") or ""
        ):
            wrong.append(
                (t.number, kind, t.state.name, t.user_attrs.get("status"), t.user_attrs.get("error"))
            )
    causes = Counter(
        f"{t.user_attrs.get('status')}:{fault_of(t.user_attrs['genome']) or '-'}" for t in final if t.user_attrs.get("status") != Status.OK
    )  # fmt: skip
    interrupted = [t for t in s.trials if t.user_attrs.get("status") == Status.INTERRUPTED]
    requeued = [t for t in s.trials if "requeued_from" in t.user_attrs]
    report = out / "report.html"
    return {
        "trials_planned": trials,
        "faulty_planned": sum(1 for k, _, _ in genomes if k),
        "asked": len(s.trials),
        "counted": len(final),
        "completed_ok": sum(1 for t in final if t.user_attrs.get("status") == Status.OK),
        "failed_by_cause": dict(sorted(causes.items())),
        "interrupted": len(interrupted),
        "requeued": len(requeued),
        "requeued_match_interrupted": sorted(t.user_attrs["requeued_from"] for t in requeued)
        == sorted(t.number for t in interrupted),
        "duplicates": sum(n - 1 for n in by_key.values() if n > 1),
        "lost": sorted(set(planned) - set(by_key)),
        "unplanned": sorted(set(by_key) - set(planned)),
        "wrong_status": wrong,
        "left_running_or_waiting": sum(1 for t in s.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)),
        "report_rendered": report.is_file() and report.stat().st_size > 0,
        "killed_at_counted": killed_at[0],
        "wall_s": round(wall, 1),
        "resumed_stdout_tail": stdout[-400:],
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--fault-share", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--out", help="run folder to create (default: a temporary one, removed)")
    a = ap.parse_args()
    bad = None
    if a.out and Path(a.out).exists():
        bad = f"--out {a.out}: exists already; give a new folder"
    elif a.trials < 10 or not 0 < a.fault_share < 1 or a.concurrency < 1:
        bad = "expected --trials >= 10, 0 < --fault-share < 1, --concurrency >= 1"
    if bad:
        print(f"error: {bad}", file=sys.stderr)
        raise SystemExit(2)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.out) if a.out else Path(tmp) / NAME
        r = run(out, a.trials, a.fault_share, a.concurrency)
    r.pop("resumed_stdout_tail")
    for k, v in r.items():
        print(f"{k}={v}")


if __name__ == "__main__":
    main()
