"""Which backup a user means: an id, 'latest', a date (the newest restorable backup of that day or
before), or a rotation slot's path (relative to the backup folder, or absolute inside it). One rule,
used by restore, verify, drill and prune. "Latest" and "newest" follow commit order, never the clock.

A whole-server config's folder holds several databases' backups: `db` picks one database's; without
it, only what names one backup (an id, a path) is accepted, 'latest' and dates being ambiguous.
`resolve_run` picks a whole run for restore --server."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from ..errors import UsageError
from .records import BackupRecord


def resolve(
    backups: list[BackupRecord],
    ref: str,
    *,
    restorable: Callable[[BackupRecord], bool] = lambda b: b.status == "ok",
    dest: Path | None = None,
    db: str | None = None,
) -> BackupRecord | None:
    if db is not None:
        backups = [b for b in backups if b.db == db and b.format != "globals"]
        if not backups:
            raise UsageError(f"no backup of database {db!r} is recorded")
    ok = [b for b in backups if restorable(b)]
    named = _named(backups, ok, ref, dest)
    if named is not None or (ref != "latest" and _day(ref) is None):
        return named
    if len({b.series for b in ok}) > 1:
        names = sorted({b.db for b in ok if b.db is not None})
        raise UsageError(
            f"{ref!r} is ambiguous: the backups are of several databases ({', '.join(names)}) and the globals",
            hint="give --db NAME, or a backup id from `deltadump list`",
        )
    if ref == "latest":
        return ok[-1] if ok else None
    day = _day(ref)
    cands = [b for b in ok if day is not None and b.started.date() <= day]
    return max(cands, key=lambda b: b.number, default=None)


_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _day(ref: str) -> date | None:
    """The day `ref` is, written exactly YYYY-MM-DD; anything more or else is not a date (a mistyped
    id or time that begins with a date names no backup: it must never quietly pick that day's)."""
    if not _DATE.fullmatch(ref):
        return None
    try:
        return date.fromisoformat(ref)
    except ValueError:
        return None


def _named(backups: list[BackupRecord], ok: list[BackupRecord], ref: str, dest: Path | None) -> BackupRecord | None:
    """The backup whose id or slot path `ref` is."""
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
    return None


@dataclass
class ServerRun:
    """What restore --server restores: the globals of a run and the newest restorable backup, as of the
    end of that run, of each database the run backed up (None: none is restorable)."""

    anchor: BackupRecord  # the run's globals record (ok or failed)
    globals: BackupRecord | None
    databases: dict[str, BackupRecord | None] = field(default_factory=dict)


def resolve_run(
    backups: list[BackupRecord],
    ref: str,
    *,
    restorable: Callable[[BackupRecord], bool] = lambda b: b.status == "ok",
    dest: Path | None = None,
) -> ServerRun | None:
    """A whole-server run: 'latest' (the newest), a date (the newest run started on or before it), the
    id or path of its globals backup, or the id of any backup it made. Each run begins with its globals
    record, which lists the databases the run backs up; a database's backup is the newest restorable one
    committed before the next run began."""
    runs = [b for b in backups if b.format == "globals"]
    if not runs:
        return None
    anchor: BackupRecord | None = None
    if ref == "latest":
        anchor = runs[-1]
    elif (named := _named(backups, [b for b in backups if restorable(b)], ref, dest)) is not None:
        anchor = next((r for r in reversed(runs) if r.number <= named.number), None)
    elif (day := _day(ref)) is not None:
        anchor = next((r for r in reversed(runs) if r.started.date() <= day), None)
    if anchor is None:
        return None
    later = [r.number for r in runs if r.number > anchor.number]
    end = later[0] if later else None

    def newest(series: str) -> BackupRecord | None:
        cands = [b for b in backups if b.series == series and restorable(b) and (end is None or b.number < end)]
        return cands[-1] if cands else None

    out = ServerRun(anchor, newest("globals"))
    for name in anchor.databases:
        out.databases[name] = newest(f"db:{name}")
    return out
