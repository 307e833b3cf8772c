"""Opening the Optuna storage, and putting a study back in order after an interrupted driver.

Only the driver writes to the storage (workers report to it through Ray), so a journal file is
safe, and so is any RDB URL. A URL is checked (scheme, installed driver) before anything is opened.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import optuna
from optuna.trial import TrialState

from searchspace.errors import UserError

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
INTERRUPTED = "interrupted"  # status of a trial whose driver died; it is requeued, not counted


def check_url(url: str) -> str:
    """Validate an RDB URL or a journal-file path without connecting or creating anything."""
    if "://" not in url:
        p = Path(url).expanduser()
        if p.is_dir():
            raise UserError(f"--storage {url!r}: is a folder; give a journal file path or an RDB URL")
        if not p.parent.is_dir():
            raise UserError(f"--storage {url!r}: folder {str(p.parent)!r} does not exist")
        return str(p)
    try:
        from sqlalchemy.engine import make_url

        u = make_url(url)
        dialect = u.get_dialect()  # raises for an unknown database kind
    except Exception as e:  # sqlalchemy raises several types for a bad URL
        raise UserError(f"--storage {url!r}: not a usable database URL ({type(e).__name__}: {e})".replace("\n", " ")) from None
    try:
        dialect.import_dbapi()
    except ImportError as e:
        if u.drivername == "postgresql":  # SQLAlchemy 2.1 means psycopg 3 here; psycopg2 will do too
            try:
                import psycopg2  # noqa: F401

                return u.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
            except ImportError:
                pass
        hint = " (pip install psycopg2-binary)" if u.get_backend_name() == "postgresql" else ""
        raise UserError(f"--storage {url!r}: its database driver is not installed: {e}{hint}") from None
    if u.get_backend_name() == "sqlite" and u.database and not Path(u.database).parent.is_dir():
        raise UserError(f"--storage {url!r}: folder of {u.database!r} does not exist")
    return url


def open_storage(url: str) -> optuna.storages.BaseStorage:
    if "://" not in url:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url))
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    except Exception as e:
        raise UserError(f"--storage {url!r}: cannot open ({type(e).__name__}: {str(e).splitlines()[0]})") from None


def describe(url: str) -> str:
    """A journal path relative to the current folder when inside it (shorter to copy)."""
    if "://" in url:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    rel = os.path.relpath(url)
    return url if rel.startswith("..") else rel


def find_study(storage, name: str):
    """The study called `name`, or None; never creates one."""
    for s in storage.get_all_studies():
        if s.study_name == name:
            return optuna.load_study(study_name=name, storage=storage)
    return None


class DriverLock:
    """One driver per run folder: an flock the kernel drops when the process dies (even SIGKILL)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "driver.lock"
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            pid = self.path.read_text().strip() or "?"
            raise UserError(f"{self.path.parent}: another driver (pid {pid}) is running this study") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


def recover(study) -> list[int]:
    """Mark RUNNING trials of a dead driver FAIL ("interrupted") and enqueue their params again.

    Called while holding the driver lock, so no live driver owns a RUNNING trial. Returns the
    numbers of the requeued trials. WAITING trials (enqueued, never asked) are left to be asked.
    """
    requeued = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        keep = {k: t.user_attrs[k] for k in ("seeded_from", "reference") if k in t.user_attrs}
        tid = t._trial_id
        study._storage.set_trial_user_attr(tid, "status", INTERRUPTED)
        study._storage.set_trial_user_attr(tid, "error", "the driver stopped before this trial finished; requeued")
        study._storage.set_trial_state_values(tid, TrialState.FAIL)
        if t.params:
            study.enqueue_trial(t.params, user_attrs={**keep, "requeued_from": t.number}, skip_if_exists=False)
        requeued.append(t.number)
    return requeued


def counted(study) -> int:
    """Finished trials that count towards the budget (interrupted ones were requeued instead)."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=FINISHED)
               if t.user_attrs.get("status") != INTERRUPTED)
