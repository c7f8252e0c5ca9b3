"""The backup job: one pg_dump into the rotation slot, validated, durable, recorded, then the
after-command in the background. Ordering: data first, then the manifest entry (the commit point).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from pathlib import Path

from ..clock import now
from ..config import Config
from ..errors import DeltadumpError
from ..fsio import fsync_dir, remove_stale_temps, storage_error, tmp_name
from ..naming import render
from ..pg.conn import Conn
from ..pg.dump import run_pg_dump, validate
from ..pg.snapshot import SnapshotSession
from ..store import manifest
from ..store.lock import RunLock
from ..store.manifest import AfterRecord, BackupRecord, FileRecord
from . import after, chain
from .common import Reporter, SilentReporter, check_dest, server_for, tool
from .offsite import Offsite, apply_retention


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


def _install(tmp: Path, slot: Path) -> None:
    """Move a finished dump into its rotation slot (replacing the old one) and make it durable."""
    if tmp.is_dir():
        old = None
        if slot.exists():
            old = tmp_name(slot)
            os.replace(slot, old)
        os.replace(tmp, slot)
        fsync_dir(slot.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    else:
        if slot.is_dir():
            shutil.rmtree(slot)
        os.replace(tmp, slot)
        fsync_dir(slot.parent)


def _physical(cfg: Config, major: int, conn: Conn, tmp: Path, dest: Path, rep: Reporter) -> None:
    from ..pg import physical

    pg_basebackup = tool("pg_basebackup", cfg, major)
    rep.info(f"snapshot backup of {conn.where} with pg_basebackup {pg_basebackup.version} (tar, WAL, manifest)")
    physical.run_basebackup(pg_basebackup.path, conn, tmp, compress=cfg.backup.compress,
                            progress=lambda n: rep.progress("snapshot", n))  # fmt: skip
    verifier = pg_basebackup.sibling("pg_verifybackup") or tool("pg_verifybackup", cfg, major).path
    scratch = tmp_name(dest / "verify")
    try:
        physical.verify(verifier, tmp, physical.backup_files(tmp), scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _remove(p: Path) -> None:
    with contextlib.suppress(OSError):
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def backup(cfg: Config, reporter: Reporter | None = None, *, wait: bool = False) -> BackupRecord:
    rep = reporter or SilentReporter()
    dest = cfg.dest
    check_dest(dest)
    old_umask = os.umask(0o077)  # every file and folder we (and pg_dump) create: owner only
    try:
        with RunLock(dest, wait=wait):
            return _backup_locked(cfg, rep, dest)
    finally:
        os.umask(old_umask)


def _backup_locked(cfg: Config, rep: Reporter, dest: Path) -> BackupRecord:
    for p in remove_stale_temps(dest):
        rep.info(f"removed a temporary file left by an interrupted run: {p.name}")
    b = cfg.backup
    fmt: str
    fmt, compress = (b.format, b.compress) if not cfg.delta.enabled else ("custom", 0)  # deltas need raw dumps
    if b.kind == "physical":
        fmt = "physical"
    started = now()
    t0 = time.monotonic()
    rec = BackupRecord(
        id=started.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(2),
        started=started,
        status="failed",
        format=fmt,
        compress=compress,
    )
    tmp: Path | None = None
    try:
        srv = server_for(cfg)
        rec.database = srv.conn.where
        rec.server_version = srv.version
        pg_dump = tool("pg_dump", cfg, srv.major)
        pg_restore = pg_dump.sibling("pg_restore") or tool("pg_restore", cfg, srv.major).path
        rec.pg_dump_version = pg_dump.version
        m = manifest.load(dest)
        rel = render(b.name, started, m.success_days())
        rec.path = rel
        slot = dest / rel
        try:
            slot.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, slot.parent, "creating") from exc
        tmp = tmp_name(slot)
        if b.kind == "physical":
            _physical(cfg, srv.major, srv.conn, tmp, dest, rep)
        else:
            rep.info(f"dumping {srv.conn.where} (PostgreSQL {srv.version}) with pg_dump {pg_dump.version} to {slot}")
            with SnapshotSession(srv.conn) as snap:  # the drill record and the dump see the same data
                rec.tables = snap.table_stats(cfg.drill.checksums)
                run_pg_dump(
                    pg_dump.path,
                    srv.conn,
                    tmp,
                    fmt=fmt,
                    compress=compress,
                    options=list(b.options),
                    progress=lambda n: rep.progress("dump", n),
                    snapshot=snap.snapshot_id,
                )
            validate(pg_restore, tmp, fmt)
        rep.done("dump")
        try:
            _fsync_tree(tmp)
            files = manifest.file_records(dest, tmp)
            prefix = tmp.relative_to(dest).as_posix()
            rec.files = [FileRecord(path=rel + f.path[len(prefix) :], size=f.size, sha256=f.sha256) for f in files]
            rec.size = sum(f.size for f in rec.files)
            if cfg.delta.enabled:
                chain.make_chain_objects(cfg, dest, rec, tmp, files[0].sha256, rep)
            _install(tmp, slot)
        except OSError as exc:
            raise storage_error(exc, slot, "saving") from exc
        tmp = None
        rec.status = "ok"
        rec.finished = now()
        rec.duration = round(time.monotonic() - t0, 3)
        if b.after:
            rec.after = AfterRecord(command=b.after)
        with manifest.updating(dest) as m:  # the commit point
            m.add(rec)
    except (DeltadumpError, OSError, KeyboardInterrupt) as exc:
        if tmp is not None:
            _remove(tmp)
        for p in (dest / chain.CHAIN_DIR).glob(f"{rec.id}.*"):
            _remove(p)
        rec.status = "failed"
        rec.error = str(exc) if not isinstance(exc, KeyboardInterrupt) else "interrupted"
        rec.finished = now()
        rec.duration = round(time.monotonic() - t0, 3)
        with contextlib.suppress(Exception), manifest.updating(dest) as m:
            m.add(rec)
        if isinstance(exc, OSError):
            raise storage_error(exc, Path(exc.filename) if exc.filename else dest, "backing up into") from exc
        raise
    if cfg.delta.enabled:
        chain.prune_signatures(dest, cfg.delta.mode, manifest.load(dest))
    offsite_error: DeltadumpError | None = None
    if cfg.offsite_enabled:
        try:
            off = Offsite(cfg)
            st = off.sync(dest, rep)
            rep.info(f"offsite: sent {st.objects} object(s), {st.uploaded / 1e6:.2f} MB to {off.target.describe()}")
            apply_retention(cfg, dest, rep, off)
        except DeltadumpError as exc:
            offsite_error = exc
    elif cfg.delta.enabled:
        apply_retention(cfg, dest, rep)
    if b.after:
        try:
            after.start(dest, rec.id, dest / rec.path, b.after, b.after_timeout)
        except OSError as exc:  # never fails the backup
            rep.info(f"could not start the after-command: {exc}")
    if offsite_error is not None:
        raise type(offsite_error)(
            f"backup {rec.id} is safe locally, but the offsite copy failed: {offsite_error.message}",
            hint="the next backup sends what is missing",
        ) from offsite_error
    return rec


def notify_body(cfg: Config, job: str, status: str, rec: BackupRecord | None, error: str = "") -> dict[str, object]:
    body: dict[str, object] = {"job": job, "status": status, "database": rec.database if rec else cfg.database.dsn,
                               "error": error}  # fmt: skip
    if rec is not None:
        body.update(id=rec.id, size=rec.size, duration=rec.duration, path=str(cfg.dest / rec.path) if rec.path else "")
        if rec.drill is not None:
            body["drill"] = {"ok": rec.drill.ok, "differences": rec.drill.differences, "at": rec.drill.at.isoformat()}
    return body


def backup_and_report(cfg: Config, reporter: Reporter | None = None, *, wait: bool = False) -> BackupRecord:
    """A backup as the scheduler and the CLI run it: then a drill when one is due, then the
    notifications the config asks for. Notification failures are reported, never raised."""
    from .. import notify
    from ..config import parse_duration

    rep = reporter or SilentReporter()
    try:
        rec = backup(cfg, rep, wait=wait)
    except DeltadumpError as exc:
        last = manifest.load(cfg.dest).backups[-1] if (cfg.dest / manifest.MANIFEST_NAME).exists() else None
        failed = last if last is not None and last.status == "failed" else None
        for e in notify.send(cfg.notify, "failure", notify_body(cfg, "backup", "failed", failed, exc.message)):
            rep.info(f"notification failed: {e}")
        raise
    if cfg.drill.every:
        from .drill import drill

        m = manifest.load(cfg.dest)
        drills = [b.drill.at for b in m.backups if b.drill is not None]
        if not drills or (now() - max(drills)).total_seconds() >= parse_duration(cfg.drill.every):
            try:
                res = drill(cfg, rec.id, reporter=rep)
                rep.info(f"drill of {rec.id}: {'passed' if res.ok else 'FAILED: ' + '; '.join(res.differences)}")
            except DeltadumpError as exc:
                rep.info(f"drill of {rec.id} could not run: {exc.message}")
            rec = manifest.load(cfg.dest).by_id(rec.id) or rec
            if rec.drill is not None:
                event = "drill" if rec.drill.ok else "failure"
                status = "drill passed" if rec.drill.ok else "drill failed"
                for e in notify.send(cfg.notify, event, notify_body(cfg, "drill", status, rec)):
                    rep.info(f"notification failed: {e}")
    for e in notify.send(cfg.notify, "success", notify_body(cfg, "backup", "ok", rec)):
        rep.info(f"notification failed: {e}")
    return rec
