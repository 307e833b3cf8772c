"""analysis.calibration on hand-computed cases: pooled std, tau-b with ties, rho, the resolvable
difference, the t quantile; the bootstrap is seeded."""

from __future__ import annotations

import math

import pytest

from analysis.calibration import (
    average_ranks,
    kendall_tau_b,
    noise,
    pooled_std,
    rank_agreement,
    resolvable_difference,
    spearman_rho,
    t_quantile,
)


def test_pooled_std_by_hand():
    # a: mean 2, squares 1+1 = 2 on 1 df; b: mean 4, squares 4+0+4 = 8 on 2 df -> sqrt(10/3)
    pooled, df = pooled_std({"a": [1, 3], "b": [2, 4, 6], "single": [9]})
    assert df == 3 and pooled == pytest.approx(math.sqrt(10 / 3))
    assert pooled_std({"a": [1], "b": [2]}) == (None, 0)


def test_kendall_tau_b_with_ties_by_hand():
    # pairs of [1,2,2,3] x [1,2,3,3]: 4 concordant, 0 discordant, one tied in x, one tied in y:
    # 4 / sqrt((6 - 1)(6 - 1)) = 0.8
    assert kendall_tau_b([1, 2, 2, 3], [1, 2, 3, 3]) == pytest.approx(0.8)
    # no ties: 4 concordant, 2 discordant of 6 pairs
    assert kendall_tau_b([1, 2, 3, 4], [2, 1, 4, 3]) == pytest.approx(1 / 3)
    assert kendall_tau_b([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(kendall_tau_b([1, 1, 1], [1, 2, 3]))


def test_spearman_with_ties_by_hand():
    assert average_ranks([1, 2, 2, 3]).tolist() == [1, 2.5, 2.5, 4]
    # centred ranks (-1.5, 0, 0, 1.5) and (-1.5, -0.5, 0.5, 1.5): 4.5 / sqrt(4.5 * 5)
    assert spearman_rho([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(22.5))


def test_t_quantile_against_printed_tables():
    assert t_quantile(0.975, 1) == pytest.approx(12.7062, abs=1e-3)
    assert t_quantile(0.975, 2) == pytest.approx(4.3027, abs=1e-4)
    assert t_quantile(0.975, 10) == pytest.approx(2.2281, abs=1e-4)
    assert t_quantile(0.975, math.inf) == pytest.approx(1.959964, abs=1e-6)


def test_resolvable_difference_by_hand():
    # two single runs, pooled std 0.02 on 10 df: 2.2281 * 0.02 * sqrt(2)
    assert resolvable_difference(0.02, 10) == pytest.approx(2.228139 * 0.02 * math.sqrt(2), rel=1e-5)
    # a single run against a mean of 3: sqrt(1 + 1/3)
    assert resolvable_difference(0.02, math.inf, 1, 3) == pytest.approx(
        1.959964 * 0.02 * math.sqrt(4 / 3), rel=1e-6
    )


def test_noise_of_the_issue_table():
    # The seven published ResNet-50 designs x 3 seeds measured on the shipped protocol (issue 13):
    # the issue reports seed std 0.021, std of means 0.032, SNR 1.5.
    runs = {
        "resnet50": [0.216, 0.130, 0.188],
        "se_resnet50": [0.272, 0.256, 0.236],
        "fcanet50": [0.256, 0.216, 0.238],
        "dsnet50_a": [0.176, 0.174, 0.160],
        "dsnet50_b": [0.216, 0.212, 0.200],
        "dsnet50_c": [0.204, 0.202, 0.212],
        "resnet50_d": [0.198, 0.180, 0.166],
    }
    n = noise(runs)
    assert n.df == 14 and n.seeds == 3
    assert n.pooled_std == pytest.approx(0.021, abs=5e-4)
    assert n.std_of_means == pytest.approx(0.032, abs=5e-4)
    assert n.snr == pytest.approx(n.std_of_means / n.pooled_std)
    # the noise of a mean of 3 comes off the signal: signal^2 = som^2 - pooled^2 / 3
    assert n.signal_std**2 == pytest.approx(n.std_of_means**2 - n.pooled_std**2 / 3)
    assert n.snr_of_mean(4) == pytest.approx(2 * n.snr_of_mean(1))
    assert n.designs["se_resnet50"]["mean"] == pytest.approx(0.764 / 3)


def test_rank_agreement_bootstrap_is_seeded_and_brackets():
    a = {"x": [0.1, 0.12], "y": [0.2, 0.22], "z": [0.3, 0.31], "w": [0.25, 0.26]}
    b = {"x": [0.4, 0.41], "y": [0.5, 0.52], "z": [0.7, 0.69], "w": [0.6, 0.6], "only_b": [0.9]}
    r1, r2 = rank_agreement(a, b, n_boot=300, seed=1), rank_agreement(a, b, n_boot=300, seed=1)
    assert r1 == r2 and r1["n"] == 4 and r1["tau"] == pytest.approx(1.0) and r1["rho"] == pytest.approx(1.0)
    assert r1["tau_ci"][0] <= r1["tau"] <= r1["tau_ci"][1] + 1e-12
    assert rank_agreement({"x": [1]}, {"x": [2]})["tau"] is None


TIED_PAIRS = [
    ([1, 2, 2, 3, 5, 5, 5], [2, 1, 3, 3, 4, 6, 6]),
    ([0.2, 0.2, 0.1, 0.4, 0.3], [0.5, 0.1, 0.1, 0.1, 0.9]),
    ([3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]),
]


@pytest.mark.parametrize(("x", "y"), TIED_PAIRS)
def test_rank_statistics_equal_scipy_with_ties(x, y):
    from scipy import stats

    assert kendall_tau_b(x, y) == pytest.approx(stats.kendalltau(x, y, variant="b").statistic, abs=1e-12)
    assert spearman_rho(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert average_ranks(x).tolist() == stats.rankdata(x).tolist()


@pytest.mark.parametrize(("p", "df"), [(0.975, 3), (0.95, 7.5), (0.995, 40)])
def test_quantiles_equal_scipy(p, df):
    from scipy import stats

    from analysis.calibration import normal_quantile

    assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-12)
    assert normal_quantile(p) == pytest.approx(stats.norm.ppf(p), rel=1e-12)


def test_bootstrap_intervals_equal_one_scipy_call_per_replicate():
    """The replicates are scored in one vectorised call; scoring them one by one with scipy gives the
    same intervals (the resampling drawn as the module docstring says: designs, then seeds in each)."""
    import numpy as np
    from scipy import stats

    a = {"x": [0.1, 0.12, 0.1], "y": [0.2, 0.22], "z": [0.3, 0.31], "w": [0.25, 0.25], "v": [0.2]}
    b = {"x": [0.4, 0.41], "y": [0.5, 0.52], "z": [0.7, 0.69], "w": [0.6, 0.6], "v": [0.5, 0.55]}
    got = rank_agreement(a, b, n_boot=200, seed=3)
    names = sorted(a)
    rng = np.random.default_rng(3)
    taus, rhos = [], []
    for _ in range(200):
        pick = rng.integers(0, len(names), len(names))
        xa = [np.mean(rng.choice(np.asarray(a[names[p]]), len(a[names[p]]))) for p in pick]
        xb = [np.mean(rng.choice(np.asarray(b[names[p]]), len(b[names[p]]))) for p in pick]
        taus.append(stats.kendalltau(xa, xb).statistic)
        rhos.append(stats.spearmanr(xa, xb).statistic)

    def interval(v):
        v = np.asarray(v)
        return np.percentile(v[np.isfinite(v)], [2.5, 97.5]).tolist()

    assert got["tau_ci"] == pytest.approx(interval(taus), abs=1e-12)
    assert got["rho_ci"] == pytest.approx(interval(rhos), abs=1e-12)
