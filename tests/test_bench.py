"""Every shipped benchmark runs: each bench/*.py in its quick mode, through a subprocess as a user runs
it, printing the line or ratio it exists for. An API change that breaks one fails here."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NUMBER = r"[0-9]+\.[0-9]+"

# script -> (arguments of its quick mode, a pattern its output must hold, whether it starts Ray)
QUICK = {
    "kw_conv.py": (["--quick"], rf"(?m)^nchw +fp32 +auto +1 +2 .* {NUMBER}x$", False),
    "kw_profile.py": (["--quick"], rf"(?m)^32 px: KW step {NUMBER} ms, plain step {NUMBER} ms", False),
    "plugin_speed.py": (["--quick"], rf"(?m)^worst_ratio={NUMBER} \(se_resnet18@32\)$", False),
    "trainer_efficiency.py": (["--quick"], rf"(?m)^ratio={NUMBER}$", False),
    "search_strategies.py": (["--quick"], rf"(?m)^best=\S+ hv_at_budget_vs_random={NUMBER}$", False),
    "rediscovery_runs.py": (["--quick"], r"(?m)^  resnet18 +[0-9.]+ +[0-9.]+ ", False),
    "orchestration.py": (["--quick"], rf"(?m)^marginal_overhead_s_per_trial=-?{NUMBER}$", True),
    "gpu_study.py": (["--device", "cpu"], rf"(?m)^summary: smoke: [0-9]+/[0-9]+ ok.*\nratio={NUMBER}", True),
    "gpu_ladder.py": (["--quick"], r"(?m)^gpu ladder: 3 row\(s\) of 3 at rung ladder_quick on cpu", False),
    "proxy_fidelity.py": (["--quick"], rf"(?m)^snr=({NUMBER}|nan) tau=({NUMBER}|nan)$", True),
    "effects_coding.py": (
        ["--quick"],
        r"(?m)^own runs +parts +\w[^;]*; CV error [0-9.]+ .* each own genome left out: \d+/\d+ predicted",
        False,
    ),
    "fidelity_transfer.py": (
        ["--quick"],
        rf"(?ms)^  4 cokrig-pooled +{NUMBER} \[{NUMBER}, {NUMBER}\] .*^ratio_at_k4={NUMBER}$",
        False,
    ),
}


# Benches whose quick mode another test file runs (and checks): script -> that file.
ELSEWHERE = {
    "effects_fidelity.py": "tests/test_effects_table.py",
    "faults_at_scale.py": "tests/test_storage.py",
}


def test_every_bench_has_a_quick_check():
    shipped = sorted(p.name for p in (REPO / "bench").glob("*.py"))
    assert shipped == sorted({**QUICK, **ELSEWHERE}), "give the new bench a quick mode and an entry in QUICK"
    for name, test_file in ELSEWHERE.items():
        assert name in (REPO / test_file).read_text(), f"{test_file} does not run bench/{name}"


def _params():
    for name, (args, pattern, starts_ray) in sorted(QUICK.items()):
        marks = [pytest.mark.slow] if starts_ray else []
        yield pytest.param(name, args, pattern, marks=marks, id=name.removesuffix(".py"))


@pytest.mark.parametrize("name, args, pattern", list(_params()))
def test_bench_quick_mode_runs(name, args, pattern, tmp_path):
    if name == "gpu_study.py":
        args = [*args, "--out", str(tmp_path / "gpu_study")]
    p = subprocess.run(
        [sys.executable, str(REPO / "bench" / name), *args],
        cwd=tmp_path,  # not the repository: a bench must find it on its own
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, (
        f"{name} {' '.join(args)} exited {p.returncode}:\n{p.stdout[-3000:]}{p.stderr[-3000:]}"
    )
    assert re.search(pattern, p.stdout), f"{name}: no line matching {pattern!r} in:\n{p.stdout[-3000:]}"
