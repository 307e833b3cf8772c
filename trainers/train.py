"""Proxy training: one genome, one fidelity, the images already on the device.

The loop follows airbench: a Loader (trainers.loader) keeps the uint8 set on the device and draws
each epoch's order and augmentation at once from one seeded torch.Generator; a step is batch ->
forward/backward/step, with no per-image Python and no host sync.

    python -m trainers.train resnet18 --epochs 2 --resolution 32 --width 0.25 --num-classes 10 --json
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import re
import resource
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from searchspace import catalog, set_kw_epoch
from searchspace.cli import argument_parser, cli_main
from searchspace.errors import UserError

from . import compiler
from .data import DataSpec, ImageData, load_data
from .loader import Loader
from .measure import autocast_for, memory_format_for, pick_device, synchronize
from .record import TRUSTED, Status

# The uint8 images go to the device when they take at most this share of the run's device memory
# (the whole device, or its fraction when trials share a GPU); larger sets stay in host memory and
# each batch is copied over (pinned, asynchronously). ImageNet-1k at 64 px is ~16 GB: on the device
# of an 80 GB GPU alone, per batch for four trials packed on it.
DATA_ON_DEVICE_SHARE = 0.25
# Allocation failures that reach Python as a plain RuntimeError (cuBLAS/cuDNN handles and
# workspaces, CUDA runtime calls, the CPU allocator) rather than torch.OutOfMemoryError.
OOM_MESSAGES = (
    "out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUBLAS_STATUS_NOT_INITIALIZED when calling `cublasCreate(handle)`",  # handle creation OOM
    "can't allocate memory",
    "not enough memory",
)


def _integer(v, what: str, lo: int) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise UserError(f"{what}: expected an integer >= {lo}, got {v!r}")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(v, what: str, lo: float = 0.0, hi: float | None = None, strict: bool = True) -> None:
    ok = _is_number(v) and (v > lo if strict else v >= lo)
    if not ok or (hi is not None and v > hi):
        raise UserError(
            f"{what}: expected a number {'>' if strict else '>='} {lo}{f' and <= {hi}' if hi else ''}, got {v!r}"
        )


@dataclass(frozen=True)
class Fidelity:
    """How a genome is proxy-trained. Defaults: a CPU-friendly proxy of ResNet-style networks.

    The one set of rules for a fidelity: a study's [fidelity] table is built into this class, so a bad
    value is one UserError naming the field, whether it comes from a config, the CLI or Python."""

    epochs: int = 10
    resolution: int = 32
    width: float = 0.25  # channel width multiplier of the proxy network (<= 4)
    batch_size: int = 128
    lr: float = 0.1  # peak learning rate, reached after the warm-up
    optimizer: str = "sgd"  # "sgd" (Nesterov momentum) or "adamw"
    momentum: float = 0.9
    weight_decay: float = 5e-4  # not applied to norm weights and biases
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0  # linear warm-up, then cosine to zero (per iteration)
    augment: str = "crop"  # "crop" (pad + random crop + flip), "rrc" (random-resized crop + flip), "none"
    crop_pad: int | None = None  # "crop" padding; None = resolution // 8
    kw_temperature_epochs: float | None = None  # KernelWarehouse tau 1 -> 0; None = 20% of the epochs
    eval_batch_size: int = 512
    compile: bool = False  # torch.compile the model (pays off on CUDA for long runs)
    deterministic: bool = False  # also on CUDA (slower); CPU runs are always reproducible

    def __post_init__(self):
        _integer(self.epochs, "fidelity.epochs", 1)
        _integer(self.resolution, "fidelity.resolution", 8)
        _number(self.width, "fidelity.width", hi=4)
        _integer(self.batch_size, "fidelity.batch_size", 2)  # batch norm needs two images
        _number(self.lr, "fidelity.lr")
        _number(self.momentum, "fidelity.momentum", strict=False)
        _number(self.weight_decay, "fidelity.weight_decay", strict=False)
        _number(self.warmup_epochs, "fidelity.warmup_epochs", strict=False)
        _integer(self.eval_batch_size, "fidelity.eval_batch_size", 1)
        checks = {
            "optimizer": self.optimizer in ("sgd", "adamw"),
            "label_smoothing": _is_number(self.label_smoothing) and 0 <= self.label_smoothing < 1,
            "augment": self.augment in ("crop", "rrc", "none"),
            "crop_pad": self.crop_pad is None
            or (
                isinstance(self.crop_pad, int)
                and not isinstance(self.crop_pad, bool)
                and 0 <= self.crop_pad < self.resolution
            ),
            "kw_temperature_epochs": self.kw_temperature_epochs is None
            or (_is_number(self.kw_temperature_epochs) and self.kw_temperature_epochs >= 0),
            "compile": isinstance(self.compile, bool),
            "deterministic": isinstance(self.deterministic, bool),
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise UserError(f"fidelity.{bad[0]}: bad value {getattr(self, bad[0])!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Fidelity:
        if "width_mult" in d and "width" not in d:  # its name in records written before it was renamed
            d = {("width" if k == "width_mult" else k): v for k, v in d.items()}
        known = {f.name for f in fields(cls)}
        if set(d) - known:
            raise UserError(f"fidelity: unknown keys {sorted(set(d) - known)} (allowed: {sorted(known)})")
        return cls(**d)


@dataclass
class TrainResult:
    status: Status  # one of trainers.record.TRAINER_OUTCOMES
    top1: float | None  # validation accuracy in [0, 1] after the last completed epoch; None unless trained
    top5: float | None  # top-min(5, classes)
    loss: float | None  # mean training loss of the last completed epoch
    val_loss: float | None
    epochs: int  # epochs completed
    images_per_s: float  # training images per second (training steps only, no evaluation)
    wall_s: float  # everything: data to device, build, training, evaluation
    train_s: float  # training steps only
    peak_mem_mb: float  # CUDA: peak allocated by this run; CPU: the process's peak RSS
    device: str
    params: int
    seed: int
    num_classes: int
    skipped_images: int
    fidelity: dict = field(default_factory=dict)
    history: list = field(default_factory=list)  # per epoch: the dict passed to `report`
    warmup_s: float = (
        0.0  # the first training step (compilation, kernel choice): not in train_s / images_per_s
    )
    compiled_graphs: int = 0  # graphs torch.compile built for this run (0: ran eager)
    deterministic_requested: bool = False  # always on the CPU; on CUDA when fidelity.deterministic
    deterministic: bool | None = None  # requested and achieved: no op reported a nondeterministic kernel
    nondeterministic_ops: list = field(default_factory=list)  # what torch reported (CUDA)
    data_on_device: bool = True  # False: the images stayed in host memory, copied per batch
    memory_fraction: float | None = None  # the cap set on this process's CUDA memory (packed trials)
    latency_ms: float | None = None  # with measure_latency: batch-1 inference at the proxy resolution

    def to_dict(self) -> dict:
        return asdict(self)


def build_model(genome, num_classes: int, width_mult: float, recipe=None) -> nn.Module:
    """A Genome or a catalog name via searchspace.build; an nn.Module is used as it is.

    `recipe` (a searchspace.Recipe) is the one built with when given. Otherwise a catalog name is
    built with its design's recipe (the authors' initialisation, dropout and drop-path;
    searchspace.recipe) and a Genome with the default recipe.
    """
    if isinstance(genome, nn.Module):
        return genome
    from searchspace import build

    if isinstance(genome, str):
        _, genome, design = catalog.resolve(genome)
        if recipe is None and design is not None:
            recipe = design.recipe
    return build(genome, num_classes=num_classes, width_mult=width_mult, recipe=recipe)


def train(
    genome,
    fidelity: Fidelity | None = None,
    data: ImageData | DataSpec | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    report: Callable[[int, dict], bool | None] | None = None,
    evaluate_every_epoch: bool = True,
    memory_fraction: float | None = None,
    data_on_device: bool | None = None,
    measure_latency: bool = False,
    recipe=None,
) -> TrainResult:
    """Proxy-train `genome` (Genome, catalog name or nn.Module) and evaluate it on the val split.

    `report(epoch, metrics)` is called after every epoch (metrics: loss, top1, top5, val_loss, lr,
    images_per_s, train_s, cpu_s); returning False stops the run with status "stopped". With
    `evaluate_every_epoch=False` the val split is evaluated after the last epoch only (top1 and
    friends are then missing from earlier reports). A non-finite loss
    gives "diverged" and running out of memory "oom"; neither raises.

    GPU sharing: `memory_fraction` in (0, 1) caps this process's CUDA memory (a trial packed on a
    shared GPU cannot push its neighbours out); `data_on_device` None decides by
    DATA_ON_DEVICE_SHARE. `measure_latency` fills `latency_ms` (trainers.measure.inference_latency
    at batch 1) from the trained model before it is released. `recipe` (a searchspace.Recipe): the
    initialisation and regularisers to build with (build_model). The run frees its model, optimizer
    and data before returning, also after an OOM or an exception.
    """
    fid = fidelity or Fidelity()
    t_start = time.perf_counter()
    dev = pick_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda: no CUDA device available here")
    deterministic = dev.type == "cpu" or fid.deterministic
    cublas_ok = (
        _cublas_deterministic_config() if dev.type == "cuda" and deterministic else True
    )  # before CUDA starts
    if dev.type == "cuda":
        # the memory-fraction cap takes an indexed device only; "cuda" is the current one
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if memory_fraction is not None and 0 < memory_fraction < 1:
            torch.cuda.set_per_process_memory_fraction(memory_fraction, dev)
        release_memory(dev)  # a reused worker: what the last run left in the allocator's cache
        torch.cuda.reset_peak_memory_stats(dev)
    if not isinstance(data, ImageData):
        data = load_data(data, fid.resolution)
    data = data.at(fid.resolution)
    torch.manual_seed(seed)  # the initialisation
    model = build_model(genome, data.num_classes, fid.width, recipe)
    base = dict(
        device=str(dev),
        params=sum(p.numel() for p in model.parameters()),
        seed=seed,
        num_classes=data.num_classes,
        skipped_images=len(data.skipped),
        fidelity=fid.to_dict(),
    )
    if data_on_device is None:
        data_on_device = dev.type != "cuda" or data_fits_on_device(
            _nbytes(data), torch.cuda.get_device_properties(dev).total_memory, memory_fraction
        )
    run = _Run(model, fid, data, dev, seed, report, evaluate_every_epoch, data_on_device)
    del model  # `run` owns it, so that releasing the run frees everything
    oom, latency = False, None
    graphs0 = compiler.graphs_compiled() if fid.compile else 0
    try:
        with _determinism(deterministic, dev) as det:
            try:
                run.fit()
            except Exception as e:
                if not is_out_of_memory(e):
                    raise
                oom = True  # handled below, outside the except block, so the tensors can be freed
            peak = _peak_memory_mb(dev)  # of the training, before the latency's eval copy
            if measure_latency and not oom:
                latency = _latency(run, dev)
    finally:
        run.release()  # also when fit raised: the traceback must not keep the model on the device
        release_memory(dev)
    if oom:
        run.status = Status.OOM
    last = run.history[-1] if run.history else {}
    trusted = run.status in TRUSTED
    nondet = sorted(det["ops"]) + (
        [] if cublas_ok else ["cuBLAS (CUBLAS_WORKSPACE_CONFIG set after CUDA started)"]
    )
    return TrainResult(
        status=run.status,
        top1=last.get("top1") if trusted else None,
        top5=last.get("top5") if trusted else None,
        loss=last.get("loss"),
        val_loss=last.get("val_loss") if trusted else None,
        epochs=run.epochs_done,
        images_per_s=run.images / run.train_s if run.train_s and run.images else 0.0,
        wall_s=time.perf_counter() - t_start,
        train_s=run.train_s,
        peak_mem_mb=peak,
        history=run.history,
        warmup_s=run.warmup_s,
        compiled_graphs=compiler.graphs_compiled() - graphs0 if fid.compile else 0,
        deterministic_requested=deterministic,
        deterministic=deterministic and not nondet,
        nondeterministic_ops=nondet,
        data_on_device=data_on_device,
        memory_fraction=memory_fraction if dev.type == "cuda" else None,
        latency_ms=latency,
        **base,
    )


def is_out_of_memory(e: BaseException) -> bool:
    """Whether `e` means the device (or host) ran out of memory: a property of the genome at this
    batch size, recorded as status "oom", not as an error."""
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(m.lower() in text for m in OOM_MESSAGES)


def release_memory(dev) -> None:
    """On CUDA: collect garbage, then hand the allocator's cached blocks back (neighbours on a shared
    GPU can use them); call after dropping the references. On CPU the dropped model is freed by its
    reference counts, and a full collection (about 0.14 s with torch loaded) would be most of a short
    trial's overhead."""
    if torch.device(dev).type == "cuda":
        gc.collect()
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()


def data_fits_on_device(nbytes: int, device_bytes: int, memory_fraction: float | None = None) -> bool:
    """Whether `nbytes` of images take at most DATA_ON_DEVICE_SHARE of the device memory this run may
    use (`device_bytes`, times its fraction when packed)."""
    share = memory_fraction if memory_fraction and memory_fraction < 1 else 1.0
    return nbytes <= DATA_ON_DEVICE_SHARE * device_bytes * share


def _peak_memory_mb(dev) -> float:
    """CUDA: peak allocated since the run's reset; CPU: the process's peak RSS."""
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _nbytes(data: ImageData) -> int:
    return sum(t.numel() * t.element_size() for t in (data.train_x, data.train_y, data.val_x, data.val_y))


def _latency(run, dev) -> float | None:
    from .measure import inference_latency

    try:
        return inference_latency(run.model, resolution=run.fid.resolution, batch_sizes=(1,), device=dev)[1]
    except Exception as e:  # e.g. out of memory: no latency (a FAIL only where latency_ms is an objective)
        if not is_out_of_memory(e):
            warnings.warn(f"latency not measured: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)
        return None


def _optimizer(model: nn.Module, fid: Fidelity) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum or AdamW; norm weights and biases (1-d) get no weight decay."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": fid.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if fid.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=fid.lr, momentum=fid.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=fid.lr)


def _lr_schedule(fid: Fidelity, steps: int) -> Callable[[int], float]:
    """lr_at(iteration): a linear warm-up to fid.lr, then a cosine to zero (per iteration)."""
    total = steps * fid.epochs
    warm = min(round(fid.warmup_epochs * steps), total // 4)  # short runs still get their cosine decay

    def lr_at(it: int) -> float:
        if it < warm:
            return fid.lr * (it + 1) / warm
        return fid.lr * 0.5 * (1 + math.cos(math.pi * (it - warm) / max(1, total - warm)))

    return lr_at


class _Run:
    """The state of one training run; `fit` is the hot loop."""

    def __init__(
        self,
        model,
        fid: Fidelity,
        data: ImageData,
        dev,
        seed,
        report,
        evaluate_every_epoch=True,
        data_on_device: bool = True,
    ):
        self.model, self.fid, self.data, self.dev, self.report = model, fid, data, dev, report
        self.evaluate_every_epoch = evaluate_every_epoch
        self.on_device = data_on_device
        self.gen = torch.Generator().manual_seed(seed)  # data order and augmentation
        self.status, self.history, self.epochs_done, self.images, self.train_s = Status.OK, [], 0, 0, 0.0
        self.warmup_s = 0.0
        self.opt = self.step_model = self.train_set = self.val_set = None

    def release(self):
        self.model = self.opt = self.step_model = self.train_set = self.val_set = self.data = None

    def _setup(self):
        """Model, images and optimizer on the device (inside fit: running out of memory here is an "oom")."""
        fid, dev = self.fid, self.dev
        self.mf = memory_format_for(self.model, dev)  # channels_last on CUDA unless KernelWarehouse
        self.amp = autocast_for(dev)
        self.model = self.model.to(dev, memory_format=self.mf)
        pad = (fid.resolution // 8 if fid.crop_pad is None else fid.crop_pad) if fid.augment == "crop" else 0
        self.train_set = Loader(
            self.data.train_x,
            self.data.train_y,
            fid.batch_size,
            dev,
            augment=fid.augment,
            crop_pad=pad,
            shuffle=True,
            generator=self.gen,
            on_device=self.on_device,
            memory_format=self.mf,
        )
        self.val_set = Loader(
            self.data.val_x,
            self.data.val_y,
            fid.eval_batch_size,
            dev,
            on_device=self.on_device,
            memory_format=self.mf,
            norm=self.train_set.norm,
        )
        self.opt = _optimizer(self.model, fid)
        if fid.compile:
            compiler.reset()  # see trainers/compiler.py: a reused worker would reach the recompile limit
            self.step_model = compiler.compile_for_training(self.model)
        else:
            self.step_model = self.model

    def fit(self):
        from tqdm.auto import tqdm

        self._setup()
        fid, dev, model, opt, batches = self.fid, self.dev, self.model, self.opt, self.train_set
        steps, bs = len(batches), batches.batch_size
        lr_at = _lr_schedule(fid, steps)
        kw_t = fid.epochs * 0.2 if fid.kw_temperature_epochs is None else fid.kw_temperature_epochs
        bar = tqdm(range(fid.epochs), desc="train", unit="ep", disable=not sys.stderr.isatty(), leave=False)
        for epoch in bar:
            t0, c0 = time.perf_counter(), time.process_time()
            model.train()
            loss_sum, timed_steps = torch.zeros((), device=dev), steps
            for i, (x, y) in enumerate(batches):
                it = epoch * steps + i
                for group in opt.param_groups:
                    group["lr"] = lr_at(it)
                set_kw_epoch(model, it / steps, kw_t)
                with self.amp():
                    out = self.step_model(x)
                loss = F.cross_entropy(out.float(), y, label_smoothing=fid.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach()
                if it == 0 and steps > 1:  # compilation, kernel choice, allocator growth: timed apart
                    synchronize(dev)  # the one extra sync of a run
                    now = time.perf_counter()
                    self.warmup_s, t0, timed_steps = now - t0, now, steps - 1
            mean_loss = loss_sum.item() / steps  # the one host sync of the epoch
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            self.train_s += dt
            self.images += timed_steps * bs
            metrics = {
                "epoch": epoch + 1,
                "loss": mean_loss,
                "lr": lr_at((epoch + 1) * steps - 1),
                "images_per_s": timed_steps * bs / dt if dt > 0 else 0.0,
                "train_s": dt,
                "cpu_s": cpu,
            }  # cpu_s: this process, all threads
            if not self._end_epoch(metrics, bar):
                return

    def _end_epoch(self, metrics: dict, bar) -> bool:
        """Record the epoch (evaluated when someone reads it, or at the end); False ends the run."""
        epoch, last = metrics["epoch"], metrics["epoch"] == self.fid.epochs
        if not math.isfinite(metrics["loss"]):
            self.status, metrics["loss"] = Status.DIVERGED, None  # None: results stay strict JSON
            self.history.append(metrics)
            self.epochs_done = epoch
            return False
        if (
            self.report is not None and self.evaluate_every_epoch
        ) or last:  # ~15% of an epoch: only when read
            metrics.update(self.evaluate())
        self.history.append(metrics)
        self.epochs_done = epoch
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", top1=f"{metrics.get('top1', float('nan')):.3f}")
        if self.report is not None and self.report(epoch, dict(metrics)) is False and not last:
            self.status = Status.STOPPED
            return False
        return True

    @torch.inference_mode()
    def evaluate(self) -> dict:
        """Eager, even when training is compiled: eval-mode norms and another batch size would recompile."""
        self.model.eval()
        k = min(5, self.data.num_classes)
        correct1 = correct5 = 0
        loss = torch.zeros((), device=self.dev)
        for x, y in self.val_set:
            with self.amp():
                out = self.model(x).float()
            loss += F.cross_entropy(out, y, reduction="sum")
            hit = out.topk(k, 1).indices == y[:, None]
            correct1 += hit[:, 0].sum()
            correct5 += hit.any(1).sum()
        n = len(self.val_set.labels)
        return {"top1": int(correct1) / n, "top5": int(correct5) / n, "val_loss": loss.item() / n}


_NONDETERMINISTIC = re.compile(r"(\S+) does not have a deterministic implementation")
CUBLAS_DETERMINISTIC = (":4096:8", ":16:8")


def _cublas_deterministic_config() -> bool:
    """Set CUBLAS_WORKSPACE_CONFIG for deterministic cuBLAS; it only takes effect before CUDA starts in
    this process, so returns False when it had to be set later (a reused worker of a non-deterministic
    study)."""
    if os.environ.get("CUBLAS_WORKSPACE_CONFIG") in CUBLAS_DETERMINISTIC:
        return True
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_DETERMINISTIC[0]
    return not torch.cuda.is_initialized()


@contextlib.contextmanager
def _determinism(on: bool, dev):
    """torch.use_deterministic_algorithms for this run only, warn-only (never fails a run): the ops
    without a deterministic kernel (on CUDA: adaptive pooling backward, reflect padding, NLL loss and
    others) are collected into the yielded {"ops": set}, so a result can say it was not achieved."""
    prev, prev_warn = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    prev_bench, prev_det = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    found = {"ops": set()}
    with contextlib.ExitStack() as stack:
        if on:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
            stack.enter_context(warnings.catch_warnings())
            shown = warnings.showwarning

            def collect(message, category, filename, lineno, file=None, line=None):
                text = str(message)
                if "deterministic" in text:
                    m = _NONDETERMINISTIC.search(text)
                    found["ops"].add(m.group(1) if m else text.split(". ")[0][:120])
                else:
                    shown(message, category, filename, lineno, file, line)

            warnings.showwarning = collect
            warnings.filterwarnings("always", message=".*deterministic")  # every op, not once per call site
        elif dev.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fastest kernels for the fixed shapes
        try:
            yield found
        finally:
            torch.use_deterministic_algorithms(prev, warn_only=prev_warn)
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = prev_bench, prev_det


# --- command line ------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argument_parser(prog="python -m trainers.train", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "genome", metavar="NAME_OR_GENOME_JSON", help="catalog name, genome .json file, or inline JSON"
    )
    d = Fidelity()
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--resolution", type=int, default=d.resolution)
    p.add_argument("--width", type=float, default=d.width, help="width multiplier of the proxy network")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default=d.optimizer)
    p.add_argument("--augment", choices=("crop", "rrc", "none"), default=d.augment)
    p.add_argument("--compile", action="store_true")
    p.add_argument(
        "--data-root", help="ImageFolder tree with train/ and val/ (default: the bundled Imagenette-64)"
    )
    p.add_argument("--num-classes", type=int, help="keep the first K classes (sorted)")
    p.add_argument("--classes-file", help="class ids to keep, one per line")
    p.add_argument("--max-per-class", type=int, help="cap on training images per class")
    p.add_argument("--device", choices=("cpu", "cuda"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    fid = Fidelity(
        epochs=a.epochs,
        resolution=a.resolution,
        width=a.width,
        batch_size=a.batch_size,
        lr=a.lr,
        optimizer=a.optimizer,
        augment=a.augment,
        compile=a.compile,
    )
    spec = DataSpec(
        root=a.data_root,
        num_classes=a.num_classes,
        classes_file=a.classes_file,
        max_per_class=a.max_per_class,
    )
    genome = catalog.resolve(a.genome)[1]
    data = load_data(spec, fid.resolution)

    def show(epoch, m):
        if not a.json and not sys.stderr.isatty():  # the bar shows progress on a terminal
            print(
                f"epoch {epoch}: loss {m['loss']:.4f} top1 {m['top1']:.4f} ({m['images_per_s']:.0f} img/s)",
                flush=True,
            )

    res = train(genome, fid, data, device=a.device, seed=a.seed, report=show)
    if a.json:
        print(json.dumps({k: v for k, v in res.to_dict().items() if k != "history"}))
    else:
        top = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        print(
            f"status {res.status}  top1 {top(res.top1)}  top5 {top(res.top5)}  loss {top(res.loss)}  "
            f"epochs {res.epochs}  {res.images_per_s:.0f} img/s  train {res.train_s:.1f}s  wall {res.wall_s:.1f}s  "
            f"params {res.params}  peak {res.peak_mem_mb:.0f} MB  device {res.device}"
        )
    return 0 if res.status in TRUSTED else 1


if __name__ == "__main__":
    cli_main(main)
