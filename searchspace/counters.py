"""Per-module FLOP counters of other papers, run with forward hooks on one image.

`bsconv`: the counter of the BSConv code the padding-free paper used. Per leaf module:
- Conv2d: output positions x kernel weights (MACs), plus one op per output element if it has a bias;
- Linear: input elements x out features, plus one per output element with a bias;
- BatchNorm: 2 ops per input element (1 without affine);
- ReLU (exactly nn.ReLU: ReLU6, hard-swish, hard-sigmoid and other activations count 0, as there);
- max / average pooling, adaptive or not: one op per input element.
Everything else (additions, concatenation, the SE product, activations above) counts 0.
A KernelWarehouse conv counts as the conv it assembles; its attention's layers count as above.

`conv_linear`: SDA-xNet's tables: conv and linear MACs plus one op per bias element, nothing else
(the classifier included). It gives SDA-ResNet-86's published 3.88 G (3,880,021,224); adding one
op per BatchNorm element, as their counter is often summarised, would give 3.897 G.
See docs/modules.md ("Counting conventions") and docs/published.md.
"""

from __future__ import annotations

import torch
from torch import nn

from .plugins.forms import counted_forms

_POOLS = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)


COUNTERS = ("bsconv", "conv_linear")


def _module_flops(m: nn.Module, inp: torch.Tensor, out: torch.Tensor, counter: str) -> int:
    from .backbones.kernelwarehouse import KWConv2d

    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, KWConv2d)):
        weight = m.weight.numel() if not isinstance(m, KWConv2d) else torch.Size(m.weight_shape).numel()
        return out[:, 0].numel() * weight + (out.numel() if m.bias is not None else 0)
    if isinstance(m, nn.Linear):
        return inp.numel() * m.out_features + (out.numel() if m.bias is not None else 0)
    if counter == "conv_linear":
        return 0
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return inp.numel() * (2 if m.affine else 1)
    if isinstance(m, nn.ReLU):
        return out.numel()
    if isinstance(m, _POOLS):
        return inp.numel()
    return 0


def hook_flops(model: nn.Module, x: torch.Tensor, counter: str = "bsconv") -> int:
    """Total FLOPs of `model(x)` under one of the COUNTERS (see the module docstring)."""
    from .backbones.kernelwarehouse import KWConv2d

    total = 0

    def hook(m, args, out):
        nonlocal total
        total += _module_flops(m, args[0], out, counter)

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, KWConv2d) or not any(True for _ in m.children())
    ]
    try:
        with torch.no_grad(), counted_forms():  # the authors' arrangement of each module
            model(x)
    finally:
        for h in handles:
            h.remove()
    return int(total)


__all__ = ["COUNTERS", "hook_flops"]
