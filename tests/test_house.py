"""The restructured house keeps what users see: stored pre-change studies load, resume and report; the
samplers ask the same sequence; the fidelity ladder is one more program on the same session."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from studies import config, ladder, storage
from trainers import checksum

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).with_name("data")


def _sequence(url: str, name: str) -> list:
    s = storage.find_study(storage.open_or_create(url), name)
    return [
        [
            t.number,
            t.user_attrs.get("genome_key"),
            t.user_attrs.get("seed"),
            t.values,
            t.user_attrs.get("status"),
        ]
        for t in s.get_trials(deepcopy=False)
    ]


def _run(*args, cwd=REPO):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["nsga2", "designed"])
def test_samplers_ask_the_sequence_they_asked_before_the_restructuring(tmp_path, sampler):
    """tests/data/sequences_v0: the placement-table study (table backend, concurrency 1, 24 trials)
    as the code before the session/backend/sampler restructuring ran it (nsga2, tpe, gp and random
    were compared by hand too: equal)."""
    out = tmp_path / sampler
    cmd = ["-m", "studies.run", "placement_table", "--backend", "table", "--trials", "24"]
    r = _run(*cmd, "--concurrency", "1", "--sampler", sampler, "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    want = json.loads((DATA / "sequences_v0" / f"{sampler}.json").read_text())
    assert _sequence(str(out / "study.journal"), "placement_table") == want


def test_trials_stored_before_environments_were_are_one_unrecorded_environment():
    from analysis import load_study
    from analysis.effects import block, runs_from_study

    df = load_study(DATA / "pre_house_random.journal")
    assert "environment" in df and df["environment"].isna().all()  # the column exists, empty
    runs = runs_from_study(df)
    assert runs.n == 24 and set(runs.frame["environment"]) == {"unrecorded"}
    assert runs.frame["rung"].isna().all()
    assert set(runs.frame["block"]) == {block(s) for s in runs.frame["seed"]}


@pytest.mark.slow
def test_a_journal_written_before_the_restructuring_loads_resumes_and_reports(tmp_path):
    from analysis import load_study

    run = tmp_path / "old"
    run.mkdir()
    shutil.copy(DATA / "pre_house_random.journal", run / "study.journal")
    before = _sequence(str(run / "study.journal"), "placement_table")
    df = load_study(run / "study.journal")
    assert len(df) == 24 and set(df["status"]) == {"ok"}
    cmd = ["-m", "studies.run", "placement_table", "--backend", "table", "--trials", "26"]
    r = _run(*cmd, "--concurrency", "1", "--sampler", "random", "--out", str(run), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    after = _sequence(str(run / "study.journal"), "placement_table")
    assert after[:24] == before and len(after) == 26  # the old trials as they were, two more
    assert (run / "report.html").is_file() and "study placement_table: 26 of 26 trials" in r.stdout


def test_ladder_rungs_raise_one_knob_of_the_study_protocol():

    base = config.load("ladder")
    rungs = {r.name: r.config(base) for r in ladder.default_rungs(base)}
    assert list(rungs) == ["shipped", "res128", "width4", "train4x"]
    assert rungs["shipped"].protocol == base.protocol
    f = {k: c.protocol["fidelity"] for k, c in rungs.items()}
    assert f["res128"]["resolution"] == 128 and f["width4"]["width"] == 0.25
    assert f["train4x"]["epochs"] == 8 and rungs["train4x"].protocol["data"]["max_per_class"] == 160
    assert "upsampled" in ladder.default_rungs(base)[1].note  # the bundled images are 64 px
    order, facts = ladder.genomes(base, 32)
    assert len(order) == 38 and facts["published"] == 6 and facts["max_correlation"] < 0.2
    assert all(abs(n - 32 / len(lv)) < 1.01 for lv in facts["balance"].values() for n in lv.values())


@pytest.mark.parametrize(
    "args, said",
    [
        (["--rung", "bad"], "expected NAME:KEY=VALUE"),
        (["--rung", "x:fidelity.width=9"], "fidelity.width"),
        (["--rung", "x:budget.trials=3"], "not a [fidelity] or [data]"),
        (["--rung", "a:", "--rung", "a:fidelity.epochs=2"], "share a name"),
        (["--seeds", "0"], "--seeds"),
        (["--genomes", "-1"], "--genomes"),
    ],
)
def test_ladder_bad_input_is_one_line_and_exit_2(args, said):
    r = _run("-m", "studies.ladder", "smoke_table", "--dry-run", *args)
    assert r.returncode == 2 and said in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.slow
def test_ladder_climbs_resumes_after_sigkill_and_merges(tmp_path):
    """Two rungs of the smoke table's space, 2 genomes + the published ones, seed 0: the dry run
    prints the cost and trains nothing; a climb killed mid-way resumes to every row once; the merged
    table holds each row with its rung and environment."""
    tables, out = tmp_path / "tables", tmp_path / "runs"
    cmd = ["-m", "studies.ladder", "smoke_table", "--genomes", "2", "--seeds", "1", "--concurrency", "1"]
    cmd += [
        "--rung",
        "shipped:",
        "--rung",
        "e1:fidelity.epochs=1",
        "--tables",
        str(tables),
        "--out",
        str(out),
    ]
    dry = _run(*cmd, "--dry-run")
    assert dry.returncode == 0 and "run(s) left" in dry.stdout and not tables.exists(), dry.stderr
    proc = subprocess.Popen([sys.executable, *cmd], cwd=REPO, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:  # kill the driver as soon as one trial of the first rung is stored
        if " complete " in line:
            proc.kill()
            break
    proc.wait(60)
    done = _run(*cmd)
    assert done.returncode == 0, done.stderr[-2000:]
    n = len(ladder.genomes(config.load("smoke_table"), 2)[0])
    for rung in ("smoke_table_shipped", "smoke_table_e1"):
        rows = list(csv.DictReader((tables / f"{rung}.csv").open()))
        assert sorted(r["genome_key"] for r in rows) == sorted({r["genome_key"] for r in rows})  # once each
        assert len(rows) == n and {r["seed"] for r in rows} == {"0"}
        assert all(r["environment"].startswith("cpu-") and r["code"] for r in rows)
    assert _run(*cmd, "--merge").returncode == 0
    merged = list(csv.DictReader((tables / "smoke_table.csv").open()))
    assert len(merged) == 2 * n and {r["rung"] for r in merged} == {"shipped", "e1"}
    assert checksum.check(tables / "smoke_table.csv") and checksum.check(tables / "smoke_table_e1.csv")
