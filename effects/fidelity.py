"""Effects across fidelity: the runs of several rungs of a ladder (docs/fidelity.md) in one OLS model,
top1 = intercept + rung + choice effects + choice x rung interactions + block (nested in its rung) +
noise, with the base rung (the shipped proxy) as the reference. From it: every choice's effect at
every rung with its interval, a Wald test per choice that its effect changes with the rung (Holm over
the choices), the global F of the interactions, the rank agreement of the predicted space between
rungs (bootstrap over (genome, seed) clusters), and the published designs' verdicts at each rung."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import statsmodels.api as sm
from patsy.contrasts import Sum
from scipy import stats
from statsmodels.stats.multitest import multipletests
from threadpoolctl import threadpool_limits

from .coding import Coding, factors_of
from .fit import LEVEL, MIN_RESID_DF, Fit
from .front import predictions
from .runs import Runs
from .verdicts import trials_needed, verdicts

RESAMPLES = 200  # bootstrap resamples of the rank agreement
BASE_RUNG = "shipped"  # the shipped proxy protocol: every other rung is read against it
NO_RUNG = "(no rung)"
# A protocol key as a reader would name its value ('128 px'); the keys not named here print as key=value.
_KNOB = {
    "resolution": "{} px",
    "width": "width {}",
    "epochs": "{} epochs",
    "max_per_class": "{} images/class",
}


@dataclass
class Fidelity:
    base: str
    rungs: list[str]  # the base first, then in the order the runs name them
    changes: dict[str, str]  # rung -> what its protocol changes against the base's (or "")
    n: dict[str, int]  # runs per rung in the fit
    why: str
    effects: pd.DataFrame  # factor, choice, rung, estimate, low, high
    moves: pd.DataFrame  # per choice: the Wald test of its rung interactions, Holm, largest shift
    global_test: dict  # F test: additive-in-rung model against the interaction model
    agreement: pd.DataFrame  # rank agreement of the predicted space between two rungs
    designs: pd.DataFrame  # each design at each rung: predicted, interval, verdict
    across: dict[str, str]  # design -> one line over the ladder
    resamples: int

    def label(self, rung: str) -> str:
        return f"{rung} ({self.changes[rung]})" if self.changes.get(rung) else rung

    def to_json(self) -> dict:
        def plain(v):
            v = v.item() if isinstance(v, np.generic) else v
            return None if isinstance(v, float) and not math.isfinite(v) else v

        def records(df: pd.DataFrame, cols) -> list[dict]:
            return [
                {k: plain(v) for k, v in r.items()}
                for r in df[[c for c in cols if c in df]].to_dict("records")
            ]

        return {
            "model": self.why,
            "base_rung": self.base,
            "rungs": [{"rung": r, "changes": self.changes.get(r, ""), "runs": self.n[r]} for r in self.rungs],
            "effects": records(self.effects, ["factor", "choice", "rung", "estimate", "low", "high"]),
            "moves": records(self.moves, list(self.moves.columns)),
            "global_test": self.global_test,
            "rank_agreement": records(self.agreement, list(self.agreement.columns)),
            "resamples": self.resamples,
            "designs": records(
                self.designs,
                ["design", "rung", "predicted", "low", "high", "verdict", "beaten_by", "difference"],
            ),
            "across": self.across,
        }


def changes(protocols: Mapping[str, str | dict], base: str) -> dict[str, str]:
    """What each rung's protocol (a table row's `protocol` JSON) sets differently from the base's:
    '128 px', 'width 0.25', '8 epochs, 160 images/class'; for the base, its own values of those knobs."""

    def leaves(p) -> dict:
        p = json.loads(p) if isinstance(p, str) else (p or {})
        out: dict = {}
        for part in ("data", "fidelity"):  # fidelity last: its keys win where both name one
            out.update({k: v for k, v in (p.get(part) or {}).items() if not isinstance(v, dict)})
        return out

    def say(keys, values) -> str:
        keys = sorted(keys, key=lambda k: list(_KNOB).index(k) if k in _KNOB else len(_KNOB))
        return ", ".join(_KNOB[k].format(values[k]) if k in _KNOB else f"{k}={values[k]}" for k in keys)

    if base not in protocols:
        return {}
    b = leaves(protocols[base])
    out = {base: say([k for k in _KNOB if k in b], b)}
    for r, p in protocols.items():
        if r != base:
            lv = leaves(p)
            out[r] = say([k for k in lv if lv[k] != b.get(k)], lv)
    return out


@dataclass
class _Design:
    """The interaction model's design matrix and where each kind of column is."""

    X: np.ndarray
    names: list[str]
    choice: list[int]  # the base coding's choice columns (no intercept, no blocks)
    rung: dict[str, int]  # rung -> its main-effect column (not the base)
    inter: dict[tuple[int, str], int]  # (choice column, rung) -> its interaction column


def _design(coding: Coding, factor_rows, rung: np.ndarray, blocks: np.ndarray, rungs: list[str]) -> _Design:
    k = len([c for c in coding.columns if not c.startswith("block[")])
    F = coding.matrix(factor_rows)[:, :k]  # intercept and choice columns; blocks are coded below, per rung
    cols, names = [F], coding.columns[:k]
    rung_col = {}
    for r in rungs[1:]:
        rung_col[r] = len(names)
        cols.append((rung == r)[:, None].astype(float))
        names = [*names, f"rung[{r}]"]
    for r in rungs:  # blocks nested in their rung: sum-to-zero within it, so rung + 0 = its average block
        own = sorted(set(blocks[rung == r]))
        if len(own) > 1:
            idx = {b: i for i, b in enumerate(own)}
            S = np.zeros((len(rung), len(own) - 1))
            mine = np.flatnonzero(rung == r)
            S[mine] = _sum_coded(len(own))[[idx[b] for b in blocks[mine]]]
            cols.append(S)
            names = [*names, *[f"block[{b}]" for b in own[:-1]]]
    inter = {}
    for j in range(1, k):
        for r in rungs[1:]:
            c = F[:, j] * (rung == r)
            if c.any():
                inter[(j, r)] = len(names)
                cols.append(c[:, None])
                names = [*names, f"{coding.columns[j]} x rung[{r}]"]
    return _Design(np.hstack(cols), names, list(range(1, k)), rung_col, inter)


def _sum_coded(n: int) -> np.ndarray:
    return Sum().code_without_intercept(list(range(n))).matrix


def _ols(X: np.ndarray, y: np.ndarray):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The design matrix is rank-deficient")
        return sm.OLS(y, X).fit()


def _at_rung(d: _Design, rung: str, base: str, coding_cols: list[str], cols: list[str]) -> np.ndarray:
    """The linear map from the interaction model's coefficients to a rung's view of them, laid out as
    `cols` (a coding's columns): intercept -> intercept + rung, a choice -> choice + choice x rung,
    a block column -> 0 (the rung's average block)."""
    L = np.zeros((len(cols), d.X.shape[1]))
    for i, c in enumerate(cols):
        if c == "intercept":
            L[i, 0] = 1.0
            if rung != base:
                L[i, d.rung[rung]] = 1.0
        elif c in coding_cols and not c.startswith("block["):
            j = coding_cols.index(c)
            L[i, j] = 1.0
            if (j, rung) in d.inter:
                L[i, d.inter[(j, rung)]] = 1.0
    return L


def across_fidelity(
    runs: Runs,
    coding: Coding,
    cands: pd.DataFrame,
    designs=None,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Fidelity | None:
    """The interaction model of runs from several rungs; None with one rung (nothing to compare) or
    with too few runs for classical intervals (the rule of effects.fit.choose_kind).
    `coding`: the pooled fit's (its choice columns); `cands`: the genomes the space is predicted over."""
    fr = runs.common_recipe().drop_duplicates(["key", "block"]).reset_index(drop=True)
    rung = fr["rung"].fillna(NO_RUNG).to_numpy(object)
    rungs = list(dict.fromkeys(rung))
    if len(rungs) < 2:
        return None
    counts = pd.Series(rung).value_counts()
    base = BASE_RUNG if BASE_RUNG in rungs else str(counts.idxmax())
    rungs = [base, *[r for r in rungs if r != base]]
    factor_rows = [factors_of(g) for g in fr["genome"]]
    d = _design(coding, factor_rows, rung, fr["block"].to_numpy(object), rungs)
    y = fr["y"].to_numpy(float)
    rank = np.linalg.matrix_rank(d.X)
    df_resid = len(y) - rank
    if df_resid < max(MIN_RESID_DF, rank):  # too few runs for one OLS model over the rungs
        return None
    res = _ols(d.X, y)
    coef, cov = np.asarray(res.params), np.asarray(res.cov_params())
    q = float(stats.t.ppf(0.5 + LEVEL / 2, df_resid))
    sigma = math.sqrt(res.ssr / df_resid)
    why = (
        f"OLS of {len(y)} runs at {len(rungs)} rungs, {rank} parameters (choices, rung, choice x rung, "
        f"blocks nested in rung), {df_resid} residual df; base rung {base}"
    )

    lack = _lack_of_fit(res, d, fr["key"].to_numpy(object), rung)
    widen = math.sqrt(lack["F"]) if lack and lack["p"] < 1 - LEVEL and lack["F"] > 1 else 1.0
    if widen > 1:
        why += f"; lack of fit (F = {lack['F']:.2f}, p = {lack['p']:.3g}): intervals widened x{widen:.2f}"
    q *= widen

    additive_cols = [i for i in range(d.X.shape[1]) if i not in set(d.inter.values())]
    add = _ols(d.X[:, additive_cols], y)
    F, p, df_diff = res.compare_f_test(add)
    global_test = {"F": float(F), "df": [float(df_diff), float(df_resid)], "p": float(p)}

    # Each rung as a Fit of the pooled coding's layout (the rung's own levels), so the package's own
    # effects, predictions and verdicts read it; its n is the rung's runs (what more runs there means).
    views, effects_rows = {}, []
    for r in rungs:
        mine = rung == r
        rows_r = [fr_ for fr_, m in zip(factor_rows, mine) if m]
        seen = {f: {row[f] for row in rows_r} for f in coding.factors}
        c_r = replace(
            coding,
            levels={f: [lv for lv in coding.levels[f] if lv in seen[f]] for f in coding.factors},
            blocks=sorted(set(fr["block"][mine])),
        )
        L = _at_rung(d, r, base, coding.columns, c_r.columns)
        view = Fit(
            kind="ols",
            why=f"rung {r} of the across-fidelity model",
            coding=c_r,
            coef=L @ coef,
            cov=L @ cov @ L.T,
            sigma=sigma,
            df_resid=float(df_resid),
            n=int(mine.sum()),
            widen=widen,
        )
        views[r] = view
        effects_rows.append(view.effects().assign(rung=r))
    eff = pd.concat(effects_rows, ignore_index=True)

    moves = _moves(res, d, coding, rungs, coef, cov, q, widen)
    fid = Fidelity(
        base=base,
        rungs=rungs,
        changes=changes(runs.protocols, base) if runs.protocols else {},
        n={r: int((rung == r).sum()) for r in rungs},
        why=why,
        effects=eff,
        moves=moves,
        global_test={**global_test, "lack_of_fit": lack, "widened_by": widen},
        agreement=_agreement(d, fr, y, cands, coding, rungs, base, coef, resamples, seed),
        designs=pd.DataFrame(),
        across={},
        resamples=resamples,
    )
    fid.designs = _designs(views, runs, fr, rung, cands, designs)
    fid.across = {name: _across_line(fid, g) for name, g in fid.designs.groupby("design", sort=False)}
    return fid


def _lack_of_fit(res, d: _Design, keys: np.ndarray, rung: np.ndarray) -> dict | None:
    """The interaction model against one mean per (genome, rung) with the same blocks (F test on the
    replicates' pure error, as effects.fit checks the additive model); None without replicates."""
    cells = pd.Series(keys.astype(str)) + "@" + pd.Series(rung.astype(str))
    uniq, idx = np.unique(cells.to_numpy(), return_inverse=True)
    G = np.zeros((len(idx), len(uniq)))
    G[np.arange(len(idx)), idx] = 1.0
    S = d.X[:, [i for i, n in enumerate(d.names) if n.startswith("block[")]]
    sat = _ols(np.hstack([G, S]), res.model.endog)
    if sat.df_resid < 1 or res.df_resid <= sat.df_resid or sat.mse_resid <= 0:
        return None
    F, p, df = sat.compare_f_test(res)
    return {"F": float(F), "df": [float(df), float(sat.df_resid)], "p": float(p)}


def _moves(res, d: _Design, coding: Coding, rungs, coef, cov, q, widen) -> pd.DataFrame:
    """Per choice: a Wald F test that its interactions with the rung are all 0 (its effect is the same
    at every rung), Holm-adjusted over the choices, and its largest shift from the base rung. Under
    lack of fit the test reads the same widened covariance as the intervals."""
    rows = []
    for j in d.choice:
        idx = [d.inter[(j, r)] for r in rungs[1:] if (j, r) in d.inter]
        if not idx:
            continue
        R = np.zeros((len(idx), d.X.shape[1]))
        R[np.arange(len(idx)), idx] = 1.0
        w = res.wald_test(R, cov_p=cov * widen**2, use_f=True, scalar=True)
        shifts = [
            (r, coef[d.inter[(j, r)]], math.sqrt(cov[d.inter[(j, r)], d.inter[(j, r)]]))
            for r in rungs[1:]
            if (j, r) in d.inter
        ]
        r_big, s, se = max(shifts, key=lambda t: abs(t[1]))
        factor, _, choice = coding.columns[j].partition("=")
        rows.append(
            {
                "factor": factor,
                "choice": choice,
                "F": float(w.fvalue),
                "df": [float(w.df_num), float(w.df_denom)],
                "p": float(w.pvalue),
                "largest_shift_rung": r_big,
                "largest_shift": float(s),
                "largest_shift_low": float(s - q * se),
                "largest_shift_high": float(s + q * se),
            }
        )
    out = pd.DataFrame(rows)
    if len(out):
        reject, p_holm, *_ = multipletests(out["p"], alpha=1 - LEVEL, method="holm")
        out["p_holm"], out["moves"] = p_holm, reject.astype(bool)
    return out


def _agreement(d, fr, y, cands, coding, rungs, base, coef, resamples, seed) -> pd.DataFrame:
    """Spearman and Kendall correlation of the predicted top-1 of every candidate genome between each
    pair of rungs, with intervals from refitting on (genome, seed) clusters drawn with replacement
    (scipy.stats.bootstrap). BCa, not plain percentiles: a refit's noise pulls every resampled
    correlation below the estimate (plain percentiles left the estimate outside its own interval)."""
    X = coding.matrix([factors_of(g) for g in cands["genome"]])
    C = {r: X @ _at_rung(d, r, base, coding.columns, coding.columns) for r in rungs}  # cands x P per rung
    pairs = [(a, b) for i, a in enumerate(rungs) for b in rungs[i + 1 :]]

    def stat(beta) -> np.ndarray:
        pred = {r: C[r] @ beta for r in rungs}
        out = []
        for a, b in pairs:
            out += [stats.spearmanr(pred[a], pred[b])[0], stats.kendalltau(pred[a], pred[b])[0]]
        return np.array(out)

    point = stat(coef)
    low = high = np.full(len(point), np.nan)
    clusters = fr["key"].astype(str) + "/" + fr["seed"].astype(str)
    ids, which = np.unique(clusters.to_numpy(), return_inverse=True)
    rows_of = [np.flatnonzero(which == i) for i in range(len(ids))]
    if resamples > 0 and len(ids) > 2:

        def refit(sample) -> np.ndarray:
            idx = np.concatenate([rows_of[int(i)] for i in sample])
            beta = np.linalg.lstsq(d.X[idx], y[idx], rcond=None)[0]
            return stat(beta)

        # One BLAS thread: small solves lose far more to thread start-up and contention than they gain.
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.filterwarnings("ignore", category=RuntimeWarning)  # a constant resample: nan
            ci = stats.bootstrap(
                (np.arange(len(ids)),),
                refit,
                vectorized=False,
                n_resamples=resamples,
                confidence_level=LEVEL,
                method="BCa",
                random_state=np.random.default_rng(seed),
            ).confidence_interval
        low, high = np.asarray(ci.low), np.asarray(ci.high)
    rows = []
    for i, (a, b) in enumerate(pairs):
        rows.append(
            {
                "rung_a": a,
                "rung_b": b,
                "genomes": len(cands),
                "spearman": float(point[2 * i]),
                "spearman_low": float(low[2 * i]),
                "spearman_high": float(high[2 * i]),
                "kendall": float(point[2 * i + 1]),
                "kendall_low": float(low[2 * i + 1]),
                "kendall_high": float(high[2 * i + 1]),
            }
        )
    return pd.DataFrame(rows)


def _designs(views: dict[str, Fit], runs: Runs, fr, rung, cands, designs) -> pd.DataFrame:
    """The package's verdicts at each rung, read off that rung's view of the interaction model (the
    rung's own effects, the noise pooled over every rung: more residual df than the rung alone)."""
    base_cols = [c for c in cands.columns if c not in ("predicted", "low", "high")]
    out = []
    for r, view in views.items():
        runs_r = replace(runs, frame=fr[rung == r].reset_index(drop=True))
        v = verdicts(view, predictions(view, cands[base_cols]), runs_r, designs)
        if len(v):
            out.append(v.assign(rung=r, n=view.n))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=["design", "rung", "verdict"])


def _kind(verdict: str) -> str:
    if verdict.startswith("beaten"):
        return "beaten"
    if verdict.startswith("on the model front"):
        return "on the front"
    if "a tie at any affordable budget" in verdict:
        return "a tie"
    if verdict.startswith("not resolved"):
        return "not resolved"
    return verdict.split(":")[0]


def _across_line(fid: Fidelity, rows: pd.DataFrame) -> str:
    """One line: 'beaten at every rung', or rung by rung ('beaten at shipped (64 px), a tie at res128
    (128 px), not resolved at train4x (8 epochs): about N more runs would decide it')."""
    kinds = [_kind(v) for v in rows["verdict"]]
    if len(set(kinds)) == 1 and len(kinds) == len(fid.rungs):
        return f"{kinds[0]} at every rung"
    parts = []
    for r, k in zip(rows.to_dict("records"), kinds):
        text = f"{k} at {fid.label(r['rung'])}"
        if (
            k == "not resolved"
            and r.get("difference") is not None
            and np.isfinite(r.get("difference_low", np.nan))
        ):
            hw = (r["difference_high"] - r["difference_low"]) / 2
            more = trials_needed(int(r["n"]), r["difference"], hw)
            if more is not None:
                text += f": about {more} more runs there would decide it"
        parts.append(text)
    return ", ".join(parts)


def fidelity_lines(fid: Fidelity) -> list[str]:
    """The text block 'across fidelity': the rungs, the global test, the choices whose effect moves
    (Holm), the rank agreement, and each design's verdict over the ladder in one line."""
    g = fid.global_test
    lines = [
        f"Across fidelity ({fid.why}).",
        "  rungs: " + "; ".join(f"{fid.label(r)}: {fid.n[r]} runs" for r in fid.rungs),
        f"  rung x choice interactions, all together: F = {g['F']:.2f} on {g['df'][0]:.0f} and "
        f"{g['df'][1]:.0f} df, p = {g['p']:.3g}",
    ]
    m = fid.moves
    if len(m):
        moving = m[m["moves"]]
        lines.append(
            f"  effects that move with fidelity (Wald per choice, Holm over {len(m)} at {1 - LEVEL:.0%}): "
            + (
                "; ".join(
                    f"{r.factor} {r.choice} by {r.largest_shift:+.3f} [{r.largest_shift_low:+.3f}, "
                    f"{r.largest_shift_high:+.3f}] at {r.largest_shift_rung} (p_holm {r.p_holm:.3g})"
                    for r in moving.itertuples()
                )
                if len(moving)
                else "none"
            )
        )
        top = m.sort_values("p").head(3)
        lines.append(
            "  closest to moving (largest shift from the base rung, single-choice interval): "
            + "; ".join(
                f"{r.factor} {r.choice} {r.largest_shift:+.3f} [{r.largest_shift_low:+.3f}, "
                f"{r.largest_shift_high:+.3f}] at {r.largest_shift_rung}, p = {r.p:.3g} (Holm {r.p_holm:.3g})"
                for r in top.itertuples()
            )
        )
    if len(fid.agreement):
        lines.append(
            f"  rank agreement of the predicted space ({int(fid.agreement['genomes'].iloc[0])} genomes; "
            f"{LEVEL:.0%} bootstrap over (genome, seed), {fid.resamples} resamples):"
        )
        for r in fid.agreement.itertuples():
            lines.append(
                f"    {r.rung_a} vs {r.rung_b}: Spearman {r.spearman:.2f} [{r.spearman_low:.2f}, "
                f"{r.spearman_high:.2f}], Kendall {r.kendall:.2f} [{r.kendall_low:.2f}, {r.kendall_high:.2f}]"
            )
    if fid.across:
        lines.append("  published designs over the ladder:")
        lines += [f"    {name:<22} {line}" for name, line in fid.across.items()]
    return lines
