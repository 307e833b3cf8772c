"""Pareto-aware asynchronous successive halving: promote by non-dominated rank, not by top-1 alone.

Plain ASHA stops a trial at a rung when its top-1 is below the rung's 1 - 1/eta quantile, so a cheap
network that is slightly weaker at the rung is stopped although it belongs on the accuracy-vs-FLOPs
front. Here a trial reaching a rung is ranked among every trial recorded at that rung by
non-dominated sorting over (top-1 at the rung, its costs); within a rank, by crowding distance, so
the spread of the front survives (as multi-objective ASHA does in Syne Tune). The trial continues
when its place in that order is among the first ceil(n / eta) of the n recorded, and always when it
is on the rung's front.

`ParetoRungs` is the rule, in plain Python (no Ray): a table backend can reuse it. `ParetoASHA`
wraps it as a Ray Tune scheduler; a trial it stops ends before its last epoch, which the searcher
records as PRUNED (studies.search).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from effects.dominance import non_dominated_sort


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


class ParetoASHA(FIFOScheduler):
    """Ray Tune scheduler: ASHA's rungs (grace_period * eta^k up to max_t), ParetoRungs' rule.

    metrics: {result key: "maximize" | "minimize"}, e.g. {"top1": "maximize", "flops": "minimize"};
    time_attr counts the rung levels (epochs here). A result without every metric continues.
    """

    def __init__(
        self,
        time_attr: str,
        metrics: dict[str, str],
        max_t: int,
        grace_period: int = 1,
        reduction_factor: int = 2,
    ):
        super().__init__()
        self.time_attr, self.metrics = time_attr, dict(metrics)
        self.rule = ParetoRungs(
            rung_levels(max_t, grace_period, reduction_factor), reduction_factor, list(self.metrics.values())
        )
        self.stopped: list[str] = []

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        level = result.get(self.time_attr)
        values = [result.get(k) for k in self.metrics]
        if level is None or any(v is None for v in values):
            return TrialScheduler.CONTINUE
        if self.rule.decide(trial.trial_id, int(level), values):
            return TrialScheduler.CONTINUE
        self.stopped.append(trial.trial_id)
        return TrialScheduler.STOP

    def debug_string(self) -> str:
        return f"ParetoASHA over {', '.join(self.metrics)}: rungs {self.rule.milestones}, eta {self.rule.eta}"
