"""torch.compile for proxy runs, and the one private torch API the trainer reads.

A proxy run is short, so compilation is treated as a cost of its own: the trainer compiles the
training forward only (evaluation runs eager: other batch size, eval-mode norms, which would
each recompile), resets the compiler's caches before each run (a reused Ray worker compiles one
genome after another on shared code objects such as a block's forward, and once the recompile
limit is reached torch silently runs eager), and records how many graphs were compiled.
"""

from __future__ import annotations

import torch
from torch import nn


def reset() -> None:
    """Forget every compiled graph and guard (public API)."""
    torch.compiler.reset()


def compile_for_training(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """The compiled training forward; fixed shapes (the loop drops the ragged last batch)."""
    return torch.compile(model, backend=backend, dynamic=False)


def graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process so far (it only grows; take differences).

    Private: torch has no public counter. Kept here alone so that a torch upgrade that moves it
    breaks one test (tests/test_gpu_readiness.py) loudly instead of silently recording zero.
    """
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
