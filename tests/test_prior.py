"""[prior] table: a shipped table of the same protocol pooled with a study's runs in the effects model."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from analysis import effects as fx
from studies import config
from studies.table import default_csv, prior_csv, read_rows, write_rows
from trainers import checksum

REPO = Path(__file__).resolve().parent.parent
SMOKE_TABLE = (REPO / "studies/configs/smoke_table.toml").read_text()


def with_prior(tmp_path, text: str, table: str) -> Path:
    path = tmp_path / "with_prior.toml"
    path.write_text(text + f'\n[prior]\ntable = "{table}"\n')
    return path


def run(args, tmp_path):
    return subprocess.run(
        [sys.executable, "-m", "studies.run", *args, "--out", str(tmp_path / "run")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_prior_of_the_same_protocol_resolves_by_name(tmp_path):
    cfg = config.load(str(with_prior(tmp_path, SMOKE_TABLE, "smoke_table")))
    assert prior_csv(cfg) == default_csv("smoke_table").resolve()
    assert prior_csv(config.load("smoke_table")) is None


def test_prior_runs_keep_their_own_blocks_unless_they_ran_where_the_study_ran():
    # Reversed on purpose (issue 31): the same genome and seed on another machine or code version is
    # a new draw, so the prior's rows are blocks of their own and none is dropped as a repeat.
    table = fx.runs_from_table(default_csv("smoke_table"))
    study = fx.runs_from_table(default_csv("smoke_table"), seeds=[0])
    study.frame["y"] = study.frame["y"] + 0.5  # this "study" measured every seed-0 genome differently
    study.frame["environment"] = "cpu-elsewhere"
    study.frame["block"] = [fx.block(s, "cpu-elsewhere") for s in study.frame["seed"]]
    pooled = study.with_prior(table)
    assert pooled.n == study.n + table.n and "prior run(s) of table smoke_table.csv" in pooled.source
    f = fx.fit(pooled)
    assert f.n == study.n + table.n and "counted once" not in f.why
    assert set(f.coding.blocks) == {fx.block(s) for s in table.frame["seed"]} | {fx.block(0, "cpu-elsewhere")}
    # Where the study ran in the prior's environment, a (genome, seed) is one measurement: the study's.
    same = fx.runs_from_table(default_csv("smoke_table"), seeds=[0])
    f = fx.fit(same.with_prior(table))
    assert f.n == table.n and "counted once" in f.why
    assert set(f.coding.blocks) == {fx.block(s) for s in table.frame["seed"]}


def test_study_with_a_prior_table_pools_it_in_its_summary(tmp_path):
    p = run([str(with_prior(tmp_path, SMOKE_TABLE, "smoke_table")), "--backend", "table:" + str(default_csv("smoke_table")),
             "--trials", "4"], tmp_path)  # fmt: skip
    assert p.returncode == 0, p.stderr
    table_runs = fx.runs_from_table(default_csv("smoke_table")).n
    assert f"with {table_runs} prior run(s) of table smoke_table.csv" in p.stdout
    from analysis import load_study

    assert load_study(tmp_path / "run").attrs["prior_table"] == str(default_csv("smoke_table").resolve())

    def model(*flags):  # the stored study's analysis finds the prior again, unless told not to
        p = subprocess.run([sys.executable, "-m", "analysis.effects", str(tmp_path / "run"), *flags],
                           cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
        return p.stdout + p.stderr  # alone, 4 runs may be too few to fit: a one-line error then

    assert f"with {table_runs} prior run(s)" in model()
    alone = model("--no-prior")
    assert "study 'with_prior'" in alone and "prior run(s)" not in alone


@pytest.mark.parametrize(
    "config_text, table, message",
    [
        (SMOKE_TABLE, "nosuch", "prior.table 'nosuch': no table rows at"),
        (SMOKE_TABLE.replace("epochs = 2", "epochs = 3"), "smoke_table", "a prior must share the protocol"),
        (SMOKE_TABLE, "placement_table", "a prior must share the protocol"),
    ],
)
def test_bad_prior_is_one_line_before_anything_is_written(tmp_path, config_text, table, message):
    p = run([str(with_prior(tmp_path, config_text, table))], tmp_path)  # checked before Ray starts
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0, p.stderr
    assert message in p.stderr
    assert not (tmp_path / "run").exists()


def _damaged(tmp_path, how: str) -> str:
    """A copy of the smoke table, damaged `how`; with the sha256 shipped beside it unless 'cut-alone'."""
    src = default_csv("smoke_table")
    data = src.read_bytes()
    path = tmp_path / "tables" / "prior.csv"
    path.parent.mkdir()
    if how != "cut-alone":
        shutil.copy(checksum.sidecar(src), checksum.sidecar(path))
    if how == "edited":  # one top-1 changed by hand: the file still parses
        head, row, rest = data.decode().split("\n", 2)
        row = row.replace(",0.", ",0.9", 1)
        data = "\n".join([head, row, rest]).encode()
    else:
        data = data[: len(data) * 3 // 10]  # the cut, at 30%: mid-row
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize(
    "how, message",
    [
        ("cut", "does not match prior.csv.sha256"),
        ("edited", "does not match prior.csv.sha256"),
        ("cut-alone", "the file is cut or damaged"),  # a user's own table: no sum, parsed whole
    ],
)
def test_damaged_prior_stops_the_run_before_anything_is_written(tmp_path, how, message):
    p = run([str(with_prior(tmp_path, SMOKE_TABLE, _damaged(tmp_path, how))), "--backend",
             "table:" + str(default_csv("smoke_table")), "--trials", "1"], tmp_path)  # fmt: skip
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0, p.stderr
    assert message in p.stderr and p.stdout == ""
    assert not (tmp_path / "run").exists()


def test_summary_counts_the_prior_runs_from_another_environment(tmp_path):
    """A study replayed from a table whose rows ran elsewhere (an environment column) against the
    shipped smoke table (written before environments were stored: unrecorded) as its prior."""
    rows = read_rows(default_csv("smoke_table"))
    replay = tmp_path / "replay.csv"
    write_rows(replay, [{**r, "environment": "cpu-0a0a0a0a"} for r in rows], [*rows[0], "environment"])
    p = run([str(with_prior(tmp_path, SMOKE_TABLE, "smoke_table")), "--backend", f"table:{replay}",
             "--trials", "4"], tmp_path)  # fmt: skip
    assert p.returncode == 0, p.stderr
    n = fx.runs_from_table(default_csv("smoke_table")).n
    said = f"with {n} prior run(s) of table smoke_table.csv, {n} from another environment (unrecorded)"
    assert said + ": separate blocks, none dropped as a repeat of this run's" in p.stdout
    from analysis import load_study

    assert set(fx.runs_from_study(load_study(tmp_path / "run")).frame["environment"]) == {"cpu-0a0a0a0a"}


@pytest.mark.parametrize("value", ["3", '""', "true"])
def test_prior_table_must_be_a_name(tmp_path, value):
    path = tmp_path / "bad.toml"
    path.write_text(SMOKE_TABLE + f"\n[prior]\ntable = {value}\n")
    with pytest.raises(config.UserError, match=r"prior\.table: expected a table name or a CSV path") as e:
        config.load(str(path))
    assert "\n" not in str(e.value)


def test_flags_that_change_the_protocol_leave_the_prior_out(tmp_path, capsys):
    from studies import run as study_run

    path = str(with_prior(tmp_path, SMOKE_TABLE, "smoke_table"))
    out = ["--out", str(tmp_path / "run")]
    assert study_run.prepare(study_run.parse_args([path, *out]))["cfg"].prior.table == "smoke_table"
    plan = study_run.prepare(study_run.parse_args([path, "--epochs", "3", *out]))  # README: a longer proxy
    assert plan["cfg"].prior.table is None
    assert "prior.table 'smoke_table' left out: the flags changed the protocol" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
