"""The effects model on small real inputs: the smoke table, a smoke study, the command line."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import effects
from searchspace import Genome, Stage, catalog
from searchspace.genome import make_plugin

REPO = Path(__file__).resolve().parents[1]
SMOKE_TABLE = REPO / "studies/tables/smoke_table.csv"


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "analysis.effects", *args], cwd=REPO, capture_output=True, text=True
    )


def test_stage_labels_follow_the_menu_grammar():
    st = Stage((make_plugin("dsm", "after_conv2", 2, bias=True),), kw=1)
    assert effects.stage_label(st) == "dsm@after_conv2:r2:bias=True + kw b=1"
    assert effects.stage_label(Stage()) == "none"
    f = effects.factors_of(catalog.get("se_resnet50").genome)
    assert f["stem"] == "standard" and f["downsampling"] == "v1.5"
    assert [f[f"s{i}"] for i in range(1, 5)] == ["se@after_conv3:r16"] * 4


def test_seed_blocks_are_sum_coded_so_a_prediction_is_the_average_seed():
    """An additive truth (SE in stage i adds 0.01 i) and two seeds 0.1 apart on every genome: the
    effects come back exactly, the predictions sit half-way between the seeds, and the seed column
    carries the shift."""
    runs = effects.runs_from_table(SMOKE_TABLE)
    fr = runs.frame.copy()

    def truth(g):
        return 0.5 + sum(0.01 * i for i, st in enumerate(g.stages, start=1) if st.plugins)

    fr["y"] = [truth(g) + (0.05 if s == 0 else -0.05) for g, s in zip(fr["genome"], fr["seed"])]
    f = effects.fit(effects.Runs(fr, "synthetic"), kind="ols")
    assert f.coef[f.coding.columns.index("block[0@unrecorded]")] == pytest.approx(0.05)
    eff = f.effects().set_index("factor")["estimate"]
    assert [eff[f"s{i}"] for i in range(1, 5)] == pytest.approx([0.01, 0.02, 0.03, 0.04])
    for g in fr["genome"]:
        assert f.predict(effects.factors_of(g))[0] == pytest.approx(truth(g))


def test_smoke_table_fit_has_every_output_and_check():
    e = effects.analyse(effects.runs_from_table(SMOKE_TABLE))
    assert e.fit.n == 32 and e.fit.kind == "ols"  # 32 runs, 6 parameters
    assert set(e.effects["factor"]) == {"s1", "s2", "s3", "s4"}
    assert (e.effects["low"] < e.effects["estimate"]).all() and (
        e.effects["estimate"] < e.effects["high"]
    ).all()
    c = e.fit.checks
    assert c["replicated_genomes"] == 16 and c["pure_error_sd"] > 0 and "p" in c["lack_of_fit"]
    assert c["cv"]["rmse"] > 0 and abs(sum(c["shares"].values()) - 1) < 0.5
    assert "16 evaluated genomes" in e.coverage  # every genome of the table was trained
    front = e.front
    assert len(front) >= 1 and front["predicted"].is_monotonic_increasing  # by FLOPs, better as it costs more
    assert set(e.designs["design"]) == {"resnet18", "se_resnet18"}
    for r in e.designs.to_dict("records"):
        assert r["low"] <= r["predicted"] <= r["high"] and r["verdict"] and r["recipe"] == "common"


def test_ridge_takes_over_when_runs_are_few_and_says_why():
    runs = effects.runs_from_table(SMOKE_TABLE, seeds=[0])
    small = effects.Runs(runs.frame.head(8).reset_index(drop=True), "8 runs")
    f = effects.fit(small)
    assert f.kind == "eb-ridge" and "too few" in f.why and f.df_resid is None
    widths = f.effects().eval("high - low")
    assert np.isfinite(widths).all() and (widths > 0).all()


def test_a_verdict_beaten_needs_its_contrast_interval_above_zero():
    e = effects.analyse(effects.runs_from_table(SMOKE_TABLE))
    for r in e.designs.to_dict("records"):
        if r["verdict"].startswith("beaten"):
            assert r["difference_low"] > 0
        elif r["verdict"].startswith("not resolved"):
            assert r["difference_low"] <= 0 <= r["difference_high"]


def test_trials_needed_follows_the_width():
    assert effects.trials_needed(48, 0.02, 0.04) == 144  # 4x the runs halve the width
    assert effects.trials_needed(48, 0.0, 0.04) is None


def test_stage_costs_compose_to_the_direct_count():
    """Per-stage composition against a direct count of a genome with modules in two stages."""
    g = Genome(
        "resnet18",
        (
            Stage((make_plugin("se", "after_conv2", 16),)),
            Stage(),
            Stage(),
            Stage((make_plugin("se", "after_conv1", 4),)),
        ),
    )
    target = {"convention": "paper", "resolution": 64, "num_classes": 10}
    composed = effects.StageCosts(target)(g)
    direct = effects.trace_count(g, target)
    assert composed == direct


def test_cli_json_has_the_documented_keys():
    p = _cli("--table", str(SMOKE_TABLE), "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert {"kind", "residual_sd", "pure_error_sd", "cross_validated_error", "interaction_test"} <= set(
        d["model"]
    )
    assert {"stage", "choice", "estimate", "low", "high"} <= set(d["effects"][0])
    assert d["schema_version"] == 1
    intervals = {"mean_low", "mean_high", "run_low", "run_high"}
    assert {"design", "predicted", "flops", "verdict"} | intervals <= set(d["designs"][0])
    assert {"genome_key", "predicted", "flops", "params"} | intervals <= set(d["front"][0])
    assert intervals <= set(d["trials"][0])


@pytest.mark.parametrize(
    "args, says",
    [
        ((), "give a run folder or --table"),
        (("--table", "/no/such.csv"), "no such file"),
        (("--table", str(REPO / "README.md")), "not a readable CSV"),
        (("--table", str(REPO / "studies/tables/../../.ci/torch-build.txt")), "not a benchmark table"),
        (("--table", str(SMOKE_TABLE), "--seeds", "zero"), "--seeds 'zero'"),
        (("--table", str(SMOKE_TABLE), "--kind", "lasso"), "expected auto, ols or eb-ridge"),
        (("--table", str(SMOKE_TABLE), "--seeds", "7"), "needs at least 3"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, says):
    p = _cli(*args)
    assert p.returncode == 2 and says in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_too_few_runs_to_measure_the_noise_is_refused_or_uses_a_measured_noise():
    runs = effects.runs_from_table(SMOKE_TABLE, seeds=[0])
    few = effects.Runs(runs.frame.head(4).reset_index(drop=True), "4 runs")
    with pytest.raises(effects.UserError, match="leave no degrees of freedom to measure the noise"):
        effects.fit(few)
    few.noise_sd, few.noise_source = 0.03, "a calibration"
    f = effects.fit(few)
    assert f.sigma == pytest.approx(0.03, rel=1e-3) and "noise sd 0.0300 from a calibration" in f.why


@pytest.mark.slow
def test_a_study_summary_and_report_end_with_the_model(tmp_path):
    """A study answered from the smoke table (real searcher, storage, report): the run summary opens
    with the model's front and verdicts, the single runs after them; the report carries the model,
    the command line reads the run folder."""
    out = tmp_path / "run"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "studies.run",
            "smoke_table",
            "--backend",
            "table",
            "--trials",
            "16",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("Published designs, model verdicts"))
    assert [ln.split()[0] for ln in lines[i + 1 : i + 3]] == ["resnet18", "se_resnet18"] and all(
        "recipe" in ln for ln in lines[i + 1 : i + 3]
    )
    assert (
        lines[i + 3].startswith("  median half-width of the 2 design mean(s): ")
        and "a new run adds" in lines[i + 3]
    )
    assert any(ln.startswith("Effects model (study 'smoke_table'): ") for ln in lines)
    at = [p.stdout.index(s) for s in ("The answer:", "Model front over", lines[i], "Observed Pareto front")]
    assert at == sorted(at)  # the model's answer first, the single runs after it
    html = (out / "report.html").read_text()
    assert (
        "Effects model: what each choice does where" in html and "Published designs: model verdicts" in html
    )
    q = _cli(str(out), "--json")
    assert q.returncode == 0, q.stderr
    from analysis import completed, load_study

    done = completed(load_study(out))
    distinct = len(done.drop_duplicates(["genome_key", "seed"]))  # a repeat under its seed counts once
    assert json.loads(q.stdout)["model"]["runs"] == distinct


def _synthetic(blocks: int, rng, sigma=0.02, tau=0.01):
    """The smoke table's 16 genomes under an additive truth (SE in stage i adds 0.01 i), each run in
    `blocks` blocks whose shifts are drawn with sd tau, plus run noise sigma: (runs, truth per genome)."""
    base = effects.runs_from_table(SMOKE_TABLE, seeds=[0]).frame
    truth = np.array(
        [0.5 + sum(0.01 * i for i, st in enumerate(g.stages, 1) if st.plugins) for g in base["genome"]]
    )
    parts = []
    for b in range(blocks):
        fr = base.assign(seed=b, block=effects.block(b))
        fr["y"] = truth + rng.normal(0, tau) + rng.normal(0, sigma, len(fr))
        parts.append(fr)
    return effects.Runs(pd.concat(parts, ignore_index=True), "synthetic"), truth


def test_new_run_interval_covers_new_runs_and_the_mean_interval_does_not():
    """A known truth: new runs, each in a new block, fall in the new-run interval at about 95 %; the
    interval of the mean (what a single run does not measure) covers far fewer of them."""
    rng = np.random.default_rng(3)
    sigma, tau = 0.02, 0.01
    runs, truth = _synthetic(30, rng, sigma, tau)
    f = effects.fit(runs, kind="ols")
    assert f.block_df == 29 and 0.5 * tau < f.block_sd < 1.5 * tau
    X = f.coding.matrix([effects.factors_of(g) for g in runs.frame["genome"][:16]])
    _, run_lo, run_hi = f.run_intervals(X)
    _, mean_lo, mean_hi = f.intervals(X)
    new = truth + rng.normal(0, tau, (2000, 1)) + rng.normal(0, sigma, (2000, 16))
    run_cover = ((run_lo <= new) & (new <= run_hi)).mean()
    mean_cover = ((mean_lo <= new) & (new <= mean_hi)).mean()
    assert 0.93 <= run_cover <= 0.97, run_cover
    assert mean_cover < 0.5, mean_cover
    assert ((mean_lo <= truth) & (truth <= mean_hi)).mean() >= 0.75  # 16 genomes, one fit


def test_one_block_leaves_the_block_spread_out_and_says_so():
    e = effects.analyse(effects.runs_from_table(SMOKE_TABLE, seeds=[0]))
    assert e.fit.block_sd is None
    assert "spread of seeds/machines is not measured" in "\n".join(effects.verdict_lines(e))


def test_max_t_critical_value_exceeds_the_pointwise_one_and_grows_with_the_candidates():
    f = effects.fit(effects.runs_from_table(SMOKE_TABLE), kind="ols")
    genomes = effects.runs_from_table(SMOKE_TABLE, seeds=[0]).frame["genome"]
    C = f.coding.matrix([effects.factors_of(g) for g in genomes])[1:] - f.coding.matrix(
        [effects.factors_of(genomes[0])]
    )
    qs = [f.simultaneous_q(C[:n]) for n in (1, 3, 8, 15)]
    assert qs[0] == pytest.approx(f.q, rel=0.05)  # one contrast: the ordinary t quantile
    assert qs[1] > f.q and all(a < b for a, b in zip(qs, qs[1:])), qs


def test_the_cheapest_design_is_not_called_found_again():
    e = effects.analyse(effects.runs_from_table(SMOKE_TABLE))
    v = e.designs.set_index("design")["verdict"]
    assert v["resnet18"] == "the cheapest design of the space: nothing at its FLOPs to compare"
    # a rival of se_resnet18 was chosen from all cheaper genomes: its interval says over how many
    assert "simultaneous over 15 candidates (max-t)" in v["se_resnet18"]
