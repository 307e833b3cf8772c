"""Read a study (searched trials + reference evaluations) from Optuna storage into one table.

`load_study` returns a pandas DataFrame, one row per trial, with study metadata in `df.attrs`
(study_name, objectives, config, target, fidelity, storage). Reading never writes the storage.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from searchspace.errors import UserError, redact
from searchspace.genome import STAGE_FLAT_FIELDS, Genome
from trainers.record import UNMEASURED, Status, TrialRecord

from . import metrics

JOURNAL = "study.journal"
REFERENCES_SUFFIX = ".references"
# Trial user attrs copied into columns as they are (objective columns may overwrite some), after
# every metric of analysis.metrics (attr_columns()). A trial without one (an older journal) gets None.
ATTR_COLUMNS = TrialRecord.columns()
STAGE_FIELDS = STAGE_FLAT_FIELDS
# The status of a finished trial that stored none (an older journal), from its Optuna state.
_STATE_STATUS = {"COMPLETE": Status.OK, "PRUNED": Status.PRUNED, "FAIL": Status.ERROR}

optuna.logging.set_verbosity(optuna.logging.WARNING)


# -- storage ------------------------------------------------------------------------------------
def open_storage(run_dir_or_storage: Any) -> optuna.storages.BaseStorage:
    """A run folder, a `.journal` file, an RDB URL, or an already open Optuna storage; never creates
    one (a run creates its storage with studies.storage.open_or_create)."""
    if isinstance(run_dir_or_storage, optuna.storages.BaseStorage):
        return run_dir_or_storage
    s = str(run_dir_or_storage)
    if "://" in s:
        if s.startswith("sqlite:///") and not Path(s[len("sqlite:///") :]).is_file():
            # RDBStorage would silently create an empty database.
            raise UserError(f"no SQLite database at {s[len('sqlite:///') :]}")
        try:
            return optuna.storages.RDBStorage(s, skip_table_creation=True)
        except Exception as e:  # bad URL, server down, missing driver
            raise UserError(redact(f"cannot open storage {s}: {str(e).splitlines()[0]}")) from None
    p = Path(s)
    journal = p / JOURNAL if p.is_dir() else p
    if not journal.is_file():
        raise UserError(
            f"no study storage at {s} (expected a run folder holding {JOURNAL}, "
            f"a .journal file or a storage URL)"
        )
    from optuna.storages.journal import JournalFileBackend

    try:  # Optuna skips a torn last record (one being written, or cut short); a damaged middle raises
        return optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    except ValueError as e:  # json.JSONDecodeError included
        raise UserError(
            f"{journal}: a record in the middle of the journal is damaged ({type(e).__name__}: "
            f"{str(e).splitlines()[0]}); it cannot be read as it is (restore it from a copy)"
        ) from None


def _config_name(run_dir_or_storage: Any) -> str | None:
    p = Path(str(run_dir_or_storage))
    cfg = (p if p.is_dir() else p.parent) / "config.toml"
    if "://" in str(run_dir_or_storage) or not cfg.is_file():
        return None
    try:
        with open(cfg, "rb") as f:
            name = tomllib.load(f).get("name")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return name if isinstance(name, str) else None


def resolve_study_name(
    storage: optuna.storages.BaseStorage, study_name: str | None = None, run_dir_or_storage: Any = None
) -> str:
    """The given name, else config.toml's `name`, else the only searched study in the storage."""
    names = [s.study_name for s in storage.get_all_studies()]
    if study_name is None:
        study_name = _config_name(run_dir_or_storage) if run_dir_or_storage is not None else None
    if study_name is None:
        searched = [n for n in names if not n.endswith(REFERENCES_SUFFIX)]
        searched = [n for n in searched if not n.endswith(".calibration")]
        if len(searched) != 1:
            raise UserError(f"give the study name with --study (studies here: {', '.join(names) or 'none'})")
        study_name = searched[0]
    if study_name not in names:
        raise UserError(
            f"no study {study_name!r} in {run_dir_or_storage or 'the storage'} "
            f"(studies here: {', '.join(names) or 'none'})"
        )
    return study_name


# -- genomes: read once, shown through Genome's views -----------------------------------------------
def read_genome(g: Any) -> Genome | None:
    """A stored genome (JSON text, a dict or a Genome) as a Genome; None if absent or unreadable.
    Text is parsed once per process (Genome.from_json caches). A genome this process cannot validate
    (a plugin it has not imported, a field of another version) is read as stored."""
    if isinstance(g, Genome):
        return g
    if not isinstance(g, (str, Mapping)):
        return None  # absent: None or NaN
    for strict in (True, False):
        try:
            return Genome.from_json(g, strict) if isinstance(g, str) else Genome.from_dict(g, strict)
        except (UserError, TypeError, ValueError):
            pass
    return None


def flatten_genome(g: Any) -> dict[str, Any]:
    """Genome.flat() of a stored genome ({} without one)."""
    genome = read_genome(g)
    return genome.flat() if genome is not None else {}


def genome_summary(g: Any) -> str:
    """Genome.summary() of a stored genome, e.g. 'resnet50 | s1 se@after_conv3 r16 | s2 -'."""
    genome = read_genome(g)
    return genome.summary() if genome is not None else "(no genome)"


def stage_count(df: pd.DataFrame) -> int:
    i = 0
    while f"s{i + 1}.plugin" in df.columns:
        i += 1
    return i


def genome_columns(df: pd.DataFrame) -> list[str]:
    cols = [c for c in ("backbone", "stem", "downsampling") if c in df.columns]
    return cols + [f"s{i}.{f}" for i in range(1, stage_count(df) + 1) for f in STAGE_FIELDS]


# -- trials -------------------------------------------------------------------------------------
def _rows(study: optuna.Study, kind: str, objectives: list[dict]) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        row: dict[str, Any] = {"number": t.number, "study": kind, "state": t.state.name}
        row.update({k: ua.get(k) for k in attr_columns()})
        if t.state == optuna.trial.TrialState.COMPLETE and t.values is not None:
            # Objective columns come from the trial values (what the sampler saw), in declared order.
            for o, v in zip(objectives, t.values):
                row[o["name"]] = v
        if row["status"] is None:
            row["status"] = _STATE_STATUS.get(t.state.name)
        fid = ua.get("fidelity") or {}
        for k, v in fid.items() if isinstance(fid, dict) else ():
            row[f"fidelity.{k}"] = v
        row["genome"] = ua.get("genome")
        genome = read_genome(ua.get("genome"))
        row.update(genome.flat() if genome is not None else {})
        row["genome_summary"] = genome.summary() if genome is not None else "(no genome)"
        row["datetime_start"] = t.datetime_start
        row["datetime_complete"] = t.datetime_complete
        rows.append(row)
    return rows


def attr_columns() -> tuple[str, ...]:
    return (*metrics.names(), *ATTR_COLUMNS)


def load_study(run_dir_or_storage: Any, study_name: str | None = None) -> pd.DataFrame:
    """One row per trial of the study and of its '<name>.references' study (column `study`:
    'search' or 'reference'). Objective columns are named after the objectives; metadata is in
    df.attrs: study_name, objectives, config, target, fidelity, prior_table, storage."""
    storage = open_storage(run_dir_or_storage)
    name = resolve_study_name(storage, study_name, run_dir_or_storage)
    study = optuna.load_study(study_name=name, storage=storage)
    ua = study.user_attrs
    objectives = ua.get("objectives") or [
        {"name": f"value{i}", "direction": d.name.lower()} for i, d in enumerate(study.directions)
    ]
    rows = _rows(study, "search", objectives)
    ref_name = name + REFERENCES_SUFFIX
    if any(s.study_name == ref_name for s in storage.get_all_studies()):
        rows += _rows(optuna.load_study(study_name=ref_name, storage=storage), "reference", objectives)
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(
            columns=[
                "number",
                "study",
                "state",
                *attr_columns(),
                "genome",
                "genome_summary",
                "datetime_start",
                "datetime_complete",
            ]
        )
    for o in objectives:  # present even when no trial has completed yet
        if o["name"] not in df.columns:
            df[o["name"]] = float("nan")
    for c in ("datetime_start", "datetime_complete"):
        df[c] = pd.to_datetime(df[c])
    df.attrs.update(
        study_name=name,
        objectives=objectives,
        config=ua.get("config") or {},
        target=ua.get("target") or {},
        fidelity=ua.get("fidelity") or {},
        prior_table=ua.get("prior_table"),
        storage=redact(str(run_dir_or_storage))
        if not isinstance(run_dir_or_storage, optuna.storages.BaseStorage)
        else type(run_dir_or_storage).__name__,
    )
    from .calibration import load_calibration  # '<name>.calibration' (studies.calibrate), if there is one

    df.attrs["calibration"] = load_calibration(storage, name)
    return df


def objectives_of(df: pd.DataFrame, objectives: list[dict] | None = None) -> list[dict]:
    objs = objectives if objectives is not None else df.attrs.get("objectives")
    if not objs:
        raise UserError("the table has no objectives (load it with analysis.load_study)")
    return list(objs)


def completed(df: pd.DataFrame, kind: str = "search") -> pd.DataFrame:
    """The results that may enter a front: COMPLETE trials of the searched study ('search') or of
    the references ('reference'), less status 'diverged' (stored COMPLETE at chance-level top-1 so
    the sampler learns to avoid the network, but not a measured accuracy) and 'infeasible' (over a
    [constraints] limit: stored COMPLETE at top-1 0 with its costs, never trained)."""
    return df[(df["study"] == kind) & (df["state"] == "COMPLETE") & ~df["status"].isin(UNMEASURED)]


def newest_run_dir(roots=("runs", "../runs")) -> Path:
    """The most recently modified folder under the first root that has any (for notebooks)."""
    for root in roots:
        root = Path(root)
        dirs = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
        if dirs:
            return max(
                dirs,
                key=lambda p: (p / JOURNAL).stat().st_mtime if (p / JOURNAL).exists() else p.stat().st_mtime,
            )
    raise UserError(f"no run folder under {', '.join(map(str, roots))}; set PARETO_RUN_DIR")


__all__ = [
    "open_storage",
    "resolve_study_name",
    "load_study",
    "flatten_genome",
    "genome_summary",
    "read_genome",
    "genome_columns",
    "stage_count",
    "objectives_of",
    "completed",
    "newest_run_dir",
]
