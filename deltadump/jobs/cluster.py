"""Whole-server backups ([database] databases = [...] or "all"): one run backs up the server's globals
(`pg_dumpall --globals-only`: roles, memberships, role settings, tablespaces) and then every database,
each as a backup of its own: the same steps as a single database's (dump, objects, commit, switch:
jobs/backup.py), its own record (`db`), rotation slot (`%D`), delta chain, drill record and retention
(BackupRecord.series). One database failing (dropped mid-run, permission denied) is recorded as its
failed backup and fails the run, but never stops the others.

The globals record opens each run and lists the databases the run backs up: the server as it was,
which is what `restore --server` restores, and what the next run compares with to announce a new
database or report one that disappeared (whose backups are kept: retention keeps the newest good
backup of every database)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..clock import now
from ..config import Config, parse_duration
from ..errors import DeltadumpError, DumpError, IntegrityError
from ..naming import GLOBALS_PART, check_parts, check_relpath, db_part, dbname_problem, render
from ..pg.cluster import list_databases, names_with_line_breaks, parse_globals, writes_names_safely
from ..pg.dump import run_pg_dumpall_globals, validate
from ..pg.inspect import not_utf8, shown
from ..store.records import BackupRecord
from .common import Reporter, Server, server_for, tool

if TYPE_CHECKING:
    from .backup import RunResult

GLOBALS = "(globals)"  # how the globals are named where a database's name would be (list, status, notifications)


@dataclass
class Unit:
    """One backup of a whole-server run: a database, or the globals (db None)."""

    db: str | None
    connect: Callable[[], Server]
    databases: list[str] = field(default_factory=list)  # the globals: the databases of the run

    @property
    def label(self) -> str:
        return "the globals" if self.db is None else f'database "{shown(self.db)}"'

    @property
    def series(self) -> str:
        return "globals" if self.db is None else f"db:{self.db}"

    def fields(self) -> dict[str, Any]:
        """What the unit's record says of it beside what every backup records."""
        if self.db is None:
            return {"format": "globals", "compress": 0, "databases": list(self.databases)}
        return {"db": self.db}

    def server(self) -> Server:
        """The server, connected to this unit's database (raises why it cannot be)."""
        srv = self.connect()
        if self.db is None:
            return srv
        return dataclasses.replace(srv, conn=srv.conn.with_db(self.db))

    def slot(self, template: str, started: datetime, earlier: int) -> str:
        """The rotation slot: the template with %D this unit's name."""
        rel = render(template, started, earlier, GLOBALS_PART if self.db is None else db_part(self.db))
        try:
            check_relpath(rel)
            check_parts(rel, f"the slot name {rel!r}")
        except ValueError as exc:
            hint = "change [backup] name: %D alone may not be a folder's name (db-%D/...)"
            raise DumpError(f"{self.label} cannot be backed up: {exc}", hint=hint) from None
        return rel


@dataclass
class Outcome:
    records: list[BackupRecord] = field(default_factory=list)  # committed, in order
    failures: dict[str, str] = field(default_factory=dict)  # unit label -> why its backup failed
    notes: list[str] = field(default_factory=list)  # databases new, or no longer there
    unrecorded: list[str] = field(default_factory=list)  # failed units no record can name (a name of no UTF-8)


def previous_run(backups: list[BackupRecord]) -> BackupRecord | None:
    """The globals record that opened the newest run (ok or failed)."""
    return next((b for b in reversed(backups) if b.format == "globals"), None)


def plan_run(cfg: Config, backups: list[BackupRecord], rep: Reporter) -> tuple[list[Unit], list[str]]:
    """The units of this run (the globals first, then each database by name) and what changed since the
    last run. When the server cannot be reached, every unit fails with that error: the databases of the
    last run (or those the config names) each get their failed record."""
    want = cfg.database.databases
    prev = previous_run(backups)
    error: DeltadumpError | None = None
    srv: Server | None = None
    try:
        srv = server_for(cfg)
        names = list(want) if isinstance(want, list) else list_databases(srv.conn)
    except DeltadumpError as exc:
        error = exc
        names = list(want) if isinstance(want, list) else list(prev.databases if prev else [])
    if want == "all":
        names = [n for n in names if n not in cfg.database.exclude]
    bad: dict[str, str] = {}
    for n in names:
        if (why := dbname_problem(n)) is not None:
            bad[n] = f"{why}; rename it to back it up" if not_utf8(n) else why

    def connect(db: str | None) -> Callable[[], Server]:
        def go() -> Server:
            if db in bad:
                name = f"'{shown(db)}'" if not_utf8(db) else repr(db)  # (bytes of no UTF-8 as \\xNN)
                raise DumpError(f"database {name} cannot be backed up: {bad[db]}")
            if error is not None:
                raise error
            assert srv is not None
            return srv

        return go

    good = sorted(n for n in names if n not in bad)
    units = [Unit(None, connect(None), good)] + [Unit(n, connect(n)) for n in sorted(names)]
    notes: list[str] = []
    if error is None and prev is not None:
        where = "on the server" if want == "all" else "in [database] databases"
        for n in good:
            if n not in prev.databases:
                notes.append(f'new database "{n}": backed up for the first time')
        for n in prev.databases:
            if n not in names:
                notes.append(f'database "{n}" is no longer {where}: not backed up, its backups are kept')
    elif error is None:
        rep.info(f"whole-server backup: the globals and {len(good)} database(s): {', '.join(good)}")
    return units, notes


def back_up(cfg: Config, backups: list[BackupRecord], rep: Reporter, one: Callable[[Unit], BackupRecord]) -> Outcome:
    """Every unit of the run through `one` (the single-database steps); a failure is reported and the
    next unit goes on. Raises only when no unit could be backed up at all."""
    units, notes = plan_run(cfg, backups, rep)
    out = Outcome(notes=notes)
    for n in notes:
        rep.info(n)
    for unit in units:
        try:
            rec = one(unit)
        except DeltadumpError as exc:
            out.failures[unit.label] = exc.message
            if unit.db is not None and dbname_problem(unit.db) is not None:
                out.unrecorded.append(unit.label)
            rep.info(f"{unit.label}: backup FAILED: {exc.message}")
            continue
        out.records.append(rec)
        rep.info(f"{unit.label}: backup {rec.id} committed ({rec.size / 1e6:.1f} MB)")
    if not out.records:
        raise DumpError(failure_text(out, len(units)))
    return out


def failure_text(out: Outcome, total: int) -> str:
    first = next(iter(out.failures.items()), ("", ""))
    more = f" (and {len(out.failures) - 1} more)" if len(out.failures) > 1 else ""
    return f"{len(out.failures)} of {total} backups of the run failed: {first[0]}: {first[1]}{more}"


def run_failure_text(res: RunResult) -> str:
    """The one line of a run in which some backups failed: which, and which are safe."""
    total = len(res.records) + len(res.failures)
    fails = "; ".join(f"{label}: {why}" for label, why in res.failures.items())
    safe = ", ".join(label_of(r) for r in res.records)
    return f"{len(res.failures)} of {total} backups of the run failed ({fails}); committed: {safe}"


def run_failure_hint(unrecorded: list[str]) -> str:
    """Where the failures of a run are to be seen, and which of them are not."""
    hint = "the databases that failed are recorded as failed backups (deltadump list)"
    if unrecorded:
        hint += f"; not {', '.join(unrecorded)}: no record can hold a name of no UTF-8 (rename it)"
    return hint


def dump_globals(cfg: Config, srv: Server, tmp: Path, rep: Reporter) -> None:
    """pg_dumpall --globals-only into `tmp` (created 0600 under the run's umask), checked complete."""
    dumpall = tool("pg_dumpall", cfg, srv.major)
    if not writes_names_safely(dumpall.version) and (odd := names_with_line_breaks(srv.conn)):
        raise DumpError(f"the globals are not backed up: {odd[0]} has a line break in its name, which pg_dumpall "
                        f"{dumpall.version} writes into a comment where the rest of the name would be read as SQL "
                        "on restore (CVE-2025-8714)",
                        hint="install PostgreSQL client programs of a fixed release (13.22, 14.19, 15.14, 16.10, "
                             "17.6 or newer), or rename it")  # fmt: skip
    passwords = cfg.backup.globals == "with-passwords"
    rep.info(f"dumping the globals of {srv.conn.where} (roles, memberships, tablespaces"
             f"{', with the roles password hashes' if passwords else ', without passwords'}) with pg_dumpall "
             f"{dumpall.version}")  # fmt: skip
    run_pg_dumpall_globals(dumpall.path, srv.conn, tmp, passwords=passwords)
    validate(dumpall.path, tmp, "globals")
    try:  # what restore --server will read: a script it would refuse is no backup (a name renamed meanwhile)
        parse_globals(tmp.read_text(encoding="utf-8"))
    except (IntegrityError, UnicodeDecodeError) as exc:
        raise DumpError(f"the globals dump cannot be restored: {exc}") from exc


def label_of(rec: BackupRecord) -> str:
    """The database column: a database's name, the globals, or '' (a single-database config's)."""
    if rec.format == "globals":
        return GLOBALS
    return rec.db or ""


# -- the state of every database, for status and notifications -----------------------------------------


@dataclass
class DatabaseState:
    database: str  # a name, or GLOBALS
    last_id: str | None
    last_status: str | None
    last_error: str
    last_good_id: str | None
    last_good_age_hours: float | None
    stale: bool
    in_last_run: bool  # False: no longer backed up (gone from the server or the config); backups kept


def database_states(cfg: Config, backups: list[BackupRecord]) -> list[DatabaseState]:
    """Per database of the folder (and the globals): its newest backup and newest good one. A database
    of the last run whose newest good backup is older than [schedule] alert_after (or missing) is stale."""
    alert = parse_duration(cfg.schedule.alert_after)
    prev = previous_run(backups)
    current = set(prev.databases) if prev is not None else set()
    series: dict[str, list[BackupRecord]] = {}
    for b in backups:
        if b.format == "globals" or b.db is not None:
            series.setdefault(label_of(b), []).append(b)
    if prev is not None:
        for n in current:
            series.setdefault(n, [])
    out = []
    for name in sorted(series, key=lambda n: (n != GLOBALS, n)):
        recs = series[name]
        last = recs[-1] if recs else None
        good = next((b for b in reversed(recs) if b.status == "ok"), None)
        age = (now() - good.started).total_seconds() if good else None
        active = name == GLOBALS or name in current
        out.append(DatabaseState(name, last.id if last else None, last.status if last else None,
                                 last.error if last else "", good.id if good else None,
                                 round(age / 3600, 2) if age is not None else None,
                                 active and (age is None or age > alert), active))  # fmt: skip
    return out


def last_successes(backups: list[BackupRecord]) -> dict[str, float | None]:
    """When the newest good backup of each database of the last run (and of the globals) finished."""
    prev = previous_run(backups)
    out: dict[str, float | None] = {}
    for name in [GLOBALS, *(prev.databases if prev is not None else [])]:
        good = next((b for b in reversed(backups) if b.status == "ok" and label_of(b) == name), None)
        out[name] = (good.finished or good.started).timestamp() if good is not None else None
    return out


def summary(cfg: Config, res: RunResult) -> dict[str, object]:
    """What a whole-server run's notification says beside the usual: every backup, what changed."""
    if not cfg.whole_server:
        return {}
    backups = [{"database": label_of(r), "id": r.id, "size": r.size, "path": str(cfg.dest / r.path)}
               for r in res.records]  # fmt: skip
    out: dict[str, object] = {  # the run as a whole: its first backup's id, the folder, the sums
        "id": res.records[0].id,
        "path": str(cfg.dest),
        "backups": backups,
        "size": sum(r.size for r in res.records),
        "duration": round(sum(r.duration for r in res.records), 3),
    }
    if res.notes:
        out["databases_changed"] = list(res.notes)
    if res.failures:
        out["failed"] = dict(res.failures)
    return out
