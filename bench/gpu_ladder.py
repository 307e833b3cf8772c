"""The fidelity ladder's GPU rung: the ladder's genomes at a rung a 2-core CPU cannot reach, on one GPU.

Prepared for a short lease (one try, about 8 minutes with the start): it needs only torch,
torchvision, numpy, Pillow and this checkout's searchspace and trainers (no Ray, no Optuna, no
pandas, no fvcore: the trainer path of studies.trainable without the study around it). The genomes and their full-size costs are read from
the ladder's shipped rung (studies/tables/ladder_shipped.csv), so the rows join the ladder table as
one more rung. Runs go seed-major (every genome at seed 0, then seed 1, ...) over `--workers`
processes sharing the GPU; no run starts after `--minutes`, and each finished run is appended to
`<out>/ladder_<rung>.csv` at once (a lease that ends mid-way keeps what finished). Each row says
where it ran (trainers.environment: GPU name and capability, torch, code fingerprint).

    python bench/gpu_ladder.py --out $OUT [--minutes 6] [--workers 4] [--seeds 0,1]
        [--rung gpu:fidelity.width=0.5,fidelity.resolution=128,fidelity.epochs=16]
    python bench/gpu_ladder.py --quick      # CPU, a tiny rung, 3 genomes: checks the script

Then, here: append the rows to studies/tables/ladder_<rung>.csv and `python -m studies.ladder
ladder --merge` (docs/fidelity.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainers.record import Status  # noqa: E402

SHIPPED = REPO / "studies" / "tables" / "ladder_shipped.csv"
GPU_RUNG = "gpu:fidelity.width=0.5,fidelity.resolution=128,fidelity.epochs=16"
QUICK_RUNG = "quick:fidelity.epochs=1,fidelity.resolution=32,data.max_per_class=8,data.max_val_per_class=8"
COPIED = (
    "genome_key",
    "genome",
    "design",
    "menu",
    *(f"{m}_{c}" for c in ("paper", "full") for m in ("params", "flops", "activations")),
)  # the genome and its full-size costs


class Rung:
    """A rung as studies.ladder names it (NAME:KEY=VALUE,...), applied to the shipped rung's stored
    protocol: the same protocol JSON studies.ladder would store, without importing the study code."""

    def __init__(self, text: str, rows: list[dict]):
        self.name, _, rest = text.partition(":")
        self.protocol = json.loads(rows[0]["protocol"])
        for item in filter(None, rest.split(",")):
            key, _, value = item.partition("=")
            section, field = key.split(".")
            self.protocol[section][field] = json.loads(value)
            if section == "data" and field in ("num_classes", "max_per_class"):
                self.protocol["fidelity"][field] = json.loads(value)  # the fidelity names its subset
        self.table = f"ladder_{self.name}"
        fid = self.protocol["fidelity"]
        self.epochs = fid["epochs"]
        self.text = json.dumps(self.protocol, sort_keys=True, separators=(",", ":"))
        header = list(rows[0])
        curves = [f"{k}_e{e}" for k in ("top1", "top5") for e in range(1, self.epochs + 1)]
        kept = [c for c in header if not c.startswith(("top1_e", "top5_e"))]
        at = kept.index("epochs") + 1
        self.columns = [*kept[:at], *curves, *kept[at:], "images_per_s"]

    def fidelity(self):
        from trainers.train import Fidelity

        fid = self.protocol["fidelity"]
        return Fidelity(**{k: v for k, v in fid.items() if k not in ("num_classes", "max_per_class")})

    def data(self):
        from trainers.data import DataSpec

        return DataSpec(**self.protocol["data"])


def shipped_rows() -> list[dict]:
    with SHIPPED.open(newline="") as f:
        return list(csv.DictReader(f))


def shipped_genomes(rows: list[dict], limit: int | None = None) -> list[dict]:
    """The ladder's genomes in order, each with its design name, menu and full-size costs."""
    seen, out = set(), []
    for r in rows:
        if r["genome_key"] not in seen:
            seen.add(r["genome_key"])
            out.append({k: r[k] for k in COPIED})
    return out[:limit]


def _worker(jobs, results, rung: Rung, device: str, threads: int) -> None:
    """Train jobs (index, genome row, seed) until a None arrives; one result row per job."""
    import torch

    from searchspace import Genome
    from trainers.data import load_data
    from trainers.environment import describe
    from trainers.train import train

    torch.set_num_threads(threads)
    fidelity = rung.fidelity()
    data = load_data(rung.data(), fidelity.resolution)
    env = describe(device)
    while (job := jobs.get()) is not None:
        index, g, seed = job
        t0 = time.perf_counter()
        curves = {"top1": [], "top5": []}

        def report(epoch, m, curves=curves):
            for k in curves:
                curves[k].append(m.get(k))

        try:
            res = train(
                Genome.from_json(g["genome"]), fidelity, data, device=device, seed=seed, report=report
            )
        except Exception as e:  # one line in the log, no row: the run is not a measurement
            results.put({"error": f"{g['genome_key']} seed {seed}: {type(e).__name__}: {e}"})
            continue
        results.put(
            {
                "table": rung.table,
                **g,
                "seed": seed,
                "epochs": rung.epochs,
                **{f"top1_e{e + 1}": v for e, v in enumerate(curves["top1"])},
                **{f"top5_e{e + 1}": v for e, v in enumerate(curves["top5"])},
                "top1": res.top1
                if res.status == Status.OK
                else 1.0 / res.num_classes,  # as studies.trainable
                "top5": res.top5,
                "status": res.status,
                "wall_s": round(time.perf_counter() - t0, 2),
                "train_s": round(res.train_s, 2),
                "device": res.device,
                "environment": env["key"],
                **{k: env[k] for k in ("device_model", "capability", "code")},
                "protocol": rung.text,
                "torch": torch.__version__,
                "trial_number": index,
                "images_per_s": round(res.images_per_s, 1),
            }
        )


def run(
    rung: Rung, genomes: list[dict], seeds: list[int], out: Path, device: str, workers: int, minutes: float
):
    """Train (genome, seed) jobs seed-major over `workers` processes until done or `minutes` pass."""
    path = out / f"{rung.table}.csv"
    columns = rung.columns
    jobs = [(i, g, s) for i, (s, g) in enumerate((s, g) for s in seeds for g in genomes)]
    ctx = mp.get_context("spawn")  # CUDA in children needs spawn
    q_jobs, q_results = ctx.Queue(), ctx.Queue()
    threads = max(1, (os.cpu_count() or 1) // workers)
    procs = [
        ctx.Process(target=_worker, args=(q_jobs, q_results, rung, device, threads)) for _ in range(workers)
    ]
    for p in procs:
        p.start()
    t0, deadline = time.perf_counter(), time.perf_counter() + 60 * minutes
    pending, done = list(jobs), 0
    for _ in range(min(workers, len(pending))):
        q_jobs.put(pending.pop(0))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        while done < len(jobs) - len(pending):
            row = q_results.get()
            done += 1
            if "error" in row:
                print(f"  {done:3d}/{len(jobs)} failed: {row['error']}", flush=True)
                continue
            w.writerow(row)
            f.flush()
            print(
                f"  {done:3d}/{len(jobs)} {row['design'] or row['genome_key']:14} seed {row['seed']} "
                f"top1 {float(row['top1']):.3f} {row['status']} {row['wall_s']:.1f}s "
                f"{row['images_per_s']:.0f} img/s ({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
            if pending and time.perf_counter() < deadline:
                q_jobs.put(pending.pop(0))
    for _ in procs:
        q_jobs.put(None)
    for p in procs:
        p.join(60)
    took = time.perf_counter() - t0
    print(
        f"gpu ladder: {done} row(s) of {len(jobs)} at rung {rung.table} on {device} in {took:.0f}s "
        f"({workers} worker(s)); {len(pending)} not started -> {path}"
    )
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rung", default=GPU_RUNG, help=f"NAME:KEY=VALUE,... (default {GPU_RUNG})")
    ap.add_argument("--seeds", default="0,1", help="comma-separated seeds, shared with the CPU rungs")
    ap.add_argument("--workers", type=int, default=4, help="processes sharing the device")
    ap.add_argument("--minutes", type=float, default=6.0, help="no run starts after this")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--genomes", type=int, help="only the first N genomes")
    ap.add_argument("--out", help="folder for the rung's CSV (default: a temporary folder)")
    ap.add_argument("--quick", action="store_true", help="CPU, a tiny rung, 3 genomes, seed 0, 1 worker")
    args = ap.parse_args(argv)
    if args.quick:
        args.rung, args.seeds, args.workers, args.device, args.genomes = QUICK_RUNG, "0", 1, "cpu", 3
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("gpu ladder: no CUDA device here; nothing measured (--quick checks the script on the CPU)")
            return 0
    rows = shipped_rows()
    rung = Rung(args.rung, rows)
    out = Path(args.out or tempfile.mkdtemp(prefix="gpu_ladder_"))
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    run(rung, shipped_genomes(rows, args.genomes), seeds, out, args.device, args.workers, args.minutes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
