"""Does the search find the published designs again, or something that beats them?

For every catalog design in the study's space: its proxy result (from the '<study>.references'
study), whether a searched trial beats or matches it within the measured noise, whether the search
sampled the very same genome (same genome key), and the nearest searched genome by `genome_distance`.

Verdicts are decided against the noise of the proxy's top-1 (analysis.calibration.study_noise: the
study's calibration, else its repeated seeds): two top-1 values closer than the resolvable
difference of two single runs (t test at 95 %) are a tie; costs are exact. A searched trial *beats*
the design when it is no worse in every objective and better in one (top-1 by more than the
resolvable difference, or a cost); it *matches within noise* when it ties every objective. Verdicts:
"beaten", "matched within noise", "missed", "not evaluated" (no reference run), "not in space"
(a design of the study's backbone the space cannot produce). Without a noise measurement the
tolerance is 0: differences are taken at face value, and the report says so.

Genome distance (documented, symmetric, in [0, 1]): the fraction of differing fields among
`Genome.distance_fields()`:
  global: stem, downsampling, kw_options                                    (3 fields)
  per stage: plugin types (chain order), positions, r values, plugin options,
             fusion (type, r, options), stage module (type, r, options), KW budget   (7 per stage)
so 0 means the same network and 1/(3 + 7*S) is one field changed. Different backbones (or stage
counts) are at distance 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from effects import in_space
from searchspace import catalog
from searchspace.catalog import Design

from .calibration import Noise, study_noise
from .load import completed, objectives_of, read_genome
from .pareto import to_minimization


def published_records(design: Design) -> list[dict]:
    """The design's published rows as dicts {params, flops, top1, top5, source}: one per printed
    accuracy row (`design.results`, each with its own recipe), the size falling back to the
    design's counts; a design with counts only gives one row without accuracy."""
    counts = {k: c.value for k, c in design.counts.items()}
    if design.results:
        return [
            {
                "top1": r.top1,
                "top5": r.top5,
                "source": r.source,
                "params": r.params or counts.get("params"),
                "flops": r.flops or counts.get("flops"),
            }
            for r in design.results
        ]
    if not counts:
        return []
    return [
        {
            "params": counts.get("params"),
            "flops": counts.get("flops"),
            "top1": None,
            "top5": None,
            "source": design.source,
        }
    ]


def trained_recipe(trial: pd.Series) -> str:
    """The recipe a reference trial trained with (its "recipe" user attr); trials stored before the
    attr existed trained with the common recipe."""
    r = trial.get("recipe")
    return r if isinstance(r, str) and r else "common"


# -- distance -----------------------------------------------------------------------------------
def genome_distance(a: Any, b: Any) -> float:
    """Normalised Hamming distance over Genome.distance_fields (see the module docstring); a and b
    are Genomes or stored JSON."""
    ga, gb = read_genome(a), read_genome(b)
    if ga is None or gb is None:
        return 1.0
    fa, fb = ga.distance_fields(), gb.distance_fields()
    if ga.backbone != gb.backbone or len(fa) != len(fb):
        return 1.0
    return sum(x != y for x, y in zip(fa, fb)) / len(fa)


# -- in space -----------------------------------------------------------------------------------
# -- the table ----------------------------------------------------------------------------------
def _nearest(genome, searched: pd.DataFrame) -> tuple[Any, float]:
    best, best_d = None, 2.0
    for idx, g in searched["genome"].items():
        d = genome_distance(genome, g)
        if d < best_d:
            best, best_d = idx, d
    return best, best_d


def verdict_against(
    done_vals: np.ndarray, p: np.ndarray, tolerance: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(beats, matches) masks of the rows of `done_vals` against the point `p`, all in minimisation
    form, with a per-objective `tolerance` under which a difference is a tie."""
    better = done_vals < p - tolerance
    worse = done_vals > p + tolerance
    beats = ~worse.any(axis=1) & better.any(axis=1)
    matches = ~worse.any(axis=1) & ~better.any(axis=1)
    return beats, matches


def rediscovery(
    df: pd.DataFrame,
    designs: Sequence[Design] | None = None,
    objectives: list[dict] | None = None,
    noise: Noise | None | str = "auto",
) -> pd.DataFrame:
    """One row per catalog design in the study's space (designs default to the whole catalog), plus
    one per design of the study's backbone outside it (verdict "not in space").

    Columns: design, in_space_reason, genome_key, evaluated, recipe (what the design's latest
    evaluation trained with: "common" or "authors: <fields>"; None when not evaluated),
    <objective>_proxy, verdict ('beaten' |
    'matched within noise' | 'missed' | 'not evaluated' | 'not in space'), top1_tolerance (the
    resolvable difference used), noise (where it comes from), dominated_by (count of trials that
    beat it), best_dominating (trial number), equalled_by (trial numbers matching within noise),
    sampled (trial numbers with the same genome key), nearest_trial, nearest_distance,
    nearest_genome, <objective>_nearest, published_top1, published_flops, published_params,
    published_source. `noise`: "auto" (study_noise(df)), a Noise, or None (face value).
    """
    objs = objectives_of(df, objectives)
    names, dirs = [o["name"] for o in objs], [o["direction"] for o in objs]
    designs = catalog.designs() if designs is None else list(designs)
    if isinstance(noise, str):
        noise, source = study_noise(df)
    else:
        source = "given" if noise is not None else "none"
    tol_top1 = noise.resolvable_1 if noise is not None and noise.resolvable_1 is not None else 0.0
    tolerance = np.array([tol_top1 if n == "top1" else 0.0 for n in names])
    searched_all = df[df["study"] == "search"]
    done = completed(df)
    done_vals = (
        to_minimization(done[names].astype(float).to_numpy(), dirs) if len(done) else np.empty((0, len(objs)))
    )
    refs = completed(df, "reference")
    backbone = (df.attrs.get("target") or {}).get("backbone")
    rows = []
    for d in designs:
        ok, why = in_space(d, df.attrs.get("config"), df.attrs.get("target"))
        name, key = d.name, d.genome.key
        if not ok:
            if (
                backbone is not None
                and d.genome.backbone == backbone
                and isinstance((df.attrs.get("config") or {}).get("space"), dict)
            ):
                rows.append(
                    {
                        "design": name,
                        "in_space_reason": why,
                        "genome_key": key,
                        "evaluated": False,
                        "recipe": None,
                        "verdict": "not in space",
                        "top1_tolerance": tol_top1,
                        "noise": source,
                        "dominated_by": 0,
                        "best_dominating": None,
                        "equalled_by": [],
                        "sampled": [],
                        "design_genome": d.genome.summary(),
                    }
                )
            continue
        row: dict[str, Any] = {"design": name, "in_space_reason": why, "genome_key": key}
        ev = refs[refs["reference"] == name] if "reference" in refs else refs.iloc[0:0]
        ev = ev.sort_values("datetime_complete")
        row["evaluated"] = len(ev) > 0
        vals = ev[names].astype(float).iloc[-1].to_numpy() if len(ev) else None  # latest evaluation
        row["recipe"] = trained_recipe(ev.iloc[-1]) if len(ev) else None
        for n, v in zip(names, vals if vals is not None else [np.nan] * len(names)):
            row[f"{n}_proxy"] = v
        row.update(
            verdict="not evaluated",
            top1_tolerance=tol_top1,
            noise=source,
            dominated_by=0,
            best_dominating=None,
            equalled_by=[],
        )
        if vals is not None and np.isfinite(vals).all() and len(done):
            p = to_minimization([vals], dirs)[0]
            dom, eq = verdict_against(done_vals, p, tolerance)
            row["dominated_by"] = int(dom.sum())
            row["equalled_by"] = done["number"][eq].tolist()
            if dom.any():
                # The beating trial with the largest margin on the first objective.
                margin = (p - done_vals)[:, 0]
                row["best_dominating"] = int(
                    done["number"].to_numpy()[np.flatnonzero(dom)[np.argmax(margin[dom])]]
                )
            row["verdict"] = "beaten" if dom.any() else "matched within noise" if eq.any() else "missed"
        elif vals is not None:
            row["verdict"] = "missed"
        row["sampled"] = searched_all["number"][searched_all["genome_key"] == key].tolist()
        near, dist = _nearest(d.genome, done if len(done) else searched_all)
        row["nearest_trial"] = None if near is None else int(df.loc[near, "number"])
        row["nearest_distance"] = None if near is None else dist
        row["nearest_genome"] = None if near is None else df.loc[near, "genome_summary"]
        for n in names:
            row[f"{n}_nearest"] = np.nan if near is None else df.loc[near, n]
        pubs = published_records(d)
        first = pubs[0] if pubs else {}
        row.update(
            published_top1=first.get("top1"),
            published_flops=first.get("flops"),
            published_params=first.get("params"),
            published_source=first.get("source"),
        )
        row["design_genome"] = d.genome.summary()
        rows.append(row)
    out = pd.DataFrame(rows)
    for c in ("best_dominating", "nearest_trial"):  # trial numbers, possibly missing
        if c in out:
            out[c] = out[c].astype("Int64")
    return out


# -- the model's verdict beside the single-run one ---------------------------------------------
def _side(verdict: str, starts: dict[str, str]) -> str | None:
    return next((side for s, side in starts.items() if str(verdict).startswith(s)), None)


MODEL_SIDES = {
    "the cheapest design": "cheapest",
    "on the model front": "stands",
    "beaten": "beaten",
    "not resolved": "tie",
}
FACE_SIDES = {"missed": "stands", "beaten": "beaten", "matched": "tie"}


def which_to_believe(model: str, face: str, runs: int, single: int, sd: float) -> str:
    """Which of the two verdicts on a published design to believe, and why, in one table cell:
    `model`: the effects model's verdict (pooled over `runs` runs, with intervals); `face`: this
    module's single-run verdict (one run of the design against the best of `single` searched runs,
    each off by `sd`). The model's, always: the best of many single runs reads high (winner's curse)."""
    m, f = _side(model, MODEL_SIDES), _side(face, FACE_SIDES)
    one = f"one run's sd {sd:.3f}"
    if m is None:
        return f"neither: the model gives no verdict, and a single run ({one}) cannot decide it"
    if m == "cheapest":  # nothing in the space costs less: no verdict compares it with anything
        return "neither compares it: the cheapest design of the space, nothing at its FLOPs" + (
            f" (the single-run '{face}' only says no cheaper run exists)" if f is not None else ""
        )
    if f is None:
        return f"the model ({runs} runs pooled); no single-run verdict"
    if m == f == "stands":
        return (
            f"both: it stands ('missed': no single searched run equalled its one run; over {runs} runs "
            "nothing at <= its FLOPs is predicted higher)"
        )
    if m == "stands":
        return (
            f"the model: over {runs} runs nothing at <= its FLOPs is predicted higher; the single run that "
            f"{'beat' if f == 'beaten' else 'matched'} it is the best of {single} ({one}: winner's curse)"
        )
    if m == "beaten":
        seen = "the single runs agree" if f == "beaten" else "no single run showed it"
        return f"the model: over {runs} runs a genome at <= its FLOPs is higher, interval clear of 0; {seen}"
    if f == "tie":
        return f"both: a tie at this budget ({one})"
    return f"the model: a tie at this budget (the interval holds 0); the single-run '{face}' rests on one run ({one})"


def beside_single_runs(e, red: pd.DataFrame, single: int) -> pd.DataFrame:
    """The effects model's verdicts (`e`: an effects.Effects) with each design's single-run verdict
    (`red`: the rediscovery table) and which to believe; `single`: completed searched runs."""
    face = dict(zip(red["design"], red["verdict"])) if len(red) else {}
    d = e.designs.assign(single_run=[face.get(n, "-") for n in e.designs["design"]])
    d["believe"] = [
        which_to_believe(m, f, e.fit.n, single, e.fit.sigma) for m, f in zip(d["verdict"], d["single_run"])
    ]
    return d


__all__ = [
    "beside_single_runs",
    "rediscovery",
    "verdict_against",
    "genome_distance",
    "in_space",
    "published_records",
    "which_to_believe",
]
