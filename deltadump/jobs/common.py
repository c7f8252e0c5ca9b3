"""What the jobs share: the reporter interface, tool resolution, the backup folder checks."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from ..config import Config
from ..errors import StorageError
from ..fsio import storage_error, tmp_name
from ..pg.conn import Conn, psql
from ..pg.tools import Tool, find, which_any
from ..store.records import BackupRecord


class Reporter(Protocol):
    def info(self, msg: str) -> None: ...
    def progress(self, label: str, done: int, total: int | None = None) -> None: ...
    def done(self, label: str) -> None: ...


class SilentReporter:
    def info(self, msg: str) -> None:
        pass

    def progress(self, label: str, done: int, total: int | None = None) -> None:
        pass

    def done(self, label: str) -> None:
        pass


@dataclass
class Server:
    conn: Conn
    psql: Path
    version: str
    major: int


def connect(dsn: str, password_file: str = "", pg_bin: str = "") -> Server:
    """Check that the server answers; returns where it is and its version."""
    conn = Conn.from_dsn(dsn, password_file)
    psql_bin = which_any("psql", pg_bin)
    rows = psql(psql_bin, conn, "select current_setting('server_version_num'), current_setting('server_version')")
    num = int(rows[0][0])
    version = rows[0][1].split()[0]
    return Server(conn, psql_bin, version, num // 10000)


def server_for(cfg: Config, dsn: str | None = None) -> Server:
    return connect(dsn or cfg.database.dsn, cfg.database.password_file, cfg.database.pg_bin)


def tool(name: str, cfg: Config, min_major: int) -> Tool:
    return find(name, cfg.database.pg_bin, min_major=min_major)


def check_dest(dest: Path) -> None:
    """The backup folder must exist (an unmounted disk is not silently replaced) and be writable."""
    if not dest.exists():
        raise StorageError(
            f"backup folder {dest} does not exist",
            hint="create it, or mount the disk or share it lives on; deltadump never creates dest",
        )
    if not dest.is_dir():
        raise StorageError(f"backup folder {dest} is not a folder")
    probe = tmp_name(dest / "write-probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
    except OSError as exc:
        raise storage_error(exc, dest, "writing to") from exc
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def record_files(rec: BackupRecord) -> dict[str, str | None]:
    """A backup's files as recorded, by their name inside its folder -> sha256 (physical backups)."""
    return {PurePosixPath(f.path).relative_to(rec.path).as_posix(): f.sha256 for f in rec.files}


def major_of(version: str) -> int:
    m = re.match(r"(\d+)", version)
    return int(m.group(1)) if m else 0
