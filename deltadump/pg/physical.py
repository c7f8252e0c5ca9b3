"""Snapshot (physical) backups: pg_basebackup in tar format with the WAL needed for consistency and
a backup manifest; checked with pg_verifybackup (on an extracted copy: before PostgreSQL 18 it reads
only plain backups); laid out as a data directory and started, when PostgreSQL recovers it like
after a crash.

A tar file is hostile input (the offsite store or the backup folder may be written by someone else):
only the tar files the caller names are read (base.tar, pg_wal.tar and one `<oid>.tar` per
tablespace, optionally .gz), each opened once and hashed while it is read, and compared with the
recorded sha256 at its end; members are regular files and folders, plus links that stay inside the
destination; absolute names, `..`, devices and fifos are refused, setuid/setgid/sticky bits dropped,
owners never taken from the tar. A mismatch or a refused member removes everything laid out.

Tablespaces: `<oid>.tar` is laid out in `<datadir>.tablespaces/<oid>` (a sibling folder of the data
directory, part of the restore), `pg_tblspc/<oid>` points there and `tablespace_map` is rewritten to
say so: the copy never reaches the original server's tablespace folders. A throwaway server (restore
--start, physical drills) starts only when every tablespace path resolves inside that folder, and
with settings that keep it away from production: no archiving, no replication or subscription
workers, no primary to follow, a private socket, loopback only."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import re
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import BinaryIO

from ..errors import DumpError, IntegrityError, RestoreError
from ..fsio import storage_error
from ..naming import check_relpath
from .conn import Conn, classify
from .dump import Progress, _signame, run_watched

TAR_NAME = re.compile(r"(base|pg_wal|[0-9]+)\.tar(\.gz)?")
CHUNK = 1 << 20


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


def tablespace_root(datadir: Path) -> Path:
    """Where a restore lays out the tablespaces of `datadir`: `<datadir>.tablespaces/<oid>`."""
    return datadir.parent / f"{datadir.name}.tablespaces"


def backup_files(backup: Path) -> dict[str, str | None]:
    """The tar files of a backup folder just written by pg_basebackup, by name (no recorded hash yet)."""
    return {p.name: None for p in backup.iterdir() if TAR_NAME.fullmatch(p.name)}


class _Hashing:
    """A read-only file object that hashes every byte read through it."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.h = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        return data

    def drain(self) -> str:
        while self.read(CHUNK):
            pass
        return self.h.hexdigest()


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class _Layout:
    """Members of one tar laid out under `root`, each checked before anything is written."""

    def __init__(self, root: Path, tar_name: str) -> None:
        self.root = root
        self.real = os.path.realpath(root)
        self.tar_name = tar_name

    def _refuse(self, m: tarfile.TarInfo, why: str) -> IntegrityError:
        return IntegrityError(f"{self.tar_name}: member {m.name!r} refused: {why}")

    def _target(self, m: tarfile.TarInfo, name: str) -> str:
        path = os.path.join(self.real, name)
        parent = os.path.realpath(os.path.dirname(path))
        if not _inside(parent, self.real):  # a folder on the way is a link leading out
            raise self._refuse(m, "its folder resolves outside the destination")
        return os.path.join(parent, os.path.basename(path))

    def add(self, t: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        name = m.name.rstrip("/") if m.isdir() else m.name
        if name.startswith("./"):  # pg_basebackup writes some members as ./pg_wal/...
            name = name[2:]
        if name in ("", ".") and m.isdir():  # the destination itself
            return
        try:
            check_relpath(name)
        except ValueError as exc:
            raise self._refuse(m, str(exc)) from None
        mode = (m.mode & 0o777) | 0o600  # no setuid, setgid or sticky bit; always ours to read and write
        if m.isdir():
            path = self._target(m, name)
            if os.path.lexists(path) and not (os.path.isdir(path) and not os.path.islink(path)):
                raise self._refuse(m, "a folder over an existing file or link")
            os.makedirs(path, mode=0o700, exist_ok=True)
            os.chmod(path, mode | 0o700)
            return
        if m.isreg():
            self._parents(m, name)
            path = self._target(m, name)
            with contextlib.suppress(FileNotFoundError):
                if os.path.isdir(path) and not os.path.islink(path):
                    raise self._refuse(m, "a file over an existing folder")
                os.unlink(path)
            src = t.extractfile(m)
            assert src is not None
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
            with os.fdopen(fd, "wb") as out:
                while chunk := src.read(CHUNK):
                    out.write(chunk)
            return
        if m.issym() or m.islnk():
            self._parents(m, name)
            path = self._target(m, name)
            if os.path.isdir(path) and not os.path.islink(path):
                raise self._refuse(m, "a link over an existing folder")
            if m.issym():
                if os.path.isabs(m.linkname):
                    raise self._refuse(m, "a link to an absolute path")
                dest = os.path.normpath(os.path.join(os.path.dirname(path), m.linkname))
                if not _inside(os.path.realpath(dest), self.real) or not _inside(dest, self.real):
                    raise self._refuse(m, "a link leading outside the destination")
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                os.symlink(m.linkname, path)
            else:
                linkname = m.linkname[2:] if m.linkname.startswith("./") else m.linkname
                try:
                    check_relpath(linkname)
                except ValueError as exc:
                    raise self._refuse(m, f"hard link: {exc}") from None
                src_path = self._target(m, linkname)
                if not os.path.isfile(src_path) or os.path.islink(src_path):
                    raise self._refuse(m, "a hard link to something that is not a file laid out before it")
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                os.link(src_path, path, follow_symlinks=False)
            return
        raise self._refuse(m, "not a regular file, folder or link (device, fifo...)")

    def _parents(self, m: tarfile.TarInfo, name: str) -> None:
        parent = os.path.dirname(name)
        if parent:
            path = self._target(m, parent)
            if not os.path.isdir(path):
                os.makedirs(path, mode=0o700, exist_ok=True)
            self._target(m, name)  # again, now that the folders exist


def extract_tar(tar: Path, sha256: str | None, root: Path) -> None:
    """Lay out one tar under root, streaming: read once, hashed as it is read, compared at the end."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    layout = _Layout(root, tar.name)
    with open(tar, "rb") as raw:
        src = _Hashing(raw)
        try:
            with tarfile.open(fileobj=src, mode="r|*") as t:  # type: ignore[call-overload]
                for m in t:
                    layout.add(t, m)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise IntegrityError(f"{tar.name} is not a readable tar file: {exc}") from exc
        except OSError as exc:  # writing the layout (a full disk...), or a gzip stream that is not one
            if exc.filename is None and not isinstance(exc, PermissionError):
                raise IntegrityError(f"{tar.name} is not a readable tar file: {exc}") from exc
            raise storage_error(exc, Path(exc.filename or root), "laying out") from exc
        digest = src.drain()
    if sha256 is not None and digest != sha256:
        raise IntegrityError(f"{tar.name}: sha256 mismatch (content changed or corrupt); nothing laid out")


def extract(backup: Path, files: dict[str, str | None], datadir: Path, *, rewrite_map: bool = True) -> None:
    """Lay out a data directory from the tar files named in `files` (name in the backup folder ->
    recorded sha256, None when the caller has just written them): base.tar into datadir, pg_wal.tar
    into its pg_wal, `<oid>.tar` into `<datadir>.tablespaces/<oid>` with pg_tblspc/<oid> pointing
    there; with rewrite_map, tablespace_map says the same (for a server to start on it). Any failure
    removes everything laid out."""
    names = {n: h for n, h in files.items() if TAR_NAME.fullmatch(n)}
    base = next((n for n in ("base.tar", "base.tar.gz") if n in names), None)
    if base is None:
        raise RestoreError(f"{backup} has no base.tar in its record: not a physical backup")
    ts_root = tablespace_root(datadir)
    made_ts = not ts_root.exists()
    try:
        datadir.mkdir(mode=0o700, parents=True, exist_ok=True)
        extract_tar(backup / base, names[base], datadir)
        wal = next((n for n in ("pg_wal.tar", "pg_wal.tar.gz") if n in names), None)
        if wal is not None:
            extract_tar(backup / wal, names[wal], datadir / "pg_wal")
        spaces = sorted(n for n in names if n.split(".")[0].isdigit())
        if spaces:
            ts_root.mkdir(mode=0o700, exist_ok=True)
        for n in spaces:
            oid = n.split(".")[0]
            extract_tar(backup / n, names[n], ts_root / oid)
            link = datadir / "pg_tblspc" / oid
            link.parent.mkdir(mode=0o700, exist_ok=True)
            if link.is_symlink() or link.exists():
                raise IntegrityError(f"{base}: pg_tblspc/{oid} is already there")
            link.symlink_to(ts_root / oid)
        _check_map(datadir, ts_root, {n.split(".")[0] for n in spaces}, rewrite_map)
        os.chmod(datadir, 0o700)
    except BaseException:
        _remove_layout(datadir)
        if made_ts:
            shutil.rmtree(ts_root, ignore_errors=True)
        raise


def _remove_layout(datadir: Path) -> None:
    if not datadir.exists():
        return
    for p in datadir.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()


def _read_map(text: str) -> dict[str, str]:
    """tablespace_map: `<oid> <path>` per line, the path with backslash escapes."""
    out = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        oid, _, path = line.partition(" ")
        if not oid.isdigit():
            raise IntegrityError(f"tablespace_map: unreadable line {line[:60]!r}")
        out[oid] = re.sub(r"\\(.)", r"\1", path)
    return out


def _check_map(datadir: Path, ts_root: Path, laid_out: set[str], rewrite: bool) -> None:
    mp = datadir / "tablespace_map"
    listed = _read_map(mp.read_text()) if mp.exists() else {}
    if set(listed) != laid_out:
        missing = sorted(set(listed) - laid_out)
        raise IntegrityError(
            f"tablespace_map lists tablespace(s) {', '.join(missing) or '-'} with no <oid>.tar in the record"
            if missing
            else f"tablespace tar file(s) {', '.join(sorted(laid_out - set(listed)))} not in tablespace_map"
        )
    if rewrite and listed:
        esc = {oid: str(ts_root / oid).replace("\\", "\\\\").replace("\n", "\\\n").replace("\r", "\\\r")
               for oid in listed}  # fmt: skip
        tmp = mp.with_name(".tmp-tablespace_map")
        tmp.write_text("".join(f"{oid} {p}\n" for oid, p in sorted(esc.items())))
        os.chmod(tmp, 0o600)
        os.replace(tmp, mp)


def check_confined(datadir: Path) -> None:
    """Refuse to start a server on a layout whose tablespaces (pg_tblspc links, tablespace_map)
    would resolve anywhere but its own `<datadir>.tablespaces` folder."""
    root = os.path.realpath(tablespace_root(datadir))
    real_data = os.path.realpath(datadir)
    tblspc = datadir / "pg_tblspc"
    if tblspc.is_symlink():
        raise RestoreError(f"{tblspc} is a link: refusing to start a server on it")
    if tblspc.is_dir():
        for p in tblspc.iterdir():
            target = os.path.realpath(p)
            if not (_inside(target, root) or _inside(target, real_data)):
                raise RestoreError(f"tablespace {p.name} resolves outside the restore ({target}): not starting")
    mp = datadir / "tablespace_map"
    if mp.exists():
        for oid, path in _read_map(mp.read_text()).items():
            if not _inside(os.path.realpath(path), root):
                raise RestoreError(f"tablespace_map sends tablespace {oid} outside the restore ({path}): not starting")


def verify(pg_verifybackup: Path, backup: Path, files: dict[str, str | None], scratch: Path) -> None:
    """pg_verifybackup against the backup's own manifest, on an extracted copy laid out in `scratch`
    (a `.tmp-` folder in the backup folder), which is removed whatever happens."""
    work = scratch / "data"
    try:
        scratch.mkdir(mode=0o700)
        extract(backup, files, work, rewrite_map=False)  # tablespace_map as recorded: its checksum is checked
        res = subprocess.run([str(pg_verifybackup), "-m", str(backup / "backup_manifest"), str(work)],
                             capture_output=True, text=True)  # fmt: skip
        if res.returncode != 0:
            msg = " ".join((res.stderr or res.stdout).split())[:300]
            raise DumpError(f"physical backup {backup} does not verify: {msg}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


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


# settings of a throwaway server: nothing of it may reach production
THROWAWAY = {
    "archive_mode": "off",  # the copy's diverging WAL never reaches production's archive
    "max_wal_senders": "0",
    "max_logical_replication_workers": "0",  # subscriptions cannot start apply workers
    "max_sync_workers_per_subscription": "0",
    "primary_conninfo": "",  # follows no primary
    "restore_command": "",
    "logging_collector": "off",  # its log goes to the restore's own file, never production's log folder
    "listen_addresses": "127.0.0.1",
    "unix_socket_permissions": "0700",
}


def _chown_tree(paths: list[Path], user: str) -> None:
    """Give the server's user what it runs on (our own decision: owners are never taken from a tar)."""
    ent = pwd.getpwnam(user)
    for top in paths:
        if not top.exists():
            continue
        os.lchown(top, ent.pw_uid, ent.pw_gid)
        for root, dirs, names in os.walk(top):
            for n in dirs + names:
                os.lchown(os.path.join(root, n), ent.pw_uid, ent.pw_gid)


def socket_folder(datadir: Path) -> Path:
    """Where a throwaway server on datadir puts its socket: the data directory itself (0700, the
    server user's, gone with it) when its path is short enough for a socket and has no character that
    unix_socket_directories would split or unquote; else a new private folder in the temporary folder."""
    path = str(datadir.resolve())
    if len(path) <= 80 and re.fullmatch(r"[A-Za-z0-9_./-]+", path):
        return datadir
    return Path(tempfile.mkdtemp(prefix="deltadump-sock-"))


def start(pg_ctl: Path, datadir: Path, port: int, sock: Path | None = None) -> Path:
    """Start a throwaway server on a restored data directory (THROWAWAY settings, a private socket
    folder: `sock`, else socket_folder()) and wait until it accepts connections; returns the socket
    folder."""
    from .server import pg_ctl_start

    check_confined(datadir)
    user = run_as_user()
    if sock is None:
        sock = socket_folder(datadir)
    sock.mkdir(mode=0o700, exist_ok=True)
    sock.chmod(0o700)
    if user:
        _chown_tree([datadir, tablespace_root(datadir), sock], user)
    (datadir / "postmaster.pid").unlink(missing_ok=True)
    res = pg_ctl_start(pg_ctl, datadir, "restore.log", user,
                       {"port": str(port), "unix_socket_directories": str(sock), **THROWAWAY})  # fmt: skip
    if res.returncode != 0:
        log = (datadir / "restore.log").read_text(errors="replace")[-400:] if (datadir / "restore.log").exists() else ""
        if sock != datadir:
            shutil.rmtree(sock, ignore_errors=True)
        raise RestoreError(f"the restored server did not start: {(res.stderr or res.stdout).strip()[-200:]} {log}")
    return sock
