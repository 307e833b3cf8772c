"""A shipped file's sha256 beside it (`<file>.sha256`, in sha256sum's format): written by whatever writes
the file, checked before the file is trusted (the bundled images, the benchmark tables)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from searchspace.errors import UserError


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def expected(path: Path) -> str | None:
    """The sum shipped beside `path`; None where there is none."""
    side = sidecar(Path(path))
    return side.read_text().split()[0] if side.is_file() else None


def write(path: Path) -> None:
    """Write `path`'s sum beside it (after every write of `path`, so that it never goes stale)."""
    path = Path(path)
    sidecar(path).write_text(f"{digest(path)}  {path.name}\n")


def check(path: Path, what: str = "") -> bool:
    """True where `path` matches the sum beside it, False where it has none; a mismatch is a UserError."""
    path = Path(path)
    want = expected(path)
    if want is None:
        return False
    got = digest(path)
    if got != want:
        raise UserError(
            f"{what or path}: sha256 {got[:12]}... does not match {sidecar(path).name} ({want[:12]}...); "
            "the file is damaged or was edited by hand"
        )
    return True
