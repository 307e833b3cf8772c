"""The effects model's JSON for the shipped placement table is what the code before the `effects`
package printed (tests/data/effects_placement_v0.json): numbers to 1e-9, text and structure exactly."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "data" / "effects_placement_v0.json"
TOL = 1e-9


def differences(got, want, path: str = "$") -> list[str]:
    """Every place where `got` differs from `want`: numbers beyond TOL (absolute, or relative for
    numbers over 1), anything else unequal, or a different structure."""
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            return [f"{path}: keys {sorted(got) if isinstance(got, dict) else got!r} vs {sorted(want)}"]
        return [d for k in want for d in differences(got[k], want[k], f"{path}.{k}")]
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return [f"{path}: {got!r} vs {want!r}"]
        return [d for i, (g, w) in enumerate(zip(got, want)) for d in differences(g, w, f"{path}[{i}]")]
    numeric = (int, float)
    if isinstance(want, numeric) and not isinstance(want, bool):
        if not isinstance(got, numeric) or isinstance(got, bool):
            return [f"{path}: {got!r} vs {want!r}"]
        if not math.isclose(got, want, rel_tol=TOL, abs_tol=TOL):
            return [f"{path}: {got!r} vs {want!r}"]
        return []
    return [] if got == want and type(got) is type(want) else [f"{path}: {got!r} vs {want!r}"]


def test_placement_table_json_unchanged():
    p = subprocess.run(
        [sys.executable, "-m", "analysis.effects", "--table", "studies/tables/placement_table.csv", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    diffs = differences(json.loads(p.stdout), json.loads(GOLDEN.read_text()))
    assert not diffs, f"{len(diffs)} difference(s), first: {diffs[:5]}"
