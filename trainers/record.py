"""One trial's record: its status values and its fields, declared once.

The trainable (studies.trainable) fills a TrialRecord and reports it; the driver's searcher
(studies.search) stores the fields marked `attr` as Optuna user attrs; analysis.load_study reads the
fields marked `column` into its table. RESULT_ATTRS and ATTR_COLUMNS there are derived from here.

A bottom module: it imports nothing of studies or analysis (nor torch), so every layer may use it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from typing import Any


class Status(enum.StrEnum):
    """A trial's user attr "status". A str: stored and compared as the plain word, so journals
    written before this enum read the same."""

    RUNNING = "running"  # reported while the trial trains
    OK = "ok"  # trained for every epoch
    DIVERGED = "diverged"  # non-finite loss: COMPLETE at chance-level top-1 (studies.search)
    STOPPED = "stopped"  # the trainer's report callback stopped it early: stored as PRUNED
    OOM = "oom"  # out of memory at the protocol's batch size: not the network's fault
    ERROR = "error"  # raised, or the worker died
    PRUNED = "pruned"  # stopped early (ASHA, or STOPPED): a partial accuracy, never on a front
    INFEASIBLE = "infeasible"  # over a [constraints] limit: costs recorded, never trained
    INTERRUPTED = "interrupted"  # its driver died: requeued (studies.storage.recover)


# What trainers.train's TrainResult.status may be.
TRAINER_OUTCOMES = (Status.OK, Status.DIVERGED, Status.OOM, Status.STOPPED)
# Trained to the last epoch: a benchmark table's row (diverged ones at chance level).
TRAINED = (Status.OK, Status.DIVERGED)
# Trainer outcomes whose accuracy is a measurement (of fewer epochs when stopped).
TRUSTED = (Status.OK, Status.STOPPED)
# Stored as Optuna FAIL.
FAILED = (Status.ERROR, Status.OOM)
# Stored COMPLETE so the sampler learns from them, but no measured accuracy: never on a front.
UNMEASURED = (Status.DIVERGED, Status.INFEASIBLE)
# Finished trials that do not count towards budget.trials: requeued, or never trained.
NOT_COUNTED = (Status.INTERRUPTED, Status.INFEASIBLE)


class _Unset:
    """A field not known yet: left out of the reported dict (not reported as None)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


def _field(*roles: str) -> Any:
    """A record field, unset until filled. Roles: "attr" (copied from the trial's final result to its
    user attrs), "column" (a column of analysis.load_study's table)."""
    return field(default=UNSET, metadata=dict.fromkeys(roles, True))


@dataclass
class TrialRecord:
    """What one trial reports (tune.report) and what of it the driver stores. The field order is the
    order of RESULT_ATTRS and ATTR_COLUMNS. Metric values (analysis.metrics: top1, flops, ...) are
    in `metrics`, reported as keys of their own, before the other fields: the metric table is open."""

    trial_number: int = _field()
    genome_key: str = _field("attr", "column")
    epochs_completed: int = _field("attr", "column")
    status: Status = _field("attr", "column")
    wall_s: float = _field("attr", "column")  # the whole trial: data, build, training, evaluation
    train_s: float | None = _field("attr", "column")  # training steps only
    device: str = _field("attr", "column")
    seed: int = _field("attr", "column")
    node: str = _field("attr")  # the Ray node id
    # set when the trial is enqueued or asked (studies.search), not reported by the trainable
    reference: str | None = _field("column")  # the catalog design a reference trial trains
    recipe: str = _field("column")  # "common" or "authors: ..." (studies.search.recipe_label)
    error: str = _field("attr", "column")  # what went wrong (status error, oom, infeasible)
    traceback: str = _field("attr")
    warmup_s: float = _field("attr")
    compiled_graphs: int = _field("attr")
    deterministic_requested: bool = _field("attr")
    deterministic: bool | None = _field("attr")
    nondeterministic_ops: list = _field("attr")
    data_on_device: bool = _field("attr")
    gpus_per_trial: float = _field("attr")  # < 1: the GPU was shared, its throughput and latency with it
    memory_fraction: float | None = _field("attr")
    top1_per_epoch: list = _field("attr")  # what a benchmark table replays
    top5_per_epoch: list = _field("attr")
    environment: dict = _field("attr", "column")  # where it ran (trainers.environment.describe)
    rung: str | None = _field("attr", "column")  # the fidelity-ladder rung it trained at
    # the training protocol it ran under. studies.calibrate names its protocols ("study", "versus") in
    # an enqueue-time attr of the same name: a calibration trial must not report this field over it
    protocol: dict | None = _field("attr")
    # reported, not stored
    pid: int = _field()
    epochs_target: int = _field()
    num_classes: int = _field()
    final: bool = _field()  # the last result of the trial
    metrics: dict = field(default_factory=dict)

    @classmethod
    def attrs(cls) -> tuple[str, ...]:
        """The fields the driver copies from the final result to the trial's user attrs."""
        return tuple(f.name for f in fields(cls) if f.metadata.get("attr"))

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        """The user attrs analysis.load_study makes columns of (None where a trial lacks one)."""
        return tuple(f.name for f in fields(cls) if f.metadata.get("column"))

    def update_from(self, result) -> None:
        """Take the fields of a trainers.train.TrainResult that the record has too (status, device,
        seed, wall_s of train() alone, ...); its metric values go through `metrics` (the trainable's
        plan) instead."""
        for f in fields(self):
            if f.name != "metrics" and hasattr(result, f.name):
                setattr(self, f.name, getattr(result, f.name))
        self.epochs_completed = result.epochs

    def to_dict(self) -> dict:
        """The reported result: the metric values, then every field that is set."""
        known = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "metrics"}
        return {**self.metrics, **{k: v for k, v in known.items() if v is not UNSET}}
