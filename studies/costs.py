"""Target costs (searchspace.cost) computed in the driver, once per genome, cached on disk.

Counting the full-size network with fvcore takes seconds of CPU; inside a GPU trial that is GPU
time spent idle, and NSGA-II, the reference study and a resumed run ask for the same genomes again.
The cache is one small JSON file per (genome, convention, resolution, classes) under the data cache
folder (PLUGIN_EXPLORER_CACHE, default ~/.cache/plugin-explorer), or PLUGIN_EXPLORER_COST_CACHE.
Its folder is named by a hash of the searchspace sources, so any change to a module or the counters
starts a fresh cache instead of serving stale counts. Files are written atomically (temp + rename):
concurrent drivers never read half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from functools import lru_cache
from pathlib import Path

import searchspace
from analysis import metrics
from effects import StageCosts


@lru_cache(maxsize=1)
def model_fingerprint() -> str:
    """Hash of every searchspace source file: what the counts depend on."""
    root = Path(searchspace.__file__).parent
    h = hashlib.sha1()
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def cache_folder() -> Path:
    env = os.environ.get("PLUGIN_EXPLORER_COST_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("PLUGIN_EXPLORER_CACHE") or Path.home() / ".cache" / "plugin-explorer"
    return Path(base) / "costs"


def target_cost(genome, target: dict) -> dict:
    """{"flops", "params", "activations"} (analysis.metrics' cost metrics) of `genome` at `target`
    (convention, resolution, num_classes)."""
    keys = metrics.names("cost")
    args = {k: target[k] for k in ("convention", "resolution", "num_classes")}
    text = genome.to_json()
    name = hashlib.sha1(json.dumps([text, args], sort_keys=True).encode()).hexdigest()[:24]
    path = cache_folder() / model_fingerprint() / f"{name}.json"
    try:
        got = json.loads(path.read_text())
        if got.get("genome") == text and got.get("target") == args:
            return {k: got[k] for k in keys}
    except (OSError, ValueError, KeyError):
        pass  # missing or unreadable: count again
    c = searchspace.cost(genome, **args)
    out = {k: getattr(c, k) for k in keys}
    _write(path, {"genome": text, "target": args, **out})
    return out


def _write(path: Path, record: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # not mkstemp (always 0600): the umask decides the mode, as for every file the tool writes
        tmp = path.parent / f".cost-{os.getpid()}-{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        os.replace(tmp, path)
    except OSError:  # a read-only or full cache folder costs time, not correctness
        try:
            os.unlink(tmp)
        except (OSError, UnboundLocalError):
            pass


_STAGE_COSTS: dict[str, object] = {}


def stage_costs(cfg):
    """One effects.StageCosts per target in this process, counting through the on-disk cost cache: the
    report, the dashboard card and the summary compose their costs from the same traces."""
    target = cfg.protocol["target"]
    key = json.dumps(target, sort_keys=True, default=str)
    if key not in _STAGE_COSTS:
        _STAGE_COSTS[key] = StageCosts(target, _cached_count)
    return _STAGE_COSTS[key]


def _cached_count(genome, target) -> dict:
    c = target_cost(genome, target)
    return {"flops": float(c["flops"]), "params": float(c["params"])}
