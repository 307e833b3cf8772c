"""Opening the Optuna storage, keeping its journal file whole, and putting a study back in order
after an interrupted driver.

Only the driver writes to the storage (workers report to it through Ray), so a journal file is
safe, and so is any RDB URL. A URL is checked (scheme, installed driver) before anything is opened.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import TrialState

from searchspace.errors import UserError, redact
from trainers.record import NOT_COUNTED, Status

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# What a requeued trial keeps of its enqueue-time user attrs (studies.calibrate adds design, seed, protocol)
KEEP_ON_REQUEUE = ("seeded_from", "reference", "design", "trial_seed", "protocol", "table_seed", "table_key")
HEARTBEAT_S = 30.0  # a running driver refreshes its study-level heartbeat this often
STALE_S = (
    300.0  # a heartbeat older than this: that driver is taken for dead (clocks of hosts may differ a bit)
)


def locate(out: str | None, name: str, storage: str | None = None) -> tuple[Path, str]:
    """A program's run folder (--out, default runs/<name>) and its storage (--storage, default the
    folder's journal), checked before anything is written."""
    run_dir = Path(out or Path("runs") / name).expanduser().resolve()
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {str(run_dir)!r}: exists and is not a folder")
    return run_dir, check_url(storage) if storage else str(run_dir / "study.journal")


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
        raise UserError(
            redact(
                f"--storage {url!r}: not a usable database URL ({type(e).__name__}: {e})".replace("\n", " ")
            )
        ) from None
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
        raise UserError(
            f"--storage {describe(url)!r}: its database driver is not installed: {e}{hint}"
        ) from None
    if u.get_backend_name() == "sqlite" and u.database and not Path(u.database).parent.is_dir():
        raise UserError(f"--storage {describe(url)!r}: folder of {u.database!r} does not exist")
    return url


def open_or_create(url: str) -> optuna.storages.BaseStorage:
    """The storage a run writes to, created when missing (a journal file, an RDB's tables); reading
    a finished study goes through analysis.open_storage, which never creates one."""
    if "://" not in url:
        return optuna.storages.JournalStorage(JournalAppendBackend(url))
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    except Exception as e:
        raise UserError(
            redact(f"--storage {describe(url)!r}: cannot open ({type(e).__name__}: {str(e).splitlines()[0]})")
        ) from None


def check_before_writing(url: str) -> None:
    """A driver's first step on its storage, under its DriverLock: a journal whose last record was
    cut short (a crash, a full disk) has that record dropped, a copy of the file kept, and one line
    printed; a journal damaged in the middle is refused (UserError), nothing written. An RDB keeps
    its own promise (a committed transaction survives, an uncommitted one is rolled back)."""
    if "://" in url:
        return

    try:
        said = repair_torn_tail(url)
    except OSError as e:  # unreadable, a read-only folder (the lock file cannot be made), an I/O error
        raise UserError(
            f"{describe(url)}: cannot check the journal before writing ({e.strerror or e})"
        ) from None
    if said:
        import sys

        print(said, file=sys.stderr, flush=True)


def describe(url: str) -> str:
    """A journal path relative to the current folder when inside it (shorter to copy)."""
    if "://" in url:
        return redact(url)
    rel = os.path.relpath(url)
    return url if rel.startswith("..") else rel


def find_study(storage, name: str):
    """The study called `name`, or None; never creates one."""
    for s in storage.get_all_studies():
        if s.study_name == name:
            return optuna.load_study(study_name=name, storage=storage)
    return None


class DriverLock:
    """One driver per run folder (its config.toml, ray/ and report): an flock the kernel drops when the
    process dies (even SIGKILL). Drivers of other run folders may share the storage; see Heartbeat."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "driver.lock"
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # mode: the umask's
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


class Heartbeat:
    """This driver's identity ("host:pid:start", user attr "driver" of the trials it asks) and its
    heartbeat: study system attr "driver:<id>" = {"beat": unix time, "stopped": bool}, refreshed
    every HEARTBEAT_S by a daemon thread, so that another driver on the same storage (another run
    folder, another host) can tell whether this one's RUNNING trials are alive (see recover)."""

    def __init__(self, storage, study_names, interval: float = HEARTBEAT_S):
        self.id = f"{socket.gethostname()}:{os.getpid()}:{time.time():.0f}"
        self.storage, self.study_names, self.interval = storage, list(study_names), interval
        self._stop = threading.Event()
        self._thread = None

    def beat(self, stopped: bool = False) -> None:
        for name in self.study_names:
            try:
                self.storage.set_study_system_attr(
                    self.storage.get_study_id_from_name(name),
                    "driver:" + self.id,
                    {"beat": time.time(), "stopped": stopped},
                )
            except Exception:  # a storage hiccup: the next beat tries again
                pass

    def _loop(self):
        while not self._stop.wait(self.interval):
            self.beat()

    def start(self) -> Heartbeat:
        self.beat()
        self._thread = threading.Thread(target=self._loop, name="studies-heartbeat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.beat(stopped=True)  # a later driver need not wait STALE_S

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def driver_alive(storage, study_name: str, driver: str | None, now: float | None = None) -> bool:
    """Whether the driver `driver` ("host:pid:start") still runs: its heartbeat is fresher than
    STALE_S and not stopped, and on this host its process exists too. No id (a trial of an older
    version): dead."""
    if not driver or driver.count(":") < 2:
        return False
    beat = storage.get_study_system_attrs(storage.get_study_id_from_name(study_name)).get("driver:" + driver)
    if (
        not isinstance(beat, dict)
        or beat.get("stopped")
        or (now or time.time()) - beat.get("beat", 0) > STALE_S
    ):
        return False
    host, pid, _ = driver.rsplit(":", 2)
    return _pid_alive(int(pid)) if host == socket.gethostname() else True


def recover(storage, study) -> list[int]:
    """Mark RUNNING trials of a dead driver FAIL ("interrupted") and enqueue their params again.

    RUNNING trials of a live driver (another run folder on the same storage; see driver_alive) are
    left alone. Returns the numbers of the requeued trials. WAITING trials (enqueued, never asked)
    are left to be asked. Known gap: a trial another driver is asking at this very moment (RUNNING,
    its "driver" attr not yet written: milliseconds) is taken for dead; that driver then logs that
    it could not tell Optuna. Two live drivers on one study also each run up to the budget.
    """
    requeued = []
    now = time.time()
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if driver_alive(storage, study.study_name, t.user_attrs.get("driver"), now):
            continue
        keep = {k: t.user_attrs[k] for k in KEEP_ON_REQUEUE if k in t.user_attrs}
        tid = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_user_attr(tid, "status", Status.INTERRUPTED)
        storage.set_trial_user_attr(tid, "error", "the driver stopped before this trial finished; requeued")
        storage.set_trial_state_values(tid, TrialState.FAIL)
        if t.params:
            study.enqueue_trial(
                t.params, user_attrs={**keep, "requeued_from": t.number}, skip_if_exists=False
            )
        requeued.append(t.number)
    return requeued


def counted(study) -> int:
    """Finished trials that count towards the budget: trained (or tried) ones. Interrupted ones were
    requeued instead; infeasible ones were never trained (see skipped)."""
    return sum(
        1
        for t in study.get_trials(deepcopy=False, states=FINISHED)
        if t.user_attrs.get("status") not in NOT_COUNTED
    )


def skipped(study) -> int:
    """Genomes recorded infeasible (outside [constraints]) and never trained."""
    return sum(
        1
        for t in study.get_trials(deepcopy=False, states=FINISHED)
        if t.user_attrs.get("status") == Status.INFEASIBLE
    )


# -- the journal file's integrity --------------------------------------------------------------------
# The journal file's integrity: a torn tail is found (and dropped, a copy kept) before anything is
# written, a damaged middle is refused, and a failed append leaves no torn tail behind.
#
# Optuna's JournalFileBackend writes one JSON record per line, each append under its lock file, and
# its reader skips an unterminated last line. Appending after such a line merges the two into one
# record nothing can read, so the driver checks the file's bytes (the public format) at open, under
# the same lock, and writes through JournalAppendBackend, which truncates a failed append back.


class StorageWriteError(UserError):
    """A write to the study's storage failed (disk full, file-size limit, I/O error); what was stored
    before it is intact and the run resumes with the same command once the cause is gone."""


@dataclass(frozen=True)
class JournalScan:
    records: int  # complete, valid records
    good_bytes: int  # their length: the file up to the end of the last good record
    size: int  # the file's size when scanned
    bad_line: int | None = None  # 1-based number of the first line that is not a complete record
    bad_offset: int | None = None  # its byte offset

    @property
    def torn(self) -> bool:
        """Only the last line is not a complete record: a write cut short."""
        return self.bad_line is not None


def _is_record(line: bytes) -> bool:
    if not line.endswith(b"\n"):
        return False
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(record, dict) and "op_code" in record


def scan(path: str | Path) -> JournalScan:
    """Read the journal's lines: how many complete records, where the first bad line is (if any).

    Raises UserError (one line) when a bad line has complete records after it: a damaged middle,
    which no automatic repair can put right."""
    records = good = offset = 0
    bad_line = bad_offset = None
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if bad_line is not None:  # a record never holds a raw newline: a torn write is one line
                raise UserError(
                    f"{path}: line {bad_line} (byte {bad_offset}) is not a complete journal record and "
                    f"more lines follow it: the file is damaged in the middle, not cut short; nothing was "
                    f"written (restore it from a copy; its first {bad_line - 1} lines are intact)"
                )
            if _is_record(line):
                records += 1
                good = offset + len(line)
            else:
                bad_line, bad_offset = number, offset
            offset += len(line)
    return JournalScan(records, good, offset, bad_line, bad_offset)


def _keep_copy(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 100):
        copy = path.with_name(f"{path.name}.torn-{stamp}" + (f"-{n}" if n > 1 else ""))
        try:
            with open(copy, "xb") as dst, open(path, "rb") as src:
                shutil.copyfileobj(src, dst)
                dst.flush()
                os.fsync(dst.fileno())
            return copy
        except FileExistsError:
            continue
        except OSError as e:
            copy.unlink(missing_ok=True)
            raise StorageWriteError(
                f"{path}: its last record was cut short, and a copy of the file could not be kept before "
                f"dropping it ({e.strerror or e}); nothing was changed (free space, then run again)"
            ) from None
    raise StorageWriteError(f"{path}: too many torn-tail copies named {path.name}.torn-{stamp}*")


def repair_torn_tail(path: str | Path) -> str | None:
    """Before a driver writes to the journal: drop a torn tail (bytes after the last complete record),
    keeping a copy of the whole file first. Returns the one line saying what was dropped, or None when
    the file ends in a complete record. Holds Optuna's journal lock, so a record another process is
    appending at this moment is never taken for torn. UserError for a damaged middle (see scan)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        found = scan(path)
        if not found.torn:
            return None
        copy = _keep_copy(path)
        with open(path, "r+b") as f:
            f.truncate(found.good_bytes)
            f.flush()
            os.fsync(f.fileno())
    finally:
        lock.release()
    dropped = found.size - found.good_bytes
    return (
        f"{path}: dropped a torn last record ({dropped} bytes after record {found.records}, a write cut "
        f"short by a crash or a full disk; Optuna never read it); the file as it was is kept in {copy.name}"
    )


class JournalAppendBackend(JournalFileBackend):
    """Optuna's journal file, written so that a failed append (full disk, file-size limit) is cut back
    to where it started, and an append never lands after a torn tail; either raises StorageWriteError.
    Reading is Optuna's own."""

    def __init__(self, file_path: str):
        self._append_lock = JournalFileSymlinkLock(file_path)  # Optuna's default lock, kept here to hold it
        self._path = file_path
        super().__init__(file_path, lock_obj=self._append_lock)

    def append_logs(self, logs: list[dict]) -> None:
        data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode("utf-8")
        self._append_lock.acquire()
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_APPEND)
            try:
                start = os.fstat(fd).st_size
                if start and os.pread(fd, 1, start - 1) != b"\n":
                    raise StorageWriteError(
                        f"{self._path}: ends in a torn record; not appending after it (run the study "
                        "again: its driver drops the torn record, keeping a copy)"
                    )
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                except OSError as e:
                    try:
                        os.ftruncate(fd, start)  # shrinking needs no space: the file is as it was
                    except OSError:  # left torn: the next append refuses, the next driver drops it
                        pass
                    raise StorageWriteError(
                        f"{self._path}: a write failed ({e.strerror or e}); the study is stored up to its "
                        "last complete record, and the same command resumes it once the cause is fixed"
                    ) from None
                try:
                    os.fsync(fd)
                except OSError as e:  # written whole (readers may have seen it): kept, but said
                    raise StorageWriteError(
                        f"{self._path}: a record was written but could not be flushed to disk "
                        f"({e.strerror or e}); check the disk, then run the same command to resume"
                    ) from None
            finally:
                os.close(fd)
        finally:
            self._append_lock.release()
