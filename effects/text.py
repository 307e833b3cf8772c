"""The effects model as text: its fit and checks, the effects, the verdicts, the whole report."""

from __future__ import annotations

import math

import numpy as np

from .fidelity import fidelity_lines
from .fit import LEVEL
from .result import Effects, design_half_widths


def model_lines(e: Effects) -> list[str]:
    f, c = e.fit, e.fit.checks
    lines = [f"Effects model ({e.runs.source}): {f.kind}, {f.why}."]
    pe = c.get("pure_error_sd")
    lines.append(
        f"  residual sd {f.sigma:.4f}"
        + (
            f" vs pure-error sd {pe:.4f} ({c['replicated_genomes']} replicated genomes)"
            if pe
            else "; no replicated genome: pure error not measured"
        )
    )
    lof = c.get("lack_of_fit")
    misfit = bool(lof) and lof["p"] < 1 - LEVEL and lof["F"] > 1
    if lof:
        verdict = (
            f"; the additive model does not fit: intervals widened x{math.sqrt(lof['F']):.2f}"
            if misfit
            else " (additive model fits)"
        )
        lines.append(f"  lack of fit: F = {lof['F']:.2f}, p = {lof['p']:.3g}{verdict}")
    it = c.get("interactions") or {}
    lines.append(
        f"  stage-pair interactions: F = {it['F']:.2f}, p = {it['p']:.3g}"
        if it.get("tested")
        else f"  stage-pair interactions: not tested ({it.get('why')})"
    )
    cv = c.get("cv") or {}
    if cv.get("rmse") is not None:
        lines.append(
            f"  cross-validated error (held-out genomes): {cv['rmse']:.4f} against a residual sd of {f.sigma:.4f}"
        )
    if f.widen > 1 and not misfit:
        lines.append(f"  the held-out error exceeds the fit's noise sd: intervals widened x{f.widen:.2f}")
    return lines


def effects_lines(e: Effects, top: int | None = None) -> list[str]:
    eff = e.effects.reindex(e.effects["estimate"].abs().sort_values(ascending=False).index)
    if top:
        eff = eff.head(top)
    lines = [f"  {'stage':<12} {'choice':<34} {'vs':<8} {'effect':>8}  {LEVEL:.0%} interval"]
    for r in eff.itertuples():
        lines.append(
            f"  {r.factor:<12} {r.choice[:34]:<34} {r.baseline[:8]:<8} {r.estimate:>+8.3f}  [{r.low:+.3f}, {r.high:+.3f}]"
        )
    return lines


def prediction_text(r) -> str:
    """A prediction's two intervals, each named: where the genome's mean lies, where a new run lands."""
    return f"mean {r['predicted']:.3f} [{r['low']:.3f}, {r['high']:.3f}], a new run [{r['run_low']:.3f}, {r['run_high']:.3f}]"


def verdict_lines(e: Effects) -> list[str]:
    if e.designs.empty:
        return ["  (no published design in this space)"]
    lines = []
    for r in e.designs.to_dict("records"):
        pred = (
            prediction_text(r)
            if r.get("predicted") is not None and np.isfinite(r.get("predicted", np.nan))
            else "-"
        )
        lines.append(f"  {r['design']:<24} {pred:<50} recipe {r['recipe']:<8} {r['verdict']}")
    widths = design_half_widths(e)
    if widths:
        lines.append(
            f"  median half-width of the {len(widths)} design mean(s): {np.median(widths):.4f} "
            f"(from {min(widths):.4f} to {max(widths):.4f}); {spread_text(e)}"
        )
    return lines


def spread_text(e: Effects) -> str:
    """What the new-run interval adds to the mean's: the run noise and the spread of blocks."""
    f = e.fit
    noise = f"a new run adds the run noise (sd {f.sigma:.4f})"
    if f.block_sd is None:
        return noise + " (one block: the spread of seeds/machines is not measured, so not included)"
    few = "; few blocks: a rough estimate" if f.block_df < 5 else ""
    return (
        noise
        + f" and a new block's shift (sd {f.block_sd:.4f} from {f.block_df + 1} seed/machine blocks{few})"
    )


def report_text(e: Effects) -> str:
    out = model_lines(e)
    out += ["", "Effects against the baseline (largest first):", *effects_lines(e)]
    shares = e.fit.checks.get("shares") or {}
    if shares:
        out.append(
            "  share of top-1 variance: "
            + ", ".join(f"{k} {v:.0%}" for k, v in sorted(shares.items(), key=lambda kv: -kv[1]))
        )
    out += ["", f"Model front over {e.coverage} (top-1, {LEVEL:.0%} intervals):"]
    for r in e.front.to_dict("records"):
        out.append(
            f"  {r['key']}  {prediction_text(r)}  {r['flops'] / 1e9:.2f}G  "
            f"{'trained' if r['evaluated'] else 'predicted'}  {r['genome'].summary()}"
        )
    out += ["", "Published designs (predicted top-1, model verdict):", *verdict_lines(e)]
    if e.fidelity is not None:
        out += ["", *fidelity_lines(e.fidelity)]
    return "\n".join(out)
