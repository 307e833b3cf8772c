"""The `bsconv` counting convention: the FLOP counter of the BSConv code the padding-free paper used.

Per leaf module, for the batch it is given (pass one image):
- Conv2d: output positions x kernel weights (MACs), plus one op per output element if it has a bias;
- Linear: input elements x out features, plus one per output element with a bias;
- BatchNorm: 2 ops per input element (1 without affine);
- ReLU (exactly nn.ReLU: ReLU6, hard-swish, hard-sigmoid and other activations count 0, as there);
- max / average pooling, adaptive or not: one op per input element.
Everything else (additions, concatenation, the SE product, activations above) counts 0.
A KernelWarehouse conv counts as the conv it assembles; its attention's layers count as above.
"""

from __future__ import annotations

import torch
from torch import nn

_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
          nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
          nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)


def _module_flops(m: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    from .plugins.kernelwarehouse import KWConv2d

    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, KWConv2d)):
        weight = m.weight.numel() if not isinstance(m, KWConv2d) else torch.Size(m.weight_shape).numel()
        return out[:, 0].numel() * weight + (out.numel() if m.bias is not None else 0)
    if isinstance(m, nn.Linear):
        return inp.numel() * m.out_features + (out.numel() if m.bias is not None else 0)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return inp.numel() * (2 if m.affine else 1)
    if isinstance(m, nn.ReLU):
        return out.numel()
    if isinstance(m, _POOLS):
        return inp.numel()
    return 0


def bsconv_flops(model: nn.Module, x: torch.Tensor) -> int:
    """Total FLOPs of `model(x)` under the BSConv counter (see the module docstring)."""
    from .plugins.kernelwarehouse import KWConv2d

    total = 0

    def hook(m, args, out):
        nonlocal total
        total += _module_flops(m, args[0], out)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, KWConv2d) or not any(True for _ in m.children())]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return int(total)


__all__ = ["bsconv_flops"]
