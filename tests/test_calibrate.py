"""studies.calibrate: the smoke study's two published designs x 2 seeds under its protocol and a
2-epoch reference, end to end on real Ray and a real journal: stored, printed, resumed after SIGKILL
with nothing counted twice; bad input is one line and exit 2 with the storage untouched."""

from __future__ import annotations

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

from searchspace.cli import cli_main

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
ARGS = [
    "smoke",
    "--designs",
    "0",
    "--seeds",
    "2",
    "--versus",
    "fidelity.epochs=2",
    "--concurrency",
    "1",
    "--bootstrap",
    "200",
]


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "RAY_DEDUP_LOGS": "0"}


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(
        study_name="smoke.calibration", storage=JournalStorage(JournalFileBackend(str(out / "study.journal")))
    )


def _cli(argv, capsys):
    from studies.calibrate import main

    with pytest.raises(SystemExit) as e:
        cli_main(lambda: main(argv))
    return e.value.code, capsys.readouterr().err


@pytest.mark.slow
def test_calibrate_smoke_stored_printed_resumed_after_sigkill(tmp_path):
    out = tmp_path / "run"
    argv = [PY, "-m", "studies.calibrate", *ARGS, "--out", str(out)]
    proc = subprocess.Popen(
        argv + ["--quiet"],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline:  # one run stored and the next one running: kill the driver hard
            try:
                states = {t.state for t in _study(out).trials}
                if {TrialState.COMPLETE, TrialState.RUNNING} <= states:
                    break
            except (KeyError, FileNotFoundError, ValueError):  # not created yet
                pass
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.3)
        else:
            pytest.fail("no calibration run finished")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        try:  # the Ray processes of that driver (its session group), by our group id only
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    before = {t.number: t for t in _study(out).trials if t.state == TrialState.COMPLETE}
    assert 1 <= len(before) < 8

    r = subprocess.run(argv, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr
    study = _study(out)
    counted = [
        t for t in study.trials if t.state.is_finished() and t.user_attrs.get("status") != "interrupted"
    ]
    keys = sorted(
        (t.user_attrs["protocol"], t.user_attrs["design"], t.user_attrs["trial_seed"]) for t in counted
    )
    assert keys == sorted(
        (p, d, s) for p in ("study", "versus") for d in ("resnet18", "se_resnet18") for s in (0, 1)
    )
    for n, t in before.items():  # nothing lost or rewritten
        assert study.trials[n].state == TrialState.COMPLETE and study.trials[n].values == t.values
    assert all(
        t.user_attrs["seed"] == t.user_attrs["trial_seed"] for t in counted if t.state == TrialState.COMPLETE
    )
    assert {t.user_attrs["fidelity"]["epochs"] for t in counted if t.user_attrs["protocol"] == "versus"} == {
        2
    }
    assert "resuming" in r.stdout and "pooled seed std" in r.stdout and "resolvable at 95 %" in r.stdout
    assert "rank agreement" in r.stdout

    summary = study.user_attrs["summary"]
    from analysis.calibration import load_calibration, noise, protocol_noise

    assert (
        load_calibration(JournalStorage(JournalFileBackend(str(out / "study.journal"))), "smoke") == summary
    )
    for p in ("study", "versus"):
        runs = {}
        for t in counted:
            if t.user_attrs["protocol"] == p and t.user_attrs.get("status") == "ok":
                runs.setdefault(t.user_attrs["design"], []).append(t.user_attrs["top1"])
        want, have = noise(runs).to_dict(), summary["protocols"][p]["noise"]
        for d, v in want.pop("designs").items():
            assert have["designs"][d]["n"] == v["n"] and have["designs"][d]["mean"] == pytest.approx(
                v["mean"]
            )
        want.pop("extra")
        assert {k: v for k, v in have.items() if k not in ("designs", "extra")} == pytest.approx(
            want, nan_ok=True
        )
        assert summary["protocols"][p]["compute_s_per_run"] > 0
    assert protocol_noise(summary).df == summary["protocols"]["study"]["noise"]["df"]

    r = subprocess.run(argv + ["--quiet"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=400)
    assert r.returncode == 0 and "this run: 0 trial(s)" in r.stdout  # nothing left to do
    assert len(_study(out).trials) == len(study.trials)


def test_bad_input_one_line_exit_2(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    journal = run / "study.journal"
    storage = JournalStorage(JournalFileBackend(str(journal)))
    optuna.create_study(
        study_name="smoke.calibration", storage=storage, directions=["maximize", "minimize"]
    ).set_user_attr("protocols", {"study": {"fidelity": {"epochs": 9}, "data": {}, "target": {}}})
    before = journal.read_bytes()
    cases = {
        "unknown study": (["nope"], "unknown study"),
        "no seeds": (["smoke", "--seeds", "0"], "--seeds"),
        "negative designs": (["smoke", "--designs", "-1"], "--designs"),
        "versus without =": (["smoke", "--versus", "epochs"], "KEY=VALUE"),
        "versus of the target": (["smoke", "--versus", "target.resolution=32"], "only fidelity.KEY"),
        "versus bad value": (["smoke", "--versus", "fidelity.epochs=0"], "fidelity.epochs"),
        "versus unknown trainer key": (["smoke", "--versus", "fidelity.nope=1"], "fidelity"),
        "versus unknown data key": (["smoke", "--versus", "data.nope=1"], "unknown [data] key"),
        "versus the same": (["smoke", "--versus", "fidelity.epochs=1"], "the study's own"),
        "not in space": (["smoke", "--only", "resnet50"], "not a catalog design inside"),
        "other protocol stored": (["smoke"], "use --name"),
    }
    for what, (argv, needle) in cases.items():
        code, err = _cli([*argv, "--out", str(run)], capsys)
        assert code == 2, what
        assert err.count("\n") == 1 and err.startswith("error:") and needle in err, (what, err)
        assert journal.read_bytes() == before, what
