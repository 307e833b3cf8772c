"""A stage coded as its parts: on the placement table a reparametrisation of the whole-stage coding
(the stored v0 answer to 1e-9); where a part is seen in several stage choices, it is estimated from all
of them and prices a stage choice never run."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from analysis import effects as effects_cli
from effects import Runs, factors_of, fit, runs_frame, runs_from_table, stage_parts
from effects.coding import SLOTS
from searchspace import Genome, Stage
from searchspace.genome import make_plugin

REPO = Path(__file__).resolve().parents[1]


def test_placement_table_effects_and_predictions_equal_the_v0_answer(capsys):
    """`python -m analysis.effects --table studies/tables/placement_table.csv --json`, in process."""
    assert effects_cli.main(["--table", str(REPO / "studies/tables/placement_table.csv"), "--json"]) == 0
    new = json.loads(capsys.readouterr().out)
    old = json.loads((REPO / "tests/data/effects_placement_v0.json").read_text())

    def by(rows, key, fields):  # v1 names the mean's interval mean_low / mean_high
        return {tuple(r[k] for k in key): [r.get(f, r.get(f"mean_{f}")) for f in fields] for r in rows}

    for section, key, fields in (
        ("effects", ("stage", "choice", "baseline"), ("estimate", "low", "high")),
        ("trials", ("genome_key",), ("predicted", "low", "high")),
        ("front", ("genome_key",), ("predicted", "low", "high")),
        ("designs", ("design",), ("predicted", "low", "high")),
    ):
        a, b = by(new[section], key, fields), by(old[section], key, fields)
        assert a.keys() == b.keys(), section
        for k in a:
            assert a[k] == pytest.approx(b[k], abs=1e-9), (section, k)
    assert new["model"]["parameters"] == old["model"]["parameters"]
    # DSNet50-A's r2 always came with its dsm:bias=True: no column of its own, named beside it.
    dsm = [p for p in new["part_effects"] if p["part"] == "s4.after_conv2" and p["choice"] == "dsm:bias=True"]
    assert dsm[0]["aliased"] == "s4.r=r2"


def test_stage_parts_read_a_label_back():
    st = Stage(
        (make_plugin("dsm", "after_conv2", 2, bias=True),),
        fusion=make_plugin("iaff", "fusion", 8),
        stage_module=make_plugin("sda", "stage", 16, min_dim=64),
        kw=1,
    )
    label = factors_of(Genome("resnet50", (st, Stage(), Stage(), Stage())))["s1"]
    assert stage_parts("s1", label) == {
        "s1.after_conv2": "dsm:bias=True",
        "s1.r": "r2",
        "s1.fusion": "iaff",
        "s1.fusion.r": "r8",
        "s1.stage": "sda:min_dim=64",
        "s1.stage.r": "r16",
        "s1.kw": "b=1",
    }
    assert stage_parts("s1", "none") == {}


# An additive truth over the parts of stages 2 and 3: module type at a position, r, KW budget.
TRUTH = {"after_conv1=se": 0.02, "after_conv2=dsm:bias=False": 0.01, "r=r4": -0.01, "kw=b=1": 0.03}


def _stage(choice, r, kw):
    plugins = (
        ()
        if choice is None
        else (make_plugin(*choice, r=r, **({"bias": False} if choice[0] == "dsm" else {})),)
    )
    return Stage(plugins, kw=kw)


def _truth(g):
    y = 0.3
    for i in (2, 3):
        for part, lv in stage_parts(f"s{i}", factors_of(g)[f"s{i}"]).items():
            y += i / 2 * TRUTH.get(f"{part.split('.', 1)[1]}={lv}", 0.0)
    return y


def test_parts_seen_in_several_stage_choices_price_a_choice_never_run():
    """Stage 2 and 3 choices: none, se after conv1, dsm after conv2, each at r4 or r16, with or
    without KW; 'se@after_conv1:r4 + kw b=1' is never run in stage 2. Each whole choice is run a
    few times only; its parts are run in many. The part coding recovers the truth exactly and predicts
    the missing choice; the whole-stage coding cannot price it."""
    choices = [None, ("se", "after_conv1"), ("dsm", "after_conv2")]
    stages = [_stage(c, r, kw) for c in choices for r in (4, 16) for kw in (None, 1) if c or r == 16]
    held = _stage(("se", "after_conv1"), 4, 1)
    rows = []
    for a, b in itertools.product(stages, stages):
        if a == held:
            continue
        g = Genome("resnet50", (Stage(), a, b, Stage())).validate()
        for seed in (0, 1):
            y = _truth(g) + (0.01 if seed else -0.01)
            rows.append(dict(key=g.key, genome=g, seed=seed, y=y, flops=1.0, params=1.0, kind="search"))
    runs = Runs(runs_frame(rows), "synthetic")
    parts, whole = fit(runs, kind="ols"), fit(runs, kind="ols", whole_stages=True)
    assert len(parts.coding.columns) < len(whole.coding.columns)

    pe = parts.part_effects().set_index(["part", "choice"])["estimate"]
    for i in (2, 3):
        for key, effect in TRUTH.items():
            slot, lv = key.split("=", 1)
            assert pe[(f"s{i}.{slot}", lv)] == pytest.approx(i / 2 * effect, abs=1e-9)

    g = Genome("resnet50", (Stage(), held, stages[0], Stage())).validate()
    assert whole.predict(factors_of(g)) is None
    assert whole.coding.unknown(factors_of(g)) == ["s2=se@after_conv1:r4 + kw b=1"]
    est, low, high = parts.predict(factors_of(g))
    assert est == pytest.approx(_truth(g), abs=1e-9)
    # A whole choice's effect is the sum of its parts, whichever coding gives it.
    eff = parts.effects().set_index(["factor", "choice"])["estimate"]
    weff = whole.effects().set_index(["factor", "choice"])["estimate"]
    assert np.allclose(eff.loc[weff.index], weff, atol=1e-9)


def test_an_aliased_part_apart_from_its_twin_is_not_priced():
    """r2 only ever came with dsm: a genome with r2 on se is outside what the runs can tell."""
    stages = [Stage(), _stage(("dsm", "after_conv2"), 2, None), _stage(("se", "after_conv1"), 16, None)]
    rows = []
    for a, b in itertools.product(stages, stages):
        g = Genome("resnet50", (a, b, Stage(), Stage())).validate()
        for seed in (0, 1):
            rows.append(
                dict(
                    key=g.key, genome=g, seed=seed, y=0.3 + 0.01 * seed, flops=1.0, params=1.0, kind="search"
                )
            )
    f = fit(Runs(runs_frame(rows), "synthetic"), kind="ols")
    assert f.coding.aliased == {
        "s1.r=r2": "s1.after_conv2=dsm:bias=False",
        "s2.r=r2": "s2.after_conv2=dsm:bias=False",
    }
    odd = Genome("resnet50", (_stage(("se", "after_conv1"), 2, None), Stage(), Stage(), Stage())).validate()
    assert f.coding.unknown(factors_of(odd)) == ["s1.r=r2 apart from s1.after_conv2=dsm:bias=False"]
    assert f.predict(factors_of(odd)) is None


def test_heatmap_is_a_module_by_stage_grid_per_position():
    from analysis import plots

    runs = runs_from_table(REPO / "studies/tables/smoke_table.csv")
    parts = fit(runs).part_effects()
    fig = plots.effects_heatmap(parts)
    facets = [a.text for a in fig.layout.annotations]
    assert facets == sorted({p.split(".", 1)[1] for p in parts["part"]}, key=SLOTS.index)
    for trace in fig.data:
        assert list(trace.x) == ["s1", "s2", "s3", "s4"]
        assert set(trace.y) <= set(parts["choice"])
        shown = [h for row in trace.customdata for h in row if "never run" not in h]
        assert shown and all("[" in h and "against none" in h for h in shown)


def test_parts_that_only_ran_together_leave_their_split_open_not_arbitrary():
    """A searched genome brings new parts to two stages at once, and a one-edit neighbour moves one
    of them: the parts are dependent (A = B + C in runs), as in the default study. The fit stays finite
    (no pseudo-inverse round-off turned into 1e11 effects), the runs' own genomes keep their
    predictions, and what the runs leave open (each part's share) has no effect and no prediction."""
    base = [_stage(c, 16, None) for c in (None, ("se", "after_conv1"), ("dsm", "after_conv2"))]
    rows = []

    def add(stages, y):
        g = Genome("resnet50", stages).validate()
        for seed in (0, 1):
            rows.append(
                dict(key=g.key, genome=g, seed=seed, y=y + 0.002 * seed, flops=1.0, params=1.0, kind="search")
            )
        return g

    for a, b in itertools.product(base, base):
        add((Stage(), a, b, Stage()), 0.3 + 0.01 * (a != base[0]) + 0.02 * (b != base[0]))
    kw = _stage(None, 16, 2)
    # s4's kw b=2 ran only beside s1's (one genome) or s2's (another): its column is the sum of theirs.
    g1 = add((kw, Stage(), Stage(), kw), 0.35)
    g2 = add((Stage(), kw, Stage(), kw), 0.40)
    f = fit(Runs(runs_frame(rows), "synthetic"), kind="ols")
    assert np.abs(f.coef).max() < 1.0 and "1 of" in f.why and "depend on the others" in f.why
    assert f.predict(factors_of(g1))[0] == pytest.approx(0.351, abs=1e-9)
    assert f.predict(factors_of(g2))[0] == pytest.approx(0.401, abs=1e-9)
    lone = Genome("resnet50", (Stage(), Stage(), Stage(), kw)).validate()  # s4's part alone: never told apart
    assert f.predict(factors_of(lone)) is None
    eff = f.effects()
    assert not (eff["choice"] == "kw b=2").any()  # each stage's share of the kw effect is open
