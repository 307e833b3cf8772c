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


def test_planned_seeds_reach_the_trainable_and_the_stored_trial(spec):
    import optuna

    from studies.search import GenomeSpace, SamplerSpec

    plan = designed.Plan(spec, 4, seed=2)  # a screen of 3 (4 less the 25 % confirmation share), seed 2
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=SamplerSpec("designed", 0, plan=plan).build()
    )
    # enqueued with its parameters: asked as is, and the plan counts it (its screen genome is not asked again)
    study.enqueue_trial(space.to_params(plan.screen()[2], spec))
    asked = [GenomeSpace(spec).ask(study.ask()) for _ in range(3)]
    screen = [g.key for g in plan.screen()]
    assert [(g.key, c.get("seed")) for g, c in asked] == [(screen[2], None), (screen[0], 2), (screen[1], 2)]
    assert [t.user_attrs.get("trial_seed") for t in study.trials] == [None, 2, 2]


def designed_in(spec):
    from searchspace.catalog import inside as published_in_space

    return published_in_space(spec)


def _plan_on_table(spec, budget: int, seeds=(0, 1)):
    """A designed study of `budget` trials answered by the placement table (studies.search.StudySearch
    with the designed sampler, as studies.run builds it for [sampler] name = "designed")."""
    import optuna

    from searchspace.catalog import inside as published_in_space
    from studies.asha import NoStopping
    from studies.search import GenomeSpace, SamplerSpec, StudySearch
    from studies.table import Table
    from studies.table_backend import TableBackend

    cfg = config.load("placement_table")
    table = Table.load(TABLE, cfg)
    plan = designed.Plan(
        spec, budget, batch=2, seed=seeds[0], confirm_seeds=tuple(seeds[1:]),
        designs=tuple(published_in_space(spec)), costs=_table_costs(None),
    )  # fmt: skip
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(study_name="d", storage=storage, directions=["maximize", "minimize"])
    lines: list[str] = []
    search = StudySearch(
        GenomeSpace(spec), cfg.objectives, "d", storage, SamplerSpec("designed", 0, plan=plan), table.epochs,
        {"seed": 0}, log=lines.append,
    )  # fmt: skip
    TableBackend(table, cfg, rule=NoStopping()).run(search, budget, 2)
    trials = sorted(optuna.load_study(study_name="d", storage=storage).trials, key=lambda t: t.number)
    return plan, trials, lines


def test_plan_screens_then_proposes_then_confirms_on_shared_seeds(spec):
    plan, trials, lines = _plan_on_table(spec, 48)
    assert len(trials) == 48 and all(t.state.name == "COMPLETE" for t in trials)
    key_seed = [(t.user_attrs["genome_key"], t.user_attrs["seed"]) for t in trials]
    screen = [g.key for g in plan.screen()]
    assert plan.confirm_from == 36 and len(screen) == 32  # min(2 x 16 parameters, 48 - 25 % of 48)
    assert key_seed[:32] == [(k, 0) for k in screen]  # the screen first, in order, under the study's seed
    proposed = key_seed[32:36]
    assert all(s == 0 and k not in screen for k, s in proposed)  # proposals: new genomes
    confirmed = key_seed[36:]
    # the next seed, shared by every compared genome: the open designs and the model front among the run;
    # once each has it (confirm_seeds is (1,) here), proposals again
    again = [s for _, s in confirmed].index(0) if (0 in [s for _, s in confirmed]) else len(confirmed)
    first_round, after = confirmed[:again], confirmed[again:]
    assert len(first_round) >= 4 and {s for _, s in first_round} == {1}
    assert len({k for k, _ in first_round}) == len(first_round)
    designs = {d.genome.key for d in designed_in(spec)}
    assert all(k in designs or (k, 0) in key_seed[:36] for k, _ in first_round)
    assert all(s == 0 and (k, 0) not in key_seed[:36] for k, s in after)
    phases = [ln.split()[1] for ln in lines if ln.startswith("  designed:")]
    assert phases[0] == "screen" and "propose" in phases and "confirm" in phases, phases


def test_plan_resumes_from_what_the_study_holds(spec):
    plan = designed.Plan(spec, 40, seed=0)
    screen = plan.screen()
    asked = {g.key: {0} for g in screen[:10]}
    phase, batch = plan.next_batch(None, asked, 10)
    assert phase == "screen" and [g.key for g, _ in batch] == [g.key for g in screen[10:]]
    phase, batch = plan.next_batch(None, {g.key: {0} for g in screen}, len(screen))
    assert (phase, batch) == ("sampler", [])  # no runs to fit: the study's sampler fills the round
    assert plan.next_batch(None, {}, 40) == ("done", [])


def test_designed_study_runs_through_studies_run_and_resumes(tmp_path):
    out = tmp_path / "run"

    def run(trials):
        p = subprocess.run(
            [sys.executable, "-m", "studies.run", "smoke_table", "--backend", "table", "--sampler", "designed",
             "--trials", str(trials), "--out", str(out)],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
        return p.stdout

    first = run(8)
    assert "designed: screen" in first and "one-edit variant" not in first  # the screen replaces them
    assert "designed: screen - 6 genome(s)" in first  # 8 trials less the 25 % confirmation share
    second = run(12)  # resumed with a larger budget: its screen is 9, of which 8 trials ran
    assert "designed: screen - 1 genome(s)" in second
    assert "12 of 12 trials" in second and "Effects model" in second


@pytest.mark.parametrize("value", [1, 1.5, -0.1, '"a"', "true"])
def test_bad_confirm_share_is_one_line(value, tmp_path):
    text = (REPO / "studies/configs/smoke.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("concurrency = 2", f"concurrency = 2\nconfirm = {value}"))
    with pytest.raises(config.UserError, match=r"budget\.confirm: expected a share >= 0 and < 1") as e:
        config.load(str(bad))
    assert "\n" not in str(e.value)


def test_unknown_sampler_flag_is_exit_2(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "studies.run", "smoke", "--sampler", "annealing", "--out", str(tmp_path / "r")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0
    assert "sampler.name 'annealing' unknown" in p.stderr and "designed" in p.stderr
    assert not (tmp_path / "r").exists()
