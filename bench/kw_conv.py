"""Forward+backward throughput of a KernelWarehouse conv against the plain conv it replaces.

The KW conv is ResNet-18's layer3 3x3 conv (256 -> 256 at 14x14) inside the real KW ResNet-18
(so it draws on its stage's warehouse: 47 cells of 256x256 at b=1, 188 at b=4). Both convs run in
the same process, interleaved repeat by repeat; the table gives medians and the KW/plain time ratio.
`--layouts nchw channels_last` and `--dtypes fp32 bf16` (CUDA autocast, as the trainer) add rows:
a channels_last input makes the KW conv convert its input to NCHW and its output back (the trainer
therefore keeps KW networks in NCHW; these rows measure what that choice saves).
`--forms grouped matmul` times the KW conv's equal forms (KWConv2d.form) as separate rows, and
`--hw` / `--width` set the map side and channels (width 1/8 and maps 2-4 are what proxy trials use).

    python bench/kw_conv.py [--device cuda] [--batches 8 32] [--repeats 15] [--budgets 1 4]
                            [--layouts nchw channels_last] [--dtypes fp32 bf16] [--forms auto]
                            [--hw 14] [--width 1.0]
    python bench/kw_conv.py --quick    # seconds on the CPU: checks the script, measures little
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics

import torch
from torch import nn

from searchspace.backbones.kernelwarehouse import FORMS
from searchspace.build import build, set_kw_epoch
from searchspace.genome import Genome, Stage
from trainers.measure import time_call

_AMP = contextlib.nullcontext


def _step(mod: nn.Module, x: torch.Tensor) -> None:
    mod.zero_grad(set_to_none=True)
    with _AMP():
        y = mod(x)
    y.float().sum().backward()


def bench(
    budget: float,
    batch: int,
    repeats: int,
    device: torch.device,
    hw: int = 14,
    layout: str = "nchw",
    dtype: str = "fp32",
    form: str = "auto",
    width: float = 1.0,
) -> dict:
    global _AMP
    _AMP = (
        (lambda: torch.autocast(device.type, torch.bfloat16)) if dtype == "bf16" else contextlib.nullcontext
    )
    mf = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    torch.manual_seed(0)
    model = build(Genome("resnet18", tuple(Stage(kw=budget) for _ in range(4))), width_mult=width)
    kw = model.stages[2].blocks[1].conv1  # 256 -> 256 (times width), 3x3, stride 1, warehouse of stage 3
    kw.form = form
    channels = kw.in_channels
    # Keep only what the conv needs: its attention (a submodule) and the warehouses it points at.
    holder = nn.ModuleDict({"conv": kw, "warehouses": model.kw_warehouses}).to(device).train()
    set_kw_epoch(holder, 5.0)
    plain = nn.Conv2d(channels, channels, 3, 1, 1, bias=False).to(device, memory_format=mf).train()
    x = torch.randn(batch, channels, hw, hw, device=device).contiguous(memory_format=mf).requires_grad_()
    for _ in range(2):  # warm-up (allocator, cuDNN algorithm choice)
        _step(holder["conv"], x)
        _step(plain, x)
    t_kw, t_plain = [], []
    for _ in range(repeats):  # interleaved, so drift in machine load hits both alike
        t_kw.append(time_call(lambda: _step(holder["conv"], x), device))
        t_plain.append(time_call(lambda: _step(plain, x), device))
    ratios = [a / b for a, b in zip(t_kw, t_plain)]
    n = kw.warehouse_weight.shape[0]
    return {
        "b": budget,
        "batch": batch,
        "n": n,
        "layout": layout,
        "dtype": dtype,
        "form": form,
        "c": channels,
        "plain_ms": 1e3 * statistics.median(t_plain),
        "kw_ms": 1e3 * statistics.median(t_kw),
        "ratio": statistics.median(ratios),
        "plain_img_s": batch / statistics.median(t_plain),
        "kw_img_s": batch / statistics.median(t_kw),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--budgets", type=float, nargs="+", default=[1.0, 4.0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--layouts", nargs="+", choices=("nchw", "channels_last"), default=["nchw"])
    ap.add_argument("--dtypes", nargs="+", choices=("fp32", "bf16"), default=["fp32"])
    ap.add_argument("--forms", nargs="+", choices=FORMS, default=["auto"])
    ap.add_argument("--hw", type=int, default=14, help="map side")
    ap.add_argument("--width", type=float, default=1.0, help="channel width multiplier (256 at 1.0)")
    ap.add_argument(
        "--quick", action="store_true", help="tiny sizes on the CPU, seconds: checks the script runs"
    )
    args = ap.parse_args()
    if args.quick:
        args.device, args.batches, args.budgets, args.repeats, args.hw, args.width = (
            "cpu",
            [2],
            [1.0],
            2,
            4,
            0.125,
        )
        args.layouts, args.dtypes, args.forms = ["nchw"], ["fp32"], ["auto"]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    c = max(int(256 * args.width), 1)
    print(
        f"device {device} ({torch.get_num_threads()} CPU threads), conv ~{c}->{c} 3x3 @{args.hw}x{args.hw}, fwd+bwd, "
        f"median of {args.repeats} interleaved repeats"
    )
    print(
        f"{'layout':<13} {'dtype':<5} {'form':<8} {'b':>4} {'batch':>5} {'n':>4} {'plain ms':>9} {'KW ms':>9} {'plain img/s':>12} "
        f"{'KW img/s':>10} {'KW/plain':>9}"
    )
    for layout, dtype, form, b, batch in itertools.product(
        args.layouts, args.dtypes, args.forms, args.budgets, args.batches
    ):
        r = bench(b, batch, args.repeats, device, args.hw, layout, dtype, form, args.width)
        print(
            f"{layout:<13} {dtype:<5} {form:<8} {r['b']:>4g} {r['batch']:>5} {r['n']:>4} {r['plain_ms']:>9.2f} "
            f"{r['kw_ms']:>9.2f} {r['plain_img_s']:>12.1f} {r['kw_img_s']:>10.1f} {r['ratio']:>8.2f}x"
        )


if __name__ == "__main__":
    main()
