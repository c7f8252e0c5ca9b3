"""The restore job: check the server and the target database (refuse a non-empty one unless clean),
find the backup (here or in the offsite copy, whose head's time and sequence are reported), bring its
dump into being (its slot file, or a reconstruction from its delta chain, checked against the recorded
sha256) while a new database is created, then pg_restore or psql, failing on any error.

What pg_restore reads is what was checked, and no one else can change it: a slot (a dump file, or a
directory-format dump's files) is copied into the private work folder as it is hashed, and that copy is
restored; a rebuilt dump lives in the private work folder too; pg_restore is given it through a
descriptor of that folder (fsio.Pinned: the folder's name, in the backup folder, is not ours alone to
keep); and the backup folder's read lock keeps a concurrent backup or prune from switching or deleting
what is being read. Physical backups: lay out a data directory."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..errors import DeltadumpError, IntegrityError, RestoreError
from ..fsio import Pinned, checkpoint, work_folder
from ..pg import database
from ..pg.conn import Conn, check_dbname
from ..pg.dump import UNCONVERTIBLE, dump_encoding, run_restore
from ..store.records import BackupRecord
from ..store.repository import Repository
from ..store.resolve import resolve
from . import chain
from .common import Reporter, SilentReporter, major_of, record_files, server_for, tool
from .repo import LocalView, file_location, local_view, open_local, reading, slot_location
from .ring import fetch_slot, ring_of
from .verify import check_file, check_slot


@dataclass
class RestoreResult:
    backup: BackupRecord
    database: str
    created: bool
    seconds: float
    source: str  # "slot", "chain" or "offsite"


@dataclass
class Source:
    """Where a backup is read from: the local repository or the offsite copy."""

    repo: Repository
    backups: list[BackupRecord]
    offsite: object | None = None  # an offsite.Offsite when restoring from the offsite copy
    view: LocalView | None = None  # the backup folder as it is (local restores)

    def restorable(self, b: BackupRecord) -> bool:
        return b.status == "ok" if self.view is None else self.view.restorable(b)

    def pick(self, ref: str, dest: Path | None = None, db: str | None = None) -> BackupRecord:
        restorable = self.restorable
        rec = resolve(self.backups, ref, restorable=restorable, dest=dest, db=db)
        if rec is None:
            raise RestoreError(f"no restorable backup {ref!r} is recorded in {self.repo.describe()}")
        if not restorable(rec):
            why = f"failed: {rec.error}" if rec.status == "failed" else "its slot was reused and it is in no chain"
            raise RestoreError(f"backup {rec.id} cannot be restored: it {why}")
        return rec


@contextlib.contextmanager
def open_source(
    cfg: Config, rep: Reporter, *, from_offsite: bool, identity: Path | None = None, trust: str | None = None,
    allow_older: bool = False, copy: str | None = None,
) -> Iterator[Source]:  # fmt: skip
    """The local repository (holding the read lock while in use), or the offsite copy named `copy` (None:
    the only one) alone."""
    if from_offsite:
        from .offsite import Offsite

        local_id = None
        with contextlib.suppress(DeltadumpError):
            if cfg.dest.is_dir():
                local_id = open_local(cfg, SilentReporter(), trust=trust).id
        off = Offsite(cfg, rep, identity=identity, trust=trust, allow_older=allow_older, expect=local_id, copy=copy)
        repo = off.load()
        if repo.head is None:
            raise RestoreError(f"the offsite copy at {off.title()} holds no backup")
        rep.info(f"offsite copy {off.title()}: head {repo.head.seq}, committed "
                 f"{repo.head.time.isoformat(timespec='seconds')}, repository {repo.head.repository}")  # fmt: skip
        yield Source(repo, repo.backups(), off)
        return
    repo = open_local(cfg, rep, trust=trust, allow_older=allow_older)
    if repo.head is not None:
        rep.info(f"backup folder {cfg.dest}: head {repo.head.seq}, committed "
                 f"{repo.head.time.isoformat(timespec='seconds')}")  # fmt: skip
    with reading(cfg.dest):
        repo.refresh()  # what the lock now protects is what we read
        view = local_view(repo, cfg.dest, cfg.backup.remote)
        yield Source(repo, view.backups, view=view)


@contextlib.contextmanager
def checked_dump(cfg: Config, src: Source, rec: BackupRecord, work: Path, rep: Reporter) -> Iterator[tuple[Path, str]]:
    """The dump of `rec`, checked, where only this run can change it: (its path, where it came from)."""
    dest = cfg.dest
    if src.offsite is not None:
        from .offsite import Offsite

        off = src.offsite
        assert isinstance(off, Offsite)
        if rec.in_chain:
            yield chain.reconstruct(src.backups, rec, off.fetcher(), work, rep), "offsite"
        else:
            yield off.fetch_full(rec, work), "offsite"
        return
    if src.view is not None and src.view.in_slot(rec):
        rep.info(f"checking {rec.path} against its recorded checksums")
        if (ring := ring_of(cfg)) is not None:  # the slot is on the share: fetched, then checked
            local, problem = fetch_slot(ring, src.repo, dest, rec, work)
            if local is not None:
                yield local, "slot"
                return
            problems = [problem]
        elif rec.format in ("custom", "plain", "tar", "directory") and rec.files:
            # pg_restore or psql read the dump by its path, and even a file opened and hashed once can be
            # changed in place by a backup-folder writer after the check: each file is copied into the
            # private work folder as it is hashed, and the copy is what is read
            problems = _copy_checked(src.repo, dest, rec, work / "slot")
            if not problems:
                yield work / "slot", "slot"
                return
        else:
            problems = check_slot(src.repo, dest, rec, cfg.database.pg_bin, structure=False)
            if not problems:
                yield slot_location(src.repo, dest, rec), "slot"
                return
        if not rec.in_chain:
            raise IntegrityError(f"backup {rec.id} is damaged: {problems[0]}", hint="restore another backup")
        rep.info(f"{problems[0]}; rebuilding it from its delta chain")
    rep.info(f"reconstructing backup {rec.id} from its delta chain")
    yield chain.reconstruct(src.backups, rec, chain.local_fetch(dest), work, rep), "chain"


def _work_parent(cfg: Config) -> Path:
    return cfg.dest if cfg.dest.is_dir() else Path(tempfile.gettempdir())


def _copy_checked(repo: Repository, dest: Path, rec: BackupRecord, out: Path) -> list[str]:
    """Copy rec's slot (its one file, or a folder's files) to `out` in the private work folder, each file
    checked as it is copied (verify.check_file); the problems of those that are not as recorded ([] when
    all are: `out` is then the backup exactly as it was checked, and only this run can change it). The
    copy needs room for the dump beside the backups, as a rebuilt one does."""
    slot = slot_location(repo, dest, rec)
    problems = []
    for f in rec.files:
        located = file_location(repo, dest, rec, f)
        # (a one-file slot: `out` itself)
        if problem := check_file(dest, f.path, f, located=located, copy_to=out / located.relative_to(slot)):
            problems.append(problem)
    if problems:
        if out.is_dir():
            shutil.rmtree(out, ignore_errors=True)
        else:
            out.unlink(missing_ok=True)
    return problems


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
    trust: str | None = None,
    allow_older: bool = False,
    of_db: str | None = None,
    copy: str | None = None,
) -> RestoreResult:
    """`of_db`: the database whose backup `ref` means (a whole-server config's: 'latest' is each database's)."""
    rep = reporter or SilentReporter()
    t0 = time.monotonic()
    # the server and the target first: a wrong password or a non-empty database fails at once, not after
    # a long reconstruction; a new database is created meanwhile (and dropped if the backup fails)
    check_dbname(to_db, "--to-db")  # before any connection: a connection string is refused, not followed
    srv = server_for(cfg, dsn)
    state = database.target_state(srv.conn, to_db, clean)
    into = database.side_name(to_db, "restore") if state == "replace" else to_db  # --clean: beside it, then swap
    pool = ThreadPoolExecutor(1, thread_name_prefix="createdb")
    creating = pool.submit(database.create, srv.conn, into) if state != "empty" else None
    try:
        with (
            open_source(cfg, rep, from_offsite=from_offsite, identity=identity, trust=trust,
                        allow_older=allow_older, copy=copy) as src,
            work_folder(_work_parent(cfg), "restore") as work,
            Pinned(work) as held,
        ):  # fmt: skip
            rec = src.pick(ref, cfg.dest, of_db)
            if rec.format == "globals":
                raise RestoreError(f"backup {rec.id} holds the server's roles and tablespaces (pg_dumpall "
                                   "--globals-only)", hint="restore it with restore --server")  # fmt: skip
            rep.info(f"restoring backup {rec.id} (record {rec.number}, {rec.started.isoformat(timespec='seconds')})")
            with checked_dump(cfg, src, rec, work, rep) as (checked, source):
                checkpoint("dump checked")
                dump = held.path(checked)  # (the work folder's name is the backup folder's: a writer can swap it)
                if creating is not None:
                    creating.result()
                created = state != "empty"
                pg_restore = tool("pg_restore", cfg, max(srv.major, major_of(rec.pg_dump_version))).path
                if created and (enc := dump_encoding(pg_restore, dump, rec.format, held.fds)) in UNCONVERTIBLE:
                    # a SQL_ASCII dump holds any bytes, which a UTF-8 database refuses (a drill of one failed):
                    # the database we made is made again in the dump's own encoding
                    database.drop(srv.conn, into)
                    database.create(srv.conn, into, enc, libc=srv.major >= 15)
                rep.info(f'restoring {rec.id} into database "{into}"')
                run_restore(pg_restore, srv.psql, srv.conn.with_db(into), dump, rec.format, jobs=jobs,
                            pass_fds=held.fds)  # fmt: skip
                checkpoint("restored")
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


def _need_physical(rec: BackupRecord) -> None:
    if rec.format != "physical":
        raise RestoreError(f"backup {rec.id} is a logical dump: restore it with --to-db")


def restore_datadir(
    cfg: Config, ref: str, datadir: Path, *, start: bool = False, port: int | None = None,
    reporter: Reporter | None = None, from_offsite: bool = False, identity: Path | None = None,
    trust: str | None = None, allow_older: bool = False, socket_dir: Path | None = None, copy: str | None = None,
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
    with open_source(cfg, rep, from_offsite=from_offsite, identity=identity, trust=trust,
                     allow_older=allow_older, copy=copy) as src:  # fmt: skip
        rec = src.pick(ref, cfg.dest)
        _need_physical(rec)
        parent = datadir.parent if from_offsite else _work_parent(cfg)
        parent.mkdir(parents=True, exist_ok=True)
        with work_folder(parent, "restore") as work:
            if from_offsite:
                from .offsite import Offsite

                off = src.offsite
                assert isinstance(off, Offsite)
                rep.info(f"fetching {rec.id} from the offsite copy at {off.title()}")
                backup = off.fetch_full(rec, work)
                files = record_files(rec)
            else:
                backup = slot_location(src.repo, cfg.dest, rec)
                files = record_files(rec)  # each tar is hashed as it is laid out: what is read is what is checked
            rep.info(f"laying out {rec.id} in {datadir}")
            existed = datadir.exists()
            try:
                physical.extract(backup, files, datadir)
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
