"""Effects across fidelity (effects.fidelity): one model over the rungs of a ladder, on a synthetic
ladder with a known truth, against separate per-rung fits, with one rung, and on the real ladder."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import effects

REPO = Path(__file__).resolve().parents[1]
LADDER = REPO / "studies/tables/ladder.csv"
SMOKE_TABLE = REPO / "studies/tables/smoke_table.csv"
SE = "se@after_conv3:r16"
SE_PART = "se"  # the model codes a stage as its parts: SE after conv3 is part `sN.after_conv3` = se


@pytest.fixture(scope="module")
def ladder_runs():
    return effects.runs_from_table(LADDER)


def _two_rungs(runs, rungs=("shipped", "width4")):
    """The ladder's own genomes and seeds at two rungs, trained on this ladder's machine."""
    fr = runs.frame
    keep = fr["rung"].isin(rungs) & (fr["environment"] != "unrecorded")
    return replace(runs, frame=fr[keep].reset_index(drop=True))


def _truth(g, rung: str) -> float:
    """SE at stage 4 adds 0.05 at every rung; SE at stage 3 adds nothing at the base rung and 0.04 at
    the other; the other rung is 0.03 lower overall."""
    f = effects.factors_of(g)
    return 0.2 + 0.05 * (f["s4"] == SE) + (0.04 * (f["s3"] == SE) - 0.03 if rung != "shipped" else 0.0)


def _analyse(runs, resamples=0):
    f = effects.fit(runs)
    cands, _ = effects.candidates(f, runs, limit=1)  # the evaluated genomes: no cost tracing
    return effects.across_fidelity(runs, f.coding, cands, resamples=resamples)


def test_the_choice_whose_effect_moves_is_flagged_and_intervals_cover_the_truth(ladder_runs):
    runs = _two_rungs(ladder_runs)
    fr = runs.frame.copy()
    rng = np.random.default_rng(0)
    block_shift = {b: rng.normal(0, 0.02) for b in fr["block"].unique()}
    fr["y"] = [
        _truth(g, r) + block_shift[b] + rng.normal(0, 0.01)
        for g, r, b in zip(fr["genome"], fr["rung"], fr["block"])
    ]
    fid = _analyse(replace(runs, frame=fr), resamples=30)
    assert fid.base == "shipped" and fid.rungs == ["shipped", "width4"]
    moves = fid.moves.set_index(["factor", "choice"])
    assert (
        moves.loc[("s3.after_conv3", SE_PART), "moves"]
        and moves.loc[("s3.after_conv3", SE_PART), "p_holm"] < 0.05
    )
    assert not moves.loc[("s4.after_conv3", SE_PART), "moves"]
    assert moves["moves"].sum() == 1  # nothing else moves in the truth, and Holm keeps it so
    eff = fid.effects.set_index(["factor", "choice", "rung"])
    for (factor, rung), want in {
        ("s4", "shipped"): 0.05,
        ("s4", "width4"): 0.05,
        ("s3", "shipped"): 0.0,
        ("s3", "width4"): 0.04,
    }.items():
        r = eff.loc[(factor, SE, rung)]
        assert r["low"] <= want <= r["high"], (factor, rung, r.to_dict())
    shift = moves.loc[("s3.after_conv3", SE_PART)]
    assert shift["largest_shift_low"] <= 0.04 <= shift["largest_shift_high"]
    assert fid.global_test["p"] < 0.05 and fid.global_test["df"][0] == len(fid.moves)
    a = fid.agreement.iloc[0]
    assert a["rung_a"] == "shipped" and a["rung_b"] == "width4" and -1 <= a["spearman"] <= 1


def test_each_rung_has_the_effects_of_its_own_fit(ladder_runs):
    """With every choice free at every rung, a rung's effects are its own runs' (the model pools only
    the noise): the point estimates equal a fit of that rung alone."""
    runs = _two_rungs(ladder_runs)
    fid = _analyse(runs)
    for rung in fid.rungs:
        alone = effects.fit(
            replace(runs, frame=runs.frame[runs.frame["rung"] == rung].reset_index(drop=True))
        )
        want = alone.effects().set_index(["factor", "choice"])["estimate"]
        got = fid.effects[fid.effects["rung"] == rung].set_index(["factor", "choice"])["estimate"]
        assert np.allclose(got.reindex(want.index), want, atol=1e-9)


def test_verdicts_at_every_rung_and_one_line_over_the_ladder(ladder_runs):
    fid = _analyse(_two_rungs(ladder_runs))
    assert set(fid.designs["rung"]) == {"shipped", "width4"}
    for name, rows in fid.designs.groupby("design"):
        assert len(rows) == 2 and all(rows["verdict"])
        line = fid.across[name]
        assert line.endswith("at every rung") or ("at shipped" in line and "at width4" in line)
        if "not resolved" in line:
            assert "more runs there would decide it" in line or "a tie" in line
    js = fid.to_json()
    json.dumps(js)  # plain types only
    assert js["base_rung"] == "shipped" and [r["rung"] for r in js["rungs"]] == ["shipped", "width4"]
    assert "width 0.25" in fid.changes["width4"]


def test_one_rung_gives_no_fidelity_section():
    e = effects.analyse(effects.runs_from_table(SMOKE_TABLE))
    assert e.fidelity is None and "fidelity" not in e.to_json()
    assert "Across fidelity" not in effects.report_text(e)


def test_rung_protocols_name_what_changes():
    base = {"fidelity": {"epochs": 4, "resolution": 64, "width": 0.125}, "data": {"max_per_class": 80}}
    more = {"fidelity": {"epochs": 8, "resolution": 64, "width": 0.125}, "data": {"max_per_class": 160}}
    c = effects.fidelity.changes({"shipped": base, "train4x": json.dumps(more)}, "shipped")
    assert c == {
        "shipped": "64 px, width 0.125, 4 epochs, 80 images/class",
        "train4x": "8 epochs, 160 images/class",
    }


def test_bad_resamples_is_one_line_and_exit_2():
    p = subprocess.run(
        [sys.executable, "-m", "analysis.effects", "--table", str(SMOKE_TABLE), "--resamples", "-1"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "--resamples" in p.stderr


@pytest.mark.slow
def test_the_real_ladder_end_to_end():
    p = subprocess.run(
        [sys.executable, "-m", "analysis.effects", "--table", str(LADDER), "--json", "--resamples", "40"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, p.stderr
    fid = json.loads(p.stdout)["fidelity"]
    assert fid["base_rung"] == "shipped" and len(fid["rungs"]) == 4
    assert len(fid["rank_agreement"]) == 6 and len(fid["moves"]) == 15
    assert all(0 <= m["p_holm"] <= 1 and m["p"] <= m["p_holm"] for m in fid["moves"])
    assert {d["design"] for d in fid["designs"]} == set(fid["across"])
    for a in fid["rank_agreement"]:
        assert -1 <= a["spearman"] <= 1 and -1 <= a["kendall"] <= 1


def test_the_figure_and_the_report_section_draw_every_choice(ladder_runs):
    from analysis import plots, report

    fid = _analyse(_two_rungs(ladder_runs))
    fig = plots.fidelity_figure(fid)
    assert len(fig.data) == len(fid.moves) and all(
        len(t.x) == 2 and t.error_y.array is not None for t in fig.data
    )
    e = replace(effects.analyse(effects.runs_from_table(SMOKE_TABLE)), fidelity=fid)
    html = "".join(report.fidelity_section(e))
    assert "Across fidelity" in html and 'id="fidelity"' in html
    assert "Across fidelity" in effects.report_text(e)
