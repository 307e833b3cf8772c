"""Exact costs of genomes never trained, composed stage by stage (searchspace.cost.stagewise: block
plugins, fusions, stage modules and per-stage KW change only their own stage)."""

from __future__ import annotations

from collections.abc import Mapping

from searchspace.cost import cost, stagewise
from searchspace.genome import Genome


class StageCosts:
    """Counts of genomes as the plain backbone's plus what each stage's choice adds alone (one trace
    per distinct stage choice), trusted only after it reproduces the evaluated genomes' counts."""

    def __init__(self, target: Mapping, count=None):
        """`count(genome, target) -> {"flops", "params"}`: how one genome is counted (default: a
        searchspace.cost trace; a caller may pass one backed by its on-disk cache)."""
        self.target = dict(target)
        self._count_one = count or trace_count
        self._cache: dict[str, dict] = {}

    def _count(self, g: Genome) -> dict:
        if g.key not in self._cache:
            self._cache[g.key] = self._count_one(g, self.target)
        return self._cache[g.key]

    def __call__(self, g: Genome) -> dict:
        return stagewise(g, self._count)


def trace_count(g: Genome, target: Mapping) -> dict:
    """One genome counted by a searchspace.cost trace under the target's convention."""
    c = cost(g, target.get("convention", "paper"), target.get("resolution"), target.get("num_classes"))
    return {"flops": float(c.flops), "params": float(c.params)}
