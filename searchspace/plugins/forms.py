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


__all__ = ["counting", "counted_forms"]
