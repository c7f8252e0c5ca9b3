"""Snapshot (physical) backups: pg_basebackup in tar format with the WAL needed for consistency and
a backup manifest; checked with pg_verifybackup (on an extracted copy: before PostgreSQL 18 it reads
only plain backups); laid out as a data directory and started, when PostgreSQL recovers it like
after a crash."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tarfile
from pathlib import Path

from ..errors import DumpError, RestoreError
from .conn import Conn, classify
from .dump import Progress, _signame, run_watched


def run_basebackup(pg_basebackup: Path, conn: Conn, out: Path, *, compress: int, progress: Progress | None) -> None:
    argv = [str(pg_basebackup), "-D", str(out), "-F", "t", "-X", "stream", "-c", "fast", "--no-password",
            "--manifest-checksums=SHA256"] + ([f"--compress={compress}"] if compress else [])  # fmt: skip
    rc, err = run_watched(argv, conn, out, progress)
    if rc == 0:
        return
    if rc < 0:
        raise DumpError(f"pg_basebackup of {conn.where} was killed by {_signame(rc)}", detail=err)
    text = " ".join(err.split())
    if "password authentication failed" in text or "could not connect" in text or "connection to server" in text:
        raise classify(err, conn)
    if "No space left" in text:
        raise DumpError(f"disk full while writing {out}: pg_basebackup stopped", detail=err)
    last = next((ln for ln in reversed(err.splitlines()) if ln.strip()), f"exit code {rc}")
    raise DumpError(f"pg_basebackup of {conn.where} failed: {last.strip()[:300]}", detail=err)


def extract(backup: Path, datadir: Path) -> None:
    """Lay out a data directory from base.tar[.gz] and pg_wal.tar[.gz]."""
    base = next((p for p in (backup / "base.tar", backup / "base.tar.gz") if p.exists()), None)
    if base is None:
        raise RestoreError(f"{backup} has no base.tar: not a physical backup")
    datadir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tarfile.open(base) as t:
        t.extractall(datadir, filter="fully_trusted")
    wal = next((p for p in (backup / "pg_wal.tar", backup / "pg_wal.tar.gz") if p.exists()), None)
    if wal is not None:
        (datadir / "pg_wal").mkdir(mode=0o700, exist_ok=True)
        with tarfile.open(wal) as t:
            t.extractall(datadir / "pg_wal", filter="fully_trusted")
    os.chmod(datadir, 0o700)


def verify(pg_verifybackup: Path, backup: Path, scratch: Path) -> None:
    """pg_verifybackup against the backup's own manifest, on an extracted copy."""
    work = scratch / "verify"
    try:
        extract(backup, work)
        res = subprocess.run([str(pg_verifybackup), "-m", str(backup / "backup_manifest"), str(work)],
                             capture_output=True, text=True)  # fmt: skip
        if res.returncode != 0:
            msg = " ".join((res.stderr or res.stdout).split())[:300]
            raise DumpError(f"physical backup {backup} does not verify: {msg}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_as_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgserver", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    return None


def start(pg_ctl: Path, datadir: Path, port: int) -> None:
    """Start a server on a restored data directory and wait until it accepts connections."""
    user = run_as_user()
    if user:
        ent = pwd.getpwnam(user)
        for root, dirs, files in os.walk(datadir):
            for n in dirs + files:
                os.lchown(os.path.join(root, n), ent.pw_uid, ent.pw_gid)
        os.chown(datadir, ent.pw_uid, ent.pw_gid)
    (datadir / "postmaster.pid").unlink(missing_ok=True)
    opts = f"-p {port} -k {datadir} -c listen_addresses=127.0.0.1"
    argv = [str(pg_ctl), "-D", str(datadir), "-o", opts, "-l", str(datadir / "restore.log"), "-w", "-t", "300", "start"]
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    res = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        log = (datadir / "restore.log").read_text(errors="replace")[-400:] if (datadir / "restore.log").exists() else ""
        raise RestoreError(f"the restored server did not start: {(res.stderr or res.stdout).strip()[-200:]} {log}")
