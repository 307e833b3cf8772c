"""analysis: Pareto sorting and hypervolume on hand-computed cases, the study table, rediscovery on
a synthetic study whose answer is known, the report (CLI, and rendered in headless Chromium), the
dashboard push and the notebook."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial

import analysis
from analysis import (
    dominates,
    genome_distance,
    hypervolume,
    hypervolume_history,
    load_study,
    non_dominated_sort,
    pareto_front,
    rediscovery,
)
from searchspace.catalog import Design, Result
from searchspace.errors import UserError
from searchspace.genome import Genome, make_plugin, uniform

ROOT = Path(__file__).resolve().parents[1]
MAX, MIN = "maximize", "minimize"
OBJ3 = [
    {"name": "top1", "direction": MAX},
    {"name": "flops", "direction": MIN},
    {"name": "params", "direction": MIN},
]


# -- Pareto -------------------------------------------------------------------------------------
def test_sort_ties_duplicates_and_nan():
    # minimise both: (1,2) twice (duplicates share the front), (2,1) on the front, (2,2) dominated
    # by all three, (3,3) third front, NaN never ranked.
    v = [[1, 2], [1, 2], [2, 1], [2, 2], [3, 3], [np.nan, 1]]
    assert non_dominated_sort(v, [MIN, MIN]).tolist() == [0, 0, 0, 1, 2, -1]


def test_sort_mixed_directions():
    # top-1 maximised, FLOPs minimised: (0.8, 4) beats (0.7, 4) (tie on FLOPs, better top-1).
    v = [[0.8, 4.0], [0.7, 4.0], [0.75, 3.0], [0.7, 5.0], [0.9, 6.0]]
    assert non_dominated_sort(v, [MAX, MIN]).tolist() == [0, 1, 0, 2, 0]
    assert dominates([0.8, 4.0], [0.7, 4.0], [MAX, MIN]) and not dominates([0.8, 4], [0.8, 4], [MAX, MIN])


def test_sort_three_objectives():
    v = [[1, 1, 1], [0, 2, 2], [2, 0, 2], [2, 2, 0], [1, 1, 2], [2, 2, 2]]
    # (1,1,2) is dominated by (1,1,1) only; (2,2,2) by everything before it, (1,1,2) included.
    assert non_dominated_sort(v, [MIN] * 3).tolist() == [0, 0, 0, 0, 1, 2]


def test_hypervolume_2d_hand():
    pts = [[1, 3], [2, 2], [3, 1]]
    assert hypervolume(pts, [MIN, MIN], [4, 4]) == pytest.approx(6.0)  # 1*1 + 1*2 + 1*3
    assert hypervolume(pts + [[2, 2], [3, 3]], [MIN, MIN], [4, 4]) == pytest.approx(6.0)  # dup + dominated
    assert hypervolume(pts + [[5, 0]], [MIN, MIN], [4, 4]) == pytest.approx(6.0)  # outside the box
    # the same staircase with y maximised (y -> -y, reference 0)
    assert hypervolume([[1, 1], [2, 2], [3, 3]], [MIN, MAX], [4, 0]) == pytest.approx(6.0)
    assert hypervolume([], [MIN, MIN], [1, 1]) == 0.0


def test_hypervolume_3d_hand():
    # boxes of volume 4 each, pairwise overlaps 2, triple overlap 1: 12 - 6 + 1 = 7
    pts = [[0, 0, 1], [0, 1, 0], [1, 0, 0]]
    assert hypervolume(pts, [MIN] * 3, [2, 2, 2]) == pytest.approx(7.0)
    assert hypervolume([[0, 0, 0]] + pts, [MIN] * 3, [2, 2, 2]) == pytest.approx(8.0)
    # mixed: maximise the first objective (x -> -x, reference -2 becomes 2)
    assert hypervolume([[0, 0, 1], [0, 1, 0], [-1, 0, 0]], [MAX, MIN, MIN], [-2, 2, 2]) == pytest.approx(7.0)


def test_hypervolume_matches_optuna():
    from optuna._hypervolume import compute_hypervolume

    from analysis.pareto import _hso

    rng = np.random.default_rng(0)
    for m, n in ((2, 25), (3, 25), (4, 25), (2, 300), (3, 80)):
        pts = np.round(rng.random((n, m)), 1 if n < 100 else 3)  # rounding makes ties
        expect = compute_hypervolume(pts, np.full(m, 1.1))
        assert hypervolume(pts, [MIN] * m, [1.1] * m) == pytest.approx(expect)
        if m > 2:  # our own exact slicing, used when optuna's is absent or the front is small
            assert _hso(pts, np.full(m, 1.1)) == pytest.approx(expect)


# -- a synthetic study with the studies layer's schema -----------------------------------------
def se_at(stages, position="after_conv3", type_="se"):
    g = Genome("resnet50")
    for i in stages:
        g = g.with_stage(i, plugins=(make_plugin(type_, position),))
    return g.validate()


PLAIN = Genome("resnet50").validate()
SE_ALL = uniform("resnet50", make_plugin("se", "after_conv3"))
SE_S4 = se_at([3])
MSCA_S4 = se_at([3], type_="msca")
MSCA_ALL = uniform("resnet50", make_plugin("msca", "after_conv3"))
R18_SE = uniform("resnet18", make_plugin("se", "after_add"))


def design(name, genome, top1=None, flops=None, params=None):
    """A catalog Design with one printed accuracy row (none without top1)."""
    rows = (Result(top1, None, "synthetic", params, flops),) if top1 is not None else ()
    return Design(name, genome, "synthetic", results=rows)


DESIGNS = [
    design("se_all", SE_ALL, 77.0, 4.11e9, 28.1e6),
    design("se_s4", SE_S4, 76.8, 4.11e9, 26.5e6),
    design("msca_all", MSCA_ALL, 77.5, 4.112e9, 28.07e6),
    design("r18_se", R18_SE, 71.2, 1.8e9, 11.8e6),
    design("msca_s4", MSCA_S4),
]


def _trial(genome, values, state=TrialState.COMPLETE, reference=None, wall=60.0, **extra):
    ua = {
        "genome": genome.to_json(),
        "genome_key": genome.key,
        "fidelity": {"epochs": 5, "resolution": 64},
        "status": {TrialState.COMPLETE: "ok", TrialState.PRUNED: "pruned", TrialState.FAIL: "error"}[state],
        "wall_s": wall,
        "reference": reference,
        "seed": 0,
    }
    ua.update(extra)
    if values is not None:
        ua.update(zip(("top1", "flops", "params"), values))
    return create_trial(state=state, values=values if state == TrialState.COMPLETE else None, user_attrs=ua)


SEARCHED = [  # (genome, (top1, flops, params))
    (PLAIN, (0.70, 4.10e9, 25.5e6)),
    (SE_ALL, (0.78, 4.11e9, 28.1e6)),  # the se_all design itself: equals its reference result
    (MSCA_S4, (0.76, 4.105e9, 26.0e6)),  # dominates se_s4's reference result
    (se_at([0, 1]), (0.72, 4.12e9, 26.0e6)),
    (se_at([2], "after_conv2"), (0.73, 4.2e9, 27.0e6)),
]
REFERENCES = [
    (SE_ALL, (0.78, 4.11e9, 28.1e6), "se_all"),
    (SE_S4, (0.72, 4.106e9, 26.5e6), "se_s4"),
    (MSCA_ALL, (0.80, 4.112e9, 28.07e6), "msca_all"),
]


def make_run(tmp: Path, name="synth", objectives=OBJ3, searched=SEARCHED, references=REFERENCES) -> Path:
    run = tmp / name
    run.mkdir(parents=True)
    (run / "config.toml").write_text(f'name = "{name}"\n')
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(run / "study.journal")))
    dirs = [o["direction"] for o in objectives]
    attrs = {
        "objectives": objectives,
        "config": {"name": name},
        "fidelity": {"epochs": 5},
        "target": {"backbone": "resnet50", "resolution": 224, "num_classes": 1000, "convention": "paper"},
    }
    study = optuna.create_study(study_name=name, storage=storage, directions=dirs)
    refs = optuna.create_study(study_name=name + ".references", storage=storage, directions=dirs)
    for s in (study, refs):
        for k, v in attrs.items():
            s.set_user_attr(k, v)
    n = len(objectives)
    for g, vals in searched:
        study.add_trial(_trial(g, list(vals[:n])))
    study.add_trial(_trial(se_at([1]), None, TrialState.PRUNED, epochs_completed=2))
    study.add_trial(_trial(se_at([2]), None, TrialState.FAIL, error="CUDA out of memory"))
    # diverged: stored COMPLETE at chance level and cheapest of all, yet never on a front
    study.add_trial(_trial(se_at([0], "after_conv1"), [0.1, 4.0e9, 25.5e6][:n], status="diverged"))
    for g, vals, ref in references:
        refs.add_trial(_trial(g, list(vals[:n]), reference=ref))
    return run


@pytest.fixture
def run_dir(tmp_path):
    return make_run(tmp_path)


# -- load ---------------------------------------------------------------------------------------
def test_load_study_table(run_dir):
    df = load_study(run_dir)
    assert df.attrs["study_name"] == "synth" and [o["name"] for o in df.attrs["objectives"]] == [
        "top1",
        "flops",
        "params",
    ]
    assert (df["study"] == "search").sum() == 8 and (df["study"] == "reference").sum() == 3
    assert df.groupby("state").size().to_dict() == {"COMPLETE": 9, "FAIL": 1, "PRUNED": 1}
    row = df[(df["study"] == "search") & (df["number"] == 2)].iloc[0]
    assert (row["s4.plugin"], row["s4.position"], row["s4.r"], row["s1.plugin"]) == (
        "msca",
        "after_conv3",
        16,
        "none",
    )
    assert row["s4.fusion"] == "none" and row["s4.kw"] is None and row["fidelity.epochs"] == 5
    assert row["top1"] == 0.76 and "s4 msca@after_conv3 r16" in row["genome_summary"]
    assert df[df["state"] == "FAIL"].iloc[0]["error"] == "CUDA out of memory"
    assert df["datetime_complete"].notna().all() and df["wall_s"].sum() == 660.0


def test_load_errors(tmp_path, run_dir):
    with pytest.raises(UserError, match="no study storage"):
        load_study(tmp_path / "nowhere")
    with pytest.raises(UserError, match="no study 'other'.*synth"):
        load_study(run_dir, "other")
    with pytest.raises(UserError, match="no SQLite database"):
        load_study(f"sqlite:///{tmp_path}/missing.db")
    assert not (tmp_path / "missing.db").exists()
    assert load_study(run_dir / "study.journal", "synth").attrs["study_name"] == "synth"


def test_load_rdb_url_and_newest_run(run_dir, tmp_path):
    url = f"sqlite:///{tmp_path / 'copy.db'}"
    src = analysis.open_storage(run_dir)
    for name in ("synth", "synth.references"):
        optuna.copy_study(from_study_name=name, from_storage=src, to_storage=url)
    a, b = load_study(run_dir), load_study(url)  # the only searched study: found without a name
    assert b.attrs["study_name"] == "synth" and a.drop(
        columns=["datetime_start", "datetime_complete"]
    ).equals(b.drop(columns=["datetime_start", "datetime_complete"]))
    runs = tmp_path / "runs"
    old, new = runs / "old", runs / "new"
    for d, t in ((old, 1_000), (new, 2_000)):
        d.mkdir(parents=True)
        (d / "study.journal").write_text("")
        os.utime(d / "study.journal", (t, t))
    assert analysis.newest_run_dir([tmp_path / "none", runs]) == new
    with pytest.raises(UserError, match="PARETO_RUN_DIR"):
        analysis.newest_run_dir([tmp_path / "none"])


def test_front_and_history(run_dir):
    df = load_study(run_dir)
    front = pareto_front(df)
    # plain is the cheapest, se_all the most accurate, msca_s4 between; msca_s4 dominates the other
    # two (se_at([0, 1]) ties it on params but loses on top-1 and FLOPs).
    assert sorted(front["number"]) == [0, 1, 2]
    hist = hypervolume_history(df)
    assert list(hist["number"]) == list(range(8))
    assert (np.diff(hist["hypervolume"]) >= 0).all()
    assert list(hist["cumulative_wall_s"]) == [60.0 * (k + 1) for k in range(8)]
    done = df[(df["study"] == "search") & (df["state"] == "COMPLETE")]
    ref = analysis.reference_point(df)
    assert ref.tolist() == [0.70, 4.2e9, 28.1e6]  # worst observed per objective
    assert hist["hypervolume"].iloc[-1] == pytest.approx(
        hypervolume(done[["top1", "flops", "params"]].to_numpy(), [MAX, MIN, MIN], ref)
    )
    assert hist["hypervolume"].iloc[0] == 0.0  # the first point is worst in top-1: no volume
    box = (0.78 - 0.70) * (4.2e9 - 4.10e9) * (28.1e6 - 25.5e6)  # best observed .. reference point
    assert hist["hypervolume_normalized"].iloc[-1] == pytest.approx(hist["hypervolume"].iloc[-1] / box)
    assert 0 < hist["hypervolume_normalized"].iloc[-1] < 1 and not hist.attrs["subsampled"]
    # a roomier box: trials 0, 1, 2 each change the front; 3 changes > 2 evaluations -> thinned, still exact
    box_ref = [0.6, 5e9, 30e6]
    full, few = (hypervolume_history(df, reference_point=box_ref, max_evaluations=k) for k in (300, 2))
    assert few.attrs["subsampled"] and list(few["number"]) == [0, 7] and not full.attrs["subsampled"]
    assert few["hypervolume"].tolist() == full["hypervolume"].iloc[[0, 7]].tolist()
    assert full["hypervolume"].iloc[-1] == pytest.approx(
        hypervolume(done[["top1", "flops", "params"]].to_numpy(), [MAX, MIN, MIN], box_ref)
    )


# -- rediscovery --------------------------------------------------------------------------------
def test_genome_distance():
    n = 3 + 7 * 4
    assert genome_distance(SE_ALL, SE_ALL.to_json()) == 0.0
    assert genome_distance(SE_S4, MSCA_S4) == pytest.approx(1 / n)  # only the plugin type differs
    assert genome_distance(PLAIN, SE_S4) == pytest.approx(4 / n)  # type, position, r, options of stage 4
    assert genome_distance(SE_ALL, R18_SE) == 1.0
    assert genome_distance(SE_S4, se_at([3], "after_conv2")) == pytest.approx(1 / n)


def _json_distance(a: str, b: str) -> float:
    """The distance of analysis.rediscovery's docstring computed from stored JSON, as analysis did before
    Genome.distance_fields: the reference the view is held to."""

    def canon(x):
        return json.dumps(x, sort_keys=True)

    def module(p):
        return (None,) if not p else (p.get("type"), p.get("r"), canon(p.get("options") or {}))

    def stage(st):
        ps = st.get("plugins") or []
        return (
            tuple(p["type"] for p in ps),
            tuple(p["position"] for p in ps),
            tuple(p["r"] for p in ps),
            tuple(canon(p.get("options") or {}) for p in ps),
            module(st.get("fusion")),
            module(st.get("stage_module")),
            st.get("kw"),
        )

    da, db = json.loads(a), json.loads(b)
    if da["backbone"] != db["backbone"] or len(da["stages"]) != len(db["stages"]):
        return 1.0
    diff = sum(da[k] != db[k] for k in ("stem", "downsampling")) + (
        canon(da["kw_options"]) != canon(db["kw_options"])
    )
    diff += sum(u != v for x, y in zip(da["stages"], db["stages"]) for u, v in zip(stage(x), stage(y)))
    return diff / (3 + 7 * len(da["stages"]))


def test_genome_distance_equals_the_json_distance_on_catalog_and_sampled_genomes():
    from searchspace import catalog, space
    from studies import config as config_mod

    genomes = [d.genome for d in catalog.designs()]
    for name in ("imagenet_subset", "resnet18_fusion", "sda", "kernelwarehouse", "downsampling"):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        genomes += [space.suggest(study.ask(), config_mod.load(name).space) for _ in range(6)]
    texts = [g.to_json() for g in genomes]
    got = [[genome_distance(a, b) for b in texts] for a in genomes]
    assert got == [[_json_distance(a, b) for b in texts] for a in texts]
    assert len({d for row in got for d in row}) > 10  # far from all-or-nothing


def test_genome_views_of_catalog_designs():
    from searchspace import catalog

    def flat_stage(g, i):
        return [g.flat()[f"s{i}.{k}"] for k in ("plugin", "position", "r", "fusion", "stage_module", "kw")]

    dsnet, msaf = catalog.get("dsnet50_a").genome, catalog.get("msaf_resnet18_r4").genome
    sda, kw = catalog.get("sda_resnet86").genome, catalog.get("kw_resnet50_1d2x").genome
    assert dsnet.summary() == "resnet50 | s1 - | s2 - | s3 - | s4 dsm@after_conv2 r2"
    assert catalog.get("resnet50_d").genome.summary() == "resnet50 deep avgdown | s1 - | s2 - | s3 - | s4 -"
    assert msaf.summary() == "resnet18 | s1 msaf r4 | s2 msaf r4 | s3 msaf r4 | s4 msaf r4"
    assert sda.summary().endswith("| s4 sda r16") and kw.summary().endswith("| s4 kw b=0.5")
    assert (
        list(dsnet.flat())[:4] == ["backbone", "stem", "downsampling", "s1.plugin"]
        and len(dsnet.flat()) == 3 + 6 * 4
    )
    assert flat_stage(dsnet, 1) == ["none", None, None, "none", "none", None]
    assert flat_stage(dsnet, 4) == ["dsm", "after_conv2", 2, "none", "none", None]
    assert (
        flat_stage(msaf, 2)[3] == "msaf(r=4)"
        and flat_stage(sda, 3)[4] == "sda(r=16)"
        and flat_stage(kw, 1)[5] == 0.5
    )
    assert [st.placements() for st in sda.stages][0] == ["sda@stage_module"]
    assert msaf.stages[0].placements() == ["msaf@fusion"] and dsnet.stages[0].placements() == ["none"]
    assert (
        len(dsnet.distance_fields()) == 3 + 7 * 4
        and len(catalog.get("mobilenetv3_large_cifar").genome.distance_fields()) == 3 + 7 * 5
    )


def test_a_stored_genome_with_a_plugin_this_process_lacks_is_still_shown():
    text = SE_S4.to_json().replace('"se"', '"gate_from_elsewhere"')
    with pytest.raises(UserError, match="unknown plugin 'gate_from_elsewhere'"):
        Genome.from_json(text)
    assert (
        analysis.genome_summary(text)
        == "resnet50 | s1 - | s2 - | s3 - | s4 gate_from_elsewhere@after_conv3 r16"
    )
    assert analysis.flatten_genome(text)["s4.plugin"] == "gate_from_elsewhere"
    assert analysis.genome_summary(None) == "(no genome)" and analysis.flatten_genome("{not json") == {}


def test_rediscovery_known_answer(run_dir):
    red = rediscovery(load_study(run_dir), DESIGNS).set_index("design")
    assert "r18_se" not in red.index  # other backbone: outside the space
    assert red.loc["se_all", "verdict"] == "matched within noise" and red.loc["se_all", "equalled_by"] == [1]
    assert red.loc["se_all", "sampled"] == [1] and red.loc["se_all", "nearest_distance"] == 0.0
    assert red.loc["se_s4", "verdict"] == "beaten" and red.loc["se_s4", "best_dominating"] == 2
    assert red.loc["se_s4", "nearest_trial"] == 2 and red.loc["se_s4", "sampled"] == []
    assert red.loc["msca_all", "verdict"] == "missed" and red.loc["msca_all", "top1_proxy"] == 0.80
    assert red.loc["msca_s4", "verdict"] == "not evaluated" and red.loc["msca_s4", "sampled"] == [2]
    assert red.loc["se_s4", "published_top1"] == 76.8
    assert (red["noise"] == "none").all() and (
        red["top1_tolerance"] == 0
    ).all()  # no calibration, one seed each


def _store_calibration(run: Path, pooled: float) -> None:
    """A '<study>.calibration' summary as studies.calibrate stores it: 3 designs x 3 seeds whose
    seed std is `pooled`, under the study's fidelity."""
    from analysis.calibration import noise

    runs = {d: [m - pooled, m, m + pooled] for d, m in (("a", 0.70), ("b", 0.74), ("c", 0.78))}
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(run / "study.journal")))
    cal = optuna.create_study(study_name="synth.calibration", storage=storage, directions=[MAX, MIN, MIN])
    cal.set_user_attr(
        "summary", {"protocols": {"study": {"fidelity": {"epochs": 5}, "noise": noise(runs).to_dict()}}}
    )


@pytest.mark.parametrize("pooled, verdict", [(0.005, "beaten"), (0.03, "matched within noise")])
def test_verdict_flips_from_beaten_to_matched_as_the_noise_grows(tmp_path, pooled, verdict):
    # a searched trial at the design's exact costs, 0.03 higher on top-1
    run = make_run(
        tmp_path,
        searched=[(MSCA_S4, (0.75, 4.106e9, 26.5e6))],
        references=[(SE_S4, (0.72, 4.106e9, 26.5e6), "se_s4")],
    )
    _store_calibration(run, pooled)
    df = load_study(run)
    red = rediscovery(df, DESIGNS[:2]).set_index("design")
    # resolvable difference of two single runs: t(0.975, 6 df) * pooled * sqrt(2)
    assert red.loc["se_s4", "top1_tolerance"] == pytest.approx(2.446912 * pooled * 2**0.5, rel=1e-5)
    assert red.loc["se_s4", "noise"].startswith("calibration (9 runs")
    assert red.loc["se_s4", "verdict"] == verdict
    assert red.loc["se_all", "verdict"] == "not evaluated"
    assert rediscovery(df, DESIGNS[:2], noise=None).set_index("design").loc["se_s4", "verdict"] == "beaten"


def test_in_space_from_space_spec():
    cfg = {"space": {"backbone": "resnet50", "plugins": ["none", "se"], "positions": ["after_conv3"]}}
    assert analysis.in_space(DESIGNS[0], cfg) == (
        True,
        "sampler can produce it",
    )  # searchspace.space.contains
    assert analysis.in_space(DESIGNS[2], cfg) == (False, "outside the [space] spec")
    assert not analysis.in_space(design("se_c2", se_at([3], "after_conv2"), 0, 0, 0), cfg)[0]
    assert not analysis.in_space(DESIGNS[3], {}, {"backbone": "resnet50"})[0]
    assert analysis.in_space(DESIGNS[2], {}, {"backbone": "resnet50"}) == (True, "backbone matches")


# -- figures, report, dashboard -----------------------------------------------------------------
def test_figures_two_objectives(tmp_path):
    objs = OBJ3[:2]
    df = load_study(make_run(tmp_path, objectives=objs, references=REFERENCES[:1]))
    fig = analysis.front_figure(df, designs=DESIGNS)
    names = [t.name for t in fig.data]
    assert "Pareto front (top1, flops)" in names and "catalog designs (proxy)" in names
    assert fig.data[names.index("Pareto front (top1, flops)")].line.shape == "hv"
    pub = [t for t in fig.data if t.legendgroup == "published"]
    assert [t.name for t in pub] == ["synthetic"]  # one trace (colour) per source / recipe
    # the study's backbone only (r18_se is a ResNet-18); msca_s4 has no published numbers
    assert list(pub[0].text) == ["se_all", "se_s4", "msca_all"] and pub[0].yaxis == "y2"
    labels = [a for a in fig.layout.annotations if (a.name or "").startswith("label:")]
    assert sorted(a.text for a in labels) == [
        "msca_all",
        "se_all",
        "se_all",
        "se_s4",
    ]  # 1 proxy + 3 published
    assert analysis.front3d_figure(df) is None
    heat = analysis.stage_map_figure(df).data[0]
    assert "none" in heat.y


def test_short_source_names():
    from analysis.plots import short_source

    dsnet = "seed DSNet-ImageNet-COCO (mmpretrain configs)"
    assert short_source(dsnet) == "DSNet-ImageNet-COCO"
    assert short_source("SDA-xNet README / paper table (SENet-50 row)") == "SDA-xNet README"
    assert short_source("ResNet-50 V1C: deep stem, stride on the 3x3") == "ResNet-50 V1C"
    # two recipes of one repository stay apart
    assert short_source(dsnet + ", no AMP", [dsnet, dsnet + ", no AMP"]) == "DSNet-ImageNet-COCO, no AMP"


def test_parallel_axes_varying_on_the_front_first(run_dir):
    df = load_study(run_dir)
    fig = analysis.parallel_figure(df, max_axes=2)
    dims = fig.data[0].dimensions
    front = analysis.add_ranks(df, df.attrs["objectives"])
    front = front[(front["study"] == "search") & (front["front_rank"] == 0)]
    on_front = {d.label: front[d.label].map(str).nunique() for d in dims if d.label.startswith("s")}
    assert len(on_front) == 2 and min(on_front.values()) > 1, on_front  # both vary on the front
    assert [d.label for d in dims][-4:] == ["top1", "flops", "params", "on front"]
    (menu,) = fig.layout.updatemenus  # the reader can switch to every field that varies
    every = menu.buttons[1].args[0]["dimensions"][0]
    assert menu.buttons[1].label.startswith("all ") and len(every) > len(dims)
    assert analysis.parallel_figure(df, max_axes=50).layout.updatemenus == ()  # all shown: no menu


def test_empty_study_report(tmp_path):
    run = make_run(tmp_path, searched=[], references=[])
    html = analysis.build_report(load_study(run), designs=DESIGNS)
    assert "No completed searched trials yet" in html


def test_report_cli(run_dir, tmp_path):
    out = tmp_path / "r.html"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(
        [sys.executable, "-m", "analysis.report", str(run_dir), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    text = out.read_text()
    assert text.count("plotly.js v") == 1 and "<script src=" not in text  # JS inlined once, no CDN
    for div in ("front", "hv", "front3d", "stagemap", "parcoords"):
        assert f'id="{div}"' in text
    bad = subprocess.run(
        [sys.executable, "-m", "analysis.report", str(tmp_path / "nope"), "--out", str(tmp_path / "x.html")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert (
        bad.returncode == 2
        and bad.stderr.count("\n") == 1
        and bad.stderr.startswith("error: no study storage")
    )
    assert not (tmp_path / "x.html").exists() and not list(tmp_path.glob(".x.html.*"))


def test_push_to_dashboard(run_dir):
    from optuna_dashboard._custom_plot_data import get_plotly_graph_objects

    ids = analysis.push_to_dashboard(run_dir, designs=DESIGNS)
    assert ids == ["pareto-front", "rediscovery", "hypervolume"]

    def stored():  # what optuna-dashboard reads back (a fresh storage sees the journal as written)
        storage = analysis.open_storage(run_dir)
        return get_plotly_graph_objects(
            storage.get_study_system_attrs(storage.get_study_id_from_name("synth"))
        )

    figs = stored()
    assert set(figs) == set(ids) and json.loads(figs["pareto-front"])["data"]
    analysis.push_to_dashboard(run_dir, designs=DESIGNS)  # again: replaced, not duplicated
    assert stored().keys() == figs.keys() and json.loads(stored()["hypervolume"])["data"]


def test_which_to_believe_says_the_model_and_why():
    from analysis.rediscovery import which_to_believe

    stands = which_to_believe("on the model front (found again)", "missed", 500, 80, 0.026)
    assert stands.startswith("both: it stands") and "'missed'" in stands and "500 runs" in stands
    lucky = which_to_believe("on the model front (found again)", "beaten", 500, 80, 0.026)
    assert lucky.startswith("the model:") and "best of 80" in lucky and "winner's curse" in lucky
    assert "sd 0.026" in lucky
    unseen = which_to_believe("beaten by abc: +0.050 +- 0.010 at <= its FLOPs", "missed", 500, 80, 0.026)
    assert unseen.startswith("the model:") and unseen.endswith("no single run showed it")
    tie = which_to_believe("not resolved at this budget: abc +0.001 +- 0.040", "beaten", 500, 80, 0.026)
    assert tie.startswith("the model: a tie") and "'beaten'" in tie
    assert which_to_believe("no prediction: s1 never trained", "missed", 500, 80, 0.026).startswith("neither")
    assert which_to_believe("on the model front (found again)", "-", 500, 80, 0.026).startswith("the model")
    cheapest = "the cheapest design of the space: nothing at its FLOPs to compare"
    assert which_to_believe(cheapest, "missed", 500, 80, 0.026).startswith(
        "neither compares it: the cheapest"
    )


def test_report_answer_comes_first_with_contents_and_folded_tables(run_dir):
    """The model's answer (its verdict rows saying which to believe) before the single runs; a
    contents line linking every section; tables over COLLAPSE_ROWS rows folded."""
    import pandas as pd

    import effects as fx
    from analysis.report import COLLAPSE_ROWS, _table, answer_section

    e = fx.analyse(fx.runs_from_table(ROOT / "studies/tables/smoke_table.csv"))
    red = pd.DataFrame({"design": ["resnet18", "se_resnet18"], "verdict": ["missed", "beaten"]})
    answer = "".join(answer_section(e, red, 40))
    assert 'id="modelfront"' in answer and "Published designs: model verdicts" in answer
    row = answer[answer.index("<td>resnet18</td>") :].split("</tr>")[0]
    assert "the cheapest design" in row and "<td>missed</td>" in row and "neither compares it" in row
    row = answer[answer.index("<td>se_resnet18</td>") :].split("</tr>")[0]
    assert "not resolved" in row and "the model: a tie" in row

    text = analysis.build_report(load_study(run_dir), designs=DESIGNS)  # too few runs for the model
    nav = text[text.index('<nav class="toc">') : text.index("</nav>")]
    anchors = ["answer", "single", "noise", "runs"]
    assert all(f'href="#{a}"' in nav for a in anchors)
    at = [text.index(f'<h2 id="{a}"') for a in anchors]
    assert at == sorted(at) and text.index('id="front"') > at[1]  # the observed front after the answer
    assert "The effects model is not fitted" in text[at[0] : at[1]]

    assert "<details>" in _table(pd.DataFrame({"a": range(COLLAPSE_ROWS + 1)}))
    assert "<details>" not in _table(pd.DataFrame({"a": range(COLLAPSE_ROWS)}))


def test_dashboard_note_leads_with_the_answer_and_keeps_a_persons_note():
    import pandas as pd
    from optuna_dashboard import get_note, save_note

    import effects as fx
    from analysis.dashboard import NOTE_HEAD, write_answer_note

    e = fx.analyse(fx.runs_from_table(ROOT / "studies/tables/smoke_table.csv"))
    red = pd.DataFrame({"design": ["resnet18", "se_resnet18"], "verdict": ["missed", "beaten"]})
    study = optuna.create_study(directions=["maximize", "minimize"])
    assert write_answer_note(study, e, red, 40)
    note = get_note(study)
    assert note.startswith(NOTE_HEAD) and "**Model front**" in note
    row = next(ln for ln in note.splitlines() if ln.startswith("| resnet18 | "))
    assert row.count("|") == 6 and "neither compares it" in row  # five cells: no bar of a summary splits one
    front = [ln for ln in note.splitlines() if ln.startswith("| resnet18 · ")]
    assert len(front) == len(e.front) and all(ln.count("|") == 5 for ln in front)
    save_note(study, "my own notes")
    assert not write_answer_note(study, e, red, 40) and get_note(study) == "my own notes"


# -- the notebook and the report in a real browser ----------------------------------------------
@pytest.mark.slow
def test_notebook_runs(run_dir, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client.kernelspec import KernelSpecManager

    if "python3" not in KernelSpecManager().find_kernel_specs():
        # CI installs it once: python -m ipykernel install --sys-prefix
        subprocess.run(
            [sys.executable, "-m", "ipykernel", "install", "--sys-prefix"], check=True, capture_output=True
        )
    monkeypatch.setenv("PARETO_RUN_DIR", str(run_dir))
    nb = nbformat.read(ROOT / "notebooks" / "pareto.ipynb", as_version=4)
    nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(ROOT / "notebooks")}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs) + "".join(
        str(o.get("data", {}).get("text/plain", "")) for o in outputs
    )
    assert "synth" in text and any("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs)


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
@pytest.mark.skipif(
    _chromium() is None, reason="chromium is not installed (CI installs the Debian package 'chromium')"
)
def test_report_renders_in_chromium(run_dir, tmp_path):
    from PIL import Image

    out = analysis.write_report(run_dir, out_path=tmp_path / "report.html", designs=DESIGNS)
    flags = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=15000",
        "--window-size=1280,2000",
    ]

    def dump(page: Path):
        p = subprocess.run(flags + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180)
        assert p.returncode == 0, p.stderr[-2000:]
        # Page console lines are logged as ":CONSOLE:"; script errors read "Uncaught TypeError: ...".
        return p.stdout, [
            line
            for line in p.stderr.splitlines()
            if ":CONSOLE" in line and ("Uncaught" in line or "Error" in line)
        ]

    bad = tmp_path / "bad.html"  # the check itself must see a script error
    bad.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    assert dump(bad)[1]
    dom, errors = dump(out)
    assert not errors, errors
    # Every figure div was drawn by plotly (a drawn plot has the 'js-plotly-plot' class and an <svg>).
    for div in ("front", "hv", "front3d", "stagemap", "parcoords"):
        start = dom.index(f'id="{div}"')
        assert "js-plotly-plot" in dom[start - 200 : start + 400], div
    assert dom.count("main-svg") >= 5
    # The contents line links the answer first; the single runs come after it on the page.
    assert (
        dom.index('<nav class="toc">')
        < dom.index('id="answer"')
        < dom.index('id="single"')
        < dom.index('id="front"')
    )
    shot = tmp_path / "report.png"
    p = subprocess.run(
        flags + [f"--screenshot={shot}", out.as_uri()], capture_output=True, text=True, timeout=180
    )
    assert p.returncode == 0 and shot.exists(), p.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape == (2000, 1280) and img.std() > 10  # not a blank page
    if os.environ.get("ANALYSIS_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["ANALYSIS_KEEP_SCREENSHOT"])


# After plotly has drawn the page: the bounding box of every point label (annotations named
# "label:...") of the front figure, and of the figure's SVG, written into the DOM for --dump-dom.
MEASURE_LABELS = """<script>window.addEventListener("load", () => setTimeout(() => {
  const gd = document.getElementById("front"), out = {labels: [], svg: null};
  const box = r => ({l: r.left, t: r.top, r: r.right, b: r.bottom});
  gd.querySelectorAll("g.annotation").forEach(g => {
    const a = gd.layout.annotations[+g.getAttribute("data-index")];
    if (a && String(a.name || "").startsWith("label:"))
      out.labels.push({text: a.text, yref: a.yref, ...box(g.querySelector("text").getBoundingClientRect())});
  });
  out.svg = box(gd.querySelector("svg.main-svg").getBoundingClientRect());
  const pre = document.createElement("pre");
  pre.id = "label-boxes";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}, 500));</script>"""


def _label_boxes(page: Path, tmp_path: Path) -> dict:
    import html as html_mod
    import re

    measured = page.with_name(page.stem + "-measured.html")
    measured.write_text(page.read_text().replace("</body>", MEASURE_LABELS + "</body>"))
    p = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile-labels'}",
            "--virtual-time-budget=15000",
            "--window-size=1300,2000",
            "--dump-dom",
            measured.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    m = re.search(r'<pre id="label-boxes">(.*?)</pre>', p.stdout, re.S)
    assert m, p.stderr[-2000:]
    return json.loads(html_mod.unescape(m.group(1)))


def _overlapping(labels: list[dict]) -> list[tuple[str, str]]:
    return [
        (a["text"], b["text"])
        for i, a in enumerate(labels)
        for b in labels[i + 1 :]
        if a["l"] < b["r"] and b["l"] < a["r"] and a["t"] < b["b"] and b["t"] < a["b"]
    ]


@pytest.mark.slow
@pytest.mark.skipif(
    _chromium() is None, reason="chromium is not installed (CI installs the Debian package 'chromium')"
)
def test_report_labels_do_not_overlap_in_chromium(run_dir, tmp_path):
    """The front figure's labels as Chromium draws them at 1300 px: the catalog's published
    ResNet-50 rows (three at 4.11 G) and the proxy references, no two boxes overlapping, all
    inside the figure."""
    import plotly.graph_objects as go

    control = tmp_path / "control.html"  # the measurement must see an overlap where there is one
    fig = go.Figure(go.Scatter(x=[1, 2], y=[1, 2]))
    for name in ("a", "b"):
        fig.add_annotation(x=1, y=1, text=f"label {name}", name=f"label:{name}")
    control.write_text(fig.to_html(include_plotlyjs=True, div_id="front"))
    assert _overlapping(_label_boxes(control, tmp_path)["labels"]) == [("label a", "label b")]

    out = analysis.write_report(run_dir, out_path=tmp_path / "report.html")  # the real catalog
    boxes = _label_boxes(out, tmp_path)
    published = [b for b in boxes["labels"] if b["yref"] == "y2"]
    assert len(published) >= 8 and [b["text"] for b in published].count("resnet50") == 3, boxes["labels"]
    assert len(boxes["labels"]) == len(published) + 3  # and the three proxy references
    assert not _overlapping(boxes["labels"]), _overlapping(boxes["labels"])
    svg = boxes["svg"]
    assert all(
        svg["l"] <= b["l"] and b["r"] <= svg["r"] and svg["t"] <= b["t"] and b["b"] <= svg["b"]
        for b in boxes["labels"]
    )


def test_front_error_bars_and_report_noise_section(tmp_path):
    run = make_run(tmp_path)
    plain = load_study(run)
    assert all(t.error_y.value is None for t in analysis.front_figure(plain, designs=DESIGNS).data)
    assert "No noise measurement" in analysis.build_report(plain, DESIGNS)
    _store_calibration(run, 0.02)
    df = load_study(run)
    fig = analysis.front_figure(df, designs=DESIGNS)
    barred = {t.name for t in fig.data if t.error_y.value is not None}
    assert {"searched trials", "catalog designs (proxy)"} <= barred
    assert all(t.error_y.value == pytest.approx(0.02) for t in fig.data if t.name in barred)
    html_text = analysis.build_report(df, DESIGNS)
    assert "pooled seed std 0.0200" in html_text and "calibration (9 runs of 3 designs)" in html_text
    assert "16/8/4/2 at the proxy" not in html_text  # the synthetic fidelity has no resolution


def test_optuna_private_hypervolume_adapter_is_there():
    """analysis.pareto uses optuna's private exact WFG (no public one exists in Optuna 5) only as a
    faster path for large 3+-objective fronts; if an upgrade moves it, say so here, loudly."""
    from analysis import pareto

    assert pareto._wfg is not None, (
        "optuna._hypervolume.compute_hypervolume is gone: update analysis/pareto.py"
    )
    pts = np.random.default_rng(0).random((40, 3))
    assert pareto._wfg(pts, np.ones(3)) == pytest.approx(pareto._hso(pts, np.ones(3)))
