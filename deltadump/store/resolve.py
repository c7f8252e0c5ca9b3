"""Which backup a user means: an id, 'latest', a date (the newest restorable backup of that day or
before), or a rotation slot's path (relative to the backup folder, or absolute inside it). One rule,
used by restore, verify, drill and prune. "Latest" and "newest" follow commit order, never the clock."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path

from .records import BackupRecord


def resolve(
    backups: list[BackupRecord],
    ref: str,
    *,
    restorable: Callable[[BackupRecord], bool] = lambda b: b.status == "ok",
    dest: Path | None = None,
) -> BackupRecord | None:
    ok = [b for b in backups if restorable(b)]
    if ref == "latest":
        return ok[-1] if ok else None
    for b in reversed(backups):
        if b.id == ref:
            return b
    rel = ref
    if dest is not None and Path(ref).is_absolute():
        try:
            rel = Path(ref).resolve().relative_to(dest.resolve()).as_posix()
        except (ValueError, OSError):
            rel = ""
    for b in reversed(ok):
        if b.path and b.path == rel:
            return b
    try:
        day = date.fromisoformat(ref[:10])
    except ValueError:
        return None
    cands = [b for b in ok if b.started.date() <= day]
    return max(cands, key=lambda b: b.number, default=None)
