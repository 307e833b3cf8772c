"""Pareto fronts and exact hypervolume of a study, for any number of objectives.

The non-dominated sort is the project's one (effects.dominance, re-exported here): everything is
turned into minimisation first, a dominates b iff a <= b in every objective and a < b in one, and
equal points share a front.

Hypervolume reference point: by default the *worst observed* value of each objective over the
completed searched trials (lowest top-1, highest FLOPs, ...). A point that is worst in any
objective therefore adds no volume; pass `reference_point` (in the objectives' own units and
directions) to compare runs on one fixed box.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from effects.dominance import dominates, non_dominated_sort, pareto_mask, to_minimization
from searchspace.errors import UserError

from .load import completed, objectives_of

try:  # private optuna API: used only as a faster exact algorithm for 3+ objectives
    from optuna._hypervolume import compute_hypervolume as _wfg
except ImportError:
    _wfg = None


# -- hypervolume --------------------------------------------------------------------------------
def _hv_min(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume of minimisation points that strictly beat `ref` in every objective."""
    if len(points) == 0:
        return 0.0
    m = points.shape[1]
    if m == 1:
        return float(ref[0] - points[:, 0].min())
    if m == 2:  # sweep in x; the height of each x-slab is set by the lowest y seen so far
        p = points[np.lexsort((points[:, 1], points[:, 0]))]
        widths = np.append(p[1:, 0], ref[0]) - p[:, 0]
        return float(np.sum(widths * (ref[1] - np.minimum.accumulate(p[:, 1]))))
    if _wfg is not None and len(points) > 32:
        # optuna's exact WFG: same value, much faster on large fronts (checked in the tests)
        return float(_wfg(points, ref))
    return _hso(points, ref)


def _hso(points: np.ndarray, ref: np.ndarray) -> float:
    """HSO slicing on the last objective: between consecutive levels the cross-section is the
    (m-1)-D hypervolume of the points at or below that level. Exact; fine for small fronts."""
    points = np.unique(points[pareto_mask(points, ["minimize"] * points.shape[1])], axis=0)
    p = points[np.argsort(points[:, -1])]
    levels = np.append(p[:, -1], ref[-1])
    total = 0.0
    for k in range(len(p)):
        depth = levels[k + 1] - levels[k]
        if depth > 0:
            total += depth * _hv_min(p[: k + 1, :-1], ref[:-1])
    return float(total)


def hypervolume(values, directions: Sequence[str], reference_point) -> float:
    """Exact hypervolume dominated by `values` and bounded by `reference_point` (both in the
    objectives' own units; maximised objectives are handled by the directions)."""
    v = to_minimization(values, directions)
    ref = to_minimization([reference_point], directions)[0]
    v = v[np.isfinite(v).all(axis=1)]
    v = v[(v < ref).all(axis=1)]  # points not strictly inside the box add nothing
    return _hv_min(v, ref)


def reference_point(df: pd.DataFrame, objectives: list[dict] | None = None) -> np.ndarray:
    """Worst observed value per objective over the completed searched trials."""
    return _worst_point(df, objectives)


def _worst_point(df: pd.DataFrame, objectives: list[dict] | None) -> np.ndarray:
    objs = objectives_of(df, objectives)
    done = completed(df)
    names = [o["name"] for o in objs]
    if done.empty:
        raise UserError("no completed trials yet: no reference point")
    vals = done[names].astype(float)
    return np.array(
        [vals[o["name"]].min() if o["direction"] == "maximize" else vals[o["name"]].max() for o in objs]
    )


# -- table helpers ------------------------------------------------------------------------------
def add_ranks(df: pd.DataFrame, objectives: list[dict] | None = None) -> pd.DataFrame:
    """A copy with `front_rank` (0 = Pareto front) over the completed searched trials; other rows
    (references, pruned, failed) get -1."""
    objs = objectives_of(df, objectives)
    out = df.copy()
    out["front_rank"] = -1
    done = completed(out)
    if not done.empty:
        out.loc[done.index, "front_rank"] = non_dominated_sort(
            done[[o["name"] for o in objs]].astype(float).to_numpy(), [o["direction"] for o in objs]
        )
    return out


def pareto_front(df: pd.DataFrame, objectives: list[dict] | None = None) -> pd.DataFrame:
    """The completed searched trials on the Pareto front, sorted by the first objective."""
    objs = objectives_of(df, objectives)
    ranked = add_ranks(df, objs)
    front = ranked[ranked["front_rank"] == 0]
    return front.sort_values(
        [o["name"] for o in objs], ascending=[o["direction"] == "minimize" for o in objs]
    )


def hypervolume_history(
    df: pd.DataFrame, objectives: list[dict] | None = None, reference_point=None, max_evaluations: int = 300
) -> pd.DataFrame:
    """Hypervolume of the completed searched trials after each searched trial (by trial number),
    with the cumulative compute `wall_s` of all searched trials so far (pruned and failed ones cost
    time too). Columns: number, state, cumulative_wall_s, hypervolume, and hypervolume_normalized:
    the hypervolume divided by the volume of the box between the best observed value of each
    objective and the reference point (unit-free, in [0, 1]; FLOPs x params volumes are not
    readable). attrs: reference_point, ideal_point, subsampled.

    Exact at every trial. With 3+ objectives and more front changes than `max_evaluations`, each
    of which costs a full hypervolume, only about `max_evaluations` evenly spaced trials (and the
    last) are kept, each still exact (attrs['subsampled'] = True)."""
    objs = objectives_of(df, objectives)
    names, dirs = [o["name"] for o in objs], [o["direction"] for o in objs]
    ref = np.asarray(_worst_point(df, objs) if reference_point is None else reference_point, dtype=float)
    searched = df[df["study"] == "search"].sort_values("number")
    wall = (
        pd.to_numeric(searched["wall_s"], errors="coerce").fillna(0.0).to_numpy()
        if "wall_s" in searched
        else np.zeros(len(searched))
    )
    ref_min = to_minimization([ref], dirs)[0]
    minimised = to_minimization(searched[names].astype(float).to_numpy(), dirs)
    usable = (
        searched.index.isin(completed(df).index)
        & np.isfinite(minimised).all(axis=1)
        & (minimised < ref_min).all(axis=1)
    )

    def fronts():  # (index, front so far, changed?) per searched trial; cheap incremental update
        front = np.empty((0, len(objs)))
        for k in range(len(searched)):
            p, changed = minimised[k], False
            if usable[k] and not (front <= p).all(axis=1).any():
                front, changed = np.vstack([front[~(p <= front).all(axis=1)], p]), True
            yield k, front, changed

    changes = np.array([c for _, _, c in fronts()], dtype=bool)
    keep = np.ones(len(searched), dtype=bool)
    if len(objs) > 2 and changes.sum() > max_evaluations:
        keep[:] = False
        keep[np.unique(np.linspace(0, len(searched) - 1, max_evaluations).round().astype(int))] = True
        keep[-1] = True
    # One exact hypervolume per kept trial whose front differs from the last one computed.
    hv, dirty, values = 0.0, False, np.zeros(len(searched))
    for k, front, changed in fronts():
        dirty |= changed
        if keep[k] and dirty:
            hv, dirty = _hv_min(front, ref_min), False
        values[k] = hv
    hist = pd.DataFrame(
        {
            "number": searched["number"].to_numpy(),
            "state": searched["state"].to_numpy(),
            "hypervolume": values,
            "cumulative_wall_s": np.cumsum(wall),
        }
    )[keep].reset_index(drop=True)
    done = to_minimization(completed(df)[names].astype(float).to_numpy(), dirs)
    ideal_min = np.nanmin(done, axis=0) if len(done) else ref_min
    box = float(np.prod(np.abs(ref_min - ideal_min)))
    hist["hypervolume_normalized"] = hist["hypervolume"] / box if box > 0 else np.nan
    hist.attrs.update(
        reference_point=dict(zip(names, ref.tolist())),
        subsampled=not keep.all(),
        ideal_point=dict(
            zip(names, to_minimization([ideal_min], dirs)[0].tolist())
        ),  # negated back: own units
    )
    return hist


__all__ = [
    "non_dominated_sort",
    "pareto_mask",
    "dominates",
    "hypervolume",
    "reference_point",
    "add_ranks",
    "pareto_front",
    "hypervolume_history",
    "to_minimization",
]
