"""How close the trainer comes to a bare training loop of the same model.

For each model: trainer images/s on the bundled Imagenette-64 (training steps only, the median over
epochs) divided by a bare loop (forward, backward, SGD step on pre-made tensors in memory) of the
same architecture, batch size and resolution. The bare segments run between the trainer's epochs
(from its `report` callback), so both see the same machine load. Last line: ratio=<min over models>.

    python bench/trainer_efficiency.py [--models resnet50,se_resnet50] [--epochs 3] [--resolution 32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from searchspace import build, catalog  # noqa: E402
from trainers.data import DataSpec, load_data  # noqa: E402
from trainers.measure import bare_train_step  # noqa: E402
from trainers.train import Fidelity, train  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet50,se_resnet50")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--bare-steps", type=int, default=25, help="bare-loop steps after each epoch")
    p.add_argument("--device", default=None)
    a = p.parse_args()
    t = time.perf_counter()
    data = load_data(DataSpec(), a.resolution)
    print(f"data: {len(data.train_y)} train / {len(data.val_y)} val images, {data.num_classes} classes, "
          f"{a.resolution}px, loaded in {time.perf_counter() - t:.1f}s; torch threads {torch.get_num_threads()}")
    fid = Fidelity(epochs=a.epochs, resolution=a.resolution, width_mult=a.width, batch_size=a.batch_size)
    rows = []
    for name in a.models.split(","):
        genome = catalog.get(name).genome
        torch.manual_seed(0)
        step, _ = bare_train_step(build(genome, num_classes=data.num_classes, width_mult=a.width),
                                  a.batch_size, a.resolution, a.device, data.num_classes)
        for _ in range(3):  # warm-up of the bare loop
            step()
        bare = []

        def between_epochs(epoch, metrics):
            t0 = time.perf_counter()
            for _ in range(a.bare_steps):
                step()
            bare.append(a.bare_steps * a.batch_size / (time.perf_counter() - t0))

        res = train(genome, fid, data, device=a.device, report=between_epochs)
        trainer = statistics.median(h["images_per_s"] for h in res.history)
        epoch_s = statistics.median(h["train_s"] for h in res.history)
        rows.append((name, res.params, trainer, statistics.median(bare), epoch_s, res.top1, res.device))
    print(f"{'model':<14}{'params':>9}{'trainer img/s':>15}{'bare img/s':>12}{'ratio':>7}{'s/epoch':>9}{'top1':>7}  device")
    for name, params, tr, bare, es, top1, dev in rows:
        print(f"{name:<14}{params:>9}{tr:>15.0f}{bare:>12.0f}{tr / bare:>7.3f}{es:>9.1f}{top1:>7.3f}  {dev}")
    print(f"fidelity: {a.epochs} epochs, {a.resolution}px, width {a.width}, batch {a.batch_size}; "
          f"s/epoch = training steps of one epoch ({len(data.train_y) // a.batch_size} steps)")
    print(f"ratio={min(tr / bare for _, _, tr, bare, *_ in rows):.3f}")


if __name__ == "__main__":
    main()
