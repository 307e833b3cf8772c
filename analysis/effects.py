"""What each choice does where: every run of a study pooled through one additive model.

A proxy run is a noisy measurement (one run's sd is about as large as the differences between
designs), so no trial is judged alone. The model is

    top1 = intercept + sum over factors f of effect_f[level] + seed block + noise

with one factor per stage (the stage's whole choice: its block plugins with position, r and
options, its fusion, its stage module and its KernelWarehouse budget) and the global choices (stem,
downsampling). Each level is coded against a baseline ("none" for a stage, the backbone's default
for stem and downsampling). Seeds are blocks: a seed shifts every genome's result alike, so it gets
sum-to-zero columns and predictions are for the average seed.

Fits (see docs/effects.md):
- "ols": ordinary least squares (statsmodels), t intervals on the residual degrees of freedom, when
  the runs give at least as many residual degrees of freedom as parameters (and at least 10).
- "eb-ridge": otherwise, empirical-Bayes shrinkage (scikit-learn's ARDRegression: one prior
  precision per effect and the noise precision, chosen by maximising the marginal likelihood) with
  normal intervals from the posterior covariance. Effects are shrunk toward "no effect"; the
  intervals are posterior ones.

Checks printed with every fit: residual sd against the pure-error sd of replicated genomes (a
saturated genome + seed model), the lack-of-fit F test, a joint test of stage-pair interactions
where the degrees of freedom allow it, and the cross-validated prediction error (folds by genome).
When lack of fit is significant the intervals are widened by sqrt(F); a ridge fit whose held-out
error exceeds its noise sd (few runs: the noise was taken for signal) is widened to that error.

The model front: the Pareto set of (predicted top-1, FLOPs) over every combination of the levels
the model has seen, when that is at most ENUMERATE_LIMIT genomes (then, for a space whose every
choice was trained, the whole space); otherwise over the evaluated genomes and the published designs.
Costs are exact: known counts of evaluated genomes, else composed stage by stage (searchspace.cost;
block plugins, fusions, stage modules and per-stage KW change only their own stage), which is checked
against the direct counts of the evaluated genomes before it is used.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from searchspace import catalog
from searchspace.cost import stagewise
from searchspace.errors import UserError
from searchspace.genome import Genome, Stage

from .calibration import LEVEL
from .load import completed, read_genome
from .pareto import pareto_mask
from .rediscovery import in_space

ENUMERATE_LIMIT = 20_000  # genomes the model front enumerates at most
MIN_RESID_DF = 10  # OLS needs this many residual degrees of freedom, and at least one per parameter
MIN_NOISE_DF = 3  # a ridge fit needs this many left after its effective parameters to measure the noise
CV_FOLDS = 5


# -- the runs: the model's input ------------------------------------------------------------------
def stage_label(stage: Stage) -> str:
    """A stage's whole choice as one level, in the menu-item grammar ('type@position:rR:opt=v'),
    its parts joined by ' + '; 'none' for a plain stage."""

    def item(p, position=None):
        bits = [f"{p.type}@{position or p.position}"]
        if p.r is not None:
            bits.append(f"r{p.r}")
        bits += [f"{k}={v}" for k, v in sorted(dict(p.options).items())]
        return ":".join(bits)

    parts = [item(p) for p in stage.plugins]
    parts += [item(p) for p in (stage.fusion, stage.stage_module) if p is not None]
    if stage.kw is not None:
        parts.append(f"kw b={stage.kw:g}")
    return " + ".join(parts) or "none"


def factors_of(genome: Genome) -> dict[str, str]:
    """{factor: level}: stem, downsampling, then s1..sS (the stage labels)."""
    g = genome.validate()
    from searchspace.backbones.specs import BACKBONE_SPECS

    spec = BACKBONE_SPECS[g.backbone]
    out = {"stem": g.stem or spec.stems[0], "downsampling": g.downsampling or spec.downsampling[0]}
    out.update({f"s{i}": stage_label(s) for i, s in enumerate(g.stages, start=1)})
    return out


def _is_stage(factor: str) -> bool:
    return factor[0] == "s" and factor[1:].isdigit()


@dataclass
class Runs:
    """One row per measured run: key, genome, seed, y (top-1), flops, params, kind ('search',
    'reference' or 'table'), design (catalog name or None), recipe, trial (number or None)."""

    frame: pd.DataFrame
    source: str  # what was read, for the outputs
    config: dict = field(default_factory=dict)
    target: dict = field(default_factory=dict)
    noise_sd: float | None = None  # a measured run sd (a calibration) for fits whose runs cannot give one
    noise_source: str = ""

    @property
    def n(self) -> int:
        return len(self.frame)

    def with_prior(self, prior: Runs) -> Runs:
        """These runs and a table's of the same protocol. A seed is one block in both (same protocol,
        same seed: the same initialisation and batch order); where both hold a genome under a seed,
        the fit keeps the first run, this study's."""
        frame = pd.concat([self.frame, prior.frame], ignore_index=True)
        return replace(
            self, frame=frame, source=f"{self.source} with {prior.n} prior run(s) of {prior.source}"
        )

    def common_recipe(self) -> pd.DataFrame:
        """The runs the model compares: those trained with the common recipe."""
        return self.frame[self.frame["recipe"].fillna("common") == "common"]


def _runs_frame(rows: list[dict]) -> pd.DataFrame:
    cols = ["key", "genome", "seed", "y", "flops", "params", "kind", "design", "recipe", "trial"]
    frame = pd.DataFrame(rows, columns=cols)
    return frame[np.isfinite(frame["y"].astype(float))].reset_index(drop=True)


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
                }
            )
    from .calibration import study_noise

    noise, noise_source = study_noise(df)
    return Runs(
        _runs_frame(rows),
        f"study {df.attrs.get('study_name')!r}",
        df.attrs.get("config") or {},
        df.attrs.get("target") or {},
        noise.pooled_std if noise is not None else None,
        noise_source,
    )


def runs_from_table(path: str | Path, seeds: Sequence[int] | None = None) -> Runs:
    """The ok rows of a benchmark table CSV (studies/tables/*.csv), optionally of some seeds only."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--table {str(path)!r}: no such file")
    try:
        t = pd.read_csv(p)
    except Exception as e:  # pandas raises several types for a file that is not a CSV
        raise UserError(f"--table {str(path)!r}: not a readable CSV ({type(e).__name__})") from None
    need = {"genome", "seed", "top1", "status"}
    if not need <= set(t.columns):
        raise UserError(f"--table {str(path)!r}: not a benchmark table (needs columns {sorted(need)})")
    t = t[t["status"] == "ok"]
    if seeds is not None:
        t = t[t["seed"].isin(list(seeds))]
    flops_col = next((c for c in ("flops_paper", "flops") if c in t), None)
    params_col = next((c for c in ("params_paper", "params") if c in t), None)
    genomes: dict[str, Genome] = {}
    rows = []
    for r in t.itertuples(index=False):
        g = genomes.get(r.genome) or genomes.setdefault(r.genome, Genome.from_json(r.genome))
        rows.append(
            {
                "key": g.key,
                "genome": g,
                "seed": int(r.seed),
                "y": float(r.top1),
                "flops": float(getattr(r, flops_col)) if flops_col else np.nan,
                "params": float(getattr(r, params_col)) if params_col else np.nan,
                "kind": "table",
                "design": r.design if isinstance(getattr(r, "design", None), str) else None,
                "recipe": "common",
                "trial": None,
            }
        )
    return Runs(_runs_frame(rows), f"table {p.name}")


# -- coding: factors and seeds as columns ----------------------------------------------------------
@dataclass
class Coding:
    """Treatment coding of each factor against its baseline, sum-to-zero coding of the seeds."""

    factors: list[str]
    baselines: dict[str, str]
    levels: dict[str, list[str]]  # the non-baseline levels seen, per factor
    seeds: list[int]

    @classmethod
    def of(cls, factor_rows: Sequence[Mapping[str, str]], seeds: Sequence[int]) -> Coding:
        factors = list(factor_rows[0])
        baselines, levels = {}, {}
        for f in factors:
            counts = pd.Series([r[f] for r in factor_rows]).value_counts()
            default = "none" if _is_stage(f) else None
            base = default if default in counts.index else counts.index[0]
            if f == "stem" and "standard" in counts.index:
                base = "standard"
            if f == "downsampling" and "v1.5" in counts.index:
                base = "v1.5"
            baselines[f] = base
            levels[f] = sorted(lv for lv in counts.index if lv != base)
        return cls(factors, baselines, levels, sorted(set(int(s) for s in seeds)))

    @property
    def columns(self) -> list[str]:
        cols = ["intercept"]
        cols += [f"{f}={lv}" for f in self.factors for lv in self.levels[f]]
        cols += [f"seed[{s}]" for s in self.seeds[:-1]]
        return cols

    def factor_slices(self) -> dict[str, slice]:
        out, i = {}, 1
        for f in self.factors:
            out[f] = slice(i, i + len(self.levels[f]))
            i += len(self.levels[f])
        if len(self.seeds) > 1:
            out["seed"] = slice(i, i + len(self.seeds) - 1)
        return out

    def unknown(self, factors: Mapping[str, str]) -> list[str]:
        """The factor levels this coding has never seen (no prediction is possible for them)."""
        return [
            f"{f}={factors.get(f)}"
            for f in self.factors
            if factors.get(f) != self.baselines[f] and factors.get(f) not in self.levels[f]
        ]

    def row(self, factors: Mapping[str, str], seed: int | None = None) -> np.ndarray:
        """One design row; seed None: the average seed (the seed columns are 0)."""
        x = [1.0]
        for f in self.factors:
            x += [1.0 if factors.get(f) == lv else 0.0 for lv in self.levels[f]]
        if len(self.seeds) > 1:
            last = self.seeds[-1]
            x += [
                0.0 if seed is None else (1.0 if seed == s else -1.0 if seed == last else 0.0)
                for s in self.seeds[:-1]
            ]
        return np.asarray(x)

    def matrix(self, factor_rows: Sequence[Mapping[str, str]], seeds: Sequence[int]) -> np.ndarray:
        return np.vstack([self.row(f, int(s)) for f, s in zip(factor_rows, seeds)])


# -- the fit --------------------------------------------------------------------------------------
@dataclass
class Fit:
    """A fitted effects model: coefficients, their covariance and how to read intervals."""

    kind: str  # "ols" or "eb-ridge"
    why: str
    coding: Coding
    coef: np.ndarray
    cov: np.ndarray
    sigma: float  # residual sd (ols) or the noise sd the ridge estimated
    df_resid: float | None  # t degrees of freedom (ols); None: normal intervals
    n: int
    widen: float = 1.0  # > 1 when lack of fit was significant
    checks: dict = field(default_factory=dict)

    @property
    def q(self) -> float:
        p = 0.5 + LEVEL / 2
        return float(stats.t.ppf(p, self.df_resid) if self.df_resid else stats.norm.ppf(p))

    def interval(self, x: np.ndarray) -> tuple[float, float, float]:
        """(estimate, low, high) of the linear combination x . coef."""
        est = float(x @ self.coef)
        hw = self.q * self.widen * math.sqrt(max(float(x @ self.cov @ x), 0.0))
        return est, est - hw, est + hw

    def predict(self, factors: Mapping[str, str]) -> tuple[float, float, float] | None:
        """Expected top-1 of a genome (average seed) with its interval; None for an unseen level."""
        if self.coding.unknown(factors):
            return None
        return self.interval(self.coding.row(factors))

    def contrast(self, a: Mapping[str, str], b: Mapping[str, str]) -> tuple[float, float, float]:
        """Expected top-1 of `a` minus that of `b`, with its interval (shared terms cancel)."""
        return self.interval(self.coding.row(a) - self.coding.row(b))

    def effects(self) -> pd.DataFrame:
        """Each level of each factor against its baseline: factor, choice, baseline, estimate, low, high."""
        rows = []
        cols = self.coding.columns
        for f in self.coding.factors:
            for lv in self.coding.levels[f]:
                x = np.zeros(len(cols))
                x[cols.index(f"{f}={lv}")] = 1.0
                est, lo, hi = self.interval(x)
                rows.append(
                    {
                        "factor": f,
                        "choice": lv,
                        "baseline": self.coding.baselines[f],
                        "estimate": est,
                        "low": lo,
                        "high": hi,
                    }
                )
        return pd.DataFrame(rows, columns=["factor", "choice", "baseline", "estimate", "low", "high"])


def _ols(X: np.ndarray, y: np.ndarray):
    import warnings

    import statsmodels.api as sm

    with warnings.catch_warnings():  # saturated and interaction designs are rank-deficient by
        warnings.filterwarnings("ignore", message="The design matrix is rank-deficient")  # construction:
        return sm.OLS(
            y, X
        ).fit()  # the pseudo-inverse fit and explicit ranks (np.linalg.matrix_rank) handle it


def _ridge(X: np.ndarray, y: np.ndarray, noise_sd: float | None = None):
    """Empirical-Bayes shrinkage with one prior precision per effect (ARD), each chosen with the noise
    precision by maximising the marginal likelihood. One shared prior (BayesianRidge) shrank the
    large stage-4 effects to a quarter of their size at 24 runs (docs/effects_validation.md)."""
    from sklearn.linear_model import ARDRegression

    if noise_sd is None:
        return ARDRegression(fit_intercept=True, threshold_lambda=1e300).fit(X[:, 1:], y)
    # A known noise sd: a Gamma prior on the noise precision so tight that it stays at 1 / sd^2.
    tight = 1e8
    return ARDRegression(
        fit_intercept=True, threshold_lambda=1e300, alpha_1=tight, alpha_2=tight * noise_sd**2
    ).fit(X[:, 1:], y)


def _fit_kind(X: np.ndarray, y: np.ndarray, kind: str, noise_sd: float | None = None):
    """(coef including the intercept, covariance, sigma, df_resid) of one fit."""
    if kind == "ols":
        res = _ols(X, y)
        return (
            np.asarray(res.params),
            np.asarray(res.cov_params()),
            math.sqrt(res.mse_resid),
            float(res.df_resid),
        )
    m = _ridge(X, y, noise_sd)
    sigma2 = 1.0 / m.alpha_
    # The intercept is ybar - xbar . coef: its variance adds sigma^2 / n to every prediction.
    xbar = X[:, 1:].mean(axis=0)
    p = X.shape[1]
    cov = np.zeros((p, p))
    cov[1:, 1:] = m.sigma_
    cov[0, 0] = sigma2 / len(y) + xbar @ m.sigma_ @ xbar
    cov[0, 1:] = cov[1:, 0] = -(m.sigma_ @ xbar)
    return np.concatenate([[m.intercept_], m.coef_]), cov, math.sqrt(sigma2), None


def choose_kind(n: int, p: int) -> tuple[str, str]:
    resid = n - np.int64(p)
    if resid >= max(MIN_RESID_DF, p):
        return "ols", f"{n} runs for {p} parameters: {resid} residual df (classical intervals)"
    return "eb-ridge", (
        f"{n} runs for {p} parameters: too few for classical intervals (OLS needs >= "
        f"{max(MIN_RESID_DF, p)} residual df), so effects are shrunk (empirical-Bayes ridge) and "
        "intervals are posterior ones"
    )


def fit(runs: Runs, kind: str = "auto") -> Fit:
    """Fit the additive effects model to every run trained with the common recipe, with its checks.

    Runs under an authors' recipe ([references] recipe = "authors") are left out: the model compares
    placements under one recipe, and such a run differs from the others in its recipe too."""
    common = runs.common_recipe()
    # A genome run again under the same seed repeats a measurement (CPU training is reproducible):
    # it is not a replicate of the noise, so only its first run enters the fit.
    fr = common.drop_duplicates(["key", "seed"]).reset_index(drop=True)
    if len(fr) < 3:
        raise UserError(f"{runs.source}: {len(fr)} completed run(s); the effects model needs at least 3")
    factor_rows = [factors_of(g) for g in fr["genome"]]
    coding = Coding.of(factor_rows, fr["seed"])
    X, y = coding.matrix(factor_rows, fr["seed"]), fr["y"].to_numpy(float)
    if kind == "auto":
        kind, why = choose_kind(len(y), X.shape[1])
        if len(runs.frame) > len(common):
            why += f"; {len(runs.frame) - len(common)} run(s) under an authors' recipe left out"
        if len(common) > len(fr):
            why += f"; {len(common) - len(fr)} repeat(s) of a genome under the same seed counted once"
    elif kind in ("ols", "eb-ridge"):
        why = f"{kind} requested"
    else:
        raise UserError(f"effects model kind {kind!r}: expected auto, ols or eb-ridge")
    coef, cov, sigma, df_resid = _fit_kind(X, y, kind)
    f = Fit(kind, why, coding, coef, cov, sigma, df_resid, len(y))
    if kind == "eb-ridge" and len(y) - _effective_params(f, X) < MIN_NOISE_DF:
        # The runs leave (almost) nothing to measure the noise with: the marginal likelihood would
        # take noise for signal. Use a measured run sd, or say that the runs are too few.
        if runs.noise_sd is None:
            raise UserError(
                f"{runs.source}: {len(y)} runs for {X.shape[1]} parameters leave no degrees of freedom to "
                "measure the noise; run more trials, or measure it (python -m studies.calibrate)"
            )
        coef, cov, sigma, _ = _fit_kind(X, y, kind, runs.noise_sd)
        why += f"; noise sd {runs.noise_sd:.4f} from {runs.noise_source}"
        f = Fit(kind, why, coding, coef, cov, sigma, None, len(y))
    f.checks = _checks(f, X, y, fr, factor_rows)
    lof = f.checks.get("lack_of_fit") or {}
    if lof.get("p") is not None and lof["p"] < 1 - LEVEL and lof["F"] > 1:
        f.widen = math.sqrt(lof["F"])
    cv = (f.checks.get("cv") or {}).get("rmse")
    if kind == "eb-ridge" and cv is not None and cv > f.sigma * f.widen:
        # With few runs the marginal likelihood can take the noise for signal (a near-zero noise sd):
        # held-out genomes then show the real error, and the intervals take its scale.
        f.widen = cv / f.sigma
    f.checks["widened_by"] = f.widen
    f.checks["shares"] = _shares(f, X, y)
    return f


def _checks(f: Fit, X: np.ndarray, y: np.ndarray, fr: pd.DataFrame, factor_rows) -> dict:
    out: dict = {"residual_sd": f.sigma, "residual_df": f.df_resid}
    keys = fr["key"].to_numpy()
    # Pure error: a saturated model (one mean per genome) plus the seed blocks.
    uniq, gidx = np.unique(keys, return_inverse=True)
    replicated = int((np.bincount(gidx) > 1).sum())
    out["replicated_genomes"] = replicated
    if replicated:
        G = np.zeros((len(y), len(uniq)))
        G[np.arange(len(y)), gidx] = 1.0
        seeds = f.coding.seeds
        S = X[:, -(len(seeds) - 1) :] if len(seeds) > 1 else np.empty((len(y), 0))
        sat = _ols(np.hstack([G, S]), y)
        if sat.df_resid >= 1 and sat.mse_resid > 0:  # identical repeats measure no noise
            out["pure_error_sd"], out["pure_error_df"] = math.sqrt(sat.mse_resid), float(sat.df_resid)
            add_ssr, add_df = float(((y - X @ f.coef) ** 2).sum()), float(len(y) - np.linalg.matrix_rank(X))
            if f.kind == "ols" and add_df > sat.df_resid:
                df_lof = add_df - sat.df_resid
                F = ((add_ssr - sat.ssr) / df_lof) / sat.mse_resid
                out["lack_of_fit"] = {
                    "F": float(F),
                    "df": [df_lof, float(sat.df_resid)],
                    "p": float(stats.f.sf(F, df_lof, sat.df_resid)),
                }
            elif f.kind == "eb-ridge":  # residual variance against pure error, as a ratio test
                F = f.sigma**2 / sat.mse_resid
                df1 = max(len(y) - 1 - _effective_params(f, X), 1.0)
                out["lack_of_fit"] = {
                    "F": float(F),
                    "df": [df1, float(sat.df_resid)],
                    "p": float(stats.f.sf(F, df1, sat.df_resid)),
                }
    out["interactions"] = _interaction_test(f, X, y, factor_rows)
    out["cv"] = _cross_validate(f, X, y, keys)
    return out


def _effective_params(f: Fit, X: np.ndarray) -> float:
    """Degrees of freedom of the ridge fit: trace of its hat matrix (posterior cov / noise var)."""
    Xc = X[:, 1:] - X[:, 1:].mean(axis=0)
    return float(np.trace(Xc @ f.cov[1:, 1:] @ Xc.T) / f.sigma**2) + 1.0


def _interaction_test(f: Fit, X: np.ndarray, y: np.ndarray, factor_rows) -> dict:
    """Joint F test of every stage-pair interaction against the additive model (OLS, where df allow)."""
    stages = [s for s in f.coding.factors if _is_stage(s) and f.coding.levels[s]]
    cols, pairs = [], []
    for a, b in itertools.combinations(stages, 2):
        for la in f.coding.levels[a]:
            for lb in f.coding.levels[b]:
                c = np.array([r[a] == la and r[b] == lb for r in factor_rows], dtype=float)
                if c.any():
                    cols.append(c)
                    pairs.append(f"{a}x{b}")
    if not cols:
        return {"tested": False, "why": "no two stages vary together"}
    Xi = np.hstack([X, np.column_stack(cols)])
    rank_add, rank_int = np.linalg.matrix_rank(X), np.linalg.matrix_rank(Xi)
    df_int, df_resid = rank_int - rank_add, len(y) - rank_int
    if df_int < 1 or df_resid < MIN_RESID_DF:
        return {"tested": False, "why": f"too few runs: {df_int} interaction df and {df_resid} residual df"}
    full, add = _ols(Xi, y), _ols(X, y)
    F, p, _ = full.compare_f_test(add)
    return {"tested": True, "F": float(F), "df": [float(df_int), float(df_resid)], "p": float(p)}


def _cross_validate(f: Fit, X: np.ndarray, y: np.ndarray, keys: np.ndarray) -> dict:
    """Prediction error of held-out genomes (folds by genome, so a genome's seeds stay together)."""
    from sklearn.model_selection import GroupKFold

    n_groups = len(np.unique(keys))
    if n_groups < 3:
        return {"rmse": None, "why": "fewer than 3 genomes"}
    errs, skipped = [], 0
    for train, test in GroupKFold(n_splits=min(CV_FOLDS, n_groups)).split(X, y, keys):
        seen = X[train].any(axis=0)
        seen[0] = True
        ok = ~(X[test][:, ~seen] != 0).any(axis=1)  # a held-out row with a level the fold never saw
        skipped += int((~ok).sum())
        if not ok.any():
            continue
        kind = f.kind if f.kind == "eb-ridge" or len(train) - seen.sum() >= 1 else "eb-ridge"
        coef, *_ = _fit_kind(X[train][:, seen], y[train], kind)
        errs.append(y[test][ok] - X[test][ok][:, seen] @ coef)
    if not errs:
        return {"rmse": None, "why": "every held-out genome had a level its fold never saw"}
    e = np.concatenate(errs)
    return {"rmse": float(np.sqrt((e**2).mean())), "rows": int(len(e)), "skipped": skipped}


def _shares(f: Fit, X: np.ndarray, y: np.ndarray) -> dict:
    """Share of top-1's variance over the runs: each factor's fitted contribution, and the residual."""
    var = float(y.var())
    if var == 0:
        return {}
    out = {
        name: float((X[:, sl] @ f.coef[sl]).var() / var)
        for name, sl in f.coding.factor_slices().items()
        if sl.stop > sl.start
    }
    out["residual"] = float(((y - X @ f.coef) ** 2).mean() / var)
    return out


# -- costs of genomes never trained: composed stage by stage ------------------------------------------
class StageCosts:
    """Counts of genomes as the plain backbone's plus what each stage's choice adds alone (one trace
    per distinct stage choice), trusted only after it reproduces the evaluated genomes' counts."""

    def __init__(self, target: Mapping, count=None):
        """`count(genome, target) -> {"flops", "params"}`: how one genome is counted (default: a
        searchspace.cost trace; a caller may pass one backed by its on-disk cache)."""
        self.target = dict(target)
        self._count_one = count or _trace_count
        self._cache: dict[str, dict] = {}

    def _count(self, g: Genome) -> dict:
        if g.key not in self._cache:
            self._cache[g.key] = self._count_one(g, self.target)
        return self._cache[g.key]

    def __call__(self, g: Genome) -> dict:
        return stagewise(g, self._count)


def _trace_count(g: Genome, target: Mapping) -> dict:
    from searchspace.cost import cost

    c = cost(g, target.get("convention", "paper"), target.get("resolution"), target.get("num_classes"))
    return {"flops": float(c.flops), "params": float(c.params)}


# -- candidates, the model front, verdicts ------------------------------------------------------------
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
    out = cands.copy()
    preds = [f.predict(factors_of(g)) for g in out["genome"]]
    out["predicted"] = [p[0] if p else np.nan for p in preds]
    out["low"] = [p[1] if p else np.nan for p in preds]
    out["high"] = [p[2] if p else np.nan for p in preds]
    return out


def model_front(pred: pd.DataFrame) -> pd.DataFrame:
    """The Pareto set of (predicted top-1 max, FLOPs min), by FLOPs."""
    ok = pred.dropna(subset=["predicted", "flops"])
    mask = pareto_mask(ok[["predicted", "flops"]].to_numpy(float), ["maximize", "minimize"])
    return ok[mask].sort_values("flops").reset_index(drop=True)


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
        flops = (
            float(mine["flops"].iloc[0])
            if len(mine) and pd.notna(mine["flops"].iloc[0])
            else _flops_of(pred, g.key)
        )
        row.update(predicted=est, low=lo, high=hi, flops=flops)
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
    if rivals.empty or rivals["predicted"].max() <= est:
        return {
            "verdict": "on the model front (found again)",
            "evidence": f"{evidence}: no genome at <= its FLOPs is predicted higher",
        }
    best = rivals.loc[rivals["predicted"].idxmax()]
    d, lo, hi = f.contrast(factors_of(best.genome), fac)
    hw = (hi - lo) / 2
    text = f"{d:+.3f} +- {hw:.3f}"
    base = {
        "beaten_by": best.key,
        "beaten_by_genome": best.genome.summary(),
        "difference": d,
        "difference_low": lo,
        "difference_high": hi,
    }
    if lo > 0:
        return {
            **base,
            "verdict": f"beaten by {best.key}: {text} at <= its FLOPs",
            "evidence": f"{evidence}: contrast {best.key} - design",
        }
    more = trials_needed(f.n, d, hw)
    decide = (
        f"about {more} more runs would decide it"
        if more is not None and more <= 10 * f.n
        else "a tie at any affordable budget (over 10x the runs to decide it)"
    )
    return {
        **base,
        "verdict": f"not resolved at this budget: {best.key} {text}; {decide}",
        "evidence": f"{evidence}: the contrast's {LEVEL:.0%} interval holds 0",
    }


# -- the whole analysis -------------------------------------------------------------------------------
@dataclass
class Effects:
    fit: Fit
    runs: Runs
    effects: pd.DataFrame
    predictions: pd.DataFrame  # every candidate, evaluated or not
    front: pd.DataFrame
    designs: pd.DataFrame
    coverage: str

    def to_json(self) -> dict:
        f, c = self.fit, self.fit.checks
        fr = self.runs.frame

        def num(v):
            return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v

        trials = fr.groupby("key").agg(raw=("y", "mean"), runs=("y", "size")).reset_index()
        trials = trials.merge(self.predictions[["key", "predicted", "low", "high"]], on="key", how="left")
        return {
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
            "designs": [
                {
                    k: num(v)
                    for k, v in r.items()
                    if k
                    in (
                        "design",
                        "predicted",
                        "low",
                        "high",
                        "flops",
                        "verdict",
                        "evidence",
                        "recipe",
                        "runs",
                        "raw_mean",
                        "beaten_by",
                    )
                }
                for r in self.designs.to_dict("records")
            ],
            "front": [
                {
                    "genome_key": r.key,
                    "genome": r.genome.summary(),
                    "predicted": r.predicted,
                    "low": r.low,
                    "high": r.high,
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
                    "low": num(r.low),
                    "high": num(r.high),
                }
                for r in trials.itertuples()
            ],
        }


def analyse(
    runs: Runs,
    kind: str = "auto",
    designs=None,
    limit: int = ENUMERATE_LIMIT,
    costs: StageCosts | None = None,
) -> Effects:
    f = fit(runs, kind)
    cands, note = candidates(f, runs, limit, costs)
    pred = predictions(f, cands)
    return Effects(f, runs, f.effects(), pred, model_front(pred), verdicts(f, pred, runs, designs), note)


def of_study(df: pd.DataFrame, **kw) -> Effects:
    runs = runs_from_study(df)
    if df.attrs.get("prior_table"):  # the config's [prior] table, checked against its protocol
        runs = runs.with_prior(runs_from_table(df.attrs["prior_table"]))
    return analyse(runs, **kw)


# -- text ---------------------------------------------------------------------------------------------
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


def design_half_widths(e: Effects) -> list[float]:
    """Half-widths of the design predictions' intervals (designs the model can predict)."""
    if e.designs.empty or "high" not in e.designs:
        return []
    d = e.designs.dropna(subset=["low", "high"])
    return [float(w) for w in (d["high"] - d["low"]) / 2]


def verdict_lines(e: Effects) -> list[str]:
    if e.designs.empty:
        return ["  (no published design in this space)"]
    lines = []
    for r in e.designs.to_dict("records"):
        pred = (
            f"{r['predicted']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"
            if r.get("predicted") is not None and np.isfinite(r.get("predicted", np.nan))
            else "-"
        )
        lines.append(f"  {r['design']:<24} {pred:<24} recipe {r['recipe']:<8} {r['verdict']}")
    widths = design_half_widths(e)
    if widths:
        lines.append(
            f"  median half-width of the {len(widths)} design prediction(s): {np.median(widths):.4f} "
            f"(from {min(widths):.4f} to {max(widths):.4f}; one run's sd here: {e.fit.sigma:.4f})"
        )
    return lines


def report_text(e: Effects) -> str:
    out = model_lines(e)
    out += ["", "Effects against the baseline (largest first):", *effects_lines(e)]
    shares = e.fit.checks.get("shares") or {}
    if shares:
        out.append(
            "  share of top-1 variance: "
            + ", ".join(f"{k} {v:.0%}" for k, v in sorted(shares.items(), key=lambda kv: -kv[1]))
        )
    out += ["", f"Model front over {e.coverage}:"]
    for r in e.front.itertuples():
        out.append(
            f"  {r.key}  {r.predicted:.3f} [{r.low:.3f}, {r.high:.3f}]  {r.flops / 1e9:.2f}G  {'trained' if r.evaluated else 'predicted'}  {r.genome.summary()}"
        )
    out += ["", "Published designs (predicted top-1, model verdict):", *verdict_lines(e)]
    return "\n".join(out)


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
    a = p.parse_args(argv)
    try:
        if bool(a.table) == bool(a.run_dir):
            raise UserError("give a run folder or --table CSV (one of them)")
        if a.table:
            seeds = None
            if a.seeds:
                try:
                    seeds = [int(s) for s in a.seeds.split(",")]
                except ValueError:
                    raise UserError(f"--seeds {a.seeds!r}: expected integers separated by commas") from None
            e = analyse(runs_from_table(a.table, seeds), a.kind)
        else:
            from .load import load_study

            df = load_study(a.run_dir, a.study)
            if a.no_prior:
                df.attrs["prior_table"] = None
            e = of_study(df, kind=a.kind)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(e.to_json(), indent=1, default=float) if a.json else report_text(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
