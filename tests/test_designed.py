"""The designed search (studies.designed): its screen's balance and correlations, its proposals and
its confirmation rounds, and the strategy bench's held-out mode."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis import effects as fx
from searchspace import space
from studies import config, designed

REPO = Path(__file__).resolve().parent.parent
TABLE = REPO / "studies" / "tables" / "placement_table.csv"


@pytest.fixture(scope="module")
def spec():
    return config.load("placement_table").space


def test_screen_is_balanced_and_nearly_orthogonal(spec):
    p = designed.parameters(spec)
    assert p == 16  # intercept + 3 + 3 + 4 + 5 levels against "none"
    for n in (24, 32):
        g = designed.screen(spec, n, seed=3)
        assert len(g) == n and all(space.contains(spec, x) for x in g)
        counts = designed.balance(g)
        for f in ("s1", "s2", "s3", "s4"):
            c = list(counts[f].values())
            assert len(c) == len(spec.stage_menus[int(f[1:]) - 1])  # every level appears
            assert max(c) - min(c) <= 1, (f, counts[f])
        r = designed.max_correlation(g)
        print(f"screen of {n} ({n / p:.1f}x the {p} parameters): max |r| between factors {r:.3f}")
        assert r < 0.3
        # far better conditioned than a random choice of the same size
        rand = designed.pool(spec, size=10_000)
        pick = np.random.default_rng(0).choice(len(rand), n, replace=False)
        assert r < designed.max_correlation([rand[i] for i in pick])


def test_screen_from_a_partial_pool_uses_fedorov_exchange(spec):
    n = 32
    g = designed.screen(spec, n, seed=1, pool_size=120)  # 120 of 480: not a full product
    assert len(g) == n and all(space.contains(spec, x) for x in g)
    coding = designed.coding_of(designed.pool(spec, size=10_000))
    X = coding.matrix([fx.factors_of(x) for x in g], [0] * n)
    rand = designed.pool(spec, size=120, seed=1)[:n]
    Xr = coding.matrix([fx.factors_of(x) for x in rand], [0] * n)
    assert designed._logdet(X) > designed._logdet(Xr)
    print(f"Fedorov screen from a pool of 120: max |r| {designed.max_correlation(g, coding):.3f}")


def test_proposals_lie_in_the_space_and_avoid_what_was_run(spec):
    runs = fx.runs_from_table(TABLE, seeds=[0])
    screen_keys = {g.key for g in designed.screen(spec, 32, seed=0)}
    runs.frame = runs.frame[runs.frame["key"].isin(screen_keys)].reset_index(drop=True)
    model = fx.fit(runs)
    cands, _ = fx.candidates(model, runs, costs=_table_costs(runs))
    got = designed.propose(model, cands, 6, exclude=screen_keys)
    assert len(got) == 6 and len({g.key for g in got}) == 6
    assert all(space.contains(spec, g) and g.key not in screen_keys for g in got)


def _table_costs(runs):
    every = fx.runs_from_table(TABLE, seeds=[0]).frame.set_index("key")
    return fx.StageCosts(
        {},
        count=lambda g, _t: {
            "flops": float(every.at[g.key, "flops"]),
            "params": float(every.at[g.key, "params"]),
        },
    )


def test_confirm_gives_every_compared_genome_the_same_next_seed(spec):
    a, b, c = designed.screen(spec, 3, seed=0)
    done = {a.key: {0}, b.key: {0, 1}, c.key: {0}}
    pairs = designed.confirm([a, b], [c, a], done, seeds=[0, 1, 2])
    assert sorted((g.key, s) for g, s in pairs) == sorted([(a.key, 1), (c.key, 1)])
    done = {g.key: {0, 1, 2} for g in (a, b, c)}
    assert designed.confirm([a, b], [c], done, seeds=[0, 1, 2]) == []


@pytest.mark.slow
def test_search_strategies_heldout_quick_mode_prints_its_figures():
    p = subprocess.run(
        [
            sys.executable,
            "bench/search_strategies.py",
            "--config",
            "smoke_table",
            "--heldout",
            "--quick",
            "--jobs",
            "1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    print(p.stdout)
    lines = p.stdout.splitlines()
    for b in (8, 12):
        assert f"@{b} trials: median" in p.stdout
    rows = [ln.split() for ln in lines if ln.startswith("  designed ")]
    assert len(rows) == 2 and all(0 < float(r[1]) <= 1 for r in rows)  # held-out hypervolume
    assert lines[-1].startswith("winners=")


def test_enqueued_confirm_pairs_reach_the_trainable_with_their_seed(spec):
    import optuna

    from studies.search import GenomeSpace

    study = optuna.create_study(directions=["maximize", "minimize"])
    a, b = designed.screen(spec, 2, seed=0)
    assert designed.enqueue(study, spec, [(a, 2), (b, 2), a]) == 3
    asked = [GenomeSpace(spec).ask(study.ask()) for _ in range(3)]
    assert [(g.key, c.get("seed")) for g, c in asked] == [(a.key, 2), (b.key, 2), (a.key, None)]
