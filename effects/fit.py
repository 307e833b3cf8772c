"""Fitting the additive effects model and checking it: OLS (statsmodels) when the runs give enough
residual degrees of freedom, else empirical-Bayes shrinkage (scikit-learn's ARDRegression); then the
checks every fit prints (pure error, lack of fit, stage-pair interactions, cross-validated error,
variance shares) and the widening of intervals they call for (docs/effects.md)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.linalg
import statsmodels.api as sm
from scipy import stats
from sklearn.linear_model import ARDRegression
from sklearn.model_selection import GroupKFold

from searchspace.errors import UserError

from .coding import Coding, factors_of, is_stage
from .runs import Runs

LEVEL = 0.95  # two-sided level of every interval (analysis.calibration uses the same)
MIN_RESID_DF = 10  # OLS needs this many residual degrees of freedom, and at least one per parameter
RANK_TOL = 1e-9  # a singular value (or pivot) under this share of the largest is zero: exact dependence
MIN_NOISE_DF = 3  # a ridge fit needs this many left after its effective parameters to measure the noise
CV_FOLDS = 5
MAXT_DRAWS = 10_000  # draws of the max-t critical value (fixed RNG seed: the same verdicts every time)


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
    basis: np.ndarray | None = None  # OLS: the row space of the runs' design (None: every row estimable)
    widen: float = 1.0  # > 1 when lack of fit was significant
    checks: dict = field(default_factory=dict)
    # The spread of block (seed, environment, rung) effects: the sd of a new block's shift, with its
    # degrees of freedom (blocks - 1); None with a single block, where it cannot be measured.
    block_sd: float | None = None
    block_df: int | None = None

    @property
    def q(self) -> float:
        p = 0.5 + LEVEL / 2
        return float(stats.t.ppf(p, self.df_resid) if self.df_resid else stats.norm.ppf(p))

    def intervals(self, X: np.ndarray, q: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(estimate, low, high) of each row's linear combination X[i] . coef: for a genome's row, where
        its MEAN top-1 (over blocks) lies; a single run scatters far wider (run_intervals). `q`: another
        critical value than the pointwise one (a simultaneous one, simultaneous_q)."""
        est = X @ self.coef
        hw = (self.q if q is None else q) * self.widen * np.sqrt(self._mean_var(X))
        return est, est - hw, est + hw

    def run_intervals(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(estimate, low, high) of where ONE NEW RUN of each row's genome would land, in a block not
        seen yet: the mean's variance plus the run noise (sigma^2) plus the spread of block effects.
        The t quantile takes Satterthwaite's degrees of freedom for that sum (the block spread is
        measured on only blocks - 1 of them)."""
        est = X @ self.coef
        # A widening (lack of fit, or a ridge fit's held-out error) scales the model's whole error, the
        # run noise included: a held-out run's error is what the cross-validated widening measures.
        noise = self.widen**2 * (self._mean_var(X) + self.sigma**2)
        block = (self.block_sd or 0.0) ** 2
        total = noise + block
        noise_df = self.df_resid or np.inf
        denom = noise**2 / noise_df + (block**2 / self.block_df if block > 0 else 0.0)
        df = np.where(denom > 0, total**2 / np.maximum(denom, 1e-300), np.inf)
        hw = stats.t.ppf(0.5 + LEVEL / 2, df) * np.sqrt(total)
        return est, est - hw, est + hw

    def _mean_var(self, X: np.ndarray) -> np.ndarray:
        return np.maximum(np.einsum("ij,jk,ik->i", X, self.cov, X), 0.0)

    def interval(self, x: np.ndarray, q: float | None = None) -> tuple[float, float, float]:
        """(estimate, low, high) of the linear combination x . coef."""
        est, low, high = self.intervals(np.atleast_2d(x), q)
        return float(est[0]), float(low[0]), float(high[0])

    def estimable(self, X: np.ndarray) -> np.ndarray:
        """Per row, whether the runs determine it: in the row space of their design (an OLS fit with
        dependent columns leaves other rows, e.g. a part only ever seen beside another, to an
        arbitrary split). A ridge fit shrinks every effect: every row is estimable."""
        X = np.atleast_2d(X)
        if self.basis is None:
            return np.ones(len(X), dtype=bool)
        resid = X - (X @ self.basis) @ self.basis.T
        return np.abs(resid).max(axis=1) <= 1e-6 * np.maximum(np.abs(X).max(axis=1), 1.0)

    def predict(self, factors: Mapping[str, str]) -> tuple[float, float, float] | None:
        """A genome's mean top-1 (average block) with the interval of that mean; None for an unseen
        level. `predict_run` gives where a new run would land."""
        x = self.coding.row(factors)
        if self.coding.unknown(factors) or not self.estimable(x)[0]:
            return None
        return self.interval(x)

    def predict_run(self, factors: Mapping[str, str]) -> tuple[float, float, float] | None:
        """A genome's mean top-1 with the interval of one new run of it (run_intervals); None as predict."""
        x = np.atleast_2d(self.coding.row(factors))
        if self.coding.unknown(factors) or not self.estimable(x)[0]:
            return None
        est, low, high = self.run_intervals(x)
        return float(est[0]), float(low[0]), float(high[0])

    def simultaneous_q(self, C: np.ndarray, draws: int = MAXT_DRAWS, seed: int = 0) -> float:
        """The critical value that makes the intervals est +- q * se of every contrast in C (one per row)
        hold together at LEVEL: the LEVEL quantile of max |t| over the rows, drawn from the
        coefficients' joint t (OLS, the fit's df) or normal (ridge) distribution (max-t)."""
        C = np.atleast_2d(C)
        se = np.sqrt(self._mean_var(C))
        C, se = C[se > 0], se[se > 0]
        if len(C) == 0:
            return self.q
        # Draws through the Cholesky factor of the covariance of the estimated coefficients (the
        # dependent columns of a rank-deficient fit have none): a continuous function of it, so
        # round-off in the fit moves the critical value by round-off, not by another Monte Carlo draw.
        rng = np.random.default_rng(seed)
        keep = np.flatnonzero(np.diag(self.cov) > 0)
        z = rng.standard_normal((draws, len(keep))) @ _factor(self.cov[np.ix_(keep, keep)]).T
        if self.df_resid:  # the joint t: one shared chi-square per draw
            z /= np.sqrt(rng.chisquare(self.df_resid, draws) / self.df_resid)[:, None]
        t = np.abs(z @ C[:, keep].T) / se
        return float(np.quantile(t.max(axis=1), LEVEL))

    def contrast(
        self, a: Mapping[str, str], b: Mapping[str, str], q: float | None = None
    ) -> tuple[float, float, float]:
        """Expected top-1 of `a` minus that of `b`, with its interval (shared terms cancel)."""
        return self.interval(self.coding.row(a) - self.coding.row(b), q)

    def effects(self) -> pd.DataFrame:
        """Each level of each factor (a stage's whole choice: the sum of its parts) against its
        baseline: factor, choice, baseline, estimate, low, high."""
        c = self.coding
        rows = [(f, lv, c.baselines[f], c.stage_contrast(f, lv)) for f in c.factors for lv in c.levels[f]]
        return _interval_frame(self, rows, ["factor", "choice", "baseline"])

    def part_effects(self) -> pd.DataFrame:
        """Each part's column against its baseline: factor, part, choice, baseline, estimate, low,
        high, and the part levels aliased to it (they always came with it, so its effect is theirs too)."""
        c, cols = self.coding, self.coding.columns
        rows = []
        for f in c.factors:
            for p in c.parts[f]:
                for lv in c.part_levels[p]:
                    x = np.zeros(len(cols))
                    x[cols.index(f"{p}={lv}")] = 1.0
                    with_ = ", ".join(a for a, twin in c.aliased.items() if twin == f"{p}={lv}")
                    rows.append((f, p, lv, c.part_baselines[p], with_, x))
        return _interval_frame(self, rows, ["factor", "part", "choice", "baseline", "aliased"])


def _factor(cov: np.ndarray) -> np.ndarray:
    """L with L L^T = cov: Cholesky, or for a covariance that is only semi-definite (a view of a larger
    model) the eigen square root."""
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(cov)
        return v * np.sqrt(np.clip(w, 0.0, None))


def _interval_frame(f: Fit, rows: list[tuple], names: list[str]) -> pd.DataFrame:
    """Rows of (*labels, contrast row) as a frame of the labels with estimate, low, high."""
    out = pd.DataFrame([r[:-1] for r in rows], columns=names)
    if rows:
        X = np.array([r[-1] for r in rows])
        out["estimate"], out["low"], out["high"] = f.intervals(X)
        # What the runs leave open has no effect to show: a row outside their row space, or a choice
        # whose parts all ran only beside parts of another stage (aliased there: a zero contrast here).
        out = out[f.estimable(X) & np.abs(X).any(axis=1)].reset_index(drop=True)
    return out.reindex(columns=[*names, "estimate", "low", "high"])


def _ols(X: np.ndarray, y: np.ndarray):
    """statsmodels' OLS on a maximal set of independent columns of X (same fitted values, residuals
    and F tests as the pseudo-inverse on all of them)."""
    return sm.OLS(y, X[:, independent_columns(X)]).fit()


def independent_columns(X: np.ndarray) -> np.ndarray:
    """The indices of a maximal set of linearly independent columns (pivoted QR). Saturated, interaction
    and part designs are rank-deficient by construction, and 0/1 columns that sum to one another are
    dependent exactly: left to a pseudo-inverse with a 1e-15 cutoff, round-off in such a column set
    turns into coefficients of 1e11."""
    _, R, piv = scipy.linalg.qr(X, mode="economic", pivoting=True)
    d = np.abs(np.diag(R))
    return np.sort(piv[: int((d > RANK_TOL * d[0]).sum())]) if len(d) else piv


def rowspace(X: np.ndarray) -> np.ndarray:
    """An orthonormal basis (columns) of the row space of X: the linear combinations the runs estimate."""
    _, s, vt = np.linalg.svd(X, full_matrices=False)
    return vt[s > RANK_TOL * s[0]].T


def _ridge(X: np.ndarray, y: np.ndarray, noise_sd: float | None = None):
    """Empirical-Bayes shrinkage with one prior precision per effect (ARD), each chosen with the noise
    precision by maximising the marginal likelihood. One shared prior (BayesianRidge) shrank the
    large stage-4 effects to a quarter of their size at 24 runs (docs/effects_validation.md)."""

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
        # Dependent columns get coefficient 0 (one generalised inverse): estimable combinations, such
        # as every evaluated genome's prediction, do not depend on the choice; Fit.estimable says which.
        keep = independent_columns(X)
        res = sm.OLS(y, X[:, keep]).fit()
        coef, cov = np.zeros(X.shape[1]), np.zeros((X.shape[1], X.shape[1]))
        coef[keep], cov[np.ix_(keep, keep)] = res.params, res.cov_params()
        return coef, cov, math.sqrt(res.mse_resid), float(res.df_resid)
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


def fit(runs: Runs, kind: str = "auto", whole_stages: bool = False) -> Fit:
    """Fit the additive effects model to every run trained with the common recipe, with its checks
    (whole_stages: code each stage's whole choice as one level, not its parts; for comparison).

    Runs under an authors' recipe ([references] recipe = "authors") are left out: the model compares
    placements under one recipe, and such a run differs from the others in its recipe too."""
    common = runs.common_recipe()
    # A genome run again in the same block (seed, environment, rung) repeats a measurement (training
    # is bit-reproducible on one machine and code): not a replicate of the noise, so only its first
    # run enters the fit. The same seed elsewhere is a new draw and stays.
    fr = common.drop_duplicates(["key", "block"]).reset_index(drop=True)
    if len(fr) < 3:
        raise UserError(f"{runs.source}: {len(fr)} completed run(s); the effects model needs at least 3")
    factor_rows = [factors_of(g) for g in fr["genome"]]
    coding = Coding.of(factor_rows, fr["block"], whole_stages)
    X, y = coding.matrix(factor_rows, fr["block"]), fr["y"].to_numpy(float)
    rank = len(independent_columns(X))
    if kind == "auto":
        kind, why = choose_kind(len(y), rank)
        if len(runs.frame) > len(common):
            why += f"; {len(runs.frame) - len(common)} run(s) under an authors' recipe left out"
        if len(common) > len(fr):
            why += f"; {len(common) - len(fr)} repeat(s) of a genome in the same block (seed, machine, code) counted once"
    elif kind in ("ols", "eb-ridge"):
        why = f"{kind} requested"
    else:
        raise UserError(f"effects model kind {kind!r}: expected auto, ols or eb-ridge")
    if rank < X.shape[1]:
        why += (
            f"; {X.shape[1] - rank} of {X.shape[1]} columns depend on the others (parts only ever seen "
            "together): what they leave open is not estimated"
        )
    coef, cov, sigma, df_resid = _fit_kind(X, y, kind)
    f = Fit(kind, why, coding, coef, cov, sigma, df_resid, len(y), rowspace(X) if kind == "ols" else None)
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
    f.block_sd, f.block_df = _block_spread(f)
    f.checks = _checks(f, X, y, fr)
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


def _block_spread(f: Fit) -> tuple[float | None, int | None]:
    """The sd of block effects by the method of moments: the estimated (sum-to-zero) effects' sum of
    squares over blocks - 1, less the part their own sampling variance explains, floored at 0."""
    sl = f.coding.factor_slices().get("block")
    if sl is None:
        return None, None
    blocks = f.coding.blocks
    B = f.coding.matrix([{}] * len(blocks), blocks)[:, sl]  # each block's effect from the block columns
    b = B @ f.coef[sl]
    sampling = float(np.trace(B @ f.cov[sl, sl] @ B.T))
    df = len(b) - 1
    return math.sqrt(max((float(b @ b) - sampling) / df, 0.0)), df


def _checks(f: Fit, X: np.ndarray, y: np.ndarray, fr: pd.DataFrame) -> dict:
    out: dict = {"residual_sd": f.sigma, "residual_df": f.df_resid}
    keys = fr["key"].to_numpy()
    # Pure error: a saturated model (one mean per genome) plus the blocks.
    uniq, gidx = np.unique(keys, return_inverse=True)
    replicated = int((np.bincount(gidx) > 1).sum())
    out["replicated_genomes"] = replicated
    additive = _ols(X, y)
    if replicated:
        G = np.zeros((len(y), len(uniq)))
        G[np.arange(len(y)), gidx] = 1.0
        S = X[:, f.coding.factor_slices().get("block", slice(0, 0))]
        sat = _ols(np.hstack([G, S]), y)
        if sat.df_resid >= 1 and sat.mse_resid > 0:  # identical repeats measure no noise
            out["pure_error_sd"], out["pure_error_df"] = math.sqrt(sat.mse_resid), float(sat.df_resid)
            if f.kind == "ols" and additive.df_resid > sat.df_resid:  # the additive model nests in it
                F, p, df_lof = sat.compare_f_test(additive)
                out["lack_of_fit"] = {
                    "F": float(F),
                    "df": [float(df_lof), float(sat.df_resid)],
                    "p": float(p),
                }
            elif f.kind == "eb-ridge":  # residual variance against pure error, as a ratio test
                F = f.sigma**2 / sat.mse_resid
                df1 = max(len(y) - 1 - _effective_params(f, X), 1.0)
                out["lack_of_fit"] = {
                    "F": float(F),
                    "df": [df1, float(sat.df_resid)],
                    "p": float(stats.f.sf(F, df1, sat.df_resid)),
                }
    out["interactions"] = _interaction_test(f, X, y, additive)
    out["cv"] = _cross_validate(f, X, y, keys)
    return out


def _effective_params(f: Fit, X: np.ndarray) -> float:
    """Degrees of freedom of the ridge fit: trace of its hat matrix (posterior cov / noise var)."""
    Xc = X[:, 1:] - X[:, 1:].mean(axis=0)
    return float(np.trace(Xc @ f.cov[1:, 1:] @ Xc.T) / f.sigma**2) + 1.0


def _interaction_test(f: Fit, X: np.ndarray, y: np.ndarray, additive) -> dict:
    """Joint F test of every stage-pair interaction against the additive model (OLS, where df allow).
    A pair's columns are the products of the two stages' treatment columns, those that occur."""
    slices = f.coding.factor_slices()
    stages = [s for s in f.coding.factors if is_stage(s) and f.coding.levels[s]]
    cols = [
        c
        for a, b in itertools.combinations(stages, 2)
        for ca in X[:, slices[a]].T
        for cb in X[:, slices[b]].T
        if (c := ca * cb).any()
    ]
    if not cols:
        return {"tested": False, "why": "no two stages vary together"}
    Xi = np.hstack([X, np.column_stack(cols)])
    rank_add, rank_int = np.linalg.matrix_rank(X), np.linalg.matrix_rank(Xi)
    df_int, df_resid = rank_int - rank_add, len(y) - rank_int
    if df_int < 1 or df_resid < MIN_RESID_DF:
        return {"tested": False, "why": f"too few runs: {df_int} interaction df and {df_resid} residual df"}
    F, p, _ = _ols(Xi, y).compare_f_test(additive)
    return {"tested": True, "F": float(F), "df": [float(df_int), float(df_resid)], "p": float(p)}


def _cross_validate(f: Fit, X: np.ndarray, y: np.ndarray, keys: np.ndarray) -> dict:
    """Prediction error of held-out genomes (folds by genome, so a genome's seeds stay together)."""
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
