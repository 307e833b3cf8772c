"""studies: the smoke study end to end on real Ray + a real journal storage, resume after SIGKILL,
an injected failure, a two-node Ray cluster, optuna-dashboard's HTTP API, bad input."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from searchspace.cli import cli_main
from searchspace.errors import UserError

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
SCHEMA = (
    "genome",
    "genome_key",
    "params",
    "flops",
    "activations",
    "fidelity",
    "top1",
    "top5",
    "loss",
    "epochs_completed",
    "status",
    "wall_s",
    "train_s",
    "images_per_s",
    "latency_ms",
    "device",
    "seed",
    "reference",
    "node",
    "driver",
)


def _env(**extra):
    return {**os.environ, "PYTHONPATH": str(REPO), "RAY_DEDUP_LOGS": "0", **extra}


def _storage(run_dir: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(run_dir / "study.journal")))


def _study(run_dir: Path, name="smoke") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=_storage(run_dir))


def _counted(study):
    return [t for t in study.trials if t.state.is_finished() and t.user_attrs.get("status") != "interrupted"]


def _run(args, timeout=400, **env):
    return subprocess.run(
        [PY, "-m", "studies.run", "smoke", "--quiet", *args],
        cwd=REPO,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# A user's module with a bug: its block plugin raises in training (not in the eval-mode cost count).
FAULTY_PLUGIN = """
from torch import nn

from searchspace.plugins import register


class RaisesInTraining(nn.Module):
    def forward(self, x):
        if self.training:
            raise RuntimeError("injected failure: this module raises in training")
        return x


@register("raises_in_training", positions=("after_conv2",))
def raises_in_training(channels, r, site):
    return RaisesInTraining()
"""


def _faulty_smoke(folder: Path) -> Path:
    """The smoke study with the faulty plugin (module faulty_plugin in `folder`) also in its space."""
    (folder / "faulty_plugin.py").write_text(FAULTY_PLUGIN)
    cfg = folder / "smoke.toml"  # the same study name
    cfg.write_text(
        (REPO / "studies/configs/smoke.toml")
        .read_text()
        .replace(
            'plugins = ["none", "se"]',
            'imports = ["faulty_plugin"]\nplugins = ["none", "se", "raises_in_training"]',
        )
    )
    return cfg


def _has_plugin(genome_json: str, name: str) -> bool:
    return any(p["type"] == name for s in json.loads(genome_json)["stages"] for p in s["plugins"])


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One smoke study in-process on a local Ray: 4 trials, 2 at a time. Its space also offers a user
    plugin that raises in training (a [space] imports module outside the repo), and trial 0 is a
    design using it, enqueued through Optuna before the run; the two catalog designs inside the space
    are evaluated as references and enqueued as trials 1 and 2."""
    import ray

    from searchspace import Genome, catalog, space
    from searchspace.plugins import unregister
    from studies import config

    out, user = tmp_path_factory.mktemp("smoke"), tmp_path_factory.mktemp("user")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(user))  # importable here only: Ray's workers get the folder from the driver
        cfg = _faulty_smoke(user)
        spec = config.load(str(cfg)).space
        faulty = json.loads(catalog.get("se_resnet18").genome.to_json())
        faulty["stages"][1]["plugins"][0]["type"] = "raises_in_training"
        study = optuna.create_study(
            study_name="smoke", storage=_storage(out), directions=["maximize", "minimize"]
        )
        study.enqueue_trial(space.to_params(Genome.from_dict(faulty), spec))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        t0 = time.perf_counter()
        try:
            from studies.run import main

            argv = [
                str(cfg),
                "--out",
                str(out),
                "--concurrency",
                "2",
                "--quiet",
                "--reference",
                "--seed-known",
            ]
            assert main(argv) == 0
        finally:
            ray.shutdown()
            unregister("raises_in_training")
            sys.modules.pop("faulty_plugin", None)
    return out, time.perf_counter() - t0


@pytest.mark.slow
def test_smoke_end_to_end(smoke_run, capsys):
    out, wall = smoke_run
    print(f"smoke wall {wall:.1f}s")
    study = _study(out)
    assert len(_counted(study)) == 4 and (out / "config.toml").is_file()
    assert {"objectives", "config", "target", "fidelity", "data", "seed"} <= set(study.user_attrs)
    assert [o["name"] for o in study.user_attrs["objectives"]] == ["top1", "flops"]
    assert study.metric_names == ["top1", "flops"]  # optuna-dashboard's axis labels
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    faulty = [t for t in study.trials if _has_plugin(t.user_attrs["genome"], "raises_in_training")]
    assert len(done) == 4 - len(faulty) >= 2  # the designs without the faulty plugin trained
    for t in done:
        assert set(SCHEMA) <= set(t.user_attrs), set(SCHEMA) - set(t.user_attrs)
        assert t.user_attrs["status"] == "ok" and t.user_attrs["reference"] is None
        assert t.values == [t.user_attrs["top1"], t.user_attrs["flops"]]
        assert t.user_attrs["epochs_completed"] == 1
        assert t.user_attrs["latency_ms"] > 0 and t.user_attrs["images_per_s"] > 0
    assert study.best_trials
    assert [study.trials[i].user_attrs.get("seeded_from") for i in (1, 2)] == ["resnet18", "se_resnet18"]


@pytest.mark.slow
def test_references_in_their_own_study(smoke_run):
    ref = _study(smoke_run[0], "smoke.references")
    assert sorted(t.user_attrs["reference"] for t in ref.trials) == ["resnet18", "se_resnet18"]
    assert all(t.state == TrialState.COMPLETE and set(SCHEMA) <= set(t.user_attrs) for t in ref.trials)
    assert ref.metric_names == ["top1", "flops"]
    assert ref.user_attrs["fidelity"] == _study(smoke_run[0]).user_attrs["fidelity"]


@pytest.mark.slow
def test_injected_failure_is_fail_and_study_completes(smoke_run):
    """Every trial whose network uses the faulty user plugin (trial 0 at least) is FAIL with its error
    and costs, and the study went on to its budget."""
    study = _study(smoke_run[0])
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed and failed[0].number == 0
    assert [t.number for t in failed] == [
        t.number for t in study.trials if _has_plugin(t.user_attrs["genome"], "raises_in_training")
    ]
    for t in failed:
        assert t.user_attrs["status"] == "error" and "injected failure" in t.user_attrs["error"]
        assert t.user_attrs["flops"] > 0
    assert len(_counted(study)) == 4


@pytest.mark.slow
def test_dashboard_serves_the_study(smoke_run):
    journal = smoke_run[0] / "study.journal"
    before = journal.read_bytes()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(PY).with_name("optuna-dashboard")
    proc = subprocess.Popen(
        [str(exe), str(journal), "--host", "127.0.0.1", "--port", str(port), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        studies = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    studies = json.load(r)["study_summaries"]
                break
            except OSError:
                time.sleep(0.3)
        assert studies, "optuna-dashboard did not answer"
        (smoke,) = [s for s in studies if s["study_name"] == "smoke"]
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/studies/{smoke['study_id']}", timeout=10
        ) as r:
            detail = json.load(r)
        assert len(detail["trials"]) == 4
        assert detail["objective_names"] == ["top1", "flops"]  # its plots' labels
        assert {t["state"] for t in detail["trials"]} == {"Complete", "Fail"}
    finally:
        proc.terminate()
        proc.wait(10)
    assert journal.read_bytes() == before


@pytest.mark.slow
def test_resume_after_sigkill(tmp_path):
    out = tmp_path / "run"
    args = ["--out", str(out), "--trials", "5", "--concurrency", "1"]
    proc = subprocess.Popen(
        [PY, "-m", "studies.run", "smoke", "--quiet", *args],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline:  # a trial stored and the next one running: kill the driver hard
            if (out / "study.journal").exists():
                try:
                    states = {t.state for t in _study(out).trials}
                    if {TrialState.COMPLETE, TrialState.RUNNING} <= states:
                        break
                except KeyError:  # study not created yet
                    pass
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.3)
        else:
            pytest.fail("no trial finished")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        try:  # Ray's own processes of that driver (its session group), by our group id only
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    before = {t.number: t for t in _study(out).trials}
    kept = {n for n, t in before.items() if t.state == TrialState.COMPLETE}
    assert 1 <= len(kept) < 5

    r = _run(args)
    assert r.returncode == 0, r.stderr
    study = _study(out)
    counted = _counted(study)
    assert len(counted) == 5, [(t.number, t.state, t.user_attrs.get("status")) for t in study.trials]
    for n in kept:  # nothing lost or rewritten
        assert study.trials[n].state == TrialState.COMPLETE and study.trials[n].values == before[n].values
    interrupted = [t for t in study.trials if t.user_attrs.get("status") == "interrupted"]
    assert interrupted and all(t.state == TrialState.FAIL for t in interrupted)
    requeued = [t for t in study.trials if "requeued_from" in t.user_attrs]
    assert sorted(t.user_attrs["requeued_from"] for t in requeued) == sorted(t.number for t in interrupted)
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert "interrupted" not in {t.user_attrs.get("status") for t in counted}
    assert study.metric_names == ["top1", "flops"]

    r = _run(args)  # a third run has nothing left to do
    assert r.returncode == 0 and len(_study(out).trials) == len(study.trials)


@pytest.mark.slow
def test_two_node_cluster_with_asha(tmp_path):
    """Trials on both nodes of a two-node cluster; ASHA's early-stopped trials are PRUNED, not COMPLETE."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        out = tmp_path / "run"
        r = _run(
            [
                "--out",
                str(out),
                "--address",
                cluster.address,
                "--concurrency",
                "2",
                "--asha",
                "--epochs",
                "3",
                "--trials",
                "8",
            ]
        )
        assert r.returncode == 0, r.stderr[-3000:]
        trials = _study(out).trials
        nodes = {t.user_attrs.get("node") for t in trials}
        assert len(nodes) == 2 and None not in nodes, nodes
        pruned = [t for t in trials if t.state == TrialState.PRUNED]
        assert pruned and all(t.user_attrs["epochs_completed"] < 3 and t.values is None for t in pruned)
        assert all(t.user_attrs["epochs_completed"] == 3 for t in trials if t.state == TrialState.COMPLETE)
    finally:
        cluster.shutdown()


def _read_pty(master: int, proc, timeout: float) -> str:
    chunks, deadline = [], time.time() + timeout
    while time.time() < deadline:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: every holder of the terminal's other end has closed it
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(30)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_progress_on_a_terminal_piped_and_quiet_and_metric_names(tmp_path):
    """A terminal gets a status line (count, running, failed, elapsed, ETA) redrawn in place;
    piped output is one plain line per trial carrying the same counts; --quiet prints no trial
    line. The study's metric names are read back through Optuna after a fresh run and after
    resuming a study stored without them."""
    import fcntl
    import pty
    import struct
    import termios

    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    # The smoke study; a random sampler keeps this test about the output, not the sampler.
    toml = tmp_path / "tiny.toml"
    toml.write_text(
        (REPO / "studies/configs/smoke.toml").read_text().replace('name = "nsga2"', 'name = "random"')
    )
    cmd = [PY, "-m", "studies.run", str(toml), "--concurrency", "2"]

    fresh = tmp_path / "fresh"
    r = subprocess.run(
        cmd + ["--out", str(fresh), "--trials", "3"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [line for line in r.stdout.splitlines() if re.match(r"  trial +\d+ ", line)]
    assert len(lines) == 3, r.stdout
    for k, line in enumerate(lines, 1):
        assert (
            f"| {k}/3 trials done, " in line and " running, 0 failed, " in line and " elapsed, ETA " in line
        )
    assert "ETA ?" not in lines[-1]  # finished trials give it a value
    assert "\r" not in r.stdout + r.stderr and "\x1b" not in r.stdout + r.stderr
    assert _study(fresh, "tiny").metric_names == ["top1", "flops"]

    old = tmp_path / "old"  # a study stored by a version that did not name its objectives
    old.mkdir()
    storage = JournalStorage(JournalFileBackend(str(old / "study.journal")))
    assert (
        optuna.create_study(
            study_name="tiny", storage=storage, directions=["maximize", "minimize"]
        ).metric_names
        is None
    )
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        cmd + ["--out", str(old), "--resume", "--trials", "3"],
        cwd=REPO,
        env=_env(),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    try:
        text = _read_pty(master, proc, 400)
    finally:
        os.close(master)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, text[-3000:]
    status = [s.strip() for s in text.replace("\x1b[K", "").split("\r") if s.strip().startswith("[")]
    assert any(s.startswith("[0/3 trials done, ") and s.endswith("ETA ?]") for s in status), status
    counted = [s for s in status if s.startswith("[2/3 trials done, ")]
    assert counted and all(re.search(r"ETA [0-9hms]+\]$", s) for s in counted), (
        status
    )  # a number, from trial walls
    assert len([line for line in text.splitlines() if re.search(r"  trial +\d+ complete ", line)]) == 3
    assert _study(old, "tiny").metric_names == ["top1", "flops"]

    r = subprocess.run(
        cmd + ["--out", str(old), "--trials", "4", "--quiet"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert r.returncode == 0 and len(_counted(_study(old, "tiny"))) == 4, r.stderr[-3000:]
    assert not re.search(r"  trial +\d+ ", r.stdout) and "ETA" not in r.stdout + r.stderr  # the summary only


def test_readme_says_what_the_configs_say():
    """The README's shipped-configs table is the one generated from the configs, and the run time it
    quotes for imagenet_subset is the one the config's note gives, for the config's trial count."""
    from studies import config

    text = (REPO / "README.md").read_text()
    assert config.readme_block(text) == config.readme_table(), (
        "README.md's shipped-configs table is out of date: run python -m studies.config --write-readme"
    )
    row = config.readme_row("imagenet_subset")  # spot-check the generator against the raw TOML
    raw = config.to_storable(config.load("imagenet_subset"))
    assert f"{raw['data']['max_per_class']} train images" in row["proxy"]
    assert (
        f"{raw['fidelity']['epochs']} epochs" in row["proxy"]
        and f"{raw['fidelity']['resolution']} px" in row["proxy"]
    )
    quoted = re.search(r"studies\.run imagenet_subset +# (\d+) published designs, then (\d+) trials", text)
    assert quoted, "the README's imagenet_subset line changed shape"
    assert int(quoted[2]) == raw["budget"]["trials"] and raw["references"]["evaluate"]
    assert int(quoted[1]) == len(row["catalog designs inside"].split(", "))


def test_progress_counts_and_eta():
    """The ETA spreads the remaining trials over the slots at the mean finished wall time."""
    import io

    from studies.session import Console, Progress, duration

    now = [0.0]
    out, err = io.StringIO(), io.StringIO()
    p = Progress(Console(out=out, err=err, tty=False), total=10, done=2, concurrency=2, clock=lambda: now[0])
    p.started("a"), p.started("b")
    assert p.eta() is None and "2/10 trials done, 2 running, 0 failed" in p.summary()
    now[0] = 60.0
    p.finished("a", TrialState.COMPLETE, "  trial 2")
    p.started("c")
    now[0] = 90.0
    p.finished("b", TrialState.FAIL, "  trial 3")
    # at 60 s: mean 60, 6 waiting, b due now -> 360 s over 2 slots; at 90 s: mean 75, 5 waiting -> 375 s,
    # c has run 30 s -> 45 s left: 420 s over 2 slots
    assert p.eta() == pytest.approx(210.0)
    assert out.getvalue().splitlines() == [
        "  trial 2  | 3/10 trials done, 1 running, 0 failed, 1m00s elapsed, ETA 3m00s",
        "  trial 3  | 4/10 trials done, 1 running, 1 failed, 1m30s elapsed, ETA 3m30s",
    ]
    assert err.getvalue() == ""  # not a terminal: no status line
    assert [duration(s) for s in (None, 5, 65, 3725)] == ["?", "5s", "1m05s", "1h02m"]
    # a trial's reported wall time, when there is one, rather than ask to tell (a worker's start)
    p.finished("c", TrialState.COMPLETE, "  trial 4", wall_s=15.0)  # mean (60 + 90 + 15) / 3 = 55
    assert p.eta() == pytest.approx(5 * 55.0 / 2)


@pytest.fixture
def bad_toml(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[space\nbackbone = 'resnet50'\n")
    q = tmp_path / "invalid.toml"
    q.write_text(
        (REPO / "studies/configs/smoke.toml").read_text().replace('name = "nsga2"', 'name = "cmaes"')
    )
    return p, q


def _cli(argv, capsys):
    from studies.run import main

    with pytest.raises(SystemExit) as e:
        cli_main(lambda: main(argv))
    err = capsys.readouterr().err
    return e.value.code, err


@pytest.fixture
def fake_heads():
    """Two local ports that are not Ray heads: one answers like an HTTP/1 server, one accepts and stays silent."""
    import threading

    servers = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    stop = threading.Event()

    def serve(srv, reply):
        srv.settimeout(0.2)
        held = []
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            if reply:
                conn.sendall(reply)
            held.append(conn)
        for c in held:
            c.close()

    threads = [
        threading.Thread(target=serve, args=(srv, reply), daemon=True)
        for srv, reply in zip(servers, (b"HTTP/1.0 400 Bad Request\r\n\r\n", None))
    ]
    for t in threads:
        t.start()
    yield [srv.getsockname()[1] for srv in servers]
    stop.set()
    for t, srv in zip(threads, servers):
        t.join(2)
        srv.close()


def test_bad_input_one_line_exit_2_storage_untouched(tmp_path, bad_toml, capsys, fake_heads):
    http_port, silent_port = fake_heads
    run = tmp_path / "run"
    run.mkdir()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from studies import config

    journal = JournalStorage(JournalFileBackend(str(run / "study.journal")))
    existing = optuna.create_study(study_name="smoke", directions=["maximize", "minimize"], storage=journal)
    smoke = config.load("smoke")
    for k, v in (
        ("fidelity", smoke.protocol["fidelity"]),
        ("data", smoke.protocol["data"]),
        ("seed", 0),
        ("config", config.to_storable(smoke)),
    ):
        existing.set_user_attr(k, v)
    other = optuna.create_study(
        study_name="space_changed", directions=["maximize", "minimize"], storage=journal
    )  # the same storage, [space] of another choice list
    other.set_user_attr(
        "config", {**config.to_storable(smoke), "space": {**smoke.space_table, "plugins": ["none"]}}
    )
    other_root = tmp_path / "imgs"
    for split in ("train", "val"):
        (other_root / split).mkdir(parents=True)
    fewer = tmp_path / "smoke.toml"  # same study name, fewer val images per class
    fewer.write_text(
        (REPO / "studies/configs/smoke.toml")
        .read_text()
        .replace("max_val_per_class = 8", "max_val_per_class = 4")
    )
    before = (run / "study.journal").read_bytes()
    os.chmod(bad_toml[1], 0o644)
    unreadable = tmp_path / "secret.toml"
    unreadable.write_bytes(b"\xff\xfe\x00bad")
    cases = {
        "unknown study": (["nope"], "unknown study"),
        "missing data root": (["smoke", "--data-root", str(tmp_path / "missing")], "data root"),
        "bad storage": (["smoke", "--storage", "nosuchdb://u@h/db"], "--storage"),
        "zero trials": (["smoke", "--trials", "0"], "--trials"),
        "negative trials": (["smoke", "--trials", "-3"], "--trials"),
        "not a number": (["smoke", "--trials", "many"], "--trials"),
        "broken toml": ([str(bad_toml[0])], "invalid TOML"),
        "invalid config": ([str(bad_toml[1])], "sampler.name"),
        "unreadable": ([str(unreadable)], "cannot read"),
        "resume without study": (["smoke", "--resume", "--out", str(tmp_path / "empty")], "--resume"),
        "other fidelity": (["smoke", "--epochs", "5"], "use --name"),
        "other space": (
            ["smoke", "--name", "space_changed"],
            "[space] differs from the stored study (plugins)",
        ),
        "other data root": (
            ["smoke", "--data-root", str(other_root)],
            "[data] differs from the stored study (root)",
        ),
        "other max_val_per_class": ([str(fewer)], "[data] differs from the stored study (max_val_per_class)"),
        "other seed": (["smoke", "--seed", "3"], "seed differs from the stored study"),
        "bad address": (["smoke", "--address", "127.0.0.1:1"], "--address"),
        "address answering HTTP/1": (["smoke", "--address", f"127.0.0.1:{http_port}"], "not a Ray head"),
        "address that never answers": (["smoke", "--address", f"127.0.0.1:{silent_port}"], "--address"),
        "unreachable RDB with a password": (
            ["smoke", "--storage", "postgresql://alice:s3cret@127.0.0.1:9/optuna"],
            "alice:***@127.0.0.1:9",
        ),
        "bad RDB URL with a password": (
            ["smoke", "--storage", "postgresql://alice:s3cret@db:port/optuna"],
            "--storage",
        ),
    }
    for what, (argv, needle) in cases.items():
        t0 = time.monotonic()
        code, err = _cli([*argv, "--out", str(run)] if "--out" not in argv else argv, capsys)
        assert code == 2, what
        assert err.count("\n") == 1 and err.startswith("error:") and needle in err, (what, err)
        assert "s3cret" not in err, (what, err)
        assert time.monotonic() - t0 < 60, what  # a bound against minutes of retries, not a speed test
        assert (run / "study.journal").read_bytes() == before, what
    assert sorted(p.name for p in run.iterdir()) in (["study.journal"], ["driver.lock", "study.journal"])


USER_PLUGIN = '''
"""A researcher's own gate, registered from a package outside the repository."""
import torch
from torch import nn

from searchspace.plugins import register


class UserGate(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))


@register("user_gate", positions=("after_conv2",))
def user_gate(channels, r, site):
    return UserGate(channels)
'''


def _user_study(folder: Path, imports: str, plugins: str) -> Path:
    cfg = folder / "mine.toml"
    cfg.write_text(
        (REPO / "studies/configs/smoke.toml")
        .read_text()
        .replace('plugins = ["none", "se"]', f"imports = {imports}\nplugins = {plugins}")
        .replace("trials = 4", "trials = 2")
    )
    return cfg


@pytest.mark.slow
def test_user_plugin_from_outside_the_repo_in_two_workers(tmp_path):
    """[space] imports: a package in the user's folder (the driver's working folder, on no one's
    PYTHONPATH) registers a block plugin; the driver validates the space with it, and the two trials,
    run at once on the two nodes of a Ray cluster, build and train it."""
    from ray.cluster_utils import Cluster

    mine = tmp_path / "project"
    (mine / "my_plugins").mkdir(parents=True)
    (mine / "my_plugins" / "__init__.py").write_text("")
    (mine / "my_plugins" / "gate.py").write_text(USER_PLUGIN)
    cfg = _user_study(mine, '["my_plugins.gate"]', '["user_gate"]')  # every stage: the user's gate
    out = tmp_path / "run"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        r = subprocess.run(
            [
                PY,
                "-m",
                "studies.run",
                str(cfg),
                "--out",
                str(out),
                "--concurrency",
                "2",
                "--quiet",
                "--address",
                cluster.address,
            ],
            cwd=mine,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=400,
        )
    finally:
        cluster.shutdown()
    assert r.returncode == 0, r.stderr[-3000:]
    trials = _study(out, "mine").trials
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials), [
        (t.number, t.state, t.user_attrs.get("error")) for t in trials
    ]
    assert len({t.user_attrs["node"] for t in trials}) == 2  # one worker on each node
    for t in trials:
        assert all(
            p["type"] == "user_gate"
            for s in json.loads(t.user_attrs["genome"])["stages"]
            for p in s["plugins"]
        )
        assert _has_plugin(t.user_attrs["genome"], "user_gate")


def test_space_imports_register_before_the_space_is_checked(tmp_path, monkeypatch):
    from searchspace.plugins import unregister
    from searchspace.space import SpaceSpec
    from studies.ray_backend import _imports

    (tmp_path / "user_gate_mod.py").write_text(USER_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    space = {"backbone": "resnet18", "plugins": ["none", "user_gate"]}
    with pytest.raises(UserError, match="user_gate"):
        SpaceSpec.from_dict(space)
    try:
        spec = SpaceSpec.from_dict({"imports": ["user_gate_mod"], **space})
        assert spec.imports == ("user_gate_mod",) and spec.plugins == ("none", "user_gate")
        assert _imports(spec.imports) == {"user_gate_mod": str(tmp_path)}  # where a worker finds it
    finally:
        unregister("user_gate")
        sys.modules.pop("user_gate_mod", None)


def test_readme_user_plugin_example_loads(tmp_path, monkeypatch):
    """README "Adding your own plugin": its module and [space] lines, as printed, make a valid study."""
    from searchspace import space
    from searchspace.plugins import unregister
    from studies import config

    text = (REPO / "README.md").read_text().split("### Adding your own plugin", 1)[1].split("\n## ", 1)[0]
    module = re.search(r"```python\n(.*?)```", text, re.S)[1]
    lines = re.search(r"```toml\n.*?\[space\]\n(.*?)```", text, re.S)[1]
    (tmp_path / "my_plugins").mkdir()
    (tmp_path / "my_plugins" / "__init__.py").write_text("")
    (tmp_path / "my_plugins" / "gate.py").write_text(module)
    cfg = tmp_path / "my_study.toml"
    cfg.write_text(
        (REPO / "studies/configs/smoke.toml").read_text().replace('plugins = ["none", "se"]\n', lines)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        spec = config.load(str(cfg)).space
        assert "my_gate" in spec.plugins and space.count(spec) > space.count(config.load("smoke").space)
    finally:
        unregister("my_gate")
        for name in ("my_plugins.gate", "my_plugins"):
            sys.modules.pop(name, None)


def test_user_plugin_import_errors_one_line_nothing_written(tmp_path, capsys, monkeypatch):
    (tmp_path / "broken_plugin.py").write_text("raise ValueError('half-written module')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cases = {
        "no such module": ('["no_such_plugin_module"]', "'no_such_plugin_module' (ModuleNotFoundError"),
        "raises on import": ('["broken_plugin"]', "'broken_plugin' (ValueError: half-written module)"),
        "not a list": ('"broken_plugin"', "space.imports: expected a list of module names"),
    }
    for what, (imports, needle) in cases.items():
        cfg = _user_study(tmp_path, imports, '["none"]')
        code, err = _cli([str(cfg), "--out", str(tmp_path / "run")], capsys)
        assert code == 2, what
        assert err.count("\n") == 1 and err.startswith("error:") and needle in err, (what, err)
        assert not (tmp_path / "run").exists(), what


def test_config_loading_and_overrides():
    from studies import config

    assert {"imagenet_subset", "imagenet_subset_resnet18", "smoke"} <= set(config.shipped())
    for name in config.shipped():
        c = config.load(name)
        assert c.objectives[0] == {"name": "top1", "direction": "maximize"}
        assert c.target.resolution == 224 and c.target.num_classes == 1000
    c = config.load("smoke", {"fidelity.epochs": 3, "budget.trials": 9})
    assert c.fidelity.epochs == 3 and c.budget.trials == 9
    with pytest.raises(UserError, match="objective 'acc'"):
        config.from_dict({"space": {"backbone": "resnet18"}, "objectives": {"acc": "maximize"}}, "x")


def test_config_is_typed_frozen_and_changed_only_by_a_new_validated_config():
    import dataclasses

    from studies import config
    from trainers.train import Fidelity

    for name in config.shipped():  # the stored form rebuilds the same config
        c = config.load(name)
        assert config.from_dict(config.to_storable(c), name=c.name, source=c.source) == c
    c = config.load("smoke", {"fidelity.width": 0.5, "seed": 7})
    assert isinstance(c.fidelity, Fidelity) and c.fidelity.width == 0.5 and c.seed == 7
    assert c.protocol["fidelity"]["width"] == 0.5 and "width_mult" not in config.to_storable(c)["fidelity"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.seed = 3
    d = config.with_overrides(c, {"budget.concurrency": 1, "name": "other"}, "--name")
    assert (d.budget.concurrency, d.name, c.budget.concurrency, c.name) == (1, "other", 2, "smoke")
    with pytest.raises(UserError, match=r"^--name: name 'a b' may only use"):
        config.with_overrides(c, {"name": "a b"}, "--name")
    # one set of fidelity rules: the study's [fidelity] and trainers.Fidelity say the same thing
    with pytest.raises(
        UserError, match=r"^smoke.toml: fidelity.batch_size: expected an integer >= 2, got 1$"
    ):
        config.load("smoke", {"fidelity.batch_size": 1})
    with pytest.raises(UserError, match=r"^fidelity.batch_size: expected an integer >= 2, got 1$"):
        Fidelity(batch_size=1)
    with pytest.raises(UserError, match=r"^smoke.toml: fidelity: unknown keys \['nope'\]"):
        config.load("smoke", {"fidelity.nope": 1})
    assert Fidelity.from_dict({"width_mult": 0.5}).width == 0.5  # a record written before the rename


def test_published_resnet50_designs_lie_in_imagenet_subset():
    from searchspace import catalog, space
    from studies import config

    spec = config.load("imagenet_subset").space
    # kw_resnet50_1d2x also switches KW's nonlocal basis on, which the space has no axis for
    r50 = [
        d
        for d in catalog.designs()
        if d.genome.backbone == "resnet50" and not dict(d.genome.kw_options).get("nonlocal_basis")
    ]
    assert {"se_resnet50", "fcanet50", "dsnet50_a", "dsnet50_b", "dsnet50_c", "kw_resnet50_1x"} <= {
        d.name for d in r50
    }
    assert r50 and all(space.contains(spec, d.genome) for d in r50), [
        d.name for d in r50 if not space.contains(spec, d.genome)
    ]


def _searcher(tmp_path, cfg, sampler=None, **kw):
    """A StudySearch over a new study in a journal file, as the driver makes one."""
    from studies.search import GenomeSpace, SamplerSpec, StudySearch

    url = str(tmp_path / "study.journal")
    optuna.create_study(
        study_name="u",
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url)),
        directions=[o["direction"] for o in cfg.objectives],
    )
    kw = {
        "epochs": cfg.fidelity.epochs,
        "attrs": {"fidelity": cfg.protocol["fidelity"], "seed": 0, "reference": None},
        "log": lambda m: None,
        **kw,
    }
    return StudySearch(
        GenomeSpace(cfg.space), cfg.objectives, "u", url, sampler or SamplerSpec("random", 0), **kw
    )


def test_searcher_with_storage_asks_and_tells_there_only(tmp_path):
    """StudySearch.with_storage: the same searcher on a copy of the study elsewhere (the table backend's
    in-memory mirror); the original's storage and record stay as they were."""
    from studies import config

    s = _searcher(tmp_path, config.load("smoke"))
    mem = optuna.storages.InMemoryStorage()
    optuna.create_study(study_name="u", storage=mem, directions=s.study.directions)
    twin = s.with_storage(mem)
    assert twin.opened_storage is mem and s.opened_storage is not mem
    twin.suggest("a")
    twin.on_trial_complete(
        "a", {"final": True, "status": "ok", "epochs_completed": 1, "top1": 0.5, "flops": 1e8}
    )
    assert twin.finished == [0] and s.finished == [] and not s.study.trials
    (done,) = optuna.load_study(study_name="u", storage=mem).trials
    assert done.state == TrialState.COMPLETE and done.values == [0.5, 1e8] and done.user_attrs["seed"] == 0


def test_searcher_states_without_ray(tmp_path):
    """What each kind of finished Ray trial becomes in Optuna (ASHA-stopped -> PRUNED, not COMPLETE)."""
    from studies import config

    s = _searcher(tmp_path, config.load("smoke", {"fidelity.epochs": 3}))
    full = {"final": True, "status": "ok", "epochs_completed": 3, "top1": 0.7, "flops": 5e8, "node": "n"}
    cases = {
        "full": (dict(full), False),
        "asha": ({**full, "final": False, "epochs_completed": 1}, False),
        "diverged": (
            {**full, "status": "diverged", "top1": 0.5, "epochs_completed": 1},
            False,
        ),  # stops early
        "raised": (
            {"final": True, "status": "error", "error": "RuntimeError: x", "epochs_completed": 0},
            True,
        ),
        "died": (None, True),
        "oom": ({**full, "status": "oom", "error": "out of memory"}, False),
    }
    for n, (tid, (result, err)) in enumerate(cases.items()):
        cfg_ = s.suggest(tid)
        assert "genome" in cfg_ and cfg_["trial_number"] == n
        if result and not result["final"]:
            s.on_trial_result(tid, result)
            assert s.study.trials[n].user_attrs["epochs_completed"] == 1  # progress shown while it runs
            result = None  # Ray hands the last result back on stop; also cover "none given"
        s.on_trial_complete(tid, result, error=err)
    got = {t.number: (t.state, t.user_attrs.get("status")) for t in s.study.trials}
    assert list(got.values()) == [
        (TrialState.COMPLETE, "ok"),
        (TrialState.PRUNED, "pruned"),
        (TrialState.COMPLETE, "diverged"),
        (TrialState.FAIL, "error"),
        (TrialState.FAIL, "error"),
        (TrialState.FAIL, "oom"),
    ]
    t = s.study.trials
    assert t[0].values == [0.7, 5e8] and t[1].user_attrs["epochs_completed"] == 1
    assert "RuntimeError" in t[3].user_attrs["error"] and "worker died" in t[4].user_attrs["error"]
    assert s.study.best_trials[0].number in (0, 2)
    assert t[2].values == [0.5, 5e8] and t[2].user_attrs["epochs_completed"] == 1


def test_searcher_survives_a_failing_storage(tmp_path, monkeypatch):
    """If Optuna's tell raises, and so does the fallback tell(FAIL), the run goes on with one log line."""
    from studies import config

    lines = []
    s = _searcher(tmp_path, config.load("smoke"), log=lines.append)
    s.suggest("a")

    def broken(*a, **k):
        raise RuntimeError("storage gone")

    monkeypatch.setattr(s.study, "tell", broken)
    s.on_trial_complete(
        "a", {"final": True, "status": "ok", "epochs_completed": 1, "top1": 0.5, "flops": 1.0}
    )
    assert len(lines) == 2 and "nor mark it FAIL" in lines[0] and "storage gone" in lines[0]


@pytest.mark.parametrize("sampler", ["nsga2", "tpe", "random", "designed"])
def test_searcher_pickles_and_builds_a_tuner(tmp_path, sampler):
    """Ray pickles the searcher when it builds the Tuner: that must work with every sampler the
    configs accept, under the Optuna installed, and the unpickled searcher must tell the same study
    with the same sampler settings (designed: with its plan, whose screen it goes on asking)."""
    from ray import cloudpickle, tune
    from ray.tune.search import ConcurrencyLimiter

    from studies import config, costs
    from studies.designed import Plan
    from studies.search import SamplerSpec

    cfg = config.load("smoke")
    plan = Plan(cfg.space, 8, costs=costs.stage_costs(cfg))  # every sampler gets it; designed follows it
    spec = SamplerSpec(sampler, seed=7, population=4, plan=plan)
    s = _searcher(tmp_path, cfg, sampler=spec)
    s.suggest("before")  # a live study and sampler inside: the pickle must not carry them
    tuner = tune.Tuner(
        lambda cfg: None,
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(s, max_concurrent=1), num_samples=1),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), name="t"),
    )
    assert tuner is not None
    clone = cloudpickle.loads(cloudpickle.dumps(s))  # as Ray pickles it
    assert clone.sampler == spec and clone.study_name == "u" and clone.storage == s.storage
    sampler_obj = clone.study.sampler
    assert type(sampler_obj) is type(spec.build())
    if sampler == "nsga2":
        assert sampler_obj.population_size == 4
    cfg_ = clone.suggest("after")
    clone.on_trial_complete(
        "after", {"final": True, "status": "ok", "epochs_completed": 1, "top1": 0.6, "flops": 2.0}
    )
    stored = optuna.load_study(
        study_name="u",
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(s.storage)),
    )
    asked = stored.trials
    assert [t.number for t in asked] == [0, 1] and cfg_["trial_number"] == 1
    assert stored.trials[1].state == TrialState.COMPLETE and stored.trials[1].values == [0.6, 2.0]
    assert stored.trials[1].user_attrs["genome"] == cfg_["genome"]
    if sampler == "designed":  # both asks were the screen's first two genomes, under the study's seed
        assert [t.user_attrs.get("trial_seed") for t in asked] == [0, 0]
        screen = [g.to_json() for g in plan.screen()[:2]]
        assert [t.user_attrs["genome"] for t in asked] == screen


def test_padding_free_resolution_per_backbone():
    from studies import config

    cifar = {"backbone": "resnet20_cifar", "stems": ["cifar"], "downsampling": ["v1.5", "padding_free"]}
    cfg = config.from_dict(
        {"space": cifar, "fidelity": {"resolution": 32}}, "x"
    )  # stride-1 stem: 32 -> 15 -> 7
    assert cfg.space.downsampling == ("v1.5", "padding_free")
    r50 = {"backbone": "resnet50", "downsampling": ["v1.5", "padding_free"]}
    cfg = config.from_dict({"space": r50, "fidelity": {"resolution": 64}}, "x")  # 16 -> 7 -> 3 -> 1
    assert cfg.space.downsampling == ("v1.5", "padding_free")
    with pytest.raises(UserError, match="padding_free"):
        config.from_dict({"space": r50, "fidelity": {"resolution": 56}}, "x")  # 14 -> 6 -> 2 -> 0


def test_report_gets_the_storage_not_the_run_folder(tmp_path, monkeypatch):
    import analysis
    from studies import config, driver

    got = {}
    monkeypatch.setattr(
        analysis, "write_report", lambda src, name, out, costs, effects: got.setdefault("report", src)
    )
    monkeypatch.setattr(
        analysis, "push_to_dashboard", lambda st, name, costs, effects: got.setdefault("dash", st)
    )
    journal = tmp_path / "elsewhere" / "x.journal"
    journal.parent.mkdir()
    assert (
        driver._report(config.load("smoke"), str(journal), tmp_path / "run", print)
        == tmp_path / "run" / "report.html"
    )
    assert got["report"] == str(journal) and "dash" in got


def test_latency_is_measured_inference(tmp_path):
    from trainers.measure import inference_latency
    from trainers.train import build_model

    model = build_model("resnet18", num_classes=2, width_mult=0.125)
    ms = inference_latency(model, 32, (1,), device="cpu")[1]
    assert isinstance(ms, float) and math.isfinite(ms) and ms > 0
    assert model.training  # timed on an eval copy: the model itself is left as it was


def test_recover_leaves_live_drivers_trials_alone():
    """Two drivers on one storage: only RUNNING trials of a dead driver are requeued."""
    import socket

    from studies import storage as st

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, directions=["maximize"])
    study_id = storage.get_study_id_from_name(study.study_name)
    dead = subprocess.run([PY, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    beat = lambda who, age, stopped=False: storage.set_study_system_attr(  # noqa: E731
        study_id, "driver:" + who, {"beat": time.time() - age, "stopped": stopped}
    )
    owners = {
        "live": None,
        "dead_pid": f"{host}:{dead.stdout.strip()}:1",
        "other_host_fresh": "elsewhere:1:1",
        "other_host_stale": "elsewhere:2:1",
        "stopped": "elsewhere:3:1",
        "legacy": None,
    }
    with st.Heartbeat(storage, [study.study_name], interval=0.05) as hb:
        owners["live"] = hb.id
        beat(owners["dead_pid"], 0)
        beat(owners["other_host_fresh"], 10)
        beat(owners["other_host_stale"], st.STALE_S + 10)
        beat(owners["stopped"], 0, stopped=True)
        trials = {}
        for what, who in owners.items():
            t = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
            if who:
                t.set_user_attr("driver", who)
            trials[what] = t.number
        time.sleep(0.2)  # a few beats
        assert time.time() - storage.get_study_system_attrs(study_id)["driver:" + hb.id]["beat"] < 0.2
        requeued = st.recover(storage, study)
    assert sorted(requeued) == sorted(
        trials[k] for k in ("dead_pid", "other_host_stale", "stopped", "legacy")
    )
    running = [t.number for t in study.get_trials(states=(TrialState.RUNNING,))]
    assert running == [trials["live"], trials["other_host_fresh"]]
    assert storage.get_study_system_attrs(study_id)["driver:" + hb.id]["stopped"]
    assert not st.driver_alive(
        storage, study.study_name, hb.id
    )  # stopped on exit: the next driver need not wait


@pytest.fixture
def postgres(tmp_path):
    """A throwaway PostgreSQL server (run as the 'postgres' user) on a free port, if one can be made."""
    import shutil

    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    pytest.importorskip("psycopg2")
    if not (initdb and pg_ctl):
        pytest.skip("no PostgreSQL binaries")
    import tempfile

    as_pg = [] if os.getuid() != 0 else ["runuser", "-u", "postgres", "--"]  # postgres refuses root
    data = Path(tempfile.mkdtemp(prefix="studies-pg-"))  # pytest's tmp is private to root
    data.chmod(0o700)
    if as_pg:
        shutil.chown(data, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run(
        [*as_pg, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"], capture_output=True, text=True
    )
    if r.returncode:
        pytest.skip(f"initdb failed: {r.stderr[-300:]}")
    subprocess.run(
        [
            *as_pg,
            pg_ctl,
            "-D",
            str(data),
            "-w",
            "-l",
            str(data / "log"),
            "-o",
            f"-p {port} -k {data} -c listen_addresses=127.0.0.1",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_pg, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.slow
def test_postgresql_storage(tmp_path, postgres):
    out = tmp_path / "run"
    r = _run(["--out", str(out), "--storage", postgres, "--trials", "2"])
    assert r.returncode == 0, r.stderr[-3000:]
    study = optuna.load_study(
        study_name="smoke", storage=postgres.replace("postgresql:", "postgresql+psycopg2:")
    )
    assert len(_counted(study)) == 2 and study.user_attrs["objectives"][0]["name"] == "top1"
    assert not (out / "study.journal").exists()
