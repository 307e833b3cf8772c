"""Where a KernelWarehouse training step spends its time: attention, kernel assembly, conv, rest.

One forward + backward of a catalog KW design (and of its plain backbone, for scale) runs under
torch.profiler. The KW parts are labelled with record_function scopes wrapped around
KWAttention.forward, KWConv2d.assemble and the rest of KWConv2d.forward (the conv); each backward
op is charged to the part whose forward op created its autograd node (matched by sequence number).
The table gives the share of self CPU time per part, then the heaviest ops of each part.

    python bench/kw_profile.py [--design kw_resnet50_1x] [--width 0.125] [--batch 16]
                               [--resolutions 64 128] [--threads 2] [--form auto|grouped|matmul|counted]
    python bench/kw_profile.py --quick    # seconds: a narrow KW ResNet-18 at 32 px, checks the script

`--form counted` runs the authors' form (searchspace.plugins.forms.counted_forms: the grouped conv
and the attention as first written), i.e. the code before the fast forms.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
from collections import defaultdict

import torch
from torch.autograd.profiler import record_function
from torch.nn import functional as F
from torch.profiler import ProfilerActivity, profile

from searchspace import Genome, build, catalog
from searchspace.backbones import kernelwarehouse as kwm
from searchspace.plugins.forms import counted_forms

PARTS = ("attention", "assembly", "conv", "rest")
_SCOPE = "kw."


def _labelled(fn, label):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with record_function(_SCOPE + label):
            return fn(*args, **kwargs)

    return wrapper


def label_kw_parts() -> None:
    """Wrap the KW methods in profiler scopes (innermost scope wins, so 'conv' is forward minus the rest)."""
    kwm.KWAttention.forward = _labelled(kwm.KWAttention.forward, "attention")
    kwm.KWConv2d.assemble = _labelled(kwm.KWConv2d.assemble, "assembly")
    kwm.KWConv2d.forward = _labelled(kwm.KWConv2d.forward, "conv")


def _scope(event) -> str | None:
    e = event
    while e is not None:
        if e.name.startswith(_SCOPE):
            return e.name[len(_SCOPE) :]
        e = e.cpu_parent
    return None


def _backward_node(event):
    e = event
    while e is not None:
        if e.name.startswith("autograd::engine::evaluate_function:"):
            return e
        e = e.cpu_parent
    return None


def split(events) -> tuple[dict, dict]:
    """Self CPU time (us) per part, and per (part, op name)."""
    by_seq = {}
    for e in events:  # forward ops that recorded an autograd node
        if e.sequence_nr >= 0 and _backward_node(e) is None and not e.name.startswith(_SCOPE):
            by_seq.setdefault(e.sequence_nr, _scope(e) or "rest")
    parts, ops = defaultdict(float), defaultdict(float)
    for e in events:
        if e.name.startswith(_SCOPE):
            continue
        node = _backward_node(e)
        part = by_seq.get(node.sequence_nr, "rest") if node is not None else (_scope(e) or "rest")
        name = e.name + (" (bwd)" if node is not None else "")
        parts[part] += e.self_cpu_time_total
        ops[part, name] += e.self_cpu_time_total
    return parts, ops


def profile_step(model, x, y, repeats: int, counted: bool = False):
    with counted_forms() if counted else contextlib.nullcontext():
        for _ in range(2):  # warm-up
            F.cross_entropy(model(x), y).backward()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                model.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
    return prof.events()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--design", default="kw_resnet50_1x")
    ap.add_argument("--width", type=float, default=0.125)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--form", choices=(*kwm.FORMS, "counted"), default="auto", help="KW conv form")
    ap.add_argument("--top", type=int, default=4, help="heaviest ops listed per part")
    ap.add_argument(
        "--quick", action="store_true", help="tiny sizes on the CPU, seconds: checks the script runs"
    )
    args = ap.parse_args()
    if args.quick:
        args.design, args.width, args.batch, args.resolutions, args.repeats = (
            "kw_resnet18_1x",
            0.0625,
            2,
            [32],
            1,
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    label_kw_parts()
    torch.manual_seed(0)
    design = catalog.get(args.design)
    kw = build(design.genome, num_classes=100, width_mult=args.width).train()
    plain = build(Genome(design.genome.backbone), num_classes=100, width_mult=args.width).train()
    if args.form != "counted":
        for conv in kwm.kw_convs(kw):
            conv.form = args.form
    print(
        f"{args.design} width={args.width} batch={args.batch} threads={torch.get_num_threads()} "
        f"form={args.form}: self CPU time of forward+backward, {args.repeats} steps profiled"
    )
    for res in args.resolutions:
        x = torch.randn(args.batch, 3, res, res)
        y = torch.randint(0, 100, (args.batch,))
        parts, ops = split(profile_step(kw, x, y, args.repeats, args.form == "counted"))
        base = sum(split(profile_step(plain, x, y, args.repeats))[0].values())
        total = sum(parts.values())
        print(
            f"\n{res} px: KW step {total / 1e3 / args.repeats:.1f} ms, plain step {base / 1e3 / args.repeats:.1f} ms "
            f"(plain/KW time {base / total:.3f})"
        )
        print(f"  {'part':<10}{'ms/step':>9}{'share':>8}   heaviest ops")
        for part in PARTS:
            top = sorted(((t, name) for (p, name), t in ops.items() if p == part), reverse=True)[: args.top]
            listed = ", ".join(f"{name} {t / total:.0%}" for t, name in top)
            print(
                f"  {part:<10}{parts[part] / 1e3 / args.repeats:>9.1f}{parts[part] / total:>8.1%}   {listed}"
            )


if __name__ == "__main__":
    main()
