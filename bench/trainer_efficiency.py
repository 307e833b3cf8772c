"""How close the trainer comes to a bare training loop of the same model.

For each model: the trainer's training images/s on the bundled Imagenette-64 (training steps only,
median over epochs) divided by a bare loop (forward, backward, SGD step on pre-made tensors in
memory) of the same architecture, batch size and resolution. The bare segments run between the
trainer's epochs (from its `report` callback), so both see the same machine load.

Two clocks: wall seconds, and this process's CPU seconds. With one thread (the default here) CPU
seconds are the work done, while wall seconds on a shared machine also count other processes' turns;
`--clock` picks the one the last line uses. Last line: ratio=<min over models>.

    python bench/trainer_efficiency.py [--models resnet50,se_resnet50] [--epochs 3] [--clock cpu|wall]
    python bench/trainer_efficiency.py --quick   # seconds on a CPU: checks the script, measures little
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from searchspace import catalog  # noqa: E402
from trainers.data import DataSpec, load_data  # noqa: E402
from trainers.measure import Timer, bare_train_step  # noqa: E402
from trainers.train import Fidelity, build_model, train  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet50,se_resnet50")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--bare-steps", type=int, default=25, help="bare-loop steps after each epoch")
    p.add_argument("--device", default=None)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (1: on a shared machine more threads spin and waste time); 0 = torch default",
    )
    p.add_argument(
        "--clock", choices=("cpu", "wall"), default=None, help="default: cpu with 1 CPU thread, else wall"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes (2 classes, 1 epoch, width 1/16): runs in seconds, to check the script works",
    )
    a = p.parse_args()
    spec = DataSpec()
    if a.quick:
        a.models, a.epochs, a.width, a.batch_size, a.bare_steps = "resnet50", 1, 0.0625, 8, 2
        spec = DataSpec(num_classes=2, max_per_class=16, max_val_per_class=8)
    if a.threads:
        torch.set_num_threads(a.threads)
    with Timer() as t:
        data = load_data(spec, a.resolution)
    print(
        f"data: {len(data.train_y)} train / {len(data.val_y)} val images, {data.num_classes} classes, "
        f"{a.resolution}px, loaded in {t.wall_s:.1f}s; torch threads {torch.get_num_threads()}"
    )
    fid = Fidelity(epochs=a.epochs, resolution=a.resolution, width=a.width, batch_size=a.batch_size)
    rows = []
    for name in a.models.split(","):
        catalog.get(name)  # an unknown name fails here, before any training
        torch.manual_seed(0)
        step, dev = bare_train_step(
            build_model(name, data.num_classes, a.width),  # as the trainer builds it (the design's recipe)
            a.batch_size,
            a.resolution,
            a.device,
            data.num_classes,
        )
        for _ in range(3):  # warm-up of the bare loop
            step()
        bare_wall, bare_cpu = [], []

        def between_epochs(epoch, m):
            with Timer(dev) as t:
                for _ in range(a.bare_steps):
                    step()
            n = a.bare_steps * a.batch_size
            bare_wall.append(n / t.wall_s)
            bare_cpu.append(n / t.cpu_s)
            print(
                f"  {name} epoch {epoch}: trainer {m['images_per_s']:.0f} img/s wall, "
                f"{m['images_per_s'] * m['train_s'] / m['cpu_s']:.0f} img/s cpu ({m['train_s']:.1f}s); "
                f"bare {bare_wall[-1]:.0f} wall, {bare_cpu[-1]:.0f} cpu; top1 {m['top1']:.3f}",
                flush=True,
            )

        res = train(name, fid, data, device=a.device, report=between_epochs)
        tr_wall = statistics.median(h["images_per_s"] for h in res.history)
        tr_cpu = statistics.median(h["images_per_s"] * h["train_s"] / h["cpu_s"] for h in res.history)
        rows.append(
            dict(
                name=name,
                params=res.params,
                tr_wall=tr_wall,
                bare_wall=statistics.median(bare_wall),
                tr_cpu=tr_cpu,
                bare_cpu=statistics.median(bare_cpu),
                top1=res.top1,
                device=res.device,
                epoch_s=statistics.median(h["train_s"] for h in res.history),
                epoch_cpu=statistics.median(h["cpu_s"] for h in res.history),
            )
        )
    print(
        f"{'model':<13}{'params':>9} | {'trainer':>8}{'bare':>6}{'ratio':>7} | {'trainer':>8}{'bare':>6}{'ratio':>7}"
        f" | {'s/epoch':>7}{'cpu s':>7}{'top1':>7}  device"
    )
    print(f"{'':<13}{'':>9} | {'img/s (wall clock)':^21} | {'img/s (CPU clock)':^21} |")
    for r in rows:
        print(
            f"{r['name']:<13}{r['params']:>9} | {r['tr_wall']:>8.0f}{r['bare_wall']:>6.0f}{r['tr_wall'] / r['bare_wall']:>7.3f}"
            f" | {r['tr_cpu']:>8.0f}{r['bare_cpu']:>6.0f}{r['tr_cpu'] / r['bare_cpu']:>7.3f}"
            f" | {r['epoch_s']:>7.1f}{r['epoch_cpu']:>7.1f}{r['top1']:>7.3f}  {r['device']}"
        )
    clock = a.clock or ("cpu" if torch.get_num_threads() == 1 and rows[0]["device"] == "cpu" else "wall")
    print(
        f"fidelity: {a.epochs} epochs, {a.resolution}px, width {a.width}, batch {a.batch_size} "
        f"({len(data.train_y) // a.batch_size} steps/epoch); s/epoch: training steps only; ratio clock: {clock}"
    )
    print(f"ratio={min(r[f'tr_{clock}'] / r[f'bare_{clock}'] for r in rows):.3f}")


if __name__ == "__main__":
    main()
