"""The metrics a trial reports, in one table: name, which way is better, how a value is shown, and
where it comes from.

Everything that lists, validates, reports, stores, formats or plots metrics reads this table:
studies.config (which [objectives] exist), studies.trainable (what a trial reports), studies.search
(what is stored, the run's lines), analysis (columns, axis titles, units in the report). Adding an
objective is one entry here, plus the code that computes its value if nothing computes it yet (see
README, "Adding an objective").

It lives in analysis because both sides read it and the imports allow both: analysis needs it to
label and format, studies to validate and report (studies -> analysis). searchspace does not need it:
its Cost only counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# Where a metric's value comes from, which also says when it is known.
SOURCES = {
    # counted from the genome on the full-size target before training (searchspace.cost, via
    # studies.costs): known at every epoch, and for a genome over [constraints] never trained
    "cost": "the Cost field of this name",
    # the trainer, after every epoch (its report dict) and at the end (TrainResult): known at every epoch
    "epoch": "trainers.train's per-epoch report key and TrainResult field of this name",
    # the trainer, once after training (a TrainResult field): unknown to early stopping
    "train": "trainers.train.TrainResult field of this name",
}
DIRECTIONS = ("maximize", "minimize")


@dataclass(frozen=True)
class Metric:
    name: str  # result key, stored user attr, objective and column name: stable across versions
    direction: str  # "maximize" | "minimize": which way is better (an objective's default)
    label: str  # axis title, with the shown unit
    source: str  # a key of SOURCES
    scale: float = 1.0  # shown as value / scale ...
    unit: str = ""  # ... followed by this ("G", "M"); names like latency_ms already carry theirs
    spec: str = ".4g"  # format spec of the shown value
    objective: bool = True  # may be named in a config's [objectives]
    cost_axis: bool = False  # a candidate for the front figure's x axis (the first in table order wins)

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"metric {self.name!r}: direction {self.direction!r} is not one of {DIRECTIONS}")
        if self.source not in SOURCES:
            raise ValueError(f"metric {self.name!r}: source {self.source!r} is not one of {tuple(SOURCES)}")

    @property
    def every_epoch(self) -> bool:
        """Known at every epoch, so early stopping can rank trials by it."""
        return self.source in ("cost", "epoch")

    @property
    def scaled(self) -> bool:
        return self.scale != 1.0

    def format(self, v) -> str:
        if v is None:
            return "-"
        if self.scaled:
            return f"{v / self.scale:{self.spec}}{self.unit}"
        return f"{v:{self.spec}}" if isinstance(v, float) else str(v)


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add `metric` to the table (a name already there is an error: stored studies rely on the names)."""
    if metric.name in METRICS:
        raise ValueError(f"metric {metric.name!r} is already registered")
    METRICS[metric.name] = metric
    return metric


def unregister(name: str) -> None:
    METRICS.pop(name, None)


for _m in (
    Metric("top1", "maximize", "top-1 on the proxy", "epoch"),
    Metric("flops", "minimize", "FLOPs of the target (G)", "cost", 1e9, "G", ".2f", cost_axis=True),
    Metric("params", "minimize", "params of the target (M)", "cost", 1e6, "M", ".2f", cost_axis=True),
    Metric("activations", "minimize", "activations of the target (M)", "cost", 1e6, "M", ".2f"),
    # inference latency of the trained proxy network at batch 1 and fidelity.resolution on the trial's
    # device (trainers.measure.inference_latency, median of 10), measured for every trained trial whether
    # or not it is an objective (cheap at proxy size)
    Metric("latency_ms", "minimize", "latency (ms)", "train", cost_axis=True),
    Metric("top5", "maximize", "top-5 on the proxy", "epoch", objective=False),
    Metric("loss", "minimize", "training loss of the last epoch", "epoch", objective=False),
    Metric("images_per_s", "maximize", "training throughput (images/s)", "train", objective=False),
    Metric("peak_mem_mb", "minimize", "peak memory of the run (MB)", "train", objective=False),
):
    register(_m)


def get(name: str) -> Metric | None:
    return METRICS.get(name)


def names(*sources: str) -> list[str]:
    """Metric names in table order, of the given sources (all when none given)."""
    return [m.name for m in METRICS.values() if not sources or m.source in sources]


class _Objectives(Mapping):
    """{name: default direction} of the metrics a config may name in [objectives], read live from
    the table (a metric registered later is known too)."""

    def __getitem__(self, name):
        m = METRICS[name]
        if not m.objective:
            raise KeyError(name)
        return m.direction

    def __iter__(self):
        return (m.name for m in METRICS.values() if m.objective)

    def __len__(self):
        return sum(1 for m in METRICS.values() if m.objective)


OBJECTIVES: Mapping[str, str] = _Objectives()


def fmt(name: str, v) -> str:
    """A value as the run's lines and tables show it: 4.12G FLOPs, 25.56M params, 0.7713 top-1."""
    m = METRICS.get(name)
    if m is not None:
        return m.format(v)
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def scale(name: str) -> float:
    m = METRICS.get(name)
    return m.scale if m else 1.0


def label(name: str) -> str:
    m = METRICS.get(name)
    return m.label if m else name


def direction(name: str) -> str:
    """The metric's better way; for a name not in the table, top-k accuracies up, anything else down."""
    m = METRICS.get(name)
    if m is not None:
        return m.direction
    return "maximize" if name.startswith("top") else "minimize"


def placeholder(name: str):
    """What a trial reports for an objective before its value is known (Ray wants every objective key
    in every result): 0 for counts, 0.0 otherwise."""
    m = METRICS.get(name)
    return 0 if m is not None and m.source == "cost" else 0.0


__all__ = [
    "Metric",
    "METRICS",
    "OBJECTIVES",
    "SOURCES",
    "register",
    "unregister",
    "get",
    "names",
    "fmt",
    "scale",
    "label",
    "direction",
    "placeholder",
]
