"""The genomes the model front is taken over (the evaluated ones, or every combination of the trained
choices when that is at most ENUMERATE_LIMIT genomes and costs compose exactly), their predicted top-1,
and the front itself: the Pareto set of (predicted top-1, FLOPs)."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pandas as pd

from searchspace.genome import Genome

from .coding import factors_of
from .costs import StageCosts
from .dominance import pareto_mask
from .fit import Fit
from .runs import Runs

ENUMERATE_LIMIT = 20_000  # genomes the model front enumerates at most


def candidates(
    f: Fit, runs: Runs, limit: int = ENUMERATE_LIMIT, costs: StageCosts | None = None
) -> tuple[pd.DataFrame, str]:
    """Genomes the front is taken over, with exact costs: (frame, what they are)."""
    fr = runs.common_recipe()
    known = fr.groupby("key").agg(
        genome=("genome", "first"), flops=("flops", "first"), params=("params", "first")
    )
    example: dict[tuple[str, str], Genome] = {}  # (factor, level) -> an evaluated genome with it
    for g in known["genome"]:
        for fac, lv in factors_of(g).items():
            example.setdefault((fac, lv), g)
    levels = [[f.coding.baselines[fac], *f.coding.levels[fac]] for fac in f.coding.factors]
    size = math.prod(len(v) for v in levels)
    rows = [
        {"key": k, "genome": r.genome, "flops": r.flops, "params": r.params, "evaluated": True}
        for k, r in known.iterrows()
    ]
    note = f"the {len(known)} evaluated genomes"
    if 1 < size <= limit and size > len(known):
        made = _combinations(f, levels, example)
        costs = costs or StageCosts(runs.target)
        check = _check_composition(costs, known) if known["flops"].notna().all() else None
        if check is not None and check["max_abs_diff"] == 0:
            for g in made:
                if g.key not in known.index:
                    c = costs(g)
                    rows.append(
                        {
                            "key": g.key,
                            "genome": g,
                            "flops": c["flops"],
                            "params": c["params"],
                            "evaluated": False,
                        }
                    )
            note = (
                f"every combination of the trained choices ({size} genomes; costs composed per stage, "
                f"checked on {check['checked']} evaluated genomes: exact)"
            )
        elif check is not None:
            note += f" (costs do not compose per stage here: {check['max_abs_diff']:.3g} FLOPs off)"
    elif size > limit:
        note += f" (the {size:,} combinations of the trained choices are too many to enumerate)"
    out = pd.DataFrame(rows).drop_duplicates("key")
    return out.reset_index(drop=True), note


def _combinations(f: Fit, levels: list[list[str]], example: dict) -> list[Genome]:
    """Genomes with every combination of the levels: globals from an example genome of that level,
    stages copied from an example of theirs."""
    facs = f.coding.factors
    out = []
    for combo in itertools.product(*levels):
        chosen = dict(zip(facs, combo))
        base = example.get(("stem", chosen.get("stem"))) or next(iter(example.values()))
        stages = [example[(f"s{i}", chosen[f"s{i}"])].stages[i - 1] for i in range(1, len(base.stages) + 1)]
        ds = example.get(("downsampling", chosen.get("downsampling")))
        g = replace(
            base,
            stages=tuple(stages),
            stem=chosen.get("stem", base.stem),
            downsampling=ds.downsampling if ds else base.downsampling,
        )
        out.append(g)
    return out


def _check_composition(costs: StageCosts, known: pd.DataFrame, sample: int = 12) -> dict:
    """Composed against direct counts on (up to `sample` of) the evaluated genomes."""
    diffs = []
    for _, r in known.head(sample).iterrows():
        diffs.append(abs(costs(r.genome)["flops"] - r.flops))
    return {"checked": len(diffs), "max_abs_diff": float(max(diffs)) if diffs else 0.0}


def predictions(f: Fit, cands: pd.DataFrame) -> pd.DataFrame:
    """The candidates with their predicted mean top-1 (average block): `low`/`high` bound that mean,
    `run_low`/`run_high` where one new run of it would land (Fit.run_intervals); NaN for a genome with
    a level the fit never saw, or one the runs do not determine (Fit.estimable)."""
    out = cands.copy()
    factors = [factors_of(g) for g in out["genome"]]
    X = f.coding.matrix(factors)
    seen = np.array([not f.coding.unknown(fac) for fac in factors], dtype=bool) & f.estimable(X)
    est, low, high = f.intervals(X)
    _, run_low, run_high = f.run_intervals(X)
    for name, values in zip(
        ("predicted", "low", "high", "run_low", "run_high"), (est, low, high, run_low, run_high)
    ):
        out[name] = np.where(seen, values, np.nan)
    return out


def model_front(pred: pd.DataFrame) -> pd.DataFrame:
    """The Pareto set of (predicted top-1 max, FLOPs min), by FLOPs."""
    ok = pred.dropna(subset=["predicted", "flops"])
    mask = pareto_mask(ok[["predicted", "flops"]].to_numpy(float), ["maximize", "minimize"])
    return ok[mask].sort_values("flops").reset_index(drop=True)
