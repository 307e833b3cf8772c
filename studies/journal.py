"""The journal file's integrity: a torn tail is found (and dropped, a copy kept) before anything is
written, a damaged middle is refused, and a failed append leaves no torn tail behind.

Optuna's JournalFileBackend writes one JSON record per line, each append under its lock file, and
its reader skips an unterminated last line. Appending after such a line merges the two into one
record nothing can read, so the driver checks the file's bytes (the public format) at open, under
the same lock, and writes through JournalAppendBackend, which truncates a failed append back.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from searchspace.errors import UserError


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
