"""How well does the effects model (analysis.effects) do on few trials? Measured on the placement table.

The shipped table holds every genome of a 480-genome placement space trained under several seeds;
this bench compares two of them (--pair, default seeds 0 and 1).
For each size k, many draws of k genomes' runs from one seed (half the draws train on seed 0 and
hold out seed 1, half the other way round) are fitted, and the bench prints:

a) ranking: Spearman's rho of the model's predictions of ALL genomes against their held-out-seed
   runs; like for like on the k drawn genomes, the raw runs' rho (drawn seed vs held-out seed) and
   the model's; medians with 2.5-97.5 % percentile intervals over draws. For reference, the rho of
   every genome trained once against its other seed (no draw), and of the model against the
   full-table model (both seeds; the issue's own comparison).
b) coverage: the share of (draw, effect) pairs whose 95 % interval covers the full-table (both seeds)
   estimate of that effect, with a Clopper-Pearson interval, by fit kind (and by stage). The pairs of
   one draw are correlated, so that binomial interval is narrower than the truth.
c) verdicts: per published design, the share of draws whose verdict category (on the model front /
   beaten / not resolved) equals the full table's; a draw that never trained one of the design's
   stage choices gives no prediction, counted apart.
d) winner's curse: the best observed run of the k against its held-out run, and the model's best
   predicted genome (over all genomes it can predict) against its held-out run; means with 95 % t
   intervals over draws, and the held-out top-1 of each pick. Equal draws per direction make the
   seeds' mean shift cancel from the means.
e) the two intervals on fresh seeds: the full fit of the pair (every genome, both seeds) scored on the
   table's other seeds (--fresh, default all of them). The new-run interval against each fresh run;
   the mean interval cannot be checked against a k-seed mean directly (that mean carries run noise
   sigma^2 / k and its blocks' common shift), so: the fresh means less their common shift against
   the interval of a k-run mean in known blocks (variance: the mean's + sigma^2 / k, which tends to
   the mean interval as k grows), the bare mean interval against them (for scale), and the mean's
   error variance the fresh seeds imply (mean squared error less their own pure-error variance / k)
   over the variance the mean interval claims, with a bootstrap interval over genomes.

Verdicts are computed from the model's predictions of the table's genomes (their FLOPs read from
the table) through effects.verdicts; the first draw of each size and direction is checked
against a full effects.analyse of the same runs, and the bench stops if they differ.

    python bench/effects_fidelity.py [--draws 200] [--sizes 24,48,96] [--quick] [--table PATH] [--seed 0]
                                     [--pair 0,1] [--fresh 2,3]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

import effects as ef  # noqa: E402
from searchspace.errors import UserError  # noqa: E402
from trainers.measure import Timer  # noqa: E402

DEFAULT_TABLE = Path(__file__).resolve().parents[1] / "studies" / "tables" / "placement_table.csv"
PUBLISHED = ("resnet50", "se_resnet50", "fcanet50", "dsnet50_a", "dsnet50_b", "dsnet50_c")


def category(verdict: str | None) -> str:
    if verdict is None or verdict.startswith("no prediction"):
        return "no prediction"
    for prefix, name in (
        ("the cheapest design", "cheapest"),
        ("on the model front", "on front"),
        ("beaten by", "beaten"),
        ("not resolved", "not resolved"),
    ):
        if verdict.startswith(prefix):
            return name
    return "other"


class TableCosts:
    """Counts of the table's genomes read from the table: effects.analyse's `costs` hook,
    so the check against analyse traces no network."""

    def __init__(self, frame: pd.DataFrame):
        first = frame.drop_duplicates("key").set_index("key")
        self._counts = {k: {"flops": float(r.flops), "params": float(r.params)} for k, r in first.iterrows()}

    def __call__(self, genome) -> dict:
        return dict(self._counts[genome.key])


class Table:
    """The table's genomes in a fixed order with their factors, FLOPs and both seeds' runs."""

    def __init__(self, path: Path, pair: tuple[int, int] = (0, 1)):
        self.path = path
        self.runs = ef.runs_from_table(path, seeds=pair)
        fr = self.runs.frame
        seeds = sorted(fr["seed"].unique())
        if len(set(pair)) != 2 or len(seeds) != 2:
            raise UserError(f"--table {str(path)!r}: needs two seeds per genome, {list(pair)} gave {seeds}")
        self.seeds = [int(s) for s in seeds]
        wide = fr.pivot_table(index="key", columns="seed", values="y", aggfunc="first").dropna()
        if len(wide) < 10:
            raise UserError(f"--table {str(path)!r}: {len(wide)} genomes with both seeds; needs at least 10")
        first = fr.drop_duplicates("key").set_index("key").loc[wide.index]
        self.keys = list(wide.index)
        self.y = {s: wide[s].to_numpy(float) for s in self.seeds}
        self.genomes = list(first["genome"])
        self.flops = first["flops"].to_numpy(float)
        self.params = first["params"].to_numpy(float)
        self.factors = [ef.factors_of(g) for g in self.genomes]
        self.rows = {
            s: fr[fr["seed"] == s].drop_duplicates("key").set_index("key").loc[self.keys] for s in seeds
        }
        self.costs = TableCosts(fr)

    def draw_runs(self, idx: np.ndarray, seed: int) -> ef.Runs:
        frame = self.rows[seed].iloc[idx].reset_index()
        return ef.Runs(frame[self.runs.frame.columns], f"{len(idx)} runs of seed {seed}")


def predict_all(f: ef.Fit, t: Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predicted, low, high) of every table genome, NaN where the fit never saw one of its levels."""
    known = np.array([not f.coding.unknown(fac) for fac in t.factors])
    est, low, high = f.intervals(f.coding.matrix(t.factors))
    nan = np.where(known, 1.0, np.nan)
    return est * nan, low * nan, high * nan


def fast_verdicts(f: ef.Fit, t: Table, runs: ef.Runs, pred: tuple) -> dict[str, str]:
    frame = pd.DataFrame(
        {
            "key": t.keys,
            "genome": t.genomes,
            "flops": t.flops,
            "params": t.params,
            "evaluated": False,
            "predicted": pred[0],
            "low": pred[1],
            "high": pred[2],
        }
    ).dropna(subset=["predicted"])
    v = ef.verdicts(f, frame, runs)
    return dict(zip(v["design"], v["verdict"])) if len(v) else {}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    return float(stats.spearmanr(a[ok], b[ok]).statistic)


def one_draw(
    t: Table, k: int, train: int, held: int, rng, full_effects: dict, full_pred, check: bool
) -> dict:
    idx = rng.choice(len(t.keys), size=k, replace=False)
    runs = t.draw_runs(idx, train)
    try:
        f = ef.fit(runs)
    except UserError as err:  # the model refuses runs too few to measure the noise with
        return {"refused": str(err)}
    pred = predict_all(f, t)
    ya, yb = t.y[train], t.y[held]
    p = pred[0]
    out = {
        "kind": f.kind,
        "rho_model_all": spearman(p, yb),
        "rho_raw_k": spearman(ya[idx], yb[idx]),
        "rho_model_k": spearman(p[idx], yb[idx]),
        "rho_model_vs_full": spearman(p, full_pred),
        "predictable": float(np.isfinite(p).mean()),
    }
    # b) each effect's interval against the full-table estimate of the same contrast (its baseline may
    # differ from 'none' when a draw never trained 'none' in a stage).
    covered = []  # (factor, covered)
    for r in f.effects().itertuples():
        full = full_effects.get((r.factor, r.choice), 0.0) - full_effects.get((r.factor, r.baseline), 0.0)
        covered.append((r.factor, bool(r.low <= full <= r.high)))
    out["covered"] = covered
    # c) verdicts
    verdicts = fast_verdicts(f, t, runs, pred)
    if check:
        slow = ef.analyse(runs, costs=t.costs).designs
        slow = dict(zip(slow["design"], slow["verdict"])) if len(slow) else {}
        if slow != verdicts:
            raise SystemExit(f"fast verdicts differ from analysis.effects.analyse's: {verdicts} vs {slow}")
    out["verdicts"] = {d: category(verdicts.get(d)) for d in PUBLISHED}
    # d) winner's curse
    best_obs = idx[int(np.argmax(ya[idx]))]
    best_model = int(np.nanargmax(p))
    out["over_observed"] = float(ya[best_obs] - yb[best_obs])
    out["over_model"] = float(p[best_model] - yb[best_model])
    out["held_observed"] = float(yb[best_obs])
    out["held_model"] = float(yb[best_model])
    return out


def pct(x) -> str:
    x = np.asarray(x, float)
    lo, med, hi = np.percentile(x, [2.5, 50, 97.5])
    return f"{med:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def mean_ci(x) -> str:
    x = np.asarray(x, float)
    if len(x) < 2:
        return f"{x.mean():+.3f} [n/a]"
    ci = stats.ttest_1samp(x, 0.0).confidence_interval(0.95)
    return f"{x.mean():+.3f} [{ci.low:+.3f}, {ci.high:+.3f}]"


def report_size(k: int, results: list[dict], full_verdicts: dict[str, str], n_genomes: int) -> list[str]:
    draws = [d for d in results if "refused" not in d]
    refused = len(results) - len(draws)
    if not draws:
        return [f"== {k} trials: the model refused all {refused} draws ({results[0]['refused']})"]
    kinds = Counter(d["kind"] for d in draws)
    lines = [
        f"== {k} trials: {len(draws)} draws ({', '.join(f'{n} {kind}' for kind, n in sorted(kinds.items()))}"
        f"{f'; {refused} refused by the model' if refused else ''}); "
        f"the model predicts {np.mean([d['predictable'] for d in draws]):.1%} of the genomes on average",
        "  a) Spearman rho against the held-out seed (median [2.5%, 97.5%] over draws)",
        f"  model, all {n_genomes:<8} {pct([d['rho_model_all'] for d in draws])}",
        f"  raw runs, the k      {pct([d['rho_raw_k'] for d in draws])}",
        f"  model, the k         {pct([d['rho_model_k'] for d in draws])}",
        f"  (model vs the full-table model: {pct([d['rho_model_vs_full'] for d in draws])})",
        "  b) 95% intervals covering the full-table estimate (Clopper-Pearson interval)",
    ]
    for kind in ("ols", "eb-ridge"):
        pairs = [c for d in draws if d["kind"] == kind for c in d["covered"]]
        if not pairs:
            lines.append(f"  coverage ({kind}) no draws of this kind")
            continue
        hits = [c for _, c in pairs]
        ci = stats.binomtest(sum(hits), len(hits)).proportion_ci(0.95)
        by_factor = defaultdict(list)
        for factor, c in pairs:
            by_factor[factor].append(c)
        lines.append(
            f"  coverage ({kind}){' ' * (9 - len(kind))}{sum(hits)}/{len(hits)} = {sum(hits) / len(hits):.3f} "
            f"[{ci.low:.3f}, {ci.high:.3f}]; by stage "
            + ", ".join(f"{fac} {np.mean(c):.2f}" for fac, c in sorted(by_factor.items()))
        )
    lines.append("  c) verdict category equal to the full table's")
    for d in PUBLISHED:
        full = category(full_verdicts.get(d))
        cats = [x["verdicts"][d] for x in draws]
        none = cats.count("no prediction")
        agree = sum(c == full for c in cats)
        seen = Counter(c for c in cats if c != "no prediction")
        lines.append(
            f"  verdict {d:<12} (full: {full}) agree {agree}/{len(cats) - none}"
            + (f" = {agree / (len(cats) - none):.0%}" if len(cats) > none else "")
            + f"; no prediction {none}; draws: {', '.join(f'{c} {n}' for c, n in seen.most_common())}"
        )
    lines += [
        "  d) winner's curse (mean [95% t interval] over draws)",
        f"  overstated (observed best)  {mean_ci([d['over_observed'] for d in draws])}",
        f"  overstated (model best)     {mean_ci([d['over_model'] for d in draws])}",
        f"  held-out top-1 of the pick: observed best {mean_ci([d['held_observed'] for d in draws])}, "
        f"model best {mean_ci([d['held_model'] for d in draws])}",
    ]
    return lines


def binomial(hits: np.ndarray) -> str:
    ci = stats.binomtest(int(hits.sum()), len(hits)).proportion_ci(0.95)
    return f"{int(hits.sum())}/{len(hits)} = {hits.mean():.3f} [{ci.low:.3f}, {ci.high:.3f}]"


def fresh_seeds(t: Table, f: ef.Fit, fresh: list[int] | None) -> list[str]:
    """e) The fit's two intervals against runs of the table's other seeds (docstring)."""
    fr = ef.runs_from_table(t.path).frame
    fr = fr[~fr["seed"].isin(t.seeds) if fresh is None else fr["seed"].isin(fresh)]
    fr = fr[fr["key"].isin(t.keys)]
    seeds = sorted(int(s) for s in fr["seed"].unique())
    if not seeds:
        return ["  e) no fresh seeds in the table: the intervals are not checked on new runs"]
    X = f.coding.matrix([ef.factors_of(g) for g in t.genomes])
    est, mean_lo, mean_hi = f.intervals(X)
    _, run_lo, run_hi = f.run_intervals(X)
    at = {k: i for i, k in enumerate(t.keys)}
    i = fr["key"].map(at).to_numpy()
    y = fr["y"].to_numpy(float)
    lines = [
        f"  e) intervals on fresh seeds {seeds} ({len(y)} runs; fit on seeds {t.seeds}: "
        f"block sd {f.block_sd:.4f} on {f.block_df} df)",
        f"  new-run interval covers fresh runs      {binomial((run_lo[i] <= y) & (y <= run_hi[i]))}"
        f"  (runs of one seed share its shift: {len(seeds)} shift(s) drawn, so the binomial interval is too narrow)",
    ]
    wide = fr.pivot_table(index="key", columns="seed", values="y", aggfunc="first").dropna()
    k = wide.shape[1]
    g = wide.index.map(at).to_numpy()
    d = wide.mean(axis=1).to_numpy() - est[g]
    d = d - d.mean()  # the fresh blocks' common shift, measured on every genome
    se2 = (((mean_hi - est) / f.q) ** 2)[g]
    q = stats.t.ppf(0.5 + ef.LEVEL / 2, f.df_resid) if f.df_resid else stats.norm.ppf(0.5 + ef.LEVEL / 2)
    kmean = np.abs(d) <= q * np.sqrt(se2 + f.sigma**2 / k)
    lines += [
        f"  {k}-run-mean interval covers fresh {k}-seed means less their shift {binomial(kmean)}",
        f"  bare mean interval covers the same      {binomial(np.abs(d) <= (mean_hi - est)[g])}  (not what it is for)",
    ]
    # The fresh seeds' own pure error: each genome's runs about its fresh mean, after the seeds' shifts.
    w = wide.to_numpy(float)
    resid = w - w.mean(axis=1, keepdims=True) - (w.mean(axis=0) - w.mean())
    noise = (resid**2).sum(axis=1) / (k - 1) * len(w) / (len(w) - 1)  # per genome, unbiased over blocks

    def ratio(dd, nn, ss):
        return (np.mean(dd**2) - np.mean(nn) / k) / np.mean(ss)

    boot = stats.bootstrap(
        (d, noise, se2), ratio, paired=True, vectorized=False, n_resamples=999, random_state=0
    )
    ci = boot.confidence_interval
    lines.append(
        f"  mean's error variance, fresh seeds' estimate / the interval's: {ratio(d, noise, se2):.2f} "
        f"[{ci.low:.2f}, {ci.high:.2f}] (1: the mean interval is right; bootstrap over {len(d)} genomes)"
    )
    return lines


def measure(t: Table, sizes: list[int], draws: int, seed: int, fresh: list[int] | None = None) -> None:
    """Print the full-table reference and one block per size."""
    full = ef.analyse(t.runs, costs=t.costs)
    full_effects = {(r.factor, r.choice): r.estimate for r in full.effects.itertuples()}
    full_pred = predict_all(full.fit, t)[0]
    full_verdicts = dict(zip(full.designs["design"], full.designs["verdict"]))
    s0, s1 = t.seeds
    print(
        f"effects model fidelity on {t.runs.source}: {len(t.keys)} genomes x seeds {s0}, {s1}; "
        f"full-table fit {full.fit.kind} on {full.fit.n} runs (residual sd {full.fit.sigma:.4f})"
    )
    print(
        f"reference: every genome trained once, rho against its other seed {spearman(t.y[s0], t.y[s1]):+.3f}; "
        f"seed {s0} runs vs the full-table model {spearman(t.y[s0], full_pred):+.3f}, "
        f"seed {s1} runs {spearman(t.y[s1], full_pred):+.3f}"
    )
    print("full-table verdicts: " + "; ".join(f"{d} {category(full_verdicts.get(d))}" for d in PUBLISHED))
    print("\n".join(fresh_seeds(t, full.fit, fresh)))
    rng = np.random.default_rng(seed)
    checked = 0
    for k in sizes:
        results = []
        for i in range(draws):
            train, held = (s0, s1) if i % 2 == 0 else (s1, s0)
            check = i < 2  # the first draw of each direction goes through analyse as well
            results.append(one_draw(t, k, train, held, rng, full_effects, full_pred, check))
            checked += check
        print()
        print("\n".join(report_size(k, results, full_verdicts, len(t.keys))))
    print()
    print(f"fast verdicts equal analysis.effects.analyse's on {checked} draws")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/effects_fidelity.py", description=__doc__.split("\n")[0])
    p.add_argument("--draws", type=int, default=200, help="draws per size, split between the two directions")
    p.add_argument("--sizes", default="24,48,96", help="trials per draw, comma-separated")
    p.add_argument("--quick", action="store_true", help="a handful of draws of sizes 24 and 48 (seconds)")
    p.add_argument("--table", default=str(DEFAULT_TABLE), help="a benchmark table CSV with two seeds")
    p.add_argument("--seed", type=int, default=0, help="random seed of the draws")
    p.add_argument("--pair", default="0,1", help="the two table seeds compared (default 0,1)")
    p.add_argument("--fresh", help="table seeds the pair's full fit is scored on (default: all others)")
    a = p.parse_args(argv)
    try:
        sizes = [int(s) for s in ("24,48" if a.quick else a.sizes).split(",")]
    except ValueError:
        print(f"error: --sizes {a.sizes!r}: expected integers separated by commas", file=sys.stderr)
        return 2
    draws = 6 if a.quick else a.draws
    try:
        if draws < 2:
            raise UserError(f"--draws {draws}: needs at least 2 (one per direction)")
        try:
            pair = tuple(int(x) for x in a.pair.split(","))
        except ValueError:
            raise UserError(f"--pair {a.pair!r}: expected two seeds, e.g. 0,1") from None
        try:
            fresh = [int(x) for x in a.fresh.split(",")] if a.fresh else None
        except ValueError:
            raise UserError(f"--fresh {a.fresh!r}: expected seeds separated by commas, e.g. 2,3") from None
        t = Table(Path(a.table), pair)
        bad = [k for k in sizes if not 3 <= k <= len(t.keys)]
        if bad:
            raise UserError(f"--sizes: {bad} outside 3..{len(t.keys)} (the table's genomes)")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    with Timer() as timer:
        measure(t, sizes, draws, a.seed, fresh)
    print(f"took {timer.wall_s:.0f} s wall, {timer.cpu_s:.0f} s CPU ({draws} draws x {len(sizes)} sizes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
