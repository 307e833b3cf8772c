"""Packed trials on one GPU, measured: the smoke and a short imagenet_subset study at 0.25 GPU per trial.

On a CUDA machine, for each study: `python -m studies.run` in its own run folder while a thread
samples GPU utilisation and memory (nvidia-smi; else torch.cuda.utilization), then one line per
trial from the study's storage: status, peak CUDA memory, training img/s, the GPU share it ran
with, warm-up seconds, compiled graphs, whether determinism held, where the data lived, latency.
Then, for a few of the imagenet_subset genomes, measured here in the same run: the trainer on the
GPU alone and a bare loop (forward, backward, SGD step on pre-made tensors, trainers.measure) of the
same model, batch and resolution. Ratios: trainer alone / bare loop (the trainer's overhead) and
packed trial / trainer alone (what sharing the GPU costs one trial; four packed trials are worth it
when this stays above 0.25).

Without a CUDA device it says so and exits 0; `--device cpu` runs the same steps on the CPU with
the smoke study only (checks the script, measures nothing about GPUs).

    python bench/gpu_study.py [--gpus-per-trial 0.25] [--trials 8] [--epochs 2] [--out /tmp/gpu_study]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from trainers.measure import Timer  # noqa: E402
from trainers.record import Status  # noqa: E402


class GpuSampler(threading.Thread):
    """Samples (utilisation %, memory used MB) of GPU 0 every `period` seconds until stopped."""

    def __init__(self, period: float = 0.5):
        super().__init__(daemon=True)
        self.period, self.samples, self.source = period, [], None
        self._stop_event = threading.Event()
        self._smi = shutil.which("nvidia-smi")

    def _one(self):
        if self._smi:
            out = subprocess.run(
                [
                    self._smi,
                    "--query-gpu=utilization.gpu,memory.used",
                    "--format=csv,noheader,nounits",
                    "--id=0",
                ],
                capture_output=True,
                text=True,
                timeout=10,
            )
            if out.returncode == 0 and out.stdout.strip():
                util, mem = (float(v) for v in out.stdout.strip().splitlines()[0].split(","))
                self.source = "nvidia-smi"
                return util, mem
        try:
            self.source = "torch.cuda.utilization"
            return float(torch.cuda.utilization(0)), float("nan")
        except Exception:  # no NVML either
            return None

    def run(self):
        while not self._stop_event.is_set():
            s = self._one()
            if s is None:
                return
            self.samples.append(s)
            self._stop_event.wait(self.period)

    def stop(self) -> dict:
        self._stop_event.set()
        self.join(timeout=15)
        util = [u for u, _ in self.samples]
        mem = [m for _, m in self.samples if m == m]
        if not util:
            return {"source": "none (no nvidia-smi, no NVML)"}
        return {
            "source": self.source,
            "n": len(util),
            "util_mean": statistics.fmean(util),
            "util_median": statistics.median(util),
            "util_busy": sum(u >= 50 for u in util) / len(util),
            "mem_max_mb": max(mem) if mem else float("nan"),
        }


def run_study(name: str, out: Path, gpus: float, extra: list[str]) -> tuple[dict, float]:
    folder = out / name
    shutil.rmtree(folder, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "studies.run",
        name,
        "--out",
        str(folder),
        "--gpus-per-trial",
        f"{gpus:g}",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    print(f"\n$ {' '.join(cmd[1:])}", flush=True)
    sampler = GpuSampler() if gpus else None
    if sampler:
        sampler.start()
    log = folder.with_suffix(".log")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f, Timer() as t:  # the study's processes: the host clock, no device sync
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    wall = t.wall_s
    util = sampler.stop() if sampler else {"source": "cpu run: no GPU sampled"}
    if rc != 0:
        print(
            f"study {name} exited {rc}; last lines of {log}:\n"
            + "\n".join(log.read_text().splitlines()[-15:])
        )
    return util, wall


def trials_of(name: str, out: Path) -> list:
    import optuna

    from studies import storage as st

    study = optuna.load_study(study_name=name, storage=st.open_or_create(str(out / name / "study.journal")))
    return study.get_trials(deepcopy=False)


def _fmt(v, spec=".0f"):
    return "-" if v is None else (format(v, spec) if isinstance(v, (int, float)) else str(v))


def print_trials(trials) -> None:
    print(
        f"  {'trial':>5} {'status':<9} {'peak MB':>8} {'img/s':>7} {'train s':>8} {'warm-up s':>9} {'GPU':>5} "
        f"{'graphs':>6} {'determ.':>8} {'data':>6} {'lat ms':>7}  genome"
    )
    for t in trials:
        a = t.user_attrs
        det = "-" if not a.get("deterministic_requested") else ("yes" if a.get("deterministic") else "NO")
        print(
            f"  {t.number:>5} {a.get('status', t.state.name.lower()):<9} {_fmt(a.get('peak_mem_mb')):>8} "
            f"{_fmt(a.get('images_per_s')):>7} {_fmt(a.get('train_s'), '.1f'):>8} {_fmt(a.get('warmup_s'), '.2f'):>9} "
            f"{_fmt(a.get('gpus_per_trial'), 'g'):>5} {_fmt(a.get('compiled_graphs')):>6} {det:>8} "
            f"{'device' if a.get('data_on_device', True) else 'host':>6} {_fmt(a.get('latency_ms'), '.2f'):>7}  "
            f"{a.get('genome_key', '')}"
        )
        if a.get("nondeterministic_ops"):
            print(f"        nondeterministic: {', '.join(a['nondeterministic_ops'])}")
        if a.get("error"):
            print(f"        error: {a['error'][:160]}")


def alone_vs_bare(name: str, trials, device: str, count: int) -> list[float]:
    """Trainer alone on the device and a bare loop, for `count` of the study's trained genomes."""
    from searchspace import Genome, build
    from studies import config as config_mod
    from trainers.data import load_data
    from trainers.measure import train_throughput
    from trainers.train import train

    cfg = config_mod.load(name)
    fid = cfg.fidelity
    data = load_data(cfg.data, fid.resolution)
    done = [t for t in trials if t.user_attrs.get("status") == Status.OK and t.user_attrs.get("images_per_s")]
    done.sort(key=lambda t: t.user_attrs.get("params", 0))
    pick = {
        t.user_attrs["genome_key"]: t for t in (done[:1] + done[-1:] + done[1:-1])
    }  # smallest, largest, others
    ratios = []
    print(
        f"\n  {name}: trainer alone vs bare loop vs packed trial ({device}, batch {fid.batch_size}, "
        f"{fid.resolution}px, width {fid.width})"
    )
    print(
        f"  {'genome':<13} {'bare img/s':>10} {'alone img/s':>11} {'alone/bare':>10} {'packed img/s':>12} "
        f"{'packed/alone':>12} {'alone peak MB':>13}"
    )
    for key, t in list(pick.items())[:count]:
        genome = Genome.from_json(t.user_attrs["genome"])
        alone = train(genome, fid, data, device=device, seed=0)
        torch.manual_seed(0)
        n = 10 if device == "cuda" else 2  # the CPU variant only checks the script
        bare = train_throughput(
            build(genome, num_classes=data.num_classes, width_mult=fid.width),
            fid.batch_size,
            fid.resolution,
            device,
            steps=n,
            warmup=n,
            repeats=n // 2 + 1,
        )
        packed = t.user_attrs["images_per_s"]
        ratios.append(alone.images_per_s / bare)
        print(
            f"  {key:<13} {bare:>10.0f} {alone.images_per_s:>11.0f} {alone.images_per_s / bare:>10.3f} "
            f"{packed:>12.0f} {packed / alone.images_per_s if alone.images_per_s else float('nan'):>12.3f} "
            f"{alone.peak_mem_mb:>13.0f}"
        )
    return ratios


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--gpus-per-trial", type=float, default=0.25)
    p.add_argument("--trials", type=int, default=8, help="imagenet_subset trials")
    p.add_argument("--epochs", type=int, default=2, help="imagenet_subset epochs per trial")
    p.add_argument("--compare", type=int, default=3, help="genomes measured alone and as a bare loop")
    p.add_argument("--out", default="/tmp/gpu_study")
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        print(
            "no CUDA device here: nothing to measure (run on a GPU machine; --device cpu checks the script)"
        )
        return 0
    out = Path(a.out)
    gpus = a.gpus_per_trial if a.device == "cuda" else 0.0
    if a.device == "cpu":  # one thread: on a shared CPU more threads spin
        torch.set_num_threads(1)
        a.compare = min(a.compare, 1)
    if a.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        print(
            f"GPU 0: {props.name}, {props.total_memory / 2**30:.0f} GiB; torch {torch.__version__}; "
            f"{os.cpu_count()} CPUs; {gpus:g} GPU per trial"
        )
    studies = [("smoke", [])]
    if a.device == "cuda":
        studies.append(("imagenet_subset", ["--trials", str(a.trials), "--epochs", str(a.epochs)]))
    summary, ratios = [], []
    for name, extra in studies:
        util, wall = run_study(name, out, gpus, extra)
        try:
            trials = trials_of(name, out)
        except Exception as e:  # the study did not start: its log says why
            print(f"study {name}: no storage to read ({type(e).__name__}: {e})")
            summary.append(f"{name}: failed")
            continue
        print(f"study {name}: {len(trials)} trial(s) in {wall:.0f}s; GPU sampling: {util}")
        print_trials(trials)
        ok = [t.user_attrs for t in trials if t.user_attrs.get("status") == Status.OK]
        summary.append(
            f"{name}: {len(ok)}/{len(trials)} ok, {wall:.0f}s, peak MB max "
            f"{max((x.get('peak_mem_mb') or 0) for x in ok) if ok else 0:.0f}, GPU util mean "
            + (f"{util['util_mean']:.0f}%" if "util_mean" in util else "-")
        )
        if name == studies[-1][0] and a.compare:
            ratios = alone_vs_bare(name, trials, a.device, a.compare)
    print("\nsummary: " + "; ".join(summary))
    if ratios:
        print(f"ratio={min(ratios):.3f}  (trainer alone / bare loop, lowest of {len(ratios)} genomes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
