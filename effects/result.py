"""The whole analysis of a set of runs (fit, effects, predictions, model front, verdicts) as one
Effects value, and its JSON form (what `python -m analysis.effects --json` prints)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .costs import StageCosts
from .fidelity import RESAMPLES, Fidelity, across_fidelity
from .fit import LEVEL, Fit, fit
from .front import ENUMERATE_LIMIT, candidates, model_front, predictions
from .runs import Runs
from .verdicts import verdicts

SCHEMA_VERSION = 1  # of to_json's output; docs/effects.md lists what changed from version 0


# The JSON names of a prediction's intervals, from the frames' columns: where the genome's mean lies,
# and where one new run of it would land (effects.fit.Fit.intervals / run_intervals).
INTERVALS = {"mean_low": "low", "mean_high": "high", "run_low": "run_low", "run_high": "run_high"}


@dataclass
class Effects:
    fit: Fit
    runs: Runs
    effects: pd.DataFrame
    parts: pd.DataFrame  # the effect of each part of a stage choice (Fit.part_effects)
    predictions: pd.DataFrame  # every candidate, evaluated or not
    front: pd.DataFrame
    designs: pd.DataFrame
    coverage: str
    fidelity: Fidelity | None = None  # several rungs: the across-fidelity model (effects.fidelity)

    def to_json(self) -> dict:
        f, c = self.fit, self.fit.checks
        fr = self.runs.frame

        def num(v):
            return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v

        trials = fr.groupby("key").agg(raw=("y", "mean"), runs=("y", "size")).reset_index()
        trials = trials.merge(
            self.predictions[["key", "predicted", "low", "high", "run_low", "run_high"]], on="key", how="left"
        )

        def intervals(r) -> dict:
            """A prediction's two intervals, named for what they cover."""
            get = r.get if isinstance(r, dict) else lambda k: getattr(r, k)
            return {k: num(get(c)) for k, c in INTERVALS.items()}

        out = {
            "schema_version": SCHEMA_VERSION,
            "source": self.runs.source,
            "model": {
                "kind": f.kind,
                "why": f.why,
                "runs": f.n,
                "parameters": len(f.coding.columns),
                "level": LEVEL,
                "residual_sd": f.sigma,
                "pure_error_sd": c.get("pure_error_sd"),
                "replicated_genomes": c.get("replicated_genomes"),
                "cross_validated_error": (c.get("cv") or {}).get("rmse"),
                "lack_of_fit": c.get("lack_of_fit"),
                "interaction_test": c.get("interactions"),
                "widened_by": f.widen,
                "block_spread": {"sd": f.block_sd, "df": f.block_df, "blocks": len(f.coding.blocks)},
                "variance_shares": c.get("shares"),
                "design_half_width_median": num(float(np.median(w)))
                if (w := design_half_widths(self))
                else None,
            },
            "effects": [
                {
                    "stage": r.factor,
                    "choice": r.choice,
                    "baseline": r.baseline,
                    "estimate": r.estimate,
                    "low": r.low,
                    "high": r.high,
                }
                for r in self.effects.itertuples()
            ],
            "part_effects": self.parts.to_dict("records"),
            "designs": [
                {
                    **{
                        k: num(v)
                        for k, v in r.items()
                        if k
                        in (
                            "design",
                            "predicted",
                            "flops",
                            "verdict",
                            "evidence",
                            "recipe",
                            "runs",
                            "raw_mean",
                            "beaten_by",
                            "difference",
                            "difference_low",
                            "difference_high",
                            "critical_t",
                        )
                    },
                    "candidates": None if pd.isna(r.get("candidates", np.nan)) else int(r["candidates"]),
                    **intervals(r),
                }
                for r in self.designs.to_dict("records")
            ],
            "front": [
                {
                    "genome_key": r.key,
                    "genome": r.genome.summary(),
                    "predicted": r.predicted,
                    **intervals(r),
                    "flops": r.flops,
                    "params": num(r.params),
                    "evaluated": bool(r.evaluated),
                }
                for r in self.front.itertuples()
            ],
            "front_over": self.coverage,
            "trials": [
                {
                    "genome_key": r.key,
                    "runs": int(r.runs),
                    "raw": r.raw,
                    "predicted": num(r.predicted),
                    **intervals(r),
                }
                for r in trials.itertuples()
            ],
        }
        if self.fidelity is not None:  # one rung: the output stays what it was
            out["fidelity"] = self.fidelity.to_json()
        return out


def analyse(
    runs: Runs,
    kind: str = "auto",
    designs=None,
    limit: int = ENUMERATE_LIMIT,
    costs: StageCosts | None = None,
    resamples: int = RESAMPLES,
) -> Effects:
    """Fit the model to the runs and read everything off it (`costs`: how genomes never trained are
    counted; default a searchspace.cost trace per stage choice). Runs of several rungs also get the
    across-fidelity model (`resamples`: its rank-agreement bootstrap)."""
    f = fit(runs, kind)
    cands, note = candidates(f, runs, limit, costs)
    pred = predictions(f, cands)
    fid = across_fidelity(runs, f.coding, cands, designs, resamples)
    return Effects(
        f,
        runs,
        f.effects(),
        f.part_effects(),
        pred,
        model_front(pred),
        verdicts(f, pred, runs, designs),
        note,
        fid,
    )


def design_half_widths(e: Effects) -> list[float]:
    """Half-widths of the design predictions' intervals (designs the model can predict)."""
    if e.designs.empty or "high" not in e.designs:
        return []
    d = e.designs.dropna(subset=["low", "high"])
    return [float(w) for w in (d["high"] - d["low"]) / 2]
