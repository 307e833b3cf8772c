"""How a study run ends early: Ctrl-C / SIGTERM (summary, report, exit 130 / 143, nothing lost) and the
wall-clock budget ([budget] minutes, --minutes). The end-to-end ones run `python -m studies.run` for real."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from studies import config as config_mod
from studies.session import StopWhen
from studies.storage import counted
from trainers.record import Status

REPO = Path(__file__).resolve().parent.parent


def _study(run_dir: Path, name: str = "smoke") -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(run_dir / "study.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def _cli(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "studies.run", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class _Clock:
    """A clock the test moves by hand (StopWhen takes any monotonic clock)."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_stop_when_deadline_reason_and_exit_status():
    clock = _Clock()
    stop = StopWhen(1.5, clock=clock).reset()
    assert not stop.should_stop() and stop.reason is None and stop.exit_status() == 0
    clock.now += 89.0
    assert not stop.time_up()
    clock.now += 1.0  # 90 s = 1.5 minutes
    assert stop.should_stop() and stop.reason == "the wall-clock budget of 1.5 minute(s) was spent"
    assert stop.exit_status() == 0  # a spent budget is a normal end
    assert not StopWhen(None, clock=clock).should_stop()  # no minutes: no deadline


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--minutes", "0"], "--minutes: expected a positive number, got 0.0"),
        (["--minutes", "-3"], "--minutes: expected a positive number, got -3.0"),
        (["--minutes", "soon"], "argument --minutes: invalid float value: 'soon'"),
        (["--minutes", "nan"], "budget.minutes (minutes): expected a number > 0.0, got nan"),
        (["--minutes", "inf"], "budget.minutes (minutes): expected a finite number, got inf"),
    ],
)
def test_bad_minutes_one_line_exit_2(argv, message, tmp_path):
    r = _cli("smoke", "--out", str(tmp_path / "run"), *argv, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and message in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.parametrize("value", [0, -1, "10", True, float("nan")])
def test_config_budget_minutes_is_validated(value, tmp_path):
    text = (REPO / "studies/configs/smoke.toml").read_text()
    toml_value = {True: "true", "10": '"10"'}.get(value, str(value).lower())
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("concurrency = 2", f"concurrency = 2\nminutes = {toml_value}"))
    with pytest.raises(config_mod.UserError, match=r"budget\.minutes \(minutes\): expected a number > 0"):
        config_mod.load(str(bad))


def test_config_budget_minutes_and_override(tmp_path):
    text = (REPO / "studies/configs/smoke.toml").read_text()
    good = tmp_path / "good.toml"
    good.write_text(text.replace("concurrency = 2", "concurrency = 2\nminutes = 2.5"))
    assert config_mod.load(str(good)).budget.minutes == 2.5
    assert config_mod.load(str(good), {"budget.minutes": 0.5}).budget.minutes == 0.5  # --minutes wins
    assert config_mod.load("smoke").budget.minutes is None


def test_spent_budget_on_the_table_backend_ends_with_summary_and_report(tmp_path):
    """A budget spent before any trial is asked (the table backend starts no Ray): no trial, status 0, the
    summary says which budget ended the run, the report is written; a later run without it finishes."""
    run = tmp_path / "run"
    r = _cli("smoke_table", "--backend", "table", "--minutes", "0.0001", "--out", str(run), timeout=300)
    assert r.returncode == 0, r.stderr
    assert "ended early: the wall-clock budget of 0.0001 minute(s) was spent" in r.stdout
    assert (run / "report.html").is_file()
    assert counted(_study(run, "smoke_table")) == 0
    r = _cli("smoke_table", "--backend", "table", "--minutes", "30", "--out", str(run), timeout=300)
    assert r.returncode == 0, r.stderr
    assert "ended by the trial budget" in r.stdout and "ended early" not in r.stdout
    study = _study(run, "smoke_table")
    assert counted(study) == config_mod.load("smoke_table").budget.trials


def _start_and_signal(run: Path, signum: int, *extra) -> subprocess.CompletedProcess:
    """`studies.run smoke` in its own process group; once a trial is RUNNING in the journal, SIGINT goes
    to the whole group, as a terminal's Ctrl-C does, and SIGTERM to the driver, as `kill PID` or a
    container's stop does (a SIGTERM to the group also ends Ray's own processes: see README)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "studies.run", "smoke", "--out", str(run), *extra],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (run / "study.journal").is_file():
                try:
                    trials = _study(run).get_trials(deepcopy=False)
                except Exception:  # the study is not created yet
                    trials = []
                if any(t.state == TrialState.RUNNING for t in trials):
                    break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before a trial started"
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signum)
        else:
            os.kill(proc.pid, signum)
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["INT", "TERM"])
def test_signal_prints_summary_exits_128_plus_n_and_resumes(signum, status, tmp_path):
    run = tmp_path / "run"
    # epochs 20: a trial trains for seconds, so the signal finds it running
    r = _start_and_signal(run, signum, "--epochs", "20")
    name = signal.Signals(signum).name
    assert r.returncode == status, r.stdout + r.stderr
    assert f"ended early: interrupted by {name}" in r.stdout, r.stdout
    assert "Pareto front" in r.stdout and (run / "report.html").is_file()
    assert "Traceback" not in r.stderr, r.stderr
    study = _study(run)
    trials = study.get_trials(deepcopy=False)
    stopped = [t for t in trials if t.user_attrs.get("status") == Status.INTERRUPTED]
    assert stopped and all(t.state == TrialState.FAIL for t in stopped)
    assert not any(t.state == TrialState.RUNNING for t in trials)
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert sorted(t.user_attrs["requeued_from"] for t in waiting) == sorted(t.number for t in stopped)
    before = {t.number: t.values for t in trials if t.state == TrialState.COMPLETE}

    r = _cli("smoke", "--out", str(run), "--epochs", "20")
    assert r.returncode == 0, r.stdout + r.stderr
    study = _study(run)
    trials = study.get_trials(deepcopy=False)
    assert counted(study) == 4  # the budget, none counted twice
    assert {t.number: t.values for t in trials if t.number in before} == before  # nothing lost
    by_number = {t.number: t for t in trials}
    for t in waiting:  # each stopped genome was trained on resume
        assert by_number[t.number].state == TrialState.COMPLETE
        assert by_number[t.number].params == by_number[t.user_attrs["requeued_from"]].params


@pytest.mark.slow
def test_minutes_budget_stops_running_trials_and_marks_them(tmp_path):
    """A budget that runs out while trials train (5000 epochs: minutes per trial on any machine, so the
    budget ends the run, however fast the machine): status 0, the summary names the budget, the stopped
    trials are FAIL "interrupted" and requeued, none is PRUNED or on the front."""
    run = tmp_path / "run"
    r = _cli("smoke", "--out", str(run), "--epochs", "5000", "--trials", "12", "--minutes", "0.4")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ended early: the wall-clock budget of 0.4 minute(s) was spent" in r.stdout, r.stdout
    assert (run / "report.html").is_file()
    study = _study(run)
    trials = study.get_trials(deepcopy=False)
    assert counted(study) < 12
    assert not any(t.state in (TrialState.RUNNING, TrialState.PRUNED) for t in trials)
    stopped = {t.number for t in trials if t.user_attrs.get("status") == Status.INTERRUPTED}
    assert stopped.isdisjoint(t.number for t in study.best_trials)
    requeued = {t.user_attrs["requeued_from"] for t in trials if t.state == TrialState.WAITING}
    assert requeued == stopped
