"""Issue 14: scoped study configs, cost constraints, one-edit seeding, Pareto-aware early stopping,
and the references the main job evaluates by default."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
from optuna.trial import TrialState

from searchspace import catalog, space
from searchspace.cli import cli_main
from searchspace.errors import UserError
from studies import config

SCOPED = {  # config -> the published designs it must contain
    "dsnet": {"resnet50", "dsnet50_a", "dsnet50_b", "dsnet50_c"},
    "attention": {"resnet50", "se_resnet50", "fcanet50"},
    "kernelwarehouse": {"resnet50", "kw_resnet50_1x", "kw_resnet50_4x"},
    "sda": {"sda_resnet86"},
    "downsampling": {"resnet50", "resnet50_v1c", "resnet50_d"},
    "resnet18_fusion": {
        "resnet18",
        "se_resnet18",
        "msa_resnet18_r16",
        "msa_resnet18_r4",
        "msaf_resnet18_r16",
        "msaf_resnet18_r4",
        "aff_resnet18_r4",
        "iaff_resnet18_r4",
    },
}


@pytest.mark.parametrize("name", sorted(SCOPED))
def test_scoped_config_contains_its_designs_and_counts_right(name):
    cfg = config.load(name)
    spec = cfg.space
    inside = {d.name for d in catalog.designs() if space.contains(spec, d.genome)}
    assert SCOPED[name] <= inside
    assert cfg.references.evaluate and cfg.references.neighbours > 0
    n = space.count(spec)
    if n <= 1000:  # enumeration is feasible: the printed size is the number of distinct genomes
        assert len(space.enumerate_genomes(spec, limit=1000)) == n
    for d in SCOPED[name]:  # every design's one-edit variants stay inside and are one parameter away
        for g in space.neighbours(catalog.get(d).genome, spec):
            assert space.contains(spec, g) and g.key != catalog.get(d).genome.key


def test_list_prints_every_shipped_study_with_size_and_designs(capsys):
    from studies.run import main

    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in config.shipped():
        cfg = config.load(name)
        line = next(ln for ln in out.splitlines() if ln.startswith(name + " "))
        assert f"{space.count(cfg.space):,} genomes" in line and cfg.description in line
    assert "designs: resnet50, resnet50_v1c, resnet50_d" in out  # downsampling's


def test_study_is_required_without_list(capsys):
    from studies.run import main

    with pytest.raises(SystemExit) as e:
        cli_main(lambda: main([]))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: give a study") and "--list" in err[0]


@pytest.mark.parametrize(
    "bad, msg",
    [
        ({"constraints": {"flops_max": "1.1 x nosuch"}}, "unknown catalog design 'nosuch'"),
        ({"constraints": {"flops_max": "fast"}}, "constraints.flops_max: expected a positive number"),
        ({"constraints": {"flops_max": -3}}, "constraints.flops_max: expected a positive number"),
        ({"constraints": {"latency_max": 3}}, "[constraints] unknown key 'latency_max'"),
        ({"references": {"evaluate": "yes"}}, "references.evaluate: expected true or false"),
        ({"early_stopping": {"rule": "hv"}}, "early_stopping.rule 'hv' unknown"),
        (
            {"sampler": {"name": "cmaes"}},
            "sampler.name 'cmaes' unknown (known: nsga2, tpe, gp, random, designed)",
        ),
    ],
)
def test_bad_new_config_fields_are_one_line_errors(bad, msg):
    doc = {"space": {"backbone": "resnet18"}, **bad}
    with pytest.raises(UserError) as e:
        config.from_dict(doc, "x")
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_limit_relative_to_a_design():
    assert config.parse_limit("1.10 x resnet50") == (1.10, "resnet50")
    assert config.parse_limit(4.5e9) == (4.5e9, None)


# -- constraints ---------------------------------------------------------------------------------
def _constrained_searcher(tmp_path, limit: str):
    """A StudySearch over a ResNet-18 space with padding-free downsampling and SE, params_max = limit."""
    from studies import driver
    from studies.search import GenomeSpace, SamplerSpec, StudySearch

    cfg = config.from_dict(
        {
            "space": {
                "backbone": "resnet18",
                "downsampling": ["v1.5", "padding_free"],
                "plugins": ["none", "se"],
                "r": [16],
            },
            "target": {"resolution": 64},
            "fidelity": {"resolution": 64, "epochs": 1},
            "constraints": {"params_max": limit},
        },
        "c",
    )
    url = str(tmp_path / "study.journal")
    study = optuna.create_study(
        study_name="c",
        directions=["maximize", "minimize"],
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url)),
    )
    limits = driver.cost_limits(cfg)
    s = StudySearch(
        GenomeSpace(cfg.space),
        cfg.objectives,
        "c",
        url,
        SamplerSpec("tpe", 0),
        epochs=1,
        attrs={"fidelity": cfg.protocol["fidelity"], "seed": 0, "reference": None},
        log=lambda m: None,
        limits=limits,
        max_skips=2,
    )
    return cfg, study, s, limits


def test_constraint_excludes_a_genome_before_training(tmp_path):
    """A genome over params_max (fewer FLOPs than the feasible one: it would be on an unconstrained
    front) is stored infeasible with its costs and Optuna constraints, never handed to Ray, not counted,
    and kept off the front; the searcher hands Ray the next, feasible genome instead."""
    from searchspace import Genome, cost, make_plugin
    from studies import storage as st

    cfg, study, s, limits = _constrained_searcher(tmp_path, "1.0 x resnet18")
    from searchspace.genome import Stage

    spec = cfg.space
    stages = (Stage(), Stage(), Stage(), Stage(plugins=(make_plugin("se", "after_conv2", 16),)))
    cheap_but_big = Genome("resnet18", stages, downsampling="padding_free").validate()
    plain = Genome("resnet18").validate()
    t = dict(convention="paper", resolution=64, num_classes=1000)
    assert cost(cheap_but_big, **t).flops < cost(plain, **t).flops
    assert cost(cheap_but_big, **t).params > cost(plain, **t).params  # over "1.0 x resnet18"
    study.enqueue_trial(space.to_params(cheap_but_big, spec))
    study.enqueue_trial(space.to_params(plain, spec))

    handed = s.suggest("ray-0")
    assert handed["trial_number"] == 1 and Genome.from_json(handed["genome"]).key == plain.key
    s.on_trial_complete(
        "ray-0",
        {
            "final": True,
            "status": "ok",
            "epochs_completed": 1,
            "top1": 0.4,
            "flops": cost(plain, **t).flops,
            "params": cost(plain, **t).params,
        },
    )
    trials = study.get_trials()
    bad, good = trials[0], trials[1]
    assert bad.state == TrialState.COMPLETE and bad.user_attrs["status"] == "infeasible"
    assert (
        bad.user_attrs["params"] == cost(cheap_but_big, **t).params
        and bad.user_attrs["flops"] == cost(cheap_but_big, **t).flops
    )
    assert bad.values == [0.0, cost(cheap_but_big, **t).flops] and bad.user_attrs["epochs_completed"] == 0
    assert "wall_s" not in bad.user_attrs and "node" not in bad.user_attrs  # never ran
    assert bad.constraints["params"] > 0 and good.constraints["params"] <= 0
    assert [x.number for x in study.best_trials] == [1]
    assert st.counted(study) == 1 and st.skipped(study) == 1 and s.skipped == [0]
    from analysis import completed, load_study

    assert list(completed(load_study(str(tmp_path / "study.journal"), "c"))["number"]) == [1]


def test_searcher_gives_up_after_max_skips(tmp_path):
    """Nothing feasible: after max_skips + 1 infeasible draws Ray is told the search is finished."""
    from ray.tune.search import Searcher

    _, study, s, _ = _constrained_searcher(tmp_path, 1.0)  # one parameter: nothing fits
    assert s.suggest("ray-0") == Searcher.FINISHED
    assert len(study.trials) == 3 and all(t.user_attrs["status"] == "infeasible" for t in study.trials)


@pytest.mark.parametrize("sampler", ["nsga2", "tpe", "gp", "random"])
def test_every_sampler_builds_seeded(sampler):
    from studies.search import SamplerSpec

    if sampler == "gp":
        pytest.importorskip("scipy", reason="Optuna's GPSampler needs scipy")
    s = SamplerSpec(sampler, seed=3, population=4).build()
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=s)

    def objective(t):  # two objectives and a constraint set the way the searcher sets them
        x, c = t.suggest_float("x", 0, 1), t.suggest_categorical("c", ["a", "b"])
        t.set_constraint("flops", x - 0.5)
        return x, float(c == "a")

    study.optimize(objective, n_trials=7)  # past the 4 start-up trials: the model-based step runs too
    assert len(study.trials) == 7 and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert study.best_trials and all(
        t.values[0] <= 0.5 for t in study.best_trials
    )  # the front is feasible only


# -- Pareto-aware early stopping ----------------------------------------------------------------
def test_pareto_rung_promotes_a_cheap_front_trial_and_stops_a_dominated_one():
    """Rung at epoch 1, eta 2. Top-1 alone would keep only 'big' of the first two (quantile 1/2);
    by non-dominated rank 'cheap' (second on top-1, fewest FLOPs) is on the rung's front: promoted.
    'dominated' (less accurate and costlier than 'big') is stopped."""
    from effects.dominance import non_dominated_sort
    from studies.asha import ParetoRungs

    rule = ParetoRungs([1, 2], eta=2, directions=["maximize", "minimize"])
    assert rule.decide("big", 1, [0.50, 4.5e9])
    assert rule.decide("cheap", 1, [0.45, 4.1e9])  # second on top-1, on the front
    assert not rule.decide("dominated", 1, [0.40, 4.6e9])
    assert not rule.decide("worse", 1, [0.30, 4.7e9])
    assert rule.decide("big", 1, [0.0, 9e9])  # a rung is decided once per trial
    assert rule.decide("any", 3, [0.0, 9e9])  # between rungs / past the last: continue
    ranks = non_dominated_sort([(-0.5, 4.5), (-0.45, 4.1), (-0.4, 4.6), (-0.3, 4.7)], ["minimize"] * 2)
    assert ranks.tolist() == [0, 0, 1, 2]
    # plain ASHA's rule on the same rung (top-1 above the 1 - 1/eta quantile) would stop 'cheap'
    import numpy as np

    assert 0.45 < np.nanpercentile([0.50, 0.45], 50)


def test_both_backends_run_the_same_rule_code():
    """The Ray backend's scheduler wraps the very rule the table backend asks (studies.asha)."""
    from ray.tune.schedulers import TrialScheduler

    from studies.asha import ASHA, NoStopping, ParetoRungs, RuleScheduler, stopping_rule
    from studies.ray_backend import scheduler

    cfg = config.load("smoke_table")
    for rule, kind in (("pareto", ParetoRungs), ("top1", ASHA)):
        es = dataclasses.replace(cfg.early_stopping, asha=True, rule=rule, grace_period=1, reduction_factor=2)
        c = dataclasses.replace(cfg, early_stopping=es)
        sched = scheduler(c)
        assert isinstance(sched, RuleScheduler) and isinstance(sched, TrialScheduler)
        assert type(sched.rule) is type(stopping_rule(c)) is kind
    assert isinstance(stopping_rule(cfg), NoStopping) and scheduler(cfg) is None

    class Trial:  # Ray hands the scheduler its Trial; the rule reads only the id
        def __init__(self, trial_id):
            self.trial_id = trial_id

    pareto = dataclasses.replace(
        cfg.early_stopping, asha=True, rule="pareto", grace_period=1, reduction_factor=2
    )
    sched = scheduler(dataclasses.replace(cfg, early_stopping=pareto))
    assert sched.rule.milestones == [1] and sched.rule.metrics == ["top1", "flops"]
    seen = [
        sched.on_trial_result(None, Trial(t), {"epochs_completed": 1, "top1": top1, "flops": flops})
        for t, top1, flops in (("big", 0.5, 4.5e9), ("cheap", 0.45, 4.1e9), ("dominated", 0.4, 4.6e9))
    ]
    assert seen == [TrialScheduler.CONTINUE, TrialScheduler.CONTINUE, TrialScheduler.STOP]


# -- end to end ----------------------------------------------------------------------------------
E2E = """
description = "smoke + references by default, a params limit, one-edit seeding, Pareto ASHA"
[space]
backbone = "resnet18"
plugins = ["none", "se"]
r = [4, 16]
[target]
resolution = 64   # cheap cost counting; the limit is relative to resnet18 at the same target
[fidelity]
epochs = 2
resolution = 32
width = 0.125
batch_size = 16
lr = 0.05
[data]
num_classes = 2
max_per_class = 8
max_val_per_class = 8
[budget]
trials = 4
concurrency = 2
[sampler]
name = "nsga2"
population = 4
[references]
evaluate = true
neighbours = 2
[constraints]
params_max = "1.004 x resnet18"   # SE in stage 4 (any r) or stage 3 at r=4 is over it
[early_stopping]
asha = true
rule = "pareto"
"""


@pytest.mark.slow
def test_default_run_names_every_design_and_never_trains_an_infeasible_genome(tmp_path, capsys):
    import ray

    from analysis import completed, load_study
    from searchspace import cost
    from studies import storage as st
    from studies.run import main

    toml = tmp_path / "e2e.toml"
    toml.write_text(E2E)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert main([str(toml), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    finally:
        ray.shutdown()
    out = capsys.readouterr().out
    storage = st.open_or_create(str(tmp_path / "run" / "study.journal"))
    ref = optuna.load_study(study_name="e2e.references", storage=storage)
    proxy = {t.user_attrs["reference"]: t.values[0] for t in ref.trials if t.state == TrialState.COMPLETE}
    assert set(proxy) == {"resnet18", "se_resnet18"}  # evaluated without --reference
    lines = out[out.index("Published designs in the space") :].splitlines()
    for name, top1 in proxy.items():  # each design on its own line with its proxy top-1
        assert any(ln.split()[:2] == [name, f"{top1:.4g}"] for ln in lines), (name, top1, lines)

    study = optuna.load_study(study_name="e2e", storage=storage)
    limit = 1.004 * cost(catalog.get("resnet18").genome, resolution=64, num_classes=1000).params
    assert st.counted(study) == 4
    assert [t.user_attrs.get("neighbour_of") for t in study.trials[:2]] != [None, None]
    for t in study.trials:
        if t.user_attrs.get("status") == "infeasible":
            assert t.user_attrs["params"] > limit and t.user_attrs["epochs_completed"] == 0
            assert "node" not in t.user_attrs and "wall_s" not in t.user_attrs
        else:
            assert t.user_attrs["params"] <= limit and t.user_attrs.get("node")
            assert t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            assert (t.state == TrialState.PRUNED) == (t.user_attrs["epochs_completed"] < 2)
    skipped = st.skipped(study)
    assert (f"skipped before training: {skipped} genome(s)" in out) == (skipped > 0)
    front = {t.number for t in study.best_trials}
    assert front and all(study.trials[n].user_attrs["status"] == "ok" for n in front)
    df = load_study(str(tmp_path / "run" / "study.journal"), "e2e")
    assert "infeasible" not in set(completed(df)["status"])


def test_gp_sampler_config_says_what_it_needs():
    import importlib.util

    doc = {"space": {"backbone": "resnet18"}, "sampler": {"name": "gp"}}
    if importlib.util.find_spec("scipy") is None:
        with pytest.raises(
            UserError, match=r'sampler.name "gp" needs scipy, which is not installed \(pip install scipy\)'
        ):
            config.from_dict(doc, "x")
    else:
        assert config.from_dict(doc, "x").sampler.name == "gp"
