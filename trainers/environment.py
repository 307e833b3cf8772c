"""Where a run ran: training is bit-reproducible on one machine and one code version, not across them.

`describe(device)` names the device (CPU model and vector capability, or GPU name), the torch version
and a fingerprint of the code that builds and trains the network (the searchspace and trainers
sources). Two runs of the same genome and seed with different `key`s are two draws, not a repeat.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
from pathlib import Path

FIELDS = ("device_kind", "device_model", "capability", "torch", "code")
UNRECORDED = "unrecorded"  # rows and trials written before environments were stored
_PACKAGES = ("searchspace", "trainers")
_ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def code_fingerprint() -> str:
    """sha256 (12 hex digits) over the sources of the packages that build and train a network."""
    h = hashlib.sha256()
    for pkg in _PACKAGES:
        for path in sorted((_ROOT / pkg).rglob("*.py")):
            h.update(path.relative_to(_ROOT).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: str = "cpu") -> dict:
    """The environment of a run on `device` ("cpu", "cuda", "cuda:0", "mps")."""
    import torch

    kind = str(device).split(":")[0]
    if kind == "cuda" and torch.cuda.is_available():
        model = torch.cuda.get_device_name(torch.device(device))
        major, minor = torch.cuda.get_device_capability(torch.device(device))
        capability = f"sm_{major}{minor}"
    else:
        model, capability = _cpu_model(), torch.backends.cpu.get_cpu_capability()
    env = dict(device_kind=kind, device_model=model, capability=capability, torch=torch.__version__)
    env["code"] = code_fingerprint()
    env["key"] = key(env)
    return env


def key(env: dict | None) -> str:
    """A short stable name of an environment: equal keys, same machine kind and code."""
    if env and env.get("key"):  # as stored (a table row's environment column)
        return env["key"]
    if not env or not any(env.get(f) for f in FIELDS):
        return UNRECORDED
    text = json.dumps({f: env.get(f) for f in FIELDS}, sort_keys=True)
    return f"{env.get('device_kind')}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
