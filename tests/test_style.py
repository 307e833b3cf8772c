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
