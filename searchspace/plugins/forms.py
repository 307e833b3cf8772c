"""Counted forms and fast forms of a module's computation.

Some modules here compute the same numbers two ways. The *counted* form is written as the authors'
code is, so that fvcore and the hook counters count what the published FLOPs count (DSNet's outer
product as a matmul, MSA's three pooled branches as three pools and two upsamplings). The *fast*
form is an equivalent arrangement with fewer passes over full-size maps, which is what trains.
The cost model and the counters always run the counted form; tests check that the two agree to
float tolerance with the same weights, in training and evaluation mode, forward and backward.
"""

from __future__ import annotations

import contextlib
import threading

import torch
import torch.nn.functional as F
from torch import nn

_state = threading.local()


def counting() -> bool:
    """True while FLOPs are being counted (a counter asked for it, or a JIT trace as fvcore's)."""
    return getattr(_state, "counting", False) or torch.jit.is_tracing()


@contextlib.contextmanager
def counted_forms():
    """Run modules in their counted (authors') form inside this block."""
    previous = getattr(_state, "counting", False)
    _state.counting = True
    try:
        yield
    finally:
        _state.counting = previous


def pointwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """`conv(x)` for a 1x1 conv; on a pooled [B, C, 1, 1] map it runs as a matrix product.

    Same numbers, but on CPU a convolution's backward on 1x1 maps costs several times a linear
    layer's (one thread, C = 256: 300 us against 80 us), and squeeze paths call it in every block.
    The counted form keeps the conv, so the counters see what the papers count.
    """
    if (
        counting()
        or x.shape[-2:] != (1, 1)
        or conv.kernel_size != (1, 1)
        or conv.padding != (0, 0)
        or conv.groups != 1
    ):
        return conv(x)
    return F.linear(x.flatten(1), conv.weight.flatten(1), conv.bias).view(x.shape[0], -1, 1, 1)


__all__ = ["counting", "counted_forms", "pointwise"]
