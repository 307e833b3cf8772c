"""The model's verdict on each published design in the space: the cheapest design of the space (nothing
to compare it with), on the model front, beaten by a genome predicted higher at no more FLOPs (the
contrast's interval clear of 0), or not resolved at this budget (with the runs it would take). The
rival is the best-predicted of many candidates, so the contrast's interval is simultaneous over all
of them (max-t): it holds whichever candidate the predictions pick."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from searchspace import catalog
from searchspace.catalog import Design
from searchspace.genome import Genome
from searchspace.space import SpaceSpec, contains

from .coding import factors_of
from .fit import LEVEL, Fit
from .runs import Runs


def in_space(design: Design, config: dict | None, target: dict | None = None) -> tuple[bool, str]:
    """(in space?, why). With a [space] table in the study config: searchspace.space.contains, i.e.
    the sampler can produce exactly this genome. Without one: the design's backbone is the study's."""
    g = design.genome
    config, target = config or {}, target or {}
    space = config.get("space")
    if isinstance(space, dict):
        spec = SpaceSpec.from_dict({k: v for k, v in space.items() if not k.startswith("_")})
        return (True, "sampler can produce it") if contains(spec, g) else (False, "outside the [space] spec")
    backbone = target.get("backbone") or config.get("backbone")
    if backbone is not None and g.backbone != backbone:
        return False, f"backbone {g.backbone} is not the study's {backbone}"
    return True, "backbone matches" if backbone else "no space spec"


def trials_needed(n: int, d: float, half_width: float) -> int | None:
    """Runs to add so that a difference d would clear an interval of this half-width (widths shrink
    as 1/sqrt(runs)); None when d is 0."""
    if d == 0:
        return None
    return max(int(math.ceil(n * ((half_width / abs(d)) ** 2 - 1))), 1)


def verdicts(f: Fit, pred: pd.DataFrame, runs: Runs, designs=None) -> pd.DataFrame:
    """One row per published design in the space: its predicted top-1 and the model's verdict."""
    designs = catalog.designs() if designs is None else list(designs)
    fr = runs.frame
    seen_backbones = {g.backbone for g in fr["genome"]}
    rows = []
    for d in designs:
        g = d.genome
        if g.backbone not in seen_backbones:
            continue
        ok, why = in_space(d, runs.config, runs.target) if runs.config else (True, "")
        fac = factors_of(g)
        unknown = f.coding.unknown(fac)
        if not ok or (unknown and not runs.config):
            continue  # a table's space is what it holds: a design with an unseen choice is not in it
        mine = fr[fr["key"] == g.key]
        row = {
            "design": d.name,
            "genome_key": g.key,
            "runs": int(len(mine)),
            "raw_mean": float(mine["y"].mean()) if len(mine) else None,
            "recipe": ", ".join(sorted(set(mine["recipe"].dropna()))) or "common",
        }
        if unknown:
            row.update(verdict=f"no prediction: {', '.join(unknown)} never trained", evidence="")
            rows.append(row)
            continue
        est, lo, hi = f.predict(fac)
        _, run_lo, run_hi = f.predict_run(fac)
        flops = (
            float(mine["flops"].iloc[0])
            if len(mine) and pd.notna(mine["flops"].iloc[0])
            else _flops_of(pred, g.key)
        )
        row.update(predicted=est, low=lo, high=hi, run_low=run_lo, run_high=run_hi, flops=flops)
        row.update(_verdict(f, g, fac, est, flops, pred))
        rows.append(row)
    return pd.DataFrame(rows)


def _flops_of(pred: pd.DataFrame, key: str) -> float:
    m = pred[pred["key"] == key]
    return float(m["flops"].iloc[0]) if len(m) else np.nan


def _verdict(f: Fit, g: Genome, fac: dict, est: float, flops: float, pred: pd.DataFrame) -> dict:
    if not np.isfinite(flops):
        return {"verdict": "no verdict: its FLOPs are unknown", "evidence": ""}
    rivals = pred[(pred["key"] != g.key) & (pred["flops"] <= flops)].dropna(subset=["predicted"])
    evidence = f"{f.kind} model of {f.n} runs"
    if rivals.empty:
        return {
            "verdict": "the cheapest design of the space: nothing at its FLOPs to compare",
            "evidence": f"{evidence}: no other genome has <= its FLOPs",
        }
    if rivals["predicted"].max() <= est:
        return {
            "verdict": "on the model front (found again)",
            "evidence": f"{evidence}: none of the {len(rivals)} genomes at <= its FLOPs is predicted higher",
        }
    best = rivals.loc[rivals["predicted"].idxmax()]
    contrasts = f.coding.matrix([factors_of(r) for r in rivals["genome"]]) - f.coding.row(fac)
    q = f.simultaneous_q(contrasts)
    d, lo, hi = f.contrast(factors_of(best.genome), fac, q)
    hw = (hi - lo) / 2
    text = f"{d:+.3f} +- {hw:.3f}"
    joint = f"simultaneous over {len(rivals)} candidates (max-t)"
    base = {
        "beaten_by": best.key,
        "beaten_by_genome": best.genome.summary(),
        "difference": d,
        "difference_low": lo,
        "difference_high": hi,
        "candidates": len(rivals),
        "critical_t": q,
    }
    if lo > 0:
        return {
            **base,
            "verdict": f"beaten by {best.key}: {text} at <= its FLOPs, {joint}",
            "evidence": f"{evidence}: contrast {best.key} - design, {LEVEL:.0%} interval {joint}",
        }
    more = trials_needed(f.n, d, hw)
    decide = (
        f"about {more} more runs would decide it"
        if more is not None and more <= 10 * f.n
        else "a tie at any affordable budget (over 10x the runs to decide it)"
    )
    return {
        **base,
        "verdict": f"not resolved at this budget: {best.key} {text}, {joint}; {decide}",
        "evidence": f"{evidence}: the contrast's {LEVEL:.0%} interval, {joint}, holds 0",
    }
