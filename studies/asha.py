"""Asynchronous successive halving (ASHA, Li et al. 2020) as rules in plain Python, one of them
Pareto-aware, shared by both backends: the table backend asks a rule directly, the Ray backend
through `RuleScheduler`, so a study stops the same trials under either.

A rule answers `on_result(trial_id, epoch, metrics) -> "continue" | "stop"` for every per-epoch
result. `ASHA` is Ray Tune's ASHAScheduler with one bracket, on top-1, written out (its own code is
private to Ray). `ParetoRungs` promotes by non-dominated rank instead of by top-1 alone: plain ASHA
stops a trial at a rung when its top-1 is below the rung's 1 - 1/eta quantile, so a cheap network
that is slightly weaker at the rung is stopped although it belongs on the accuracy-vs-FLOPs front.
Here a trial reaching a rung is ranked among every trial recorded at that rung by non-dominated
sorting over (top-1 at the rung, its costs); within a rank, by crowding distance, so the spread of
the front survives (as multi-objective ASHA does in Syne Tune). It continues when its place in that
order is among the first ceil(n / eta) of the n recorded, and always when it is on the rung's front.
A trial a rule stops ends before its last epoch, which the searcher records as PRUNED.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from analysis import metrics as metric_table
from effects.dominance import non_dominated_sort

CONTINUE, STOP = "continue", "stop"


class StoppingRule(Protocol):
    def on_result(self, trial_id: str, epoch: int, metrics: dict) -> str: ...


class NoStopping:
    def on_result(self, trial_id: str, epoch: int, metrics: dict) -> str:
        return CONTINUE


class ASHA:
    """ASHA on one metric, as Ray Tune's ASHAScheduler with one bracket: rungs at grace_period * rf^k
    epochs up to max_t; a trial reaching a rung is stopped when its value is below the (1 - 1/rf)
    quantile of the values recorded at that rung so far."""

    def __init__(
        self,
        max_t: int,
        grace_period: int = 1,
        reduction_factor: int = 2,
        metric: str = "top1",
        mode: str = "max",
    ):
        self.rf, self.metric, self.sign = reduction_factor, metric, 1.0 if mode == "max" else -1.0
        n = int(np.log(max_t / grace_period) / np.log(reduction_factor) + 1)
        self.rungs = [(grace_period * reduction_factor**k, {}) for k in reversed(range(n))]

    def on_result(self, trial_id: str, epoch: int, metrics: dict) -> str:
        value = metrics.get(self.metric)
        if value is None:
            return CONTINUE
        value = self.sign * float(value)
        for milestone, recorded in self.rungs:
            if epoch < milestone or trial_id in recorded:
                continue
            cutoff = np.nanpercentile(list(recorded.values()), (1 - 1 / self.rf) * 100) if recorded else None
            recorded[trial_id] = value
            return STOP if cutoff is not None and value < cutoff else CONTINUE
        return CONTINUE


def crowding(points: Sequence[Sequence[float]], members: Sequence[int]) -> dict[int, float]:
    """NSGA-II crowding distance of `members` (indices of one rank): the ends of each objective get inf."""
    dist = {i: 0.0 for i in members}
    if len(members) <= 2:
        return {i: math.inf for i in members}
    for m in range(len(points[members[0]])):
        order = sorted(members, key=lambda i: points[i][m])
        lo, hi = points[order[0]][m], points[order[-1]][m]
        dist[order[0]] = dist[order[-1]] = math.inf
        if hi == lo:
            continue
        for a, i, b in zip(order, order[1:], order[2:]):
            dist[i] += (points[b][m] - points[a][m]) / (hi - lo)
    return dist


def rung_levels(max_t: int, grace_period: int, reduction_factor: int) -> list[int]:
    """ASHA's rungs: grace_period * reduction_factor^k below max_t."""
    levels, m = [], grace_period
    while m < max_t:
        levels.append(m)
        m *= reduction_factor
    return levels


class ParetoRungs:
    """Promotion decisions of asynchronous successive halving over several objectives.

    milestones: the rung levels (e.g. epochs 1, 2, 4); eta: the reduction factor; directions: one
    "maximize" / "minimize" per objective value passed to `decide`.
    """

    def __init__(self, milestones: Sequence[int], eta: int, directions: Sequence[str]):
        self.milestones = sorted(milestones)
        self.eta = eta
        self.signs = [-1.0 if d == "maximize" else 1.0 for d in directions]
        self.rungs: dict[int, dict[str, tuple[float, ...]]] = {m: {} for m in self.milestones}
        self.metrics: list[str] = []  # the result keys of the values, for on_result

    def decide(self, trial: str, level: int, values: Sequence[float]) -> bool:
        """Record `trial` at rung `level` (if `level` is a milestone it has not yet passed) and say
        whether it continues. Between milestones, and past the last one, it continues."""
        if level not in self.rungs or trial in self.rungs[level]:
            return True
        rung = self.rungs[level]
        rung[trial] = tuple(s * float(v) for s, v in zip(self.signs, values))
        return trial in self.promoted(level)

    def promoted(self, level: int) -> set[str]:
        """The trials of a rung that continue: the first ceil(n / eta) by (rank, -crowding), and the front."""
        names = list(self.rungs[level])
        points = [self.rungs[level][n] for n in names]
        # Points are stored in minimisation form. A result with a NaN is never dominated: it stays on
        # the rung's front (rank 0) rather than being left unranked.
        ranks = np.maximum(non_dominated_sort(points, ["minimize"] * len(self.signs)), 0).tolist()
        dist: dict[int, float] = {}
        for k in set(ranks):
            dist.update(crowding(points, [i for i, r in enumerate(ranks) if r == k]))
        order = sorted(range(len(names)), key=lambda i: (ranks[i], -dist[i]))
        keep = max(1, math.ceil(len(names) / self.eta))
        return {names[i] for i in order[:keep]} | {names[i] for i, r in enumerate(ranks) if r == 0}

    def on_result(self, trial_id: str, epoch: int, metrics: dict) -> str:
        """`decide` over the result's values of `self.metrics` (set by `stopping_rule`); a result
        without every one of them continues."""
        values = [metrics.get(m) for m in self.metrics]
        if any(v is None for v in values):
            return CONTINUE
        return CONTINUE if self.decide(trial_id, epoch, values) else STOP


def stopping_rule(cfg):
    """The rule the config asks for ([early_stopping]): plain ASHA on top-1, Pareto rungs over top-1
    and the study's per-epoch cost objectives (latency is measured only at the end), or none."""
    es = cfg.early_stopping
    if not es.asha:
        return NoStopping()
    if es.rule == "pareto":
        ranked = {
            o["name"]: o["direction"] for o in cfg.objectives if metric_table.get(o["name"]).every_epoch
        }
        levels = rung_levels(cfg.fidelity.epochs, es.grace_period, es.reduction_factor)
        rule = ParetoRungs(levels, es.reduction_factor, list(ranked.values()))
        rule.metrics = list(ranked)
        return rule
    return ASHA(cfg.fidelity.epochs, es.grace_period, es.reduction_factor)


class RuleScheduler(FIFOScheduler):
    """A rule of this module as a Ray Tune scheduler; `time_attr` is the result key that counts the
    rung levels (epochs here: not Ray's iteration count, the trainable sends one extra final result)."""

    def __init__(self, rule, time_attr: str = "epochs_completed"):
        super().__init__()
        self.rule, self.time_attr = rule, time_attr
        self.stopped: list[str] = []

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        level = result.get(self.time_attr)
        if level is None or self.rule.on_result(trial.trial_id, int(level), result) == CONTINUE:
            return TrialScheduler.CONTINUE
        self.stopped.append(trial.trial_id)
        return TrialScheduler.STOP

    def debug_string(self) -> str:
        return f"successive halving: {type(self.rule).__name__}"
