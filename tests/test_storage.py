"""Nothing a study stored is ever lost: a torn journal tail, a damaged middle, a full disk, readers
during writes, and faults at scale (trials failing in four ways while the driver and a worker are
killed). Real journal files, real Optuna, real Ray and a real optuna-dashboard server."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from searchspace.cli import cli_main
from searchspace.errors import UserError
from studies import storage as st
from studies.storage import StorageWriteError, repair_torn_tail, scan

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


def _env(**extra):
    return {**os.environ, "PYTHONPATH": str(REPO), "RAY_DEDUP_LOGS": "0", **extra}


def _plain(path: Path) -> JournalStorage:
    """How optuna-dashboard and any Optuna user open the file: Optuna's own backend."""
    return JournalStorage(JournalFileBackend(str(path)))


def _trials(path: Path, name: str = "s") -> list[tuple]:
    study = optuna.load_study(study_name=name, storage=_plain(path))
    return [(t.number, t.state, t.values, t.user_attrs) for t in study.trials]


def _small_journal(path: Path, n: int = 4) -> None:
    """A study written the way the driver writes it: ask, user attrs, tell."""
    study = optuna.create_study(study_name="s", storage=st.open_or_create(str(path)), directions=["maximize"])
    for i in range(n):
        trial = study.ask()
        trial.set_user_attr("status", "ok")
        trial.set_user_attr("genome", json.dumps({"i": i, "text": 'quotes " and \\ escapes'}))
        study.tell(trial, 0.1 * i)


def _last_record_start(data: bytes) -> int:
    return data.rstrip(b"\n").rfind(b"\n") + 1


def test_torn_tail_at_every_offset_of_the_last_record_is_dropped_and_the_study_resumes(tmp_path, capsys):
    """The file cut at every byte of its last record (the newline alone included): the driver's check
    keeps a copy, drops exactly that record, says so in one line, and the study takes new writes that
    Optuna's own reader (optuna-dashboard's) reads back with every earlier record intact."""
    whole = tmp_path / "whole.journal"
    _small_journal(whole)
    data = whole.read_bytes()
    start = _last_record_start(data)
    kept = data[:start]
    (tmp_path / "kept.journal").write_bytes(kept)
    before = _trials(tmp_path / "kept.journal")
    assert len(data) - start > 40  # a real record, cut at each of its bytes below
    for cut in range(start, len(data)):
        folder = tmp_path / f"cut{cut}"
        folder.mkdir()
        journal = folder / "study.journal"
        journal.write_bytes(data[:cut])
        st.check_before_writing(str(journal))
        err = capsys.readouterr().err
        copies = sorted(folder.glob("study.journal.torn-*"))
        if cut == start:  # ends in a complete record: nothing to do, nothing said
            assert err == "" and not copies
        else:
            assert err.count("\n") == 1 and "dropped a torn last record" in err, (cut, err)
            assert f"{cut - start} bytes after record" in err
            assert len(copies) == 1 and copies[0].read_bytes() == data[:cut]
        assert journal.read_bytes() == kept, cut
        study = optuna.load_study(study_name="s", storage=st.open_or_create(str(journal)))
        study.tell(study.ask(), 0.9)
        after = _trials(journal)
        assert after[: len(before)] == before and len(after) == len(before) + 1, cut
        assert after[-1][1] == TrialState.COMPLETE and after[-1][2] == [0.9]
        assert scan(journal).bad_line is None


def test_damaged_middle_is_refused_in_one_line_nothing_written(tmp_path, capsys):
    """A bad line with lines after it (a flipped byte; the merge the old driver made by appending
    after a torn tail) cannot be told from a torn write: the run and the readers refuse in one line,
    exit 2, and nothing is written or copied."""
    from analysis import load_study
    from studies.run import main

    _small_journal(tmp_path / "good.journal")
    data = (tmp_path / "good.journal").read_bytes()
    lines = data.splitlines(keepends=True)
    flipped = b"".join(lines[:3] + [lines[3].replace(b'"', b"\\", 1)] + lines[4:])
    merged = b"".join(lines[:3] + [lines[3][:-30]] + lines[4:])  # a torn record with an append after it
    for what, damaged in (("flipped byte", flipped), ("merged after a torn tail", merged)):
        run = tmp_path / what.replace(" ", "_")
        run.mkdir()
        journal = run / "study.journal"
        journal.write_bytes(damaged)
        with pytest.raises(SystemExit) as e:
            cli_main(lambda: main(["smoke", "--out", str(run), "--quiet"]))
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error:"), (what, err)
        assert "line 4 " in err and "damaged in the middle" in err, err
        assert journal.read_bytes() == damaged
        assert sorted(p.name for p in run.iterdir()) in (["study.journal"], ["driver.lock", "study.journal"])
        with pytest.raises(UserError, match="damaged"):
            load_study(run)
    for damaged in (flipped, merged):  # Optuna's own reader fails on these too: why they are refused
        (tmp_path / "x.journal").write_bytes(damaged)
        with pytest.raises(ValueError):
            _plain(tmp_path / "x.journal")


def test_append_never_lands_after_a_torn_tail(tmp_path):
    """A writer that skipped the driver's check (e.g. an old driver's journal handed to a new one):
    the backend refuses, the file is unchanged, and the check then repairs it."""
    journal = tmp_path / "study.journal"
    _small_journal(journal)
    storage = st.open_or_create(str(journal))
    torn = journal.read_bytes()[:-25]
    journal.write_bytes(torn)
    study = optuna.load_study(study_name="s", storage=storage)
    with pytest.raises(StorageWriteError, match="ends in a torn record"):
        study.set_user_attr("after", 1)
    assert journal.read_bytes() == torn
    assert "dropped a torn last record" in repair_torn_tail(journal)
    optuna.load_study(study_name="s", storage=st.open_or_create(str(journal))).set_user_attr("after", 1)
    assert optuna.load_study(study_name="s", storage=_plain(journal)).user_attrs["after"] == 1


# Child process: it may write files up to argv[2] bytes (RLIMIT_FSIZE; Python ignores SIGXFSZ, so the
# write fails with EFBIG: the file-size limit standing in for a full disk).
APPEND_OVER_A_LIMIT = """
import resource, sys
import optuna
from studies import storage as st
from studies.storage import StorageWriteError

study = optuna.load_study(study_name="s", storage=st.open_or_create(sys.argv[1]))
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
try:
    study.set_user_attr("big", "x" * 4000)
except StorageWriteError as e:
    print(e)
    raise SystemExit(3) from None
"""


def test_a_write_over_a_file_size_limit_is_cut_back_and_said(tmp_path):
    journal = tmp_path / "study.journal"
    _small_journal(journal)
    before = journal.read_bytes()
    r = subprocess.run(
        [PY, "-c", APPEND_OVER_A_LIMIT, str(journal), str(len(before) + 100)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 3, r.stderr
    assert r.stdout.count("\n") == 1 and "a write failed (File too large)" in r.stdout, r.stdout
    assert journal.read_bytes() == before  # the 100 bytes that fitted were taken back
    optuna.load_study(study_name="s", storage=st.open_or_create(str(journal))).set_user_attr(
        "big", "x" * 4000
    )
    assert optuna.load_study(study_name="s", storage=_plain(journal)).user_attrs["big"] == "x" * 4000


def _study(run: Path, name: str = "smoke") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=_plain(run / "study.journal"))


def _driver(out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [PY, "-m", "studies.run", "smoke", "--quiet", "--out", str(out), *args],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its Ray processes share its group: killed by group id below
    )


def _wait_for(proc: subprocess.Popen, out: Path, done, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (out / "study.journal").exists():
            try:
                if done(_study(out)):
                    return
            except KeyError:  # study not created yet
                pass
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.2)
    pytest.fail("the study did not get there in time")


def _end_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _complete(study) -> bool:
    return any(t.state == TrialState.COMPLETE for t in study.trials)


@pytest.mark.slow
def test_full_disk_mid_study_stops_in_one_line_and_the_same_command_resumes(tmp_path):
    """The driver's files may grow only 50 bytes past the journal's size (RLIMIT_FSIZE on the running
    driver, set from outside): its next record does not fit. It stops with one line, the journal ends
    in a complete record, and the same command finishes the study with every stored trial as it was."""
    out = tmp_path / "run"
    args = ("--trials", "4", "--concurrency", "1")
    proc = _driver(out, *args)
    try:
        _wait_for(proc, out, _complete)
        limit = (out / "study.journal").stat().st_size + 50
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (limit, limit))
        _, err = proc.communicate(timeout=300)
    finally:
        _end_group(proc)
    assert proc.returncode == 2, err
    assert err.count("\n") == 1 and "a write failed (File too large)" in err and "resumes" in err, err
    assert scan(out / "study.journal").bad_line is None
    before = {t.number: t for t in _study(out).trials if t.state == TrialState.COMPLETE}
    assert before
    r = subprocess.run(
        [PY, "-m", "studies.run", "smoke", "--quiet", "--out", str(out), *args],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert r.returncode == 0, r.stderr
    study = _study(out)
    counted = [
        t for t in study.trials if t.state.is_finished() and t.user_attrs.get("status") != "interrupted"
    ]
    assert len(counted) == 4 and all(t.user_attrs["status"] == "ok" for t in counted)
    for n, t in before.items():
        assert study.trials[n].values == t.values and study.trials[n].user_attrs == t.user_attrs
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        return json.load(r)


@pytest.mark.slow
def test_dashboard_and_analysis_read_a_study_while_its_driver_writes(tmp_path):
    """optuna-dashboard (its real server on loopback) and analysis.load_study poll the journal while
    the driver writes it: every answer parses, trials only ever get added, and a trial shown finished
    shows all its results then and the same values ever after (no record half-read)."""
    from analysis import load_study

    out = tmp_path / "run"
    proc = _driver(out, "--trials", "6", "--concurrency", "2")
    dash = None
    seen_values: dict[int, list] = {}
    polls = rows_seen = 0
    try:
        _wait_for(proc, out, lambda s: True)
        port = _free_port()
        dash = subprocess.Popen(
            [
                str(Path(PY).with_name("optuna-dashboard")),
                str(out / "study.journal"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--quiet",
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}/api/studies"
        for _ in range(100):
            try:
                _get(base)
                break
            except OSError:
                time.sleep(0.3)
        while True:
            running = proc.poll() is None
            (smoke,) = [s for s in _get(base)["study_summaries"] if s["study_name"] == "smoke"]
            trials = _get(f"{base}/{smoke['study_id']}")["trials"]
            assert [t["number"] for t in trials] == list(range(len(trials)))
            for t in trials:
                if t["state"] == "Complete":
                    assert len(t["values"]) == 2, t
                    attrs = {a["key"] for a in t["user_attrs"]}
                    assert {"status", "top1", "flops", "genome", "epochs_completed"} <= attrs, t
                    assert seen_values.setdefault(t["number"], t["values"]) == t["values"]
            df = load_study(out)
            assert len(df) >= rows_seen
            rows_seen = len(df)
            done = df[df["state"] == "COMPLETE"]
            assert (
                done["top1"].notna().all() and done["flops"].notna().all() and (done["status"] == "ok").all()
            )
            polls += 1
            if not running:
                break
            time.sleep(0.2)
        assert proc.returncode == 0, proc.communicate()[1]
    finally:
        if dash is not None:
            dash.terminate()
            dash.wait(10)
        _end_group(proc)
    print(f"{polls} polls of the dashboard and analysis while the driver wrote")
    assert polls >= 5 and len(seen_values) == 6
    final = {
        t.number: [float(v) for v in t.values] for t in _study(out).trials if t.state == TrialState.COMPLETE
    }
    assert final == {n: [float(v) for v in vs] for n, vs in seen_values.items()}


@pytest.mark.slow
def test_faults_at_scale_every_trial_ends_right_none_lost_none_twice(tmp_path):
    """40 trials, a fifth failing (an exception, a NaN loss, a simulated OOM, a SIGKILLed worker), the
    driver SIGKILLed once and resumed (bench/faults_at_scale.py, which prints the same figures)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("faults_at_scale", REPO / "bench/faults_at_scale.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    try:
        r = bench.run(tmp_path / "faults", trials=40, fault_share=0.2, concurrency=2)
    finally:
        from searchspace.plugins import unregister

        for kind in bench.KINDS:
            unregister(f"fault_{kind}")
        sys.modules.pop("fault_plugins", None)
    print({k: v for k, v in r.items() if k != "resumed_stdout_tail"})
    assert r["faulty_planned"] == 8 and r["counted"] == 40 and r["completed_ok"] == 32
    assert r["failed_by_cause"] == {"diverged:nan": 2, "error:kill": 2, "error:raise": 2, "oom:oom": 2}
    assert r["duplicates"] == 0 and r["lost"] == [] and r["unplanned"] == [] and r["wrong_status"] == []
    assert r["interrupted"] >= 1 and r["requeued"] == r["interrupted"] and r["requeued_match_interrupted"]
    assert r["asked"] == 40 + r["interrupted"] and r["left_running_or_waiting"] == 0
    assert r["report_rendered"]


REPAIR_OVER_A_LIMIT = """
import resource, sys
from studies import storage as st
from searchspace.errors import UserError

resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
try:
    st.check_before_writing(sys.argv[1])
except UserError as e:
    print(e)
    raise SystemExit(3) from None
"""


def test_a_torn_tail_is_not_dropped_when_its_copy_cannot_be_kept(tmp_path):
    """The copy of the file does not fit (a file-size limit below the file's size, as on a full disk):
    nothing is truncated, one line says why, and once it fits the repair goes through."""
    journal = tmp_path / "study.journal"
    _small_journal(journal)
    torn = journal.read_bytes()[:-20]
    journal.write_bytes(torn)
    r = subprocess.run(
        [PY, "-c", REPAIR_OVER_A_LIMIT, str(journal), str(len(torn) // 2)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 3, r.stderr
    assert r.stdout.count("\n") == 1 and "could not be kept" in r.stdout and "nothing was changed" in r.stdout
    assert journal.read_bytes() == torn and not list(tmp_path.glob("*.torn-*"))
    assert "dropped a torn last record" in repair_torn_tail(journal)
    assert scan(journal).bad_line is None


def test_a_record_half_written_is_not_shown_until_it_is_whole(tmp_path):
    """What a reader meets mid-append, byte for byte: analysis reads the study without error and
    without the half record, then with it once its last byte (the newline) is there."""
    from analysis import load_study

    run = tmp_path / "run"
    run.mkdir()
    journal = run / "study.journal"
    _small_journal(journal, n=3)
    whole = journal.read_bytes()
    start = _last_record_start(whole)  # the last record: trial 2 told COMPLETE
    journal.write_bytes(whole[:start])
    before = load_study(run, "s")
    assert before.loc[before["number"] == 2, "state"].item() == "RUNNING"
    for cut in (start + 1, (start + len(whole)) // 2, len(whole) - 1):
        journal.write_bytes(whole[:cut])
        df = load_study(run, "s")
        assert df.loc[df["number"] == 2, "state"].item() == "RUNNING", cut
    journal.write_bytes(whole)
    df = load_study(run, "s")
    assert df.loc[df["number"] == 2, "state"].item() == "COMPLETE"
