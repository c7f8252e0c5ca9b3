"""The restore job: check the server and the target database (refuse a non-empty one unless clean),
find the backup (here or in the offsite copy), bring its dump into being (its slot file, or a
reconstruction from its delta chain, checked against the recorded sha256) while a new database is
created, then pg_restore or psql, failing on any error. Physical backups: lay out a data directory."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from ..config import Config
from ..errors import DeltadumpError, IntegrityError, RestoreError
from ..pg import database
from ..pg.conn import Conn, check_dbname
from ..pg.dump import run_restore
from ..store import manifest
from ..store.manifest import BackupRecord, Manifest
from . import chain
from .common import Reporter, SilentReporter, major_of, record_files, server_for, tool
from .verify import check_record, resolve


@dataclass
class RestoreResult:
    backup: BackupRecord
    database: str
    created: bool
    seconds: float
    source: str  # "slot", "chain" or "offsite"


def pick(m: Manifest, ref: str, dest: Path | None = None) -> BackupRecord:
    """A backup by id, 'latest', path (inside dest, when given), or a date (the newest restorable
    backup of that day or before)."""
    rec = resolve(m, dest, ref)
    if rec is None:
        try:
            day = date.fromisoformat(ref[:10])
        except ValueError:
            day = None
        if day is not None:
            cands = [b for b in m.backups if b.restorable and b.started.date() <= day]
            rec = max(cands, key=lambda b: b.started, default=None)
    if rec is None:
        where = f" in {dest / manifest.MANIFEST_NAME}" if dest is not None else ""
        raise RestoreError(f"no restorable backup {ref!r} is recorded{where}")
    return rec


def restore(
    cfg: Config,
    ref: str,
    to_db: str,
    *,
    dsn: str | None = None,
    clean: bool = False,
    jobs: int = 1,
    reporter: Reporter | None = None,
    from_offsite: bool = False,
    identity: Path | None = None,
) -> RestoreResult:
    rep = reporter or SilentReporter()
    t0 = time.monotonic()
    dest = cfg.dest
    # the server and the target first: a wrong password or a non-empty database fails at once, not after
    # a long reconstruction; a new database is created meanwhile (and dropped if the backup fails)
    check_dbname(to_db, "--to-db")  # before any connection: a connection string is refused, not followed
    srv = server_for(cfg, dsn)
    state = database.target_state(srv.conn, to_db, clean)
    into = database.side_name(to_db, "restore") if state == "replace" else to_db  # --clean: beside it, then swap
    pool = ThreadPoolExecutor(1, thread_name_prefix="createdb")
    creating = pool.submit(database.create, srv.conn, into) if state != "empty" else None
    work = Path(tempfile.mkdtemp(prefix="deltadump-restore-", dir=dest if dest.is_dir() else None))
    try:
        if from_offsite:
            from .offsite import Offsite

            off = Offsite(cfg, identity)
            m = off.manifest()
            rec = pick(m, ref)
            rep.info(f"restoring backup {rec.id} from the offsite copy at {off.target.describe()}")
            fetch = off.fetcher()
            dump = chain.reconstruct(m, rec, fetch, work, rep) if rec.in_chain else off.fetch_full(rec, work)
            source = "offsite"
        else:
            m = manifest.load(dest)
            rec = pick(m, ref, dest)
            if not rec.restorable:
                why = f"failed: {rec.error}" if rec.status == "failed" else f"replaced by {rec.replaced_by}"
                raise RestoreError(f"backup {rec.id} cannot be restored: it {why}")
            rep.info(f"checking {rec.path} against its recorded checksums")
            check = check_record(dest, rec, cfg.database.pg_bin, structure=False) if rec.current else None
            if check is not None and check.ok:
                dump, source = dest / rec.path, "slot"
            elif rec.in_chain:
                rep.info(f"reconstructing backup {rec.id} from its delta chain")
                dump, source = chain.reconstruct(m, rec, chain.local_fetch(dest), work, rep), "chain"
            else:
                problem = check.problems[0] if check is not None else "its files were replaced or removed"
                raise IntegrityError(f"backup {rec.id} is damaged: {problem}", hint="restore another backup")
        if creating is not None:
            creating.result()
        created = state != "empty"
        pg_restore = tool("pg_restore", cfg, max(srv.major, major_of(rec.pg_dump_version))).path
        rep.info(f'restoring {rec.id} into database "{into}"')
        run_restore(pg_restore, srv.psql, srv.conn.with_db(into), dump, rec.format, jobs=jobs)
        if into != to_db:
            rep.info(f'replacing database "{to_db}" with the restored "{into}" (--clean)')
            database.swap(srv.conn, into, to_db)
        return RestoreResult(rec, to_db, created, time.monotonic() - t0, source)
    except BaseException:
        if creating is not None and creating.exception() is None:
            with contextlib.suppress(DeltadumpError):
                database.drop(srv.conn, into)  # the new database of a restore that could not happen
        raise
    finally:
        pool.shutdown()
        shutil.rmtree(work, ignore_errors=True)


def _need_physical(rec: BackupRecord) -> None:
    if rec.format != "physical":
        raise RestoreError(f"backup {rec.id} is a logical dump: restore it with --to-db")


def restore_datadir(
    cfg: Config, ref: str, datadir: Path, *, start: bool = False, port: int | None = None,
    reporter: Reporter | None = None, from_offsite: bool = False, identity: Path | None = None,
    socket_dir: Path | None = None,
) -> RestoreResult:  # fmt: skip
    """Lay out a physical backup (from here, or from the offsite copy alone) as a data directory,
    refusing a non-empty one; with start, start a server on it (PostgreSQL replays the WAL, as after
    a crash) and wait until it accepts connections."""
    from ..pg import physical
    from ..pg.server import free_port
    from ..pg.tools import find

    rep = reporter or SilentReporter()
    t0 = time.monotonic()
    for d in (datadir, physical.tablespace_root(datadir)):
        if d.exists() and any(d.iterdir()):
            raise RestoreError(
                f"{d} is not empty; a data directory (and its tablespaces) is only laid out in an empty folder"
            )
    work: Path | None = None
    try:
        if from_offsite:
            from .offsite import Offsite

            off = Offsite(cfg, identity)
            m = off.manifest()
            rec = pick(m, ref)
            _need_physical(rec)
            datadir.parent.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix="deltadump-restore-", dir=datadir.parent))
            rep.info(f"fetching {rec.id} from the offsite copy at {off.target.describe()}")
            backup = off.fetch_full(rec, work)
        else:
            m = manifest.load(cfg.dest)
            rec = pick(m, ref, cfg.dest)
            _need_physical(rec)
            check = check_record(cfg.dest, rec, cfg.database.pg_bin, structure=False)
            if not check.ok:
                raise IntegrityError(f"backup {rec.id} is damaged: {check.problems[0]}")
            backup = cfg.dest / rec.path
        rep.info(f"laying out {rec.id} in {datadir}")
        existed = datadir.exists()
        try:
            physical.extract(backup, record_files(rec), datadir)
        except BaseException:  # never leave half a data directory that could be taken for a good one
            if existed:
                for p in datadir.iterdir():
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p)
                    else:
                        p.unlink()
            else:
                shutil.rmtree(datadir, ignore_errors=True)
            raise
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    if start:
        pg_ctl = find("pg_ctl", cfg.database.pg_bin, min_major=major_of(rec.server_version))
        if pg_ctl.major != major_of(rec.server_version):
            raise RestoreError(f"starting needs PostgreSQL {major_of(rec.server_version)}; found {pg_ctl.version}")
        port = port or free_port()
        rep.info(f"starting PostgreSQL {pg_ctl.version} on port {port}; it recovers like after a crash")
        sock = physical.start(pg_ctl.path, datadir, port, socket_dir)
        rep.info(f"the server listens on 127.0.0.1:{port} and in {sock} (a throwaway's settings: see README)")
        _disable_subscriptions(cfg, port, rep)
    return RestoreResult(rec, str(datadir), True, time.monotonic() - t0, "offsite" if from_offsite else "slot")


def _disable_subscriptions(cfg: Config, port: int, rep: Reporter) -> None:
    """The copy's subscriptions, disabled for good (this start already runs no apply worker)."""
    conn = Conn.from_dsn(cfg.database.dsn, cfg.database.password_file)
    conn.keywords.update(host="127.0.0.1", port=str(port))
    try:
        for name in database.disable_subscriptions(conn):
            rep.info(f"subscription {name} disabled on the copy (slot detached)")
    except DeltadumpError as exc:
        rep.info(f"warning: {exc.message}; they stay idle while this server runs (max_logical_replication_workers=0)")
