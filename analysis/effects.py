"""The effects model (the `effects` package, docs/effects.md) of a study in storage, and its command:

    python -m analysis.effects RUN_DIR_OR_STORAGE [--study NAME] [--no-prior] [--kind K] [--json]
    python -m analysis.effects --table CSV [--seeds 0,1] [--kind K] [--json]

A study's runs are read here (completed searched and reference trials of analysis.load_study, with
the noise analysis.calibration measures and the study's [prior] table); the model itself, and every
name this module exported before the package existed, come from `effects`.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import pandas as pd

from effects import (
    CV_FOLDS,
    ENUMERATE_LIMIT,
    LEVEL,
    MIN_NOISE_DF,
    MIN_RESID_DF,
    RESAMPLES,
    Coding,
    Effects,
    Fit,
    Runs,
    StageCosts,
    analyse,
    block,
    candidates,
    choose_kind,
    design_half_widths,
    effects_lines,
    factors_of,
    fit,
    model_front,
    model_lines,
    predictions,
    report_text,
    runs_frame,
    runs_from_table,
    stage_label,
    trace_count,
    trials_needed,
    verdict_lines,
    verdicts,
)
from searchspace.errors import UserError
from trainers.environment import key as environment_key

from .calibration import study_noise
from .load import completed, load_study, read_genome


def runs_from_study(df: pd.DataFrame) -> Runs:
    """Every completed run of a study read by analysis.load_study, its references included."""
    rows = []
    for kind in ("search", "reference"):
        for _, r in completed(df, kind).iterrows():
            g = read_genome(r.get("genome"))
            if g is None or r.get("top1") is None:
                continue
            rows.append(
                {
                    "key": g.key,
                    "genome": g,
                    "seed": int(r["seed"]) if pd.notna(r.get("seed")) else 0,
                    "y": float(r["top1"]),
                    "flops": float(r["flops"]) if pd.notna(r.get("flops")) else np.nan,
                    "params": float(r["params"]) if pd.notna(r.get("params")) else np.nan,
                    "kind": kind,
                    "design": r.get("reference") if kind == "reference" else None,
                    "recipe": r.get("recipe") if isinstance(r.get("recipe"), str) else "common",
                    "trial": int(r["number"]),
                    "environment": environment_key(r.get("environment")),
                    "rung": r.get("rung") if isinstance(r.get("rung"), str) else None,
                }
            )
    noise, noise_source = study_noise(df)
    return Runs(
        runs_frame(rows),
        f"study {df.attrs.get('study_name')!r}",
        df.attrs.get("config") or {},
        df.attrs.get("target") or {},
        noise.pooled_std if noise is not None else None,
        noise_source,
    )


def of_study(df: pd.DataFrame, **kw) -> Effects:
    runs = runs_from_study(df)
    if df.attrs.get("prior_table"):  # the config's [prior] table, checked against its protocol
        runs = runs.with_prior(runs_from_table(df.attrs["prior_table"]))
    return analyse(runs, **kw)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m analysis.effects", description="The effects model of a study or a benchmark table."
    )
    p.add_argument("run_dir", nargs="?", help="a run folder or storage (journal path / RDB URL)")
    p.add_argument("--study", help="study name (default: the run folder's)")
    p.add_argument("--table", help="a benchmark table CSV instead of a study")
    p.add_argument("--seeds", help="table seeds to use, e.g. 0 or 0,1 (default: all)")
    p.add_argument("--kind", default="auto", help="auto (default), ols or eb-ridge")
    p.add_argument("--no-prior", action="store_true", help="leave out the study's [prior] table runs")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument(
        "--resamples",
        type=int,
        default=RESAMPLES,
        help=f"bootstrap resamples of the rank agreement across rungs (default {RESAMPLES}; runs of several rungs)",
    )
    a = p.parse_args(argv)
    try:
        if a.resamples < 0:
            raise UserError(f"--resamples {a.resamples}: expected a count >= 0")
        if bool(a.table) == bool(a.run_dir):
            raise UserError("give a run folder or --table CSV (one of them)")
        if a.table:
            seeds = None
            if a.seeds:
                try:
                    seeds = [int(s) for s in a.seeds.split(",")]
                except ValueError:
                    raise UserError(f"--seeds {a.seeds!r}: expected integers separated by commas") from None
            e = analyse(runs_from_table(a.table, seeds), a.kind, resamples=a.resamples)
        else:
            df = load_study(a.run_dir, a.study)
            if a.no_prior:
                df.attrs["prior_table"] = None
            e = of_study(df, kind=a.kind, resamples=a.resamples)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(e.to_json(), indent=1, default=float) if a.json else report_text(e))
    return 0


__all__ = [
    "CV_FOLDS",
    "Coding",
    "ENUMERATE_LIMIT",
    "Effects",
    "Fit",
    "block",
    "LEVEL",
    "MIN_NOISE_DF",
    "MIN_RESID_DF",
    "Runs",
    "StageCosts",
    "UserError",
    "analyse",
    "candidates",
    "choose_kind",
    "design_half_widths",
    "effects_lines",
    "factors_of",
    "fit",
    "main",
    "model_front",
    "model_lines",
    "of_study",
    "predictions",
    "report_text",
    "runs_frame",
    "runs_from_study",
    "runs_from_table",
    "stage_label",
    "trace_count",
    "trials_needed",
    "verdict_lines",
    "verdicts",
]


if __name__ == "__main__":
    sys.exit(main())
