"""Training-step throughput of each catalog design relative to its plain backbone.

One step = forward, backward, SGD step on a fixed batch. Designs and their baselines are timed
interleaved (baseline, design, baseline, design, ...) in the same process, so machine noise hits
both alike; the ratio is design images/s over baseline images/s (1.0 = free, lower = slower).

    python bench/plugin_speed.py                       # every attention design, 64 and 128 px
    python bench/plugin_speed.py --designs se_resnet50 fcanet50 --resolutions 112 224 --batch 32
    python bench/plugin_speed.py --forms    # also time each design in its counted (authors') form
    python bench/plugin_speed.py --quick    # seconds on the CPU: one narrow design, checks the script

With --forms a third model, the same design run in its counted form (searchspace.plugins.forms:
the arrangement the FLOP counts count, which is also the pre-optimisation code), joins the
interleaving, so the speed-up of the fast forms is measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics

import torch

from searchspace import Genome, build, catalog
from searchspace.plugins.forms import counted_forms
from trainers.measure import autocast_for, memory_format_for, time_call

ATTENTION = [
    "se_resnet18",
    "se_resnet50",
    "fcanet50",
    "dsnet50_a",
    "dsnet50_b",
    "dsnet50_c",
    "msa_resnet18_r16",
    "msa_resnet18_r4",
    "msaf_resnet18_r16",
    "msaf_resnet18_r4",
    "aff_resnet18_r4",
    "iaff_resnet18_r4",
    "sda_resnet86",
]


def step_time(model, opt, x, y, device, counted=False) -> float:
    opt.zero_grad(set_to_none=True)
    amp = autocast_for(device)

    def step():
        with amp(), counted_forms() if counted else contextlib.nullcontext():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return time_call(step, device)


def make(genome, device, width):
    model = build(genome, num_classes=100, width_mult=width).train()
    model = model.to(device, memory_format=memory_format_for(model, device))
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def compare(design, resolution, args, device) -> tuple[float, ...]:
    """(base img/s, design img/s, ratio) and with --forms also (counted-form img/s, its ratio)."""
    base_genome = Genome(design.genome.backbone)
    models = [make(base_genome, device, args.width), make(design.genome, device, args.width)]
    counted = [False, False]
    if args.forms:
        models.append(make(design.genome, device, args.width))
        counted.append(True)
    x = torch.randn(args.batch, 3, resolution, resolution, device=device)
    xs = [
        x.contiguous(memory_format=memory_format_for(m, device)) for m, _ in models
    ]  # as the trainer feeds it
    y = torch.randint(0, 100, (args.batch,), device=device)
    times = [[] for _ in models]
    for i in range(args.warmup + args.repeats):
        for k, (m, opt) in enumerate(models):
            t = step_time(m, opt, xs[k], y, device, counted[k])
            if i >= args.warmup:
                times[k].append(t)
    speeds = [args.batch / statistics.median(t) for t in times]
    out = (speeds[0], speeds[1], speeds[1] / speeds[0])
    if args.forms:
        out += (speeds[2], speeds[2] / speeds[0])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--designs", nargs="*", default=ATTENTION)
    ap.add_argument("--resolutions", nargs="*", type=int, default=[64, 128])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--forms", action="store_true", help="also time the designs in their counted form")
    ap.add_argument(
        "--quick", action="store_true", help="tiny sizes on the CPU, seconds: checks the script runs"
    )
    args = ap.parse_args()
    if args.quick:
        args.designs, args.resolutions, args.batch, args.width = ["se_resnet18"], [32], 2, 0.125
        args.repeats, args.warmup, args.device = 2, 1, "cpu"
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(
        f"device={device} threads={torch.get_num_threads()} batch={args.batch} width={args.width} "
        f"repeats={args.repeats} (median step, interleaved with the plain backbone)"
    )
    extra = f"{'counted img/s':>15}{'ratio':>8}{'fast/counted':>14}" if args.forms else ""
    print(f"{'design':22}{'res':>5}{'base img/s':>12}{'design img/s':>14}{'ratio':>8}" + extra)
    worst = (float("inf"), "")
    for name in args.designs:
        d = catalog.get(name)
        for res in args.resolutions:
            r = compare(d, res, args, device)
            line = f"{name:22}{res:>5}{r[0]:>12.1f}{r[1]:>14.1f}{r[2]:>8.3f}"
            if args.forms:
                line += f"{r[3]:>15.1f}{r[4]:>8.3f}{r[1] / r[3]:>14.3f}"
            print(line, flush=True)
            worst = min(worst, (r[2], f"{name}@{res}"))
    print(f"worst_ratio={worst[0]:.3f} ({worst[1]})")


if __name__ == "__main__":
    main()
