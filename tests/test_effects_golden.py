"""The effects model's JSON for the shipped placement table: the whole of it equals the stored version 1
(tests/data/effects_placement_v1.json: numbers to 1e-9, text and structure exactly), and its effects and
point predictions still equal what the code before the `effects` package printed (version 0). The
version-0 -> 1 changes are listed in docs/effects.md. After a deliberate change, rewrite version 1 with

    python tests/test_effects_golden.py --write
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
V0 = REPO / "tests" / "data" / "effects_placement_v0.json"
V1 = REPO / "tests" / "data" / "effects_placement_v1.json"
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


def current() -> dict:
    p = subprocess.run(
        [sys.executable, "-m", "analysis.effects", "--table", "studies/tables/placement_table.csv", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(p.stdout)


def point_values(d: dict) -> dict:
    """What version 1 kept from version 0: every effect with its interval, every point prediction."""
    return {
        "effects": d["effects"],
        **{
            part: {r.get("genome_key") or r["design"]: r["predicted"] for r in d[part]}
            for part in ("designs", "front", "trials")
        },
    }


@pytest.fixture(scope="module")
def got() -> dict:
    return current()


def test_placement_table_json_equals_version_1(got):
    assert got["schema_version"] == 1
    diffs = differences(got, json.loads(V1.read_text()))
    assert not diffs, f"{len(diffs)} difference(s), first: {diffs[:5]}"


def test_effects_and_point_predictions_equal_version_0(got):
    diffs = differences(point_values(got), point_values(json.loads(V0.read_text())))
    assert not diffs, f"{len(diffs)} difference(s), first: {diffs[:5]}"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_effects_golden.py --write  (rewrites the version-1 golden JSON)")
    V1.write_text(json.dumps(current(), indent=1) + "\n")
    print(f"wrote {V1.relative_to(REPO)}")
