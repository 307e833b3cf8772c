"""The code stays as `ruff` (configured in pyproject.toml: 110 columns) lints and formats it."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_is_clean(command):
    p = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "--no-cache", "."],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, (
        f"ruff {' '.join(command)} (fix with: ruff check --fix . && ruff format .):\n{p.stdout}{p.stderr}"
    )


# Data the package needs (the bundled Imagenette-64 subset, the benchmark tables); anything else binary or
# large is a build output or a download and stays out of git (ruff, like every tool, comes from the lock).
SHIPPED_DATA = ("trainers/data/", "studies/tables/")
BINARY_SUFFIXES = (".whl", ".tar.gz", ".tgz", ".zip", ".so", ".pt", ".pth", ".pkl", ".pickle", ".npz", ".bin")


def test_no_binaries_or_large_files_are_tracked():
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    offending = []
    for name in filter(None, tracked):
        path = REPO / name
        if name.startswith(SHIPPED_DATA) or not path.is_file():
            continue
        if name.endswith(BINARY_SUFFIXES) or path.stat().st_size > 512 * 1024:
            offending.append(f"{name} ({path.stat().st_size:,} bytes)")
    assert not offending, "tracked binaries or large files (git rm them): " + ", ".join(offending)
