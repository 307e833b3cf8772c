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
  global: stem, downsampling, kw_options                                    (3 fields)
  per stage: plugin types (chain order), positions, r values, plugin options,
             fusion (type, r, options), stage module (type, r, options), KW budget   (7 per stage)
so 0 means the same network and 1/(3 + 7*S) is one field changed. Different backbones (or stage
counts) are at distance 1.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from searchspace import catalog
from searchspace.genome import Genome
from searchspace.space import SpaceSpec, contains

from .calibration import Noise, study_noise
from .load import completed, genome_dict, genome_summary, objectives_of
from .pareto import to_minimization


# -- catalog access -----------------------------------------------------------------------------
def catalog_designs(names: Iterable[str] | None = None) -> list:
    """Designs of searchspace.catalog (all, or the given names)."""
    return [catalog.get(n) for n in (catalog.names() if names is None else names)]


def _field(obj: Any, key: str, default=None):
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def published_records(design) -> list[dict]:
    """The design's published rows as dicts {params, flops, top1, top5, source}: one per printed
    accuracy row (`design.results`, each with its own recipe), the size falling back to the
    design's exact counts; else the flat `design.published`."""
    counts = {k: _field(c, "value", c) for k, c in (_field(design, "counts") or {}).items()}
    rows = _field(design, "results")
    if rows:
        return [{"top1": _field(r, "top1"), "top5": _field(r, "top5"), "source": _field(r, "source"),
                 "params": _field(r, "params") or counts.get("params"),
                 "flops": _field(r, "flops") or counts.get("flops")} for r in rows]
    pub = _field(design, "published")
    recs = pub if isinstance(pub, (list, tuple)) else [pub] if pub else []
    return [{k: _field(r, k) for k in ("params", "flops", "top1", "top5")}
            | {"source": _field(r, "source") or _field(r, "recipe") or _field(design, "source")} for r in recs]


def design_key(design) -> str | None:
    g = _field(design, "genome")
    if hasattr(g, "key"):
        return g.key
    d = genome_dict(g)
    return None if d is None else Genome.from_dict(d).key  # the canonical key the studies layer stores


# -- distance -----------------------------------------------------------------------------------
def _canon(x: Any) -> str:
    return json.dumps(x, sort_keys=True)


def _module(p: dict | None) -> tuple:
    return (None,) if not p else (p.get("type"), p.get("r"), _canon(p.get("options") or {}))


def _stage_fields(st: dict | None) -> tuple:
    st = st or {}
    ps = st.get("plugins") or []
    return (tuple(p.get("type") for p in ps), tuple(p.get("position") for p in ps),
            tuple(p.get("r") for p in ps), tuple(_canon(p.get("options") or {}) for p in ps),
            _module(st.get("fusion")), _module(st.get("stage_module")), st.get("kw"))


def genome_distance(a: Any, b: Any) -> float:
    """Normalised Hamming distance over genome fields (see the module docstring)."""
    da, db = genome_dict(a), genome_dict(b)
    if da is None or db is None:
        return 1.0
    sa, sb = da.get("stages") or [], db.get("stages") or []
    if da.get("backbone") != db.get("backbone") or len(sa) != len(sb):
        return 1.0
    diff = sum(da.get(k) != db.get(k) for k in ("stem", "downsampling"))
    diff += _canon(da.get("kw_options") or {}) != _canon(db.get("kw_options") or {})
    for x, y in zip(sa, sb):
        diff += sum(u != v for u, v in zip(_stage_fields(x), _stage_fields(y)))
    return diff / (3 + 7 * len(sa))


# -- in space -----------------------------------------------------------------------------------
def in_space(design, config: dict | None, target: dict | None = None) -> tuple[bool, str]:
    """(in space?, why). With a [space] table in the study config: searchspace.space.contains, i.e.
    the sampler can produce exactly this genome. Without one: the design's backbone is the study's."""
    genome = _field(design, "genome")
    g = genome if isinstance(genome, Genome) else Genome.from_dict(genome_dict(genome))
    config, target = config or {}, target or {}
    space = config.get("space")
    if isinstance(space, dict):
        spec = SpaceSpec.from_dict({k: v for k, v in space.items() if not k.startswith("_")})
        return (True, "sampler can produce it") if contains(spec, g) else (False, "outside the [space] spec")
    backbone = target.get("backbone") or config.get("backbone")
    if backbone is not None and g.backbone != backbone:
        return False, f"backbone {g.backbone} is not the study's {backbone}"
    return True, "backbone matches" if backbone else "no space spec"


# -- the table ----------------------------------------------------------------------------------
def _nearest(genome, searched: pd.DataFrame) -> tuple[Any, float]:
    best, best_d = None, 2.0
    for idx, g in searched["genome"].items():
        d = genome_distance(genome, g)
        if d < best_d:
            best, best_d = idx, d
    return best, best_d


def verdict_against(done_vals: np.ndarray, p: np.ndarray, tolerance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(beats, matches) masks of the rows of `done_vals` against the point `p`, all in minimisation
    form, with a per-objective `tolerance` under which a difference is a tie."""
    better = done_vals < p - tolerance
    worse = done_vals > p + tolerance
    beats = ~worse.any(axis=1) & better.any(axis=1)
    matches = ~worse.any(axis=1) & ~better.any(axis=1)
    return beats, matches


def rediscovery(df: pd.DataFrame, designs: Sequence | None = None,
                objectives: list[dict] | None = None, noise: Noise | None | str = "auto") -> pd.DataFrame:
    """One row per catalog design in the study's space (designs default to the whole catalog), plus
    one per design of the study's backbone outside it (verdict "not in space").

    Columns: design, in_space_reason, genome_key, evaluated, <objective>_proxy, verdict ('beaten' |
    'matched within noise' | 'missed' | 'not evaluated' | 'not in space'), top1_tolerance (the
    resolvable difference used), noise (where it comes from), dominated_by (count of trials that
    beat it), best_dominating (trial number), equalled_by (trial numbers matching within noise),
    sampled (trial numbers with the same genome key), nearest_trial, nearest_distance,
    nearest_genome, <objective>_nearest, published_top1, published_flops, published_params,
    published_source. `noise`: "auto" (study_noise(df)), a Noise, or None (face value).
    """
    objs = objectives_of(df, objectives)
    names, dirs = [o["name"] for o in objs], [o["direction"] for o in objs]
    designs = catalog_designs() if designs is None else list(designs)
    if isinstance(noise, str):
        noise, source = study_noise(df)
    else:
        source = "given" if noise is not None else "none"
    tol_top1 = noise.resolvable_1 if noise is not None and noise.resolvable_1 is not None else 0.0
    tolerance = np.array([tol_top1 if n == "top1" else 0.0 for n in names])
    searched_all = df[df["study"] == "search"]
    done = completed(df)
    done_vals = to_minimization(done[names].astype(float).to_numpy(), dirs) if len(done) else np.empty((0, len(objs)))
    refs = completed(df, "reference")
    backbone = (df.attrs.get("target") or {}).get("backbone")
    rows = []
    for d in designs:
        ok, why = in_space(d, df.attrs.get("config"), df.attrs.get("target"))
        name, key = _field(d, "name"), design_key(d)
        if not ok:
            g = genome_dict(_field(d, "genome")) or {}
            if backbone is not None and g.get("backbone") == backbone and isinstance((df.attrs.get("config") or {}).get("space"), dict):
                rows.append({"design": name, "in_space_reason": why, "genome_key": key, "evaluated": False,
                             "verdict": "not in space", "top1_tolerance": tol_top1, "noise": source,
                             "dominated_by": 0, "best_dominating": None, "equalled_by": [], "sampled": [],
                             "design_genome": genome_summary(_field(d, "genome"))})
            continue
        row: dict[str, Any] = {"design": name, "in_space_reason": why, "genome_key": key}
        ev = refs[refs["reference"] == name] if "reference" in refs else refs.iloc[0:0]
        ev = ev.sort_values("datetime_complete")
        row["evaluated"] = len(ev) > 0
        vals = ev[names].astype(float).iloc[-1].to_numpy() if len(ev) else None  # latest evaluation
        for n, v in zip(names, vals if vals is not None else [np.nan] * len(names)):
            row[f"{n}_proxy"] = v
        row.update(verdict="not evaluated", top1_tolerance=tol_top1, noise=source, dominated_by=0,
                   best_dominating=None, equalled_by=[])
        if vals is not None and np.isfinite(vals).all() and len(done):
            p = to_minimization([vals], dirs)[0]
            dom, eq = verdict_against(done_vals, p, tolerance)
            row["dominated_by"] = int(dom.sum())
            row["equalled_by"] = done["number"][eq].tolist()
            if dom.any():
                # The beating trial with the largest margin on the first objective.
                margin = (p - done_vals)[:, 0]
                row["best_dominating"] = int(done["number"].to_numpy()[np.flatnonzero(dom)[np.argmax(margin[dom])]])
            row["verdict"] = "beaten" if dom.any() else "matched within noise" if eq.any() else "missed"
        elif vals is not None:
            row["verdict"] = "missed"
        row["sampled"] = searched_all["number"][searched_all["genome_key"] == key].tolist() if key else []
        near, dist = _nearest(_field(d, "genome"), done if len(done) else searched_all)
        row["nearest_trial"] = None if near is None else int(df.loc[near, "number"])
        row["nearest_distance"] = None if near is None else dist
        row["nearest_genome"] = None if near is None else df.loc[near, "genome_summary"]
        for n in names:
            row[f"{n}_nearest"] = np.nan if near is None else df.loc[near, n]
        pubs = published_records(d)
        first = pubs[0] if pubs else {}
        row.update(published_top1=first.get("top1"), published_flops=first.get("flops"),
                   published_params=first.get("params"), published_source=first.get("source"))
        row["design_genome"] = genome_summary(_field(d, "genome"))
        rows.append(row)
    out = pd.DataFrame(rows)
    for c in ("best_dominating", "nearest_trial"):  # trial numbers, possibly missing
        if c in out:
            out[c] = out[c].astype("Int64")
    return out


__all__ = ["rediscovery", "verdict_against", "genome_distance", "in_space", "catalog_designs", "published_records", "design_key"]
