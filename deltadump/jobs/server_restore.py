"""`restore --server`: a whole-server backup (jobs/cluster.py) onto another, empty server. Everything is
checked before anything is created: the target answers, none of the databases to restore exists there
with content (a non-empty one is refused, as with --to-db), and the globals backup is read against its
sha256 and parsed (a statement of an unknown form refuses it). Then the roles first (those the target
already has are kept, never altered: pg/cluster.py), the tablespaces, then every database of the run
(or --only NAME) with `pg_restore --create`, which creates it with its original owner, encoding, locale,
database-level settings (`ALTER DATABASE ... SET`, `ALTER ROLE ... IN DATABASE ... SET`), privileges
and comment, as pg_dump recorded them. A database the target already has (empty: `postgres` on a new
server) gets the backup's contents, its owner and settings staying as they are (as pg_dumpall does).
Each restored database is then drilled: every table compared with the row counts and checksums
recorded at backup time. One database failing is reported and the others go on; a database this
restore created and could not complete is dropped again.

The target's password comes from --password-file or libpq's usual sources (PGPASSWORD, ~/.pgpass),
never a command line: pg_restore gets it through the memfd passfile (pg/conn.py), which names the
maintenance database it connects to first and the database it creates."""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config
from ..errors import DeltadumpError, IntegrityError, RestoreError
from ..fsio import Pinned, checkpoint, open_regular_under, work_folder
from ..pg import database
from ..pg.cluster import GlobalsOutcome, apply_globals, parse_globals
from ..pg.conn import check_dbname
from ..pg.dump import run_restore
from ..pg.inspect import table_stats
from ..store.records import BackupRecord
from ..store.resolve import ServerRun, resolve_run
from .common import Reporter, Server, SilentReporter, connect, major_of, tool
from .drill import DrillResult, compare
from .repo import file_location
from .restore import Source, _work_parent, checked_dump, open_source

MAX_GLOBALS = 256 << 20  # a globals script of hundreds of thousands of roles is still below this


@dataclass
class DatabaseRestore:
    name: str
    backup: BackupRecord | None
    created: bool = False
    drill: DrillResult | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.drill is not None and self.drill.ok


@dataclass
class ServerRestoreResult:
    run: ServerRun
    globals: GlobalsOutcome
    databases: list[DatabaseRestore] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(d.ok for d in self.databases)

    @property
    def failed(self) -> list[DatabaseRestore]:
        return [d for d in self.databases if not d.ok]


def restore_server(
    cfg: Config, ref: str, to_dsn: str, *, password_file: str = "", only: str | None = None, jobs: int = 1,
    reporter: Reporter | None = None, from_offsite: bool = False, identity: Path | None = None,
    trust: str | None = None, allow_older: bool = False, copy: str | None = None,
) -> ServerRestoreResult:  # fmt: skip
    """`from_offsite`: from the offsite copy named `copy` (None: the only one) alone."""
    rep = reporter or SilentReporter()
    t0 = time.monotonic()
    srv = connect(to_dsn, password_file, cfg.database.pg_bin)
    check_dbname(srv.conn.dbname, "the database of --to-dsn")
    with (
        open_source(cfg, rep, from_offsite=from_offsite, identity=identity, trust=trust,
                    allow_older=allow_older, copy=copy) as src,
        work_folder(_work_parent(cfg), "restore") as work,
    ):  # fmt: skip
        run = resolve_run(src.backups, ref, restorable=src.restorable, dest=cfg.dest)
        if run is None:
            raise RestoreError(f"no whole-server backup {ref!r} is recorded in {src.repo.describe()}",
                               hint="restore --server restores the runs of [database] databases")  # fmt: skip
        names = list(run.databases)
        if only is not None:
            if only not in run.databases:
                raise RestoreError(f'database "{only}" is not among the databases of run {run.anchor.id} '
                                   f"({', '.join(names) or 'none'})")  # fmt: skip
            names = [only]
        if run.globals is None:
            raise RestoreError(f"no restorable globals backup (roles, tablespaces) as of run {run.anchor.id}")
        _report_run(run, names, rep)
        # the target first: every database to restore absent or empty, before anything is created
        states = {n: _target_state(srv, n) for n in names if run.databases[n] is not None}
        statements = parse_globals(_read_globals(cfg, src, run.globals, work))
        checkpoint("globals checked")
        outcome = apply_globals(srv.conn, statements)
        _report_globals(outcome, srv, rep)
        result = ServerRestoreResult(run, outcome)
        for i, name in enumerate(names):
            rec = run.databases[name]
            one = DatabaseRestore(name, rec)
            result.databases.append(one)
            if rec is None:
                one.error = f'no restorable backup of database "{name}" as of run {run.anchor.id}'
                rep.info(one.error)
                continue
            t1 = time.monotonic()
            try:
                one.created = _restore_one(cfg, src, rec, name, states[name], srv, work / f"db{i}", jobs, rep)
                one.drill = _drill(src, rec, name, srv, rep)
                one.drill.seconds = round(time.monotonic() - t1, 3)
            except DeltadumpError as exc:
                one.error = exc.message
                rep.info(f'database "{name}": FAILED: {exc.message}')
    from .drill import _record

    for d in result.databases:  # each drill, as a note on its backup (when the backup folder holds it)
        if d.drill is not None and d.backup is not None:
            _record(cfg, d.backup, d.drill, from_offsite, rep)
    result.seconds = time.monotonic() - t0
    return result


def _report_run(run: ServerRun, names: list[str], rep: Reporter) -> None:
    a = run.anchor
    rep.info(f"restoring the server as backed up by run {a.id} ({a.started.isoformat(timespec='seconds')}): "
             f"{len(names)} database(s)")  # fmt: skip
    if run.globals is not None and run.globals.id != a.id:
        rep.info(f"the globals of that run failed; using the roles of the earlier backup {run.globals.id}")
    for n in names:
        rec = run.databases[n]
        if rec is not None and rec.number < a.number:
            rep.info(f'database "{n}": its backup in that run failed; using the earlier {rec.id}')


def _target_state(srv: Server, name: str) -> str:
    try:
        return database.target_state(srv.conn, name, clean=False)
    except RestoreError as exc:
        raise RestoreError(exc.message, hint="restore --server restores onto an empty server: drop that database "
                           "there, or restore the others with --only NAME") from exc  # fmt: skip


def _read_globals(cfg: Config, src: Source, rec: BackupRecord, work: Path) -> str:
    """The globals script, checked against its record's size and sha256 (the bytes checked are those read)."""
    import hashlib

    if len(rec.files) != 1:
        raise IntegrityError(f"globals backup {rec.id} records {len(rec.files)} files, not one")
    want = rec.files[0]
    if want.size > MAX_GLOBALS:
        raise IntegrityError(f"globals backup {rec.id} is larger than any globals script ({want.size} bytes)")
    if src.offsite is not None:
        from .offsite import Offsite

        assert isinstance(src.offsite, Offsite)
        path = src.offsite.fetch_full(rec, work / "globals")
        data = path.read_bytes()[: MAX_GLOBALS + 1]
    else:
        located = file_location(src.repo, cfg.dest, rec, want)
        try:
            fd = open_regular_under(cfg.dest, located.relative_to(cfg.dest).as_posix(), want.size)
        except OSError as exc:
            raise IntegrityError(f"{located}: cannot be opened ({exc.strerror})") from exc
        except IntegrityError as exc:
            raise IntegrityError(f"{located}: {exc.message}", hint="restore another run") from exc
        with open(fd, "rb") as f:
            data = f.read(MAX_GLOBALS + 1)
    if len(data) != want.size or hashlib.sha256(data).hexdigest() != want.sha256:
        raise IntegrityError(f"globals backup {rec.id} is damaged: sha256 mismatch", hint="restore another run")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IntegrityError(f"globals backup {rec.id} is not UTF-8 text") from exc


def _report_globals(outcome: GlobalsOutcome, srv: Server, rep: Reporter) -> None:
    where = srv.conn.where.split("/")[0]
    if outcome.created:
        rep.info(f"created on {where}: {', '.join(outcome.created)}"
                 + ("" if outcome.passwords else " (without passwords: the backup was made without them, [backup] "
                    'globals = "without-passwords"; set them with ALTER ROLE ... PASSWORD)'))  # fmt: skip
    if outcome.kept:
        rep.info(f"already on the target, kept as they are (never altered): {', '.join(outcome.kept)}")
    if outcome.skipped:
        rep.info(f"left out, as they would alter what the target already has: {'; '.join(outcome.skipped)}")


def _restore_one(
    cfg: Config, src: Source, rec: BackupRecord, name: str, state: str, srv: Server, work: Path, jobs: int,
    rep: Reporter,
) -> bool:  # fmt: skip
    """Restore one database's backup onto the target; True when it was created (with --create)."""
    pg_restore = tool("pg_restore", cfg, max(srv.major, major_of(rec.pg_dump_version))).path
    work.mkdir(mode=0o700)
    try:
        with Pinned(work) as held, checked_dump(cfg, src, rec, work, rep) as (checked, _source):
            checkpoint("dump checked")
            dump = held.path(checked)  # (what pg_restore reads: through the folder's descriptor, restore.py)
            if state == "empty":
                rep.info(f'database "{name}" is on the target already (empty): backup {rec.id} is restored into it, '
                         "its owner and settings stay as they are")  # fmt: skip
                run_restore(pg_restore, srv.psql, srv.conn.with_db(name), dump, rec.format, jobs=jobs,
                            pass_fds=held.fds)  # fmt: skip
                return False
            rep.info(f'database "{name}": restoring backup {rec.id} with its owner and settings (pg_restore --create)')
            admin = dataclasses.replace(srv.conn.with_db(database.admin_db(name)), also_dbs=(name,))
            try:
                run_restore(pg_restore, srv.psql, admin, dump, rec.format, jobs=jobs, extra=["--create"],
                            pass_fds=held.fds)  # fmt: skip
            except DeltadumpError as exc:
                if f'database "{name}" already exists' not in exc.detail:  # never one this restore did not create
                    try:
                        database.drop(srv.conn, name)
                    except DeltadumpError as drop_exc:
                        rep.info(f'could not drop the incomplete database "{name}": {drop_exc.message}')
                raise
            return True
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _drill(src: Source, rec: BackupRecord, name: str, srv: Server, rep: Reporter) -> DrillResult:
    """The restored database against the row counts (and checksums) recorded when it was backed up."""
    want = src.repo.tables(rec)
    got = table_stats(srv.conn, name, checksums=any(v[1] is not None for v in want.values()))
    res = compare(want, got)
    res.backup = rec
    verdict = "passed" if res.ok else f"FAILED: {'; '.join(res.differences[:3])}"
    rep.info(f'database "{name}": drill {verdict} ({len(res.rows)} tables)')
    if not want and got:
        res.differences.append("no drill record: the backup counted no table, the restored database has some")
    return res
