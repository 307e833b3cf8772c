"""Parameter, FLOP and activation counts of a genome's full-size target network.

Conventions (docs/modules.md, "Counting conventions"):
- `paper`: every nn.Parameter including the classifier; FLOPs and activations by fvcore on the
  backbone plus global pool (no classifier), eval mode, batch 1, one multiply-add = one FLOP.
- `full`: `paper` plus the work fvcore skips: elementwise ops (one per output element), softmax
  (three per element: exp, sum, divide), reductions and max pooling (one per input element), and
  KernelWarehouse's kernel assembly (attention @ warehouse, sum |W_l| * n MACs per image), which
  `paper` leaves out.
- `bsconv`: the padding-free paper's counter (conv MACs + bias ops + 2 per BN element + ReLU
  elements + pooling input elements), for its CIFAR tables.
- `conv_linear`: SDA-xNet's counter (conv and linear MACs plus one op per bias element).
  Activations are fvcore's under every convention.
Counts are cached by (genome, convention, resolution, classes); equal genomes have equal keys.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from math import prod

import torch
from torch import nn

from .counters import COUNTERS, hook_flops
from .errors import UserError
from .genome import Genome
from .plugins.forms import counted_forms

CONVENTIONS = ("paper", "full", "bsconv", "conv_linear")


@dataclass(frozen=True)
class Cost:
    params: int
    flops: int
    activations: int
    convention: str
    resolution: int
    num_classes: int

    def to_dict(self) -> dict:
        return asdict(self)


class _Features(nn.Module):
    """Backbone + global pool only: what the paper convention counts."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_features(x)


def _numel(v) -> int:
    shape = v.type().sizes()
    return prod(shape) if shape else 0


def _elementwise(inputs, outputs):
    return _numel(outputs[0])


def _softmax(inputs, outputs):
    return 3 * _numel(outputs[0])


def _reduction(inputs, outputs):
    return _numel(inputs[0])


# Ops fvcore leaves out that the `full` convention adds (one FLOP per element unless noted).
_FULL_HANDLES = {
    **{
        f"aten::{op}": _elementwise
        for op in (
            "add",
            "add_",
            "sub",
            "sub_",
            "mul",
            "mul_",
            "div",
            "div_",
            "sigmoid",
            "sigmoid_",
            "relu",
            "relu_",
            "hardsigmoid",
            "hardswish",
            "hardswish_",
            "hardsigmoid_",
            "clamp",
            "clamp_",
            "exp",
            "rsub",
            "abs",
        )
    },
    "aten::softmax": _softmax,
    "aten::_softmax": _softmax,
    "aten::sum": _reduction,
    "aten::mean": _reduction,
    "aten::max_pool2d": _reduction,
    "aten::amax": _reduction,
    "aten::max": _reduction,
    "aten::avg_pool2d": _reduction,
}


def _fvcore_counts(model: nn.Module, x: torch.Tensor, full: bool) -> tuple[int, int]:
    with warnings.catch_warnings():  # fvcore scripts a loss function at import; torch warns about it
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import ActivationCountAnalysis, FlopCountAnalysis

    body = _Features(model)
    flops = FlopCountAnalysis(body, x)
    if full:
        flops.set_op_handle(**_FULL_HANDLES)
    flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    acts = ActivationCountAnalysis(body, x)
    acts.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return int(flops.total()), int(acts.total())


@lru_cache(maxsize=4096)
def _cost(genome: Genome, convention: str, resolution: int, num_classes: int) -> Cost:
    from .build import build

    model = build(genome, num_classes=num_classes).eval()
    params = sum(p.numel() for p in model.parameters())
    x = torch.zeros(1, 3, resolution, resolution)
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    with torch.no_grad(), counted_forms():  # fvcore traces too, but say it: count the authors' forms
        if convention in COUNTERS:
            flops, acts = hook_flops(model, x, convention), _fvcore_counts(model, x, False)[1]
        else:
            flops, acts = _fvcore_counts(model, x, convention == "full")
            if convention == "paper" and genome.uses_kw:
                # The paper count leaves KernelWarehouse's kernel assembly out (`full` has it);
                # fvcore sees our assembly (a matmul), so take it back out here.
                from .backbones.kernelwarehouse import kw_assembly_macs

                flops -= kw_assembly_macs(model)
    return Cost(params, flops, acts, convention, resolution, num_classes)


def cost(
    genome: Genome, convention: str = "paper", resolution: int | None = None, num_classes: int | None = None
) -> Cost:
    """Counts for the full-size network of `genome` at its target (or the given) resolution and classes."""
    from .backbones.specs import BACKBONE_SPECS

    if convention not in CONVENTIONS:
        raise UserError(f"convention: {convention!r} unknown (allowed: {', '.join(CONVENTIONS)})")
    genome.validate()
    spec = BACKBONE_SPECS[genome.backbone]
    resolution = spec.target_resolution if resolution is None else resolution
    num_classes = spec.target_classes if num_classes is None else num_classes
    if not isinstance(resolution, int) or resolution < 32:
        raise UserError(f"resolution: {resolution!r} must be an integer >= 32")
    return _cost(genome, convention, resolution, num_classes)


def stagewise(genome: Genome, count) -> dict:
    """Counts of `genome` as the plain backbone's plus, per stage, what that stage's modules add alone;
    `count(genome) -> {metric: value}` counts one network. Exact when stages do not interact (block
    plugins, fusions, stage modules and per-stage KW change only their own stage): callers check it
    against direct counts before trusting it. One count per distinct stage instead of one per genome."""
    from dataclasses import replace

    plain = replace(genome, stages=tuple(type(s)() for s in genome.stages))
    base = count(plain)
    total = dict(base)
    for i, st in enumerate(genome.stages):
        if st == type(st)():
            continue
        one = count(
            plain.with_stage(i, **{f: getattr(st, f) for f in ("plugins", "fusion", "stage_module", "kw")})
        )
        for m in total:
            total[m] += one[m] - base[m]
    return total
