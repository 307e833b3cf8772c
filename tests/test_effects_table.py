"""The effects model (analysis.effects) against the shipped placement table: the full-table fit equals
an independent statsmodels formula fit built from the CSV's menu column, subsamples fall to the
expected fit kind with their checks, the ridge path gives finite (wider) intervals, a design's
prediction is the intercept plus its stage effects, and bench/effects_fidelity.py --quick prints
its figures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.stats.anova import anova_lm

from analysis import effects as ef
from analysis.calibration import LEVEL

REPO = Path(__file__).resolve().parent.parent
TABLE = REPO / "studies" / "tables" / "placement_table.csv"
STAGES = ["s1", "s2", "s3", "s4"]


@pytest.fixture(scope="module")
def table_runs() -> ef.Runs:
    return ef.runs_from_table(TABLE)


@pytest.fixture(scope="module")
def full_fit(table_runs) -> ef.Fit:
    return ef.fit(table_runs)


def _menu_frame() -> pd.DataFrame:
    """The table's ok rows with one column per stage, straight from the CSV's menu column."""
    t = pd.read_csv(TABLE)
    t = t[t["status"] == "ok"].reset_index(drop=True)
    menu = t["menu"].str.split(" | ", regex=False, expand=True)
    menu.columns = STAGES
    return pd.concat([t[["genome_key", "seed", "top1", "genome"]], menu], axis=1)


def _menu_to_label(frame: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(stage, menu item) -> analysis.effects' stage label, read off each genome; one-to-one."""
    from searchspace.genome import Genome

    out: dict[tuple[str, str], str] = {}
    for r in frame.drop_duplicates("genome_key").itertuples():
        labels = ef.factors_of(Genome.from_json(r.genome))
        for s in STAGES:
            assert out.setdefault((s, getattr(r, s)), labels[s]) == labels[s]
    for s in STAGES:
        mine = [v for (st, _), v in out.items() if st == s]
        assert len(set(mine)) == len(mine), f"{s}: two menu items map to one label"
    return out


def test_full_table_fit_equals_an_independent_formula_fit(full_fit):
    frame = _menu_frame()
    label = _menu_to_label(frame)
    terms = " + ".join(f"C({s}, Treatment('none'))" for s in STAGES)
    additive = smf.ols(f"top1 ~ {terms} + C(seed, Sum)", frame).fit()
    # Lack of fit against one mean per genome (plus the seed blocks): intervals widen by sqrt(F)
    # only when it is significant, as the module documents.
    saturated = smf.ols("top1 ~ C(genome_key) + C(seed, Sum)", frame).fit()
    lof = anova_lm(additive, saturated)
    F, p = float(lof["F"].iloc[1]), float(lof["Pr(>F)"].iloc[1])
    widen = np.sqrt(F) if p < 1 - LEVEL and F > 1 else 1.0
    assert full_fit.widen == pytest.approx(widen, rel=1e-9)
    assert full_fit.checks["lack_of_fit"]["F"] == pytest.approx(F, rel=1e-9)
    assert full_fit.checks["pure_error_sd"] == pytest.approx(np.sqrt(saturated.mse_resid), rel=1e-9)

    q = stats.t.ppf(0.5 + LEVEL / 2, additive.df_resid)
    expected = {}
    for name, est in additive.params.items():
        m = re.fullmatch(r"C\((s\d), Treatment\('none'\)\)\[T\.(.+)\]", name)
        if m:
            hw = q * widen * additive.bse[name]
            expected[(m[1], label[(m[1], m[2])])] = (est, est - hw, est + hw)
    got = full_fit.effects()
    assert len(got) == len(expected) == 15
    for r in got.itertuples():
        assert r.baseline == "none"
        est, lo, hi = expected[(r.factor, r.choice)]
        assert (r.estimate, r.low, r.high) == pytest.approx((est, lo, hi), abs=1e-9), (r.factor, r.choice)
    # The intercept is the average seed's plain ResNet-50 (sum-to-zero seed coding on both sides).
    assert full_fit.coef[0] == pytest.approx(additive.params["Intercept"], abs=1e-9)
    assert full_fit.kind == "ols" and full_fit.df_resid == additive.df_resid


def _subsample(runs: ef.Runs, n: int, seed: int, rng_seed: int) -> ef.Runs:
    fr = runs.frame[runs.frame["seed"] == seed].reset_index(drop=True)
    rng = np.random.default_rng(rng_seed)
    return ef.Runs(fr.iloc[rng.choice(len(fr), n, replace=False)].reset_index(drop=True), f"{n} runs")


def test_48_runs_of_one_seed_fit_by_ols_with_their_checks(table_runs):
    sub = _subsample(table_runs, 48, seed=0, rng_seed=3)
    f = ef.fit(sub)
    p = len(f.coding.columns)
    assert f.kind == "ols" and f.df_resid == 48 - p >= max(ef.MIN_RESID_DF, p)
    c = f.checks
    assert c["replicated_genomes"] == 0 and "lack_of_fit" not in c  # one seed: no pure error
    assert c["residual_sd"] == pytest.approx(f.sigma) and f.sigma > 0
    assert c["cv"]["rmse"] > 0 and c["cv"]["rows"] + c["cv"]["skipped"] == 48
    assert "tested" in c["interactions"] and c["widened_by"] == 1.0
    assert set(c["shares"]) >= {"s4", "residual"}
    assert "seed" not in f.coding.factor_slices()  # a single seed has no block column


def test_ridge_on_20_runs_gives_finite_intervals_wider_than_the_full_ols(table_runs, full_fit):
    small = ef.fit(_subsample(table_runs, 20, seed=0, rng_seed=5))
    assert small.kind == "eb-ridge" and small.df_resid is None
    eff = small.effects()
    assert len(eff) > 0 and np.isfinite(eff[["estimate", "low", "high"]].to_numpy()).all()
    assert (eff["low"] < eff["estimate"]).all() and (eff["estimate"] < eff["high"]).all()
    full = full_fit.effects().set_index(["factor", "choice"])
    both = eff.join(full, on=["factor", "choice"], rsuffix="_full", how="inner")
    assert len(both) > 0
    assert ((both["high"] - both["low"]) > (both["high_full"] - both["low_full"])).all()


def test_a_designs_prediction_is_the_intercept_plus_its_stage_effects(table_runs):
    from searchspace import catalog

    e = ef.analyse(table_runs)
    eff = e.effects.set_index(["factor", "choice"])["estimate"]
    assert set(e.designs["design"]) >= {"resnet50", "se_resnet50", "fcanet50", "dsnet50_a"}
    for r in e.designs.itertuples():
        fac = ef.factors_of(catalog.get(r.design).genome)
        parts = [eff[(s, fac[s])] for s in STAGES if fac[s] != "none"]
        assert r.predicted == pytest.approx(e.fit.coef[0] + sum(parts), abs=1e-12), r.design
    se = e.designs.set_index("design").loc["se_resnet50"]
    assert len([s for s in STAGES if ef.factors_of(catalog.get("se_resnet50").genome)[s] != "none"]) == 4
    assert se.predicted > e.designs.set_index("design").loc["resnet50"].predicted


def test_effects_fidelity_bench_quick_prints_its_figures():
    p = subprocess.run(
        [sys.executable, str(REPO / "bench" / "effects_fidelity.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    out = p.stdout
    num = r"[+-]?\d+\.\d+"
    for k in (24, 48):
        assert re.search(rf"^== {k} trials", out, re.M), out
    # a) rankings: model over all 480 genomes, raw and model on the drawn k, with intervals
    rho = re.findall(
        rf"^  (model, all 480|raw runs, the k|model, the k)\s+({num}) \[({num}), ({num})\]", out, re.M
    )
    assert len(rho) == 3 * 2, out
    for _, med, lo, hi in rho:
        assert -1 <= float(lo) <= float(med) <= float(hi) <= 1
    # b) coverage with a binomial interval, per fit kind
    cov = re.findall(
        rf"^  coverage \((ols|eb-ridge)\)\s+(\d+)/(\d+) = ({num}) \[({num}), ({num})\]", out, re.M
    )
    assert {k for k, *_ in cov} == {"ols", "eb-ridge"}, out
    for _, hit, n, share, lo, hi in cov:
        assert 0 < int(n) and float(share) == pytest.approx(int(hit) / int(n), abs=6e-4)
        assert float(lo) <= float(share) <= float(hi)
    # c) verdict agreement for each published design; d) the winner's curse
    for d in ("resnet50", "se_resnet50", "fcanet50", "dsnet50_a", "dsnet50_b", "dsnet50_c"):
        assert re.search(rf"^  verdict {d}\s+\(full: [a-z ]+\)\s+agree \d+/\d+", out, re.M), d
    assert len(re.findall(rf"^  overstated \((observed best|model best)\)\s+({num}) \[", out, re.M)) == 4
    assert re.search(r"^fast verdicts equal analysis\.effects\.analyse's on \d+ draws", out, re.M), out
    # e) the two intervals on the table's other seeds, each coverage with its binomial interval
    for what in ("new-run interval covers fresh runs", "2-run-mean interval covers fresh 2-seed means"):
        m = re.search(rf"^  {what}.*? (\d+)/(\d+) = ({num}) \[({num}), ({num})\]", out, re.M)
        assert m and int(m[2]) > 0 and float(m[4]) <= float(m[3]) <= float(m[5]), (what, out)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--table", "no/such.csv"], "no such file"),
        (["--sizes", "24,x"], "expected integers"),
        (["--sizes", "2"], "outside 3..480"),
        (["--draws", "1"], "needs at least 2"),
    ],
)
def test_effects_fidelity_bench_rejects_bad_input_in_one_line(args, message):
    p = subprocess.run(
        [sys.executable, str(REPO / "bench" / "effects_fidelity.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and message in p.stderr, p.stderr
