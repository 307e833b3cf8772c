"""What docs/security.md promises: one rule for file modes (the umask's), no password in any file a run
writes, no unpickling of files."""

import os
import pickle
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from ray import cloudpickle

from studies.search import GenomeSpace, SamplerSpec, StudySearch

REPO = Path(__file__).resolve().parent.parent
SECRET_URL = "postgresql+psycopg2://alice:s3cret-pw@db.example:5432/optuna"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)], ids=["022", "077"])
def test_every_file_of_a_run_folder_gets_the_umask_mode(umask, mode, tmp_path):
    run = tmp_path / "run"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "studies.run",
            "smoke_table",
            "--backend",
            "table",
            "--quiet",
            "--out",
            str(run),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.umask(umask),
    )
    assert p.returncode == 0, p.stderr
    files = {f.name: stat.S_IMODE(f.stat().st_mode) for f in run.iterdir() if f.is_file()}
    assert {"study.journal", "config.toml", "report.html", "driver.lock"} <= set(files)
    assert files == dict.fromkeys(files, mode), files
    assert stat.S_IMODE(run.stat().st_mode) == 0o777 & ~umask


def _searcher(storage) -> StudySearch:
    return StudySearch(
        GenomeSpace(None), [{"name": "top1", "direction": "maximize"}], "s", storage, SamplerSpec(), 1, {}
    )


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "ray-cloudpickle"])
def test_a_pickled_searcher_carries_no_password(dumps):
    """Ray pickles the searcher into RUN/ray/*/tuner.pkl: the storage password must not go with it, and
    the copy in the driver process still reaches the storage."""
    blob = dumps(_searcher(SECRET_URL))
    assert b"s3cret-pw" not in blob
    copy = pickle.loads(blob)
    assert copy.storage == "postgresql+psycopg2://alice:***@db.example:5432/optuna"
    assert copy.storage_url() == SECRET_URL
    journal = "/tmp/some/study.journal"  # nothing to hide: kept as it is
    assert pickle.loads(dumps(_searcher(journal))).storage == journal


def test_no_user_file_is_unpickled():
    """Files a user may be handed (journals, tables, caches, genomes) are read as JSON / CSV / npy without
    pickle: no pickle.load, torch.load or np.load(allow_pickle=True) in the packages."""
    unsafe = re.compile(
        r"pickle\.loads?\(|torch\.load\(|allow_pickle\s*=\s*True|yaml\.load\(|(?<![.\w])eval\(|(?<![.\w])exec\("
    )
    found = [
        f"{path.relative_to(REPO)}:{n}"
        for package in ("searchspace", "trainers", "studies", "analysis")
        for path in (REPO / package).rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if unsafe.search(line)
    ]
    assert not found, f"unpickling or eval of data (see docs/security.md): {found}"
