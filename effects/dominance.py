"""The project's one non-dominated sort, over arrays of objective values with a direction each.

Everything is turned into minimisation first (maximised columns are negated), so one definition
serves all: a dominates b iff a <= b in every objective and a < b in at least one. Equal points do
not dominate each other and share a front.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from searchspace.errors import UserError


def _signs(directions: Sequence[str], m: int) -> np.ndarray:
    if len(directions) != m:
        raise UserError(f"{m} objective columns but {len(directions)} directions")
    bad = [d for d in directions if d not in ("minimize", "maximize")]
    if bad:
        raise UserError(f"direction {bad[0]!r}: use 'minimize' or 'maximize'")
    return np.array([-1.0 if d == "maximize" else 1.0 for d in directions])


def to_minimization(values, directions: Sequence[str]) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    if v.ndim != 2:  # [] or a flat list of single-objective values
        v = v.reshape(-1, len(directions)) if v.size == 0 else v.reshape(len(v), -1)
    return v * _signs(directions, v.shape[1])


def non_dominated_sort(values, directions: Sequence[str]) -> np.ndarray:
    """Front rank per row: 0 = Pareto front, 1 = front once rank 0 is removed, ...; -1 where a
    value is NaN or infinite (such rows are never ranked)."""
    v = to_minimization(values, directions)
    n = len(v)
    ranks = np.full(n, -1, dtype=int)
    ok = np.flatnonzero(np.isfinite(v).all(axis=1))
    if len(ok) == 0:
        return ranks
    w = v[ok]
    # dom[i, j]: i dominates j. n^2 booleans (built in row blocks to bound the n^2*m temporaries);
    # fine for the thousands of trials a study holds.
    dom = np.empty((len(w), len(w)), dtype=bool)
    for s in range(0, len(w), 512):
        blk = w[s : s + 512, None, :]
        dom[s : s + 512] = (blk <= w[None]).all(axis=2) & (blk < w[None]).any(axis=2)
    count = dom.sum(axis=0)  # how many dominate each j
    remaining = np.ones(len(w), dtype=bool)
    rank = 0
    while remaining.any():
        front = remaining & (count == 0)
        ranks[ok[front]] = rank
        remaining &= ~front
        count = count - dom[front].sum(axis=0)
        rank += 1
    return ranks


def pareto_mask(values, directions: Sequence[str]) -> np.ndarray:
    return non_dominated_sort(values, directions) == 0


def dominates(a, b, directions: Sequence[str]) -> bool:
    a, b = to_minimization([a], directions)[0], to_minimization([b], directions)[0]
    return bool((a <= b).all() and (a < b).any())
