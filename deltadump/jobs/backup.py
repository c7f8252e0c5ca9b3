"""The backup job, as a pipeline of named steps (each with its own failure policy):

    tidy -> dump -> store objects -> commit -> switch slot -> offsite -> prune -> after-command
    (then, in backup_and_report: drill when due -> notify)

A whole-server config (jobs/cluster.py) runs dump -> objects -> commit -> switch once for its globals
and once for each database, each a backup of its own; offsite, prune and the notification once a run.

Commit first, switch second: the new dump is validated and hashed at its temporary name, its chain
objects are written, then its record is committed together with the pending switch of its slot (the
commit point); only then does the temporary name become the rotation slot, and a second commit says
so. A kill anywhere leaves either the old state (nothing committed: the temporary files are removed
by the next run) or a committed backup whose switch the next run completes. The previous backup in
that slot is never unrecorded before the new one is recorded.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..clock import now
from ..config import Config
from ..errors import DeltadumpError, DumpError, IntegrityError, StorageError
from ..fsio import checkpoint, fsync_dir, make_dirs, sha256_file, storage_error, tmp_name
from ..naming import check_relpath, earlier_days, render
from ..pg.conn import Conn
from ..pg.dump import data_files, run_pg_dump, validate
from ..pg.snapshot import SnapshotSession
from ..store.chain import same_series
from ..store.lock import RunLock
from ..store.records import BackupRecord, FileRecord, Pending, TablesRecord
from ..store.repository import Change, Repository, clock_went_back
from ..store.retention import Plan, Policy
from ..targets import Target
from . import after, chain, cluster
from .common import Reporter, SilentReporter, check_dest, server_for, tool
from .offsite import SyncStats, sync_after_backup
from .prune import prune_local
from .repo import carry_out_switches, open_for_backup, tidy
from .ring import prepare, ring_of


@dataclass
class RunResult:
    """What a backup run did, for the caller (CLI, scheduler, metrics)."""

    record: BackupRecord
    offsite: SyncStats | None = None
    offsite_error: DeltadumpError | None = None
    pruned: Plan | None = None
    damaged: list[str] = field(default_factory=list)  # damaged files set aside before this backup
    notes: list[str] = field(default_factory=list)
    records: list[BackupRecord] = field(default_factory=list)  # whole-server: every backup committed
    failures: dict[str, str] = field(default_factory=dict)  # whole-server: what failed, and why
    unrecorded: list[str] = field(default_factory=list)  # whole-server: failures no record holds

    def __post_init__(self) -> None:
        self.records = self.records or [self.record]


def _fsync_tree(p: Path) -> None:
    if p.is_dir():
        for f in p.rglob("*"):
            if f.is_file():
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(p)
    else:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dir(p.parent)


def file_records(dest: Path, tmp: Path, rel: str) -> list[FileRecord]:
    """Size and sha256 of a dump (every file of a folder), named as they will be in the slot `rel`."""
    paths = sorted(p for p in tmp.rglob("*") if p.is_file()) if tmp.is_dir() else [tmp]
    out = []
    for p in paths:
        if p.is_symlink():
            raise StorageError(f"{p} is a symbolic link; a dump never contains one")
        try:
            size, digest = sha256_file(p)
        except OSError as exc:
            raise storage_error(exc, p, "reading") from exc
        name = rel if p == tmp else f"{rel}/{p.relative_to(tmp).as_posix()}"
        out.append(FileRecord(path=check_relpath(name), size=size, sha256=digest))
    return out


def _physical(cfg: Config, major: int, conn: Conn, tmp: Path, dest: Path, rep: Reporter) -> None:
    from ..fsio import work_folder
    from ..pg import physical

    pg_basebackup = tool("pg_basebackup", cfg, major)
    rep.info(f"snapshot backup of {conn.where} with pg_basebackup {pg_basebackup.version} (tar, WAL, manifest)")
    physical.run_basebackup(pg_basebackup.path, conn, tmp, compress=cfg.backup.compress,
                            progress=lambda n: rep.progress("snapshot", n))  # fmt: skip
    verifier = pg_basebackup.sibling("pg_verifybackup") or tool("pg_verifybackup", cfg, major).path
    with work_folder(dest, "verify") as scratch:
        physical.verify(verifier, tmp, physical.backup_files(tmp), scratch / "v")


def _remove(p: Path) -> None:
    with contextlib.suppress(OSError):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def new_id(started: Any) -> str:
    return str(started.strftime("%Y%m%dT%H%M%S")) + "-" + secrets.token_hex(2)


def backup(cfg: Config, reporter: Reporter | None = None, *, wait: bool = False) -> BackupRecord:
    return run(cfg, reporter, wait=wait).record


def run(cfg: Config, reporter: Reporter | None = None, *, wait: bool = False) -> RunResult:
    """One backup run, under the backup folder's lock. Raises when the backup itself failed (after
    recording the failure); an offsite failure is returned in the result, never raised here."""
    rep = reporter or SilentReporter()
    if problem := cfg.delta_conflict():
        from ..errors import ConfigError

        raise ConfigError(problem)
    dest = cfg.dest
    if (ring := ring_of(cfg)) is not None:  # dest is a share: the state folder here, the slots there
        prepare(cfg, ring)
    check_dest(dest)
    old_umask = os.umask(0o077)  # every file and folder we (and pg_dump) create: owner only
    try:
        with RunLock(dest, wait=wait):
            repo, damaged = open_for_backup(cfg, rep)
            tidy(repo, dest, rep, ring)
            cont = _continue_offsite(cfg, repo, rep) if repo.head is None else None
            if cfg.whole_server:  # the globals, then every database: each through the same steps
                out = cluster.back_up(cfg, repo.backups(), rep, lambda unit: _commit_and_switch(
                    cfg, repo, dest, rep, ring, cont if repo.head is None else None, unit))  # fmt: skip
                res = RunResult(out.records[-1], damaged=damaged, notes=out.notes, records=out.records,
                                failures=out.failures, unrecorded=out.unrecorded)  # fmt: skip
            else:
                res = RunResult(_commit_and_switch(cfg, repo, dest, rep, ring, cont), damaged=damaged)
            res.offsite, res.offsite_error = sync_after_backup(cfg, repo, rep)
            if res.offsite_error is None or cfg.delta.enabled or not cfg.offsite_enabled:
                k = cfg.keep
                res.pruned = prune_local(cfg, repo, Policy(k.daily, k.weekly, k.monthly, k.keep_last), rep)
            for r in res.records if cfg.backup.after else []:
                try:
                    after.start(cfg, dest, r.id, cfg.slot_where(r.path), cfg.backup.after, cfg.backup.after_timeout)
                except OSError as exc:  # never fails the backup
                    rep.info(f"could not start the after-command: {exc}")
            return res
    finally:
        os.umask(old_umask)


def _continue_offsite(cfg: Config, repo: Repository, rep: Reporter) -> tuple[str, int] | None:
    """A new (empty) backup folder whose offsite copies already hold a repository signed with this
    host's key (the old folder was lost or replaced): the new folder continues that repository, its
    numbers above every number the copies hold, so that they carry on. None otherwise."""
    if not cfg.offsite_enabled:
        return None
    from .offsite import continue_repository

    found = continue_repository(cfg, rep)
    if found is not None:
        rep.info(f"this backup folder is new; it continues the repository {found[0]} of the offsite copy "
                 f"(records up to {found[1]})")  # fmt: skip
    return found


def _commit_and_switch(
    cfg: Config, repo: Repository, dest: Path, rep: Reporter, ring: Target | None, cont: tuple[str, int] | None,
    unit: cluster.Unit | None = None,
) -> BackupRecord:  # fmt: skip
    rec = _dump_and_commit(cfg, repo, dest, rep, cont, unit)  # the commit point
    try:
        carry_out_switches(repo, dest, rep, ring)
    except DeltadumpError as exc:  # committed and restorable from its temporary name
        rep.info(f"backup {rec.id} is committed; its slot switch is completed by the next run ({exc})")
    return rec


def _dump_and_commit(
    cfg: Config, repo: Repository, dest: Path, rep: Reporter, cont: tuple[str, int] | None = None,
    unit: cluster.Unit | None = None,
) -> BackupRecord:  # fmt: skip
    b = cfg.backup
    fmt: str = "physical" if b.kind == "physical" else b.format
    compress = 0 if cfg.delta.enabled else b.compress  # deltas need raw dumps (delta_conflict checked this)
    started = now()
    t0 = time.monotonic()
    if clock_went_back(repo.head, started):
        assert repo.head is not None and repo.head.newest_time is not None
        rep.info(f"the clock went back: it says {started.isoformat(timespec='seconds')}, but a commit was made at "
                 f"{repo.head.newest_time.isoformat(timespec='seconds')}; backups are ordered by commit, not by "
                 "clock")  # fmt: skip
    fields: dict[str, Any] = {"id": new_id(started), "started": started, "format": fmt, "compress": compress}
    fields.update(unit.fields() if unit is not None else {})  # whole-server: which database, or the globals
    fmt = fields["format"]
    tables: dict[str, tuple[int, str | None]] = {}
    tmp: Path | None = None
    objects_of = fields["id"]
    try:
        srv = server_for(cfg) if unit is None else unit.server()
        fields.update(database=srv.conn.where, server_version=srv.version)
        pg_dump = tool("pg_dump", cfg, srv.major)
        pg_restore = pg_dump.sibling("pg_restore") or tool("pg_restore", cfg, srv.major).path
        fields["pg_dump_version"] = pg_dump.version
        days, last = repo.success_days()
        earlier = earlier_days(days, last, started.date())
        rel = check_relpath(render(b.name, started, earlier)) if unit is None else unit.slot(b.name, started, earlier)
        fields["path"] = rel
        slot = dest / rel
        try:
            make_dirs(slot.parent)
        except OSError as exc:
            raise storage_error(exc, slot.parent, "creating") from exc
        tmp = tmp_name(slot)
        if b.kind == "physical":
            _physical(cfg, srv.major, srv.conn, tmp, dest, rep)
        elif fmt == "globals":
            cluster.dump_globals(cfg, srv, tmp, rep)
        else:
            rep.info(f"dumping {srv.conn.where} (PostgreSQL {srv.version}) with pg_dump {pg_dump.version} to {slot}")
            with SnapshotSession(srv.conn) as snap:  # the drill record and the dump see the same data
                tables = snap.table_stats(cfg.drill.checksums)
                run_pg_dump(pg_dump.path, srv.conn, tmp, fmt=fmt, compress=compress, options=list(b.options),
                            progress=lambda n: rep.progress("dump", n), snapshot=snap.snapshot_id,
                            jobs=cfg.dump_jobs)  # fmt: skip
            validate(pg_restore, tmp, fmt)
        rep.done("dump")
        try:
            _fsync_tree(tmp)
            checkpoint("dump durable")
            files = file_records(dest, tmp, rel)
            fields.update(files=files, size=sum(f.size for f in files))
            if cfg.delta.enabled and fmt != "globals":  # one chain per database
                mine = same_series(repo.backups(), unit.series if unit is not None else "")
                if fmt == "directory":
                    keys = data_files(pg_restore, tmp)  # each table's data file, by the table's identity
                    fields.update(chain.make_dir_chain_objects(cfg, dest, mine, fields["id"], tmp, rel, files,
                                                               keys, rep))  # fmt: skip
                else:
                    fields.update(chain.make_chain_objects(cfg, dest, mine, fields["id"], tmp, files[0].sha256,
                                                       rep))  # fmt: skip
        except OSError as exc:
            raise storage_error(exc, slot, "saving") from exc
        fields.update(status="ok", finished=now(), duration=round(time.monotonic() - t0, 3), after=bool(b.after))
        tmp_rel = tmp.relative_to(dest).as_posix()
        old_rel = tmp_name(slot).relative_to(dest).as_posix() if tmp.is_dir() else None

        def make(n: int) -> list[BackupRecord | TablesRecord]:
            rid = repo.id or ""
            out: list[BackupRecord | TablesRecord] = []
            if tables:
                out.append(TablesRecord(repository=rid, number=n, id=fields["id"], tables=tables))
            out.append(BackupRecord(repository=rid, number=n, **fields))
            return out

        if cont is not None:
            repo.expect = cont[0]
        head = repo.commit(Change(make=make,  # type: ignore[arg-type]
                                  pending=lambda n: Pending(number=n, slot=rel, tmp=tmp_rel, old=old_rel),
                                  success_day=started.date(), after=cont[1] if cont else 0))  # fmt: skip
        checkpoint("backup committed")
        tmp = None  # from here on the temporary dump is the committed backup's, switched by the next step
        rec = repo.record(head.seq)
        if not isinstance(rec, BackupRecord):  # cannot happen: the commit just wrote it
            raise StorageError("the committed record could not be read back")
        return rec
    except (DeltadumpError, OSError, KeyboardInterrupt) as exc:
        if tmp is not None:
            _remove(tmp)
        for p in (dest / chain.CHAIN_DIR).glob(f"{objects_of}.*"):
            _remove(p)
        error = str(exc) if not isinstance(exc, KeyboardInterrupt) else "interrupted"
        _commit_failure(repo, fields, error, time.monotonic() - t0)
        if isinstance(exc, OSError):
            raise storage_error(exc, Path(exc.filename) if exc.filename else dest, "backing up into") from exc
        raise


def _commit_failure(repo: Repository, fields: dict[str, Any], error: str, seconds: float) -> None:
    """Record a failed run (best effort: a broken repository must not hide the original error)."""
    from ..errors import redact

    names = ("id", "started", "format", "compress", "path", "database", "server_version", "pg_dump_version", "db",
             "databases")  # fmt: skip
    keep: dict[str, Any] = {k: fields[k] for k in names if k in fields}
    keep.update(status="failed", finished=now(), duration=round(seconds, 3), error=redact(error)[:4000])
    with contextlib.suppress(Exception):
        repo.commit(Change(make=lambda n: [BackupRecord(repository=repo.id or "", number=n, **keep)]))


def _where(cfg: Config) -> str:
    """The configured database as host:port/db and role (never the dsn itself: it may hold a password,
    or fail to parse around one)."""
    from ..pg.conn import Conn

    try:
        where = Conn.from_dsn(cfg.database.dsn).where
    except DeltadumpError:
        return "the configured database (its dsn could not be read)"
    if cfg.whole_server:  # host:port as role, every database of it
        host, _, rest = where.partition("/")
        return f"{host} as {rest.rpartition(' as ')[2]} (whole server)"
    return where


def notify_body(
    cfg: Config, job: str, status: str, rec: BackupRecord | None, error: str = "", res: RunResult | None = None
) -> dict[str, object]:
    from ..errors import redact

    where = rec.database if rec and not (res and cfg.whole_server) else _where(cfg)
    body: dict[str, object] = {"job": job, "status": status, "database": where, "error": redact(error)}
    if rec is not None:
        body.update(id=rec.id, size=rec.size, duration=rec.duration, path=cfg.slot_where(rec.path) if rec.path else "")
    if res is not None:
        body.update(cluster.summary(cfg, res))  # a whole-server run: every backup, new and vanished databases
    return body


def backup_and_report(
    cfg: Config,
    reporter: Reporter | None = None,
    *,
    wait: bool = False,
    on_run: Callable[[RunResult], None] | None = None,
) -> BackupRecord:
    """A backup as the scheduler and the CLI run it: then a drill when one is due, then the
    notifications and monitoring the config asks for. Their failures are reported, never raised. An
    offsite failure is raised at the end (exit 1): the backup is safe locally, but the copy is not."""
    from .monitor import Monitor

    rep = reporter or SilentReporter()
    mon = Monitor(cfg, rep)
    mon.start()
    t0 = time.monotonic()
    try:
        res = run(cfg, rep, wait=wait)
    except DeltadumpError as exc:
        mon.failed(exc.message, time.monotonic() - t0)
        raise
    except KeyboardInterrupt:
        mon.failed("interrupted", time.monotonic() - t0)
        raise
    if on_run is not None:
        on_run(res)
    rec = res.record
    drills = [mon.drill_if_due(r) for r in res.records if r.format != "globals"]
    drill_ok = None if all(d is None for d in drills) else all(d is not False for d in drills)
    if res.failures:  # a whole-server run in which some databases failed: the others are safe
        msg = cluster.run_failure_text(res)
        if res.offsite_error is not None:
            msg += f"; the offsite copy failed too: {res.offsite_error.message}"
        mon.failed(msg, time.monotonic() - t0, res)
        raise DumpError(msg, hint=cluster.run_failure_hint(res.unrecorded))
    mon.succeeded(res, time.monotonic() - t0, drill_ok)
    if res.damaged:
        msg = (f"backup {rec.id} is safe, but the backup folder held damaged or untrusted records, set aside in "
               f"{cfg.dest / 'deltadump-damaged'}: {', '.join(res.damaged[:5])}")  # fmt: skip
        mon.failed(msg, time.monotonic() - t0)
        raise IntegrityError(msg, hint="check who or what changed the backup folder; verify the remaining backups")
    if res.offsite_error is not None:
        from .offsite import failure_text

        err = res.offsite_error
        raise type(err)(
            f"backup {rec.id} is safe locally, but {failure_text(cfg, err)}",
            hint="the next backup sends what is missing",
        ) from err
    return rec
