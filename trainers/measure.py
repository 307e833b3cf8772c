"""Measured cost of a model on the machine at hand: training throughput and inference latency.

Each figure is a warm-up followed by the median of repeats (CUDA events on a GPU, perf_counter on
the CPU), so one slow repeat (another process, a clock change) does not move it. Usable as extra
objectives next to the paper-convention FLOPs and params of searchspace.cost.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn


def pick_device(device=None) -> torch.device:
    """`device`, or CUDA when there is one, else the CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def autocast_for(device):
    """A factory of the context a step runs in: bf16 autocast on CUDA (the trainer's precision), none on the CPU."""
    if torch.device(device).type == "cuda":
        return lambda: torch.autocast("cuda", torch.bfloat16)
    return contextlib.nullcontext


def synchronize(device) -> None:
    """Wait for the work this process queued on a CUDA device (nothing to wait for on the CPU), so that
    a host clock read next counts it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Wall and CPU (this process, all threads) seconds of a `with` block; on CUDA the device is
    synchronised on entry and exit, so the window holds exactly the block's kernels."""

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self.wall_s = self.cpu_s = 0.0

    def __enter__(self) -> Timer:
        synchronize(self.device)
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.wall_s, self.cpu_s = time.perf_counter() - self._wall, time.process_time() - self._cpu


def time_call(fn, device="cpu") -> float:
    """Wall seconds of one call of `fn`, with the CUDA device synchronised around it."""
    with Timer(device) as t:
        fn()
    return t.wall_s


def _setup(model: nn.Module, device):
    dev = pick_device(device)
    mf = memory_format_for(model, dev)
    return model.to(dev, memory_format=mf), dev, mf, autocast_for(dev)


def _timed(fn, dev, warmup: int, repeats: int) -> float:
    """Median seconds of one call of `fn` after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if dev.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(dev)  # nothing queued earlier by this process falls in the window
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            times.append(time_call(fn, dev))
    return statistics.median(times)


def bare_train_step(
    model: nn.Module,
    batch_size: int,
    resolution: int,
    device=None,
    num_classes: int | None = None,
    lr: float = 0.01,
    label_smoothing: float = 0.1,
):
    """A closure doing forward, backward and an SGD step on pre-made tensors: the floor a trainer is
    compared with. Returns (step, device)."""
    model, dev, mf, amp = _setup(model, device)
    model.train()
    x = torch.randn(batch_size, 3, resolution, resolution, device=dev).contiguous(memory_format=mf)
    with torch.no_grad():
        k = num_classes or model(x[:2]).shape[1]
    y = torch.randint(0, k, (batch_size,), device=dev)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def step():
        with amp():
            out = model(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, dev


def train_throughput(
    model: nn.Module,
    batch_size: int = 128,
    resolution: int = 32,
    device=None,
    steps: int = 5,
    warmup: int = 2,
    repeats: int = 3,
) -> float:
    """Training images/s of forward + backward + SGD step (blocks of `steps`; median block).

    Note: trains `model` in place on random data; pass a copy if its weights matter."""
    step, dev = bare_train_step(model, batch_size, resolution, device)

    def block():
        for _ in range(steps):
            step()

    return (
        batch_size * steps / _timed(block, dev, max(1, -(-warmup // steps)), repeats)
    )  # warm-up in whole blocks


def inference_dtype(device) -> torch.dtype:
    """What a deployed model would run in: bf16 on CUDA (as the trainer's autocast), fp32 on the CPU."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def inference_latency(
    model: nn.Module,
    resolution: int = 224,
    batch_sizes=(1, 32),
    device=None,
    warmup: int = 3,
    repeats: int = 10,
    dtype: torch.dtype | None = None,
) -> dict[int, float]:
    """Median milliseconds of one forward pass in eval mode, for each batch size.

    Times an eval copy cast once to `dtype` (default `inference_dtype`), so no autocast re-casts the
    weights inside the timed call; `model` itself is left as it was. On CUDA the window is CUDA events
    after a synchronize: it holds this process's kernels only, but on a GPU shared with other trials
    (fractional gpus_per_trial) their kernels run concurrently and slow these down: compare latencies
    only between trials that ran alone on their GPU, or all packed alike.
    """
    dev = pick_device(device)
    dtype = dtype or inference_dtype(dev)
    mf = memory_format_for(model, dev)
    net = copy.deepcopy(model).to(dev, dtype=dtype, memory_format=mf).eval()
    out = {}
    with torch.inference_mode():
        for b in batch_sizes:
            x = torch.randn(b, 3, resolution, resolution, device=dev, dtype=dtype).contiguous(
                memory_format=mf
            )
            out[b] = _timed(lambda: net(x), dev, warmup, repeats) * 1000
    return out


def memory_format_for(model: nn.Module, device) -> torch.memory_format:
    """channels_last on CUDA (tensor-core convs), except for networks with KernelWarehouse convs: those
    run the batch as one grouped conv in NCHW, and every KW conv of a channels_last network would
    convert its input and output (bench/kw_conv.py --channels-last measures the difference)."""
    from searchspace.backbones.kernelwarehouse import KWConv2d

    if torch.device(device).type != "cuda" or any(isinstance(m, KWConv2d) for m in model.modules()):
        return torch.contiguous_format
    return torch.channels_last
