"""The placement benchmark table: per-stage menus in the space spec, the shipped tables, the table
backend (a study answered from a table through the real searcher and storage), its early stopping."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from searchspace import Genome, catalog, space
from searchspace.catalog import inside as published_in_space
from searchspace.errors import UserError
from studies import config as config_mod
from studies.asha import ASHA, CONTINUE, STOP, NoStopping
from studies.search import GenomeSpace, SamplerSpec, StudySearch
from studies.table import Table, default_csv, generation_order, read_rows
from studies.table_backend import TableBackend
from trainers import checksum

REPO = Path(__file__).resolve().parent.parent
PUBLISHED_R50 = ("resnet50", "se_resnet50", "fcanet50", "dsnet50_a", "dsnet50_b", "dsnet50_c")


def _menu_spec(**extra):
    return space.SpaceSpec.from_dict(
        {"backbone": "resnet50", **config_mod.load("placement_table").space_table, **extra}
    )


# -- stage menus in the space spec ------------------------------------------------------------------
def test_menu_space_holds_every_published_resnet50_design_and_round_trips():
    spec = _menu_spec()
    assert space.count(spec) == 4 * 4 * 5 * 6 == len(space.enumerate_genomes(spec))
    for name in PUBLISHED_R50:
        g = catalog.get(name).genome
        assert space.contains(spec, g), name
        params = space.to_params(g, spec)
        assert set(params) == {"s0_menu", "s1_menu", "s2_menu", "s3_menu"}
        assert space.suggest(optuna.trial.FixedTrial(params), spec) == g, name
    # DSNet50-B's plugins at after_conv2 in stages 1-3 are not on the menu
    assert not space.contains(spec, catalog.get("dsnet50_b_after_conv2").genome)
    with pytest.raises(UserError, match="outside the study's space"):
        space.to_params(catalog.get("dsnet50_b_after_conv2").genome, spec)


def test_menu_item_syntax_fills_defaults_and_reads_options():
    p = space.parse_menu_item("dsm@after_conv2:r2:bias", "resnet50")
    assert (p.type, p.position, p.r, p.opts) == ("dsm", "after_conv2", 2, {"bias": True})
    assert space.parse_menu_item("dsm@after_conv2:r2:bias=true", "resnet50") == p
    assert space.parse_menu_item("se@after_conv3", "resnet50").r == 16  # the registry's default r
    assert space.parse_menu_item("none", "resnet50") is None


def test_sampled_menu_genomes_stay_in_the_space():
    spec = _menu_spec()
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=1)
    )
    for _ in range(20):
        t = study.ask()
        g = space.suggest(t, spec)
        assert space.contains(spec, g)
        study.tell(t, [0.0, 1.0])


@pytest.mark.parametrize(
    "menus, message",
    [
        ([["none"]], "space.stage_menus: resnet50 has 4 stages, got 1 menus"),
        ([["none"], ["none"], ["none"], []], "space.stage_menus[3]: must not be empty"),
        ([["none"]] * 3 + [["se"]], "space.stage_menus[3]: menu item 'se' needs a position"),
        (
            [["nope@after_conv3"]] * 4,
            "space.stage_menus[0]: menu item 'nope@after_conv3': unknown block plugin 'nope'",
        ),
        ([["msca@after_conv1"]] * 4, "space.stage_menus[0]: menu item 'msca@after_conv1': "),
        ([["dsm@after_conv2:bias=maybe"]] * 4, "bias=maybe is not allowed (allowed: False, True)"),
        ([["se@after_conv3:x2"]] * 4, "'x2' is neither r<int> nor an option of 'se'"),
        ([["se@after_conv3", "se@after_conv3:r16"]] * 4, "is the same choice as"),
        ([["aff@fusion"]] * 4, "unknown block plugin 'aff'"),
        ("none", "space.stage_menus: expected a list of per-stage lists"),
        ([[1]] * 4, "space.stage_menus[0]: expected a list of menu items"),
    ],
)
def test_bad_menus_are_one_line_user_errors(menus, message):
    with pytest.raises(UserError) as e:
        space.SpaceSpec.from_dict({"backbone": "resnet50", "stage_menus": menus})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_menus_refuse_the_keys_they_replace():
    with pytest.raises(UserError, match="space.stage_menus: replaces space.r"):
        space.SpaceSpec.from_dict({"backbone": "resnet50", "stage_menus": [["none"]] * 4, "r": [2]})


def test_bad_menu_in_a_config_is_exit_2(tmp_path):
    text = (
        (REPO / "studies/configs/placement_table.toml")
        .read_text()
        .replace('"se@after_conv3:r16"', '"se@nowhere"', 1)
    )
    (tmp_path / "bad.toml").write_text(text)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "studies.run",
            str(tmp_path / "bad.toml"),
            "--backend",
            "table",
            "--out",
            str(tmp_path / "run"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and p.stderr.startswith(
        "error: bad.toml: [space] space.stage_menus[0]: menu item 'se@nowhere'"
    )
    assert not (tmp_path / "run").exists()


# -- the shipped tables -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["placement_table", "smoke_table"])
def test_shipped_table_loads_validates_and_holds_the_published_designs(name):
    cfg = config_mod.load(name)
    spec = cfg.space
    table = Table.load(default_csv(name), cfg)  # refuses rows of another protocol
    for key, rows in table.rows.items():
        g = Genome.from_json(rows[0]["genome"])
        assert g.key == key and space.contains(spec, g)
        assert len({r["seed"] for r in rows}) == len(rows)
        for r in rows:
            assert len(r["top1_curve"]) == table.epochs and r["top1_curve"][-1] == r["top1"]
            assert r["wall_s"] > 0 and r["flops_full"] >= r["flops_paper"] > 0
    designs = published_in_space(spec)
    assert designs, name
    for d in designs:  # generated first, so even a partial table holds them, with every seed
        assert len(table.rows.get(d.genome.key, ())) >= 2, d.name
    # the published designs open the generation order
    order = [g.key for g in generation_order(cfg)]
    assert set(order[: len({d.genome.key for d in designs})]) == {d.genome.key for d in designs}


def test_placement_table_is_complete():
    """Every genome of its space under seeds 0-3, each trained once (studies.run --backend table needs it)."""
    cfg = config_mod.load("placement_table")
    table = Table.load(default_csv("placement_table"), cfg)
    assert set(table.rows) == {g.key for g in generation_order(cfg)} and len(table.rows) == 480
    seeds = [sorted(int(r["seed"]) for r in rows) for rows in table.rows.values()]
    assert all(s == [0, 1, 2, 3] for s in seeds)
    assert all(r["status"] == "ok" for rows in table.rows.values() for r in rows)


def test_placement_table_costs_are_the_published_counts():
    """The cost model reproduces these exactly (tests/test_searchspace.py); the table carries them."""
    cfg = config_mod.load("placement_table")
    table = Table.load(default_csv("placement_table"), cfg)
    for name in ("resnet50", "dsnet50_a"):
        d = catalog.get(name)
        row = table.rows[d.genome.key][0]
        assert (row["params_paper"], row["flops_paper"]) == (
            d.counts["params"].value,
            d.counts["flops"].value,
        )


def test_table_refuses_another_protocol(tmp_path):
    cfg = config_mod.load("smoke_table")
    rows = read_rows(default_csv("smoke_table"))
    rows[0]["protocol"] = json.dumps({"fidelity": {"epochs": 99}})
    path = tmp_path / "t.csv"
    from studies.table import columns, write_rows

    write_rows(path, rows, columns(2))
    assert checksum.check(path)  # every write of a table writes its sum beside it
    with pytest.raises(UserError, match="a table holds one protocol"):
        Table.load(path, cfg)


@pytest.mark.parametrize("path", sorted((REPO / "studies/tables").glob("*.csv")), ids=lambda p: p.stem)
def test_every_shipped_table_matches_the_sha256_beside_it(path):
    # a table copied in by hand (a GPU rung's) needs one: python -c "from trainers import checksum; ..."
    assert checksum.check(path), f"{path.name}: no {checksum.sidecar(path).name} (trainers.checksum.write)"


# -- the table backend ------------------------------------------------------------------------------
def _search(cfg, storage, name, sampler="nsga2", seed=0):
    optuna.create_study(study_name=name, storage=storage, directions=["maximize", "minimize"])
    return StudySearch(
        GenomeSpace(cfg.space),
        cfg.objectives,
        name,
        storage,
        SamplerSpec(sampler, seed, 4),
        cfg.fidelity.epochs,
        {"seed": seed},
        log=lambda *_: None,
    )


def test_asha_rule_matches_successive_halving_by_hand():
    rule = ASHA(max_t=4, grace_period=1, reduction_factor=2)
    assert [m for m, _ in rule.rungs] == [4, 2, 1]
    assert rule.on_result("a", 1, {"top1": 0.5}) == CONTINUE  # first at its rung: nothing to compare with
    assert rule.on_result("b", 1, {"top1": 0.4}) == STOP  # below the median of {0.5}
    assert rule.on_result("c", 1, {"top1": 0.6}) == CONTINUE
    assert rule.on_result("a", 2, {"top1": 0.55}) == CONTINUE
    assert rule.on_result("c", 2, {"top1": 0.5}) == STOP
    assert rule.on_result("a", 3, {"top1": 0.1}) == CONTINUE  # no rung at 3


def test_simulated_clock_and_per_epoch_values_drive_early_stopping(tmp_path):
    """Sequential trials: each one's epochs reach the rule at the recorded times, in order, and a
    stopped trial ends (PRUNED) at its share of the wall time, as under Ray's ASHAScheduler."""
    cfg = config_mod.load("smoke_table")
    table = Table.load(default_csv("smoke_table"), cfg)
    seen = []

    class Recording(ASHA):
        def on_result(self, trial_id, epoch, metrics):
            seen.append((backend.clock, trial_id, epoch, metrics["top1"], metrics["wall_s"]))
            return super().on_result(trial_id, epoch, metrics)

    storage = optuna.storages.InMemoryStorage()
    backend = TableBackend(table, cfg, rule=Recording(2, 1, 2))
    backend.run(_search(cfg, storage, "s"), 12, concurrency=1)
    trials = optuna.load_study(study_name="s", storage=storage).get_trials()
    assert len(trials) == 12
    groups = []  # concurrency 1: the rule's calls come trial after trial
    for clock, tid, epoch, top1, wall in seen:
        if not groups or groups[-1][0] != tid:
            groups.append((tid, []))
        groups[-1][1].append((clock, epoch, top1, wall))
    assert len(groups) == 12
    clock = 0.0
    for t, (_, calls) in zip(sorted(trials, key=lambda t: t.number), groups):
        row = next(
            r for r in table.rows[t.user_attrs["genome_key"]] if r["seed"] == t.user_attrs["table_seed"]
        )
        epochs = 2 if t.state == TrialState.COMPLETE else 1
        assert [c[1] for c in calls] == list(range(1, epochs + 1))
        assert [c[2] for c in calls] == row["top1_curve"][:epochs]  # the recorded per-epoch top-1
        assert [c[0] for c in calls] == pytest.approx(
            [clock + row["wall_s"] * e / 2 for e in range(1, epochs + 1)]
        )
        assert t.user_attrs["sim_start_s"] == pytest.approx(clock)
        assert t.user_attrs["sim_end_s"] == pytest.approx(clock + row["wall_s"] * epochs / 2)
        assert t.user_attrs["wall_s"] == pytest.approx(row["wall_s"] * epochs / 2)
        if t.state == TrialState.COMPLETE:
            assert t.values[0] == row["top1"]
        else:
            assert t.state == TrialState.PRUNED and t.user_attrs["status"] == "pruned"
        clock = t.user_attrs["sim_end_s"]
    assert any(t.state == TrialState.PRUNED for t in trials)  # the rule did stop something


def test_concurrent_trials_interleave_on_the_clock():
    cfg = config_mod.load("smoke_table")
    table = Table.load(default_csv("smoke_table"), cfg)
    storage = optuna.storages.InMemoryStorage()
    TableBackend(table, cfg, rule=NoStopping()).run(_search(cfg, storage, "c"), 6, concurrency=2)
    trials = optuna.load_study(study_name="c", storage=storage).get_trials()
    starts = sorted(t.user_attrs["sim_start_s"] for t in trials)
    assert starts[:2] == [0.0, 0.0]  # two in flight from the start
    ends = sorted(t.user_attrs["sim_end_s"] for t in trials)
    assert starts[2] == pytest.approx(ends[0])  # a freed slot is refilled at once


def test_seed_drawn_per_trial_is_reproducible():
    cfg = config_mod.load("smoke_table")
    table = Table.load(default_csv("smoke_table"), cfg)

    def seeds():
        storage = optuna.storages.InMemoryStorage()
        TableBackend(table, cfg, rule=NoStopping(), seed=3).run(_search(cfg, storage, "r", "random", 3), 10)
        return [
            t.user_attrs["table_seed"]
            for t in optuna.load_study(study_name="r", storage=storage).get_trials()
        ]

    a = seeds()
    assert a == seeds() and len(set(a)) == 2


def test_genome_outside_the_table_is_a_clear_error():
    cfg = config_mod.load("smoke_table")
    table = Table.load(default_csv("smoke_table"), cfg)
    only = dict(list(table.rows.items())[:1])
    small = Table(table.name, table.path, only, table.epochs, table.protocol)
    storage = optuna.storages.InMemoryStorage()
    with pytest.raises(
        UserError, match=r"is not in table .*smoke_table.csv.*studies/configs/smoke_table.toml"
    ) as e:
        TableBackend(small, cfg).run(_search(cfg, storage, "m", "random", 1), 8)
    assert "\n" not in str(e.value)
    states = {t.state for t in optuna.load_study(study_name="m", storage=storage).get_trials()}
    assert TrialState.RUNNING not in states  # told FAIL before the error: the storage stays in order


def _table_study(name: str, genomes: int, out: Path, *flags: str) -> optuna.Study:
    """`studies.run NAME --backend table --asha FLAGS --out OUT` must succeed on a table of `genomes`
    genomes and write its report; returns its stored study."""
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "studies.run",
            name,
            "--backend",
            "table",
            "--asha",
            *flags,
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert f"table backend: {genomes} genomes" in p.stdout and (out / "report.html").stat().st_size > 10_000
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "study.journal"))
    )
    return optuna.load_study(study_name=name, storage=storage)


def test_table_backed_smoke_study_runs_and_reports(tmp_path):
    out = tmp_path / "run"
    trials = _table_study("smoke_table", 16, out, "--trials", "12").get_trials()
    assert len(trials) == 12 and all(t.user_attrs.get("sim_end_s") is not None for t in trials)
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    # a rerun resumes: nothing more to do; --trials 16 adds 4 more on the continued clock
    trials = _table_study("smoke_table", 16, out, "--trials", "16").get_trials()
    first_end = max(t.user_attrs["sim_end_s"] for t in trials if t.number < 12)
    assert (
        len(trials) == 16
        and min(t.user_attrs["sim_start_s"] for t in trials if t.number >= 12) >= first_end - 1e-9
    )


def test_placement_table_backed_study_finds_a_front_in_seconds(tmp_path):
    """The shipped 480-genome table answers a whole NSGA-II study under Pareto-aware early stopping."""
    study = _table_study("placement_table", 480, tmp_path / "run")
    trials = study.get_trials()
    assert len(trials) == config_mod.load("placement_table").budget.trials
    assert any(t.state == TrialState.PRUNED for t in trials)  # the rule stopped some on recorded epochs
    assert study.best_trials and all(t.state == TrialState.COMPLETE for t in study.best_trials)


@pytest.mark.parametrize(
    "backend, message",
    [
        ("tabel", "--backend 'tabel': expected ray, table or table:PATH"),
        ("table:/nonexistent/t.csv", "table '/nonexistent/t.csv': no such file"),
    ],
)
def test_bad_backend_is_exit_2(tmp_path, backend, message):
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "studies.run",
            "smoke_table",
            "--backend",
            backend,
            "--out",
            str(tmp_path / "run"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and message in p.stderr and p.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--genomes", "resnet18,not_a_genome"],
            "--genomes: not_a_genome not in the space of table 'smoke_table'",
        ),
        (["--genomes", "dsnet50_a"], "--genomes: dsnet50_a not in the space"),  # a design of another space
        (["--seeds", "0"], "--seeds: expected an integer >= 1"),
    ],
)
def test_bad_build_flags_are_exit_2(tmp_path, flags, message):
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "studies.table",
            "build",
            "smoke_table",
            *flags,
            "--out",
            str(tmp_path / "run"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and message in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert not (tmp_path / "run").exists()


def test_table_of_another_protocol_is_refused_by_the_backend(tmp_path):
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "studies.run",
            "smoke_table",
            "--backend",
            "table",
            "--epochs",
            "3",
            "--out",
            str(tmp_path / "run"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and "a table holds one protocol" in p.stderr


@pytest.mark.slow
def test_build_trains_missing_rows_and_resumes_from_the_csv(tmp_path):
    """A real build (Ray Tune, journal storage) of 2 genomes x 2 seeds, then a rebuild from the CSV alone."""
    csv_path = tmp_path / "t.csv"
    args = [
        sys.executable,
        "-m",
        "studies.table",
        "build",
        "smoke_table",
        "--limit",
        "2",
        "--seeds",
        "2",
        "--csv",
        str(csv_path),
    ]
    p = subprocess.run(
        [*args, "--out", str(tmp_path / "a")], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, p.stderr
    rows = read_rows(csv_path)
    assert sorted((r["genome_key"], r["seed"]) for r in rows) == sorted(
        (g.key, str(s)) for g in generation_order(config_mod.load("smoke_table"))[:2] for s in (0, 1)
    )
    assert rows[0]["top1_e1"] and rows[0]["torch"] and rows[0]["design"] == "resnet18"
    assert checksum.check(csv_path)
    by_key = {}
    for r in rows:
        by_key.setdefault(r["genome_key"], []).append(r)
    p = subprocess.run(
        [*args, "--out", str(tmp_path / "b")], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0 and "0 enqueued now, 0 waiting" in p.stdout


def test_stagewise_full_costs_equal_direct_counts():
    """The exported full-convention counts are composed stage by stage; a direct count agrees."""
    import searchspace

    cfg = config_mod.load("smoke_table")
    table = Table.load(default_csv("smoke_table"), cfg)
    rows = [r[0] for r in table.rows.values() if r[0]["menu"].count("se@") == 3]
    assert rows
    g = Genome.from_json(rows[0]["genome"])
    for conv in ("paper", "full"):
        c = searchspace.cost(g, convention=conv, resolution=224, num_classes=1000)
        assert (rows[0][f"params_{conv}"], rows[0][f"flops_{conv}"], rows[0][f"activations_{conv}"]) == (
            c.params,
            c.flops,
            c.activations,
        )


def test_a_killed_build_requeues_its_trials_with_their_seed(tmp_path):
    """recover (a dead driver's RUNNING trials) keeps the table's seed and key, so the rebuild neither
    loses the seed nor enqueues the pair twice."""
    from studies.storage import open_or_create, recover
    from studies.table import _have

    cfg = config_mod.load("smoke_table")
    spec = cfg.space
    storage = open_or_create(str(tmp_path / "study.journal"))
    study = optuna.create_study(study_name="t", storage=storage, directions=["maximize", "minimize"])
    g = generation_order(cfg)[0]
    study.enqueue_trial(space.to_params(g, spec), user_attrs={"table_seed": 1, "table_key": g.key})
    trial = study.ask()  # now RUNNING, its driver (none recorded) taken for dead
    assert space.suggest(trial, spec) == g and trial.user_attrs["table_seed"] == 1
    assert recover(storage, study) == [trial.number]
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [(t.user_attrs["table_seed"], t.user_attrs["table_key"]) for t in waiting] == [(1, g.key)]
    assert _have(study) == {(g.key, 1)}


@pytest.mark.slow
def test_search_strategies_bench_runs_on_a_complete_table():
    p = subprocess.run(
        [
            sys.executable,
            "bench/search_strategies.py",
            "--config",
            "smoke_table",
            "--seeds",
            "3",
            "--samplers",
            "random,nsga2",
            "--jobs",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert "PARTIAL" not in p.stdout
    assert "18 search runs" in p.stdout  # 2 samplers x 3 stoppings x 3 seeds
    for strategy in ("random+pareto", "nsga2+asha"):
        assert any(line.startswith(f"  {strategy} ") for line in p.stdout.splitlines()), strategy
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("best=") and float(last.split("hv_at_budget_vs_random=")[1]) > 0
