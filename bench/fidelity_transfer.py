"""How many expensive runs do the cheap rungs replace? The expensive rung's effects estimated from k of
its runs, alone or with every cheap run through a co-kriging form per effect, against its held-out runs.

Target: the ladder rung with the largest mean `train_s` (measured from the table; --target to name
one). Effects: every stage choice against no module at the stage (treatment coding, effects.Coding).
For each k and split (fixed seeds), k of the target's runs are drawn at random; the other runs are the
reference, fitted alone by OLS (intercept, seed blocks, effects): its effects are the truth proxy and
its standard errors are printed as the reference's own noise (the floor under every method's error).
Held out, not all runs: a reference that holds the k runs shares their noise with a fit on them and
favours the methods that lean on them. Error: RMSE over the effects the reference can estimate.

Methods, each on the k runs (intercept and seed blocks are fixed effects, flat prior):
- alone-eb: effects beta ~ N(0, tau^2 I), tau by maximum marginal likelihood. The co-kriging model
  with rho = 0: the comparison isolates what the cheap runs add.
- alone-fit: effects.fit(kind auto), the project's own few-run fit (ARD empirical Bayes).
- cokrig-pooled / cokrig-cheapest: beta_hi = rho * beta_lo + delta, delta ~ N(0, tau^2 I);
  beta_lo ~ N(b_lo, V_lo) is the OLS fit (effects.fit, kind ols) of every cheap run (pooled: every
  other rung with its own blocks; cheapest: the rung of least mean train_s alone), its uncertainty in the
  prior covariance rho^2 V_lo + tau^2 I. rho and tau by maximum marginal likelihood (statsmodels GLS
  log-likelihood, intercept and blocks profiled out); the effects are the posterior mean, an
  augmented GLS (the mixed-model equations).
- cokrig-rho1: cokrig-pooled with rho at its posterior mode under rho ~ N(1, 0.5^2): a handful of runs
  cannot place rho by themselves, and both rungs' effects are differences of top-1.
- cheap-only: b_lo (pooled) itself, no expensive run (rho = 1, tau = 0).
The noise sd of every hierarchical fit is the pooled cheap fit's residual sd (k = 4 runs cannot
measure it; the rungs' residual sds agree to 0.003, docs/fidelity.md).

Printed per k: median RMSE with the 10-90 % band over splits (the middle 80 % of splits, not an
interval of the median), the paired ratio to alone-eb, the splits co-kriging wins with a 95 %
Clopper-Pearson interval, the fitted rho; then the k at which alone-eb's median error matches
co-kriging's at the smallest k. Writes the per-split CSV and a figure (HTML, and PNG when chromium is
installed) under --out.

    python bench/fidelity_transfer.py [--table PATH] [--target RUNG] [--ks 4,8,16,32] [--splits 20]
                                      [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import statsmodels.api as sm  # noqa: E402
from scipy import optimize, stats  # noqa: E402

import effects as ef  # noqa: E402
from searchspace.errors import UserError  # noqa: E402
from trainers.measure import Timer  # noqa: E402

DEFAULT_TABLE = Path(__file__).resolve().parents[1] / "studies" / "tables" / "ladder.csv"
BAND = (10, 90)  # percentiles over splits
WIDTH, HEIGHT = 1150, 520  # the figure, in px
RHO_BOUNDS = (-1.0, 3.0)
LOG_TAU_BOUNDS = (np.log(1e-3), np.log(0.3))
RHO_PRIOR_SD = 0.5  # cokrig-rho1: rho ~ N(1, 0.5^2), both rungs' effects are top-1 differences
METHODS = ("alone-eb", "alone-fit", "cokrig-pooled", "cokrig-cheapest", "cokrig-rho1", "cheap-only")


@dataclass
class Prior:
    """beta_lo: the cheap runs' effects (OLS), their covariance, and the fit's residual sd."""

    name: str
    mean: np.ndarray
    cov: np.ndarray
    sigma: float
    n: int


@dataclass
class Ladder:
    runs: ef.Runs  # every row of the table
    effects: list[str]  # the effect columns, named as in effects.Coding.columns
    target: str
    train_s: pd.Series  # mean training seconds per rung
    y: np.ndarray  # the target rung's runs
    X: np.ndarray  # their effect columns
    blocks: np.ndarray
    frame: pd.DataFrame  # their rows

    def fixed(self, rows: np.ndarray) -> np.ndarray:
        """Intercept and one column per further block among `rows` (treatment coded)."""
        b = pd.get_dummies(pd.Series(self.blocks[rows]), drop_first=True, dtype=float).to_numpy()
        return np.hstack([np.ones((len(rows), 1)), b])


def load(path: Path, target: str | None) -> Ladder:
    runs = ef.runs_from_table(path)
    costs = pd.read_csv(path, usecols=lambda c: c in ("rung", "train_s", "status"))
    if not {"rung", "train_s"} <= set(costs.columns) or runs.frame["rung"].isna().all():
        raise UserError(f"--table {str(path)!r}: not a ladder table (needs columns rung and train_s)")
    train_s = costs[costs["status"] == "ok"].groupby("rung")["train_s"].mean().sort_values()
    target = target or str(train_s.index[-1])
    if target not in train_s.index:
        raise UserError(f"--target {target!r}: not a rung of the table ({', '.join(train_s.index)})")
    if len(train_s) < 2:
        raise UserError(f"--table {str(path)!r}: one rung only; the method needs cheaper rungs")
    fr = runs.frame
    factor_rows = [ef.factors_of(g) for g in fr["genome"]]
    coding = ef.Coding.of(factor_rows, fr["block"])
    names = [c for c in coding.columns if c != "intercept" and not c.startswith("block[")]
    cols = [coding.columns.index(c) for c in names]
    on = (fr["rung"] == target).to_numpy()
    X = coding.matrix(factor_rows, fr["block"])[on][:, cols]
    t = fr[on].reset_index(drop=True)
    return Ladder(runs, names, target, train_s, t["y"].to_numpy(float), X, t["block"].to_numpy(), t)


def cheap_prior(ladder: Ladder, rungs: list[str], name: str) -> Prior:
    fr = ladder.runs.frame
    sub = replace(ladder.runs, frame=fr[fr["rung"].isin(rungs)].reset_index(drop=True), source=name)
    f = ef.fit(sub, kind="ols")
    missing = [c for c in ladder.effects if c not in f.coding.columns]
    if missing:
        raise UserError(f"the cheap rungs {rungs} never ran {missing}: no prior for those effects")
    idx = [f.coding.columns.index(c) for c in ladder.effects]
    return Prior(name, f.coef[idx], f.cov[np.ix_(idx, idx)], f.sigma, f.n)


def _llf(y: np.ndarray, F: np.ndarray, X: np.ndarray, m: np.ndarray, P: np.ndarray, sigma: float) -> float:
    """Marginal log-likelihood of y under beta ~ N(m, P), fixed effects F profiled out (GLS)."""
    cov = sigma**2 * np.eye(len(y)) + X @ P @ X.T
    return float(sm.GLS(y - X @ m, F, sigma=cov).fit().llf)


def _posterior(y: np.ndarray, F: np.ndarray, X: np.ndarray, m: np.ndarray, P: np.ndarray, sigma: float):
    """Posterior mean of beta: the prior as len(m) extra observations of beta, one GLS fit."""
    p, q = F.shape[1], len(m)
    A = np.block([[F, X], [np.zeros((q, p)), np.eye(q)]])
    cov = np.block([[sigma**2 * np.eye(len(y)), np.zeros((len(y), q))], [np.zeros((q, len(y))), P]])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The design matrix is rank-deficient")
        return np.asarray(sm.GLS(np.concatenate([y, m]), A, sigma=cov).fit().params)[p:]


def alone_eb(y, F, X, sigma) -> tuple[np.ndarray, float]:
    q = X.shape[1]
    zero = np.zeros(q)
    res = optimize.minimize_scalar(
        lambda lt: -_llf(y, F, X, zero, np.exp(2 * lt) * np.eye(q), sigma),
        bounds=LOG_TAU_BOUNDS,
        method="bounded",
    )
    tau = float(np.exp(res.x))
    return _posterior(y, F, X, zero, tau**2 * np.eye(q), sigma), tau


def cokrig(y, F, X, prior: Prior, sigma, rho_sd: float | None = None) -> tuple[np.ndarray, float, float]:
    """rho and tau by maximum marginal likelihood; with rho_sd, rho's at its posterior mode under
    rho ~ N(1, rho_sd^2)."""
    q = X.shape[1]

    def P(rho, lt):
        return rho**2 * prior.cov + np.exp(2 * lt) * np.eye(q)

    def nll(v):
        log_prior = 0.0 if rho_sd is None else stats.norm.logpdf(v[0], 1.0, rho_sd)
        return -_llf(y, F, X, v[0] * prior.mean, P(*v), sigma) - log_prior

    # Two starts (no transfer, full transfer): with few runs the likelihood in rho can have two modes.
    best = min(
        (
            optimize.minimize(nll, [r0, np.log(0.01)], method="L-BFGS-B", bounds=[RHO_BOUNDS, LOG_TAU_BOUNDS])
            for r0 in (0.0, 1.0)
        ),
        key=lambda r: r.fun,
    )
    rho, lt = best.x
    return _posterior(y, F, X, rho * prior.mean, P(rho, lt), sigma), float(rho), float(np.exp(lt))


def alone_fit(ladder: Ladder, rows: np.ndarray, sigma: float) -> np.ndarray:
    runs = replace(
        ladder.runs,
        frame=ladder.frame.iloc[rows].reset_index(drop=True),
        source=f"{len(rows)} runs of {ladder.target}",
        noise_sd=sigma,  # used only where the runs leave no df to measure the noise
        noise_source="the pooled cheap fit",
    )
    eff = ef.fit(runs).effects()
    got = {f"{r.factor}={r.choice}": r.estimate for r in eff.itertuples()}
    return np.array([got.get(c, 0.0) for c in ladder.effects])  # an unseen choice: the prior's 0


def reference(ladder: Ladder, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OLS effects of the held-out runs and their standard errors (nan where a choice is absent)."""
    X = ladder.X[rows]
    seen = X.any(axis=0)
    F = ladder.fixed(rows)
    res = sm.OLS(ladder.y[rows], np.hstack([F, X[:, seen]])).fit()
    est, se = np.full(X.shape[1], np.nan), np.full(X.shape[1], np.nan)
    est[seen], se[seen] = np.asarray(res.params)[F.shape[1] :], np.asarray(res.bse)[F.shape[1] :]
    return est, se


def measure(ladder: Ladder, priors: dict[str, Prior], ks: list[int], splits: int, seed: int) -> pd.DataFrame:
    sigma = priors["pooled"].sigma
    n = len(ladder.y)
    rows = []
    for k in ks:
        for s in range(splits):
            pick = np.random.default_rng([seed, k, s]).permutation(n)
            fit_rows, ref_rows = np.sort(pick[:k]), np.sort(pick[k:])
            ref, se = reference(ladder, ref_rows)
            ok = np.isfinite(ref)
            y, F, X = ladder.y[fit_rows], ladder.fixed(fit_rows), ladder.X[fit_rows]
            est = {"cheap-only": (priors["pooled"].mean, np.nan, np.nan)}
            b, tau = alone_eb(y, F, X, sigma)
            est["alone-eb"] = (b, 0.0, tau)
            est["alone-fit"] = (alone_fit(ladder, fit_rows, sigma), np.nan, np.nan)
            for name, prior in priors.items():
                est[f"cokrig-{name}"] = cokrig(y, F, X, prior, sigma)
            est["cokrig-rho1"] = cokrig(y, F, X, priors["pooled"], sigma, RHO_PRIOR_SD)
            for method, (b, rho, tau) in est.items():
                rows.append(
                    {
                        "k": k,
                        "split": s,
                        "method": method,
                        "rmse": float(np.sqrt(np.mean((b[ok] - ref[ok]) ** 2))),
                        "rho": rho,
                        "tau": tau,
                        "ref_se_rms": float(np.sqrt(np.mean(se[ok] ** 2))),
                        "effects": int(ok.sum()),
                    }
                )
    return pd.DataFrame(rows)


def band(v) -> str:
    lo, hi = np.percentile(v, BAND)
    return f"{np.median(v):.4f} [{lo:.4f}, {hi:.4f}]"


def equivalent_k(ks: list[int], alone: list[float], target: float) -> str:
    """The k at which alone's median error falls to `target`, interpolated in log k."""
    if target >= alone[0]:
        return f"<= {ks[0]}"
    for (k0, a0), (k1, a1) in zip(zip(ks, alone), zip(ks[1:], alone[1:])):
        if a1 <= target < a0:
            return f"{np.exp(np.interp(target, [a1, a0], [np.log(k1), np.log(k0)])):.1f}"
    return f"> {ks[-1]}"


def summarise(df: pd.DataFrame, ks: list[int]) -> dict:
    wide = df.pivot_table(index=["k", "split"], columns="method", values="rmse")
    print(
        f"\n{'k':>3} {'method':<15} {'RMSE median [10-90 % of splits]':<32} {'ratio to alone-eb':<26} "
        f"{'wins vs alone-eb [95 % CP]':<27} rho median [10-90 %]"
    )
    out = {}
    for k in ks:
        w = wide.loc[k]
        floor = df[(df["k"] == k) & (df["method"] == "alone-eb")]["ref_se_rms"]
        print(f"{k:>3} {'(reference se)':<15} {band(floor):<32}")
        for m in METHODS:
            ratio = w[m] / w["alone-eb"]
            wins = int((w[m] < w["alone-eb"]).sum())
            ci = stats.binomtest(wins, len(w)).proportion_ci(0.95)
            rho = df[(df["k"] == k) & (df["method"] == m)]["rho"].dropna()
            rho_s = band(rho) if m.startswith("cokrig") else ""
            cmp = (
                ""
                if m == "alone-eb"
                else f"{band(ratio):<26} {wins:>2}/{len(w)} [{ci.low:.2f}, {ci.high:.2f}]"
            )
            print(f"{k:>3} {m:<15} {band(w[m]):<32} {cmp:<54} {rho_s}")
            out[(k, m)] = float(np.median(w[m]))
    alone = [out[(k, "alone-eb")] for k in ks]
    print()
    for m in ("cokrig-pooled", "cokrig-cheapest", "cokrig-rho1", "cheap-only"):
        eq = equivalent_k(ks, alone, out[(ks[0], m)])
        print(f"{m} at k={ks[0]} (median {out[(ks[0], m)]:.4f}) matches alone-eb at k = {eq}")
    return out


def figure(df: pd.DataFrame, ladder: Ladder, out: Path, png: bool) -> None:
    import plotly.graph_objects as go

    fig = go.Figure()
    names = {
        "alone-eb": "alone (empirical-Bayes ridge)",
        "alone-fit": "alone (effects.fit, ARD)",
        "cokrig-pooled": "co-kriging, every cheap rung",
        "cokrig-cheapest": f"co-kriging, {ladder.train_s.index[0]} rung only",
        "cokrig-rho1": "co-kriging, every cheap rung, rho ~ N(1, 0.5^2)",
        "cheap-only": "cheap effects alone (no expensive run)",
    }
    ks = sorted(df["k"].unique())
    for i, m in enumerate(METHODS):
        g = df[df["method"] == m].groupby("k")["rmse"]
        med, lo, hi = g.median(), g.quantile(BAND[0] / 100), g.quantile(BAND[1] / 100)
        x = [k * 1.04 ** (i - 2.5) for k in ks]  # side by side
        fig.add_scatter(
            x=x,
            y=med.to_numpy(),
            name=names[m],
            mode="lines+markers",
            line={"dash": "dot"} if m == "cheap-only" else {},
            error_y={"type": "data", "array": (hi - med).to_numpy(), "arrayminus": (med - lo).to_numpy()},
        )
    floor = df[df["method"] == "alone-eb"].groupby("k")["ref_se_rms"].median()
    fig.add_scatter(
        x=ks,
        y=floor.to_numpy(),
        name="reference's own se (floor)",
        mode="lines",
        line={"color": "grey", "dash": "dash"},
    )
    fig.update_layout(
        template="plotly_white",
        width=WIDTH,
        height=HEIGHT,
        title=f"The {ladder.target} rung's effects from k of its runs: RMSE against its held-out runs<br>"
        f"<sup>median and {BAND[0]}-{BAND[1]} % of {df['split'].nunique()} random splits per k</sup>",
        xaxis={"title": f"k: {ladder.target} runs fitted", "type": "log", "tickvals": ks},
        yaxis={"title": "RMSE over the stage-choice effects (top-1)", "rangemode": "tozero"},
        legend={"x": 1.02, "y": 1.0},
        margin={"l": 70, "r": 20, "t": 70, "b": 60},
    )
    html = out / "fidelity_transfer.html"
    fig.write_html(html, include_plotlyjs=True, config={"displayModeBar": False})
    print(f"wrote {html}")
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not png:
        return
    if browser is None:
        print("no PNG: chromium is not installed (the HTML figure is written)")
        return
    with tempfile.TemporaryDirectory() as profile:
        shot = out / "fidelity_transfer.png"
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={profile}", "--virtual-time-budget=10000",
             f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={shot}", html.resolve().as_uri()],
            capture_output=True, timeout=180, check=True,
        )  # fmt: skip
    print(f"wrote {shot}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/fidelity_transfer.py", description=__doc__.split("\n")[0])
    p.add_argument("--table", default=str(DEFAULT_TABLE), help="a ladder table CSV (columns rung, train_s)")
    p.add_argument("--target", default=None, help="the expensive rung (default: largest mean train_s)")
    p.add_argument("--ks", default="4,8,16,32", help="expensive runs fitted, comma-separated")
    p.add_argument("--splits", type=int, default=20, help="random splits per k")
    p.add_argument("--seed", type=int, default=0, help="random seed of the splits")
    p.add_argument("--out", default="fidelity_transfer", help="folder for the CSV and the figure")
    p.add_argument("--quick", action="store_true", help="3 splits at k 4 and 8, no PNG (seconds)")
    a = p.parse_args(argv)
    try:
        try:
            ks = sorted(int(s) for s in ("4,8" if a.quick else a.ks).split(","))
        except ValueError:
            raise UserError(f"--ks {a.ks!r}: expected integers separated by commas") from None
        splits = 3 if a.quick else a.splits
        if splits < 2:
            raise UserError(f"--splits {splits}: needs at least 2")
        ladder = load(Path(a.table), a.target)
        # The reference needs residual df for its OLS: intercept, blocks, effects, and 10 more.
        most = len(ladder.y) - (len(ladder.effects) + len(set(ladder.blocks)) + 10)
        bad = [k for k in ks if not 3 <= k <= most]
        if bad:
            raise UserError(f"--ks: {bad} outside 3..{most} (the held-out reference needs the rest)")
        cheap = [r for r in ladder.train_s.index if r != ladder.target]
        priors = {
            "pooled": cheap_prior(ladder, cheap, "pooled"),
            "cheapest": cheap_prior(ladder, cheap[:1], "cheapest"),
        }
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    print("mean train_s per rung: " + ", ".join(f"{r} {s:.1f}" for r, s in ladder.train_s.items()))
    print(f"target: {ladder.target} ({len(ladder.y)} runs, {len(ladder.effects)} effects); cheap: {cheap}")
    for pr in priors.values():
        print(
            f"beta_lo {pr.name}: {pr.n} runs, residual sd {pr.sigma:.4f}, "
            f"effect se median {np.median(np.sqrt(np.diag(pr.cov))):.4f}"
        )
    with Timer() as timer:
        df = measure(ladder, priors, ks, splits, a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "fidelity_transfer.csv", index=False)
    print(f"wrote {out / 'fidelity_transfer.csv'}")
    med = summarise(df, ks)
    figure(df, ladder, out, png=not a.quick)
    print(f"took {timer.wall_s:.0f} s wall, {timer.cpu_s:.0f} s CPU ({splits} splits x {len(ks)} k)")
    print(f"ratio_at_k{ks[0]}={med[(ks[0], 'cokrig-pooled')] / med[(ks[0], 'alone-eb')]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
