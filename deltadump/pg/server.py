"""A private PostgreSQL server in a folder of its own: initdb + pg_ctl on a free port, run as an
unprivileged user when we are root (the server refuses to run as root). Used by `deltadump demo`
(the embedded default: with the pgserver package's binaries when no local ones exist) and by tests.

Private: its folders are 0700 (socket folder included, and the socket itself 0700), it listens on
127.0.0.1 only, and every connection, through the socket or TCP, needs the password (scram-sha-256):
another local user can neither reach it nor become its superuser.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from ..errors import DatabaseError
from .conn import Conn
from .tools import Tool, find, find_all


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgserver", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    return None


class LocalServer:
    """Start with start(), stop with stop() (or use as a context manager)."""

    def __init__(self, base: Path | None = None, *, password: str | None = None, bin_dir: str = "") -> None:
        self.initdb: Tool = find("initdb", bin_dir)
        self.bin = self.initdb.path.parent
        self.base = Path(base or tempfile.mkdtemp(prefix="deltadump-pg-"))
        self.data = self.base / "data"
        self.sock = self.base / "sock"
        self.port = free_port()
        self.password = password or secrets.token_urlsafe(12)
        self.user = _run_as()
        self.superuser = "postgres"
        self.started = False

    @property
    def version(self) -> str:
        return self.initdb.version

    def _cmd(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", self.user, "--", *argv] if self.user else argv

    def _check(self, argv: list[str], what: str) -> None:
        res = subprocess.run(self._cmd(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            raise DatabaseError(f"{what} failed: {(res.stderr or res.stdout).strip()[-400:]}")

    def start(self) -> LocalServer:
        self.base.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.sock.mkdir(mode=0o700, exist_ok=True)
        pwfile = self.base / "pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password + "\n")
        for p in (self.base, self.sock):
            p.chmod(0o700)
        if self.user:
            ent = pwd.getpwnam(self.user)
            for p in (self.base, self.sock, pwfile):
                os.chown(p, ent.pw_uid, ent.pw_gid)
        if not self.data.exists():
            self._check([str(self.initdb.path), "-D", str(self.data), "-U", self.superuser, f"--pwfile={pwfile}",
                         "-A", "scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8" if
                         _has_c_utf8() else "--locale=C", "--no-sync"], "initdb")  # fmt: skip
        pwfile.unlink()
        settings = {"port": str(self.port), "unix_socket_directories": str(self.sock),
                    "unix_socket_permissions": "0700", "listen_addresses": "127.0.0.1", "fsync": "off",
                    "full_page_writes": "off", "max_wal_senders": "4", "wal_level": "replica"}  # fmt: skip
        res = pg_ctl_start(self.bin / "pg_ctl", self.data, "../log", self.user, settings, timeout=60)
        if res.returncode != 0:
            raise DatabaseError(f"starting PostgreSQL failed: {(res.stderr or res.stdout).strip()[-400:]}")
        self.started = True
        return self

    def stop(self) -> None:
        if self.started:
            subprocess.run(self._cmd([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]),
                           capture_output=True)  # fmt: skip
            self.started = False

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def dsn(self, db: str = "postgres") -> str:
        """A DSN without the password (give it through password_file or PGPASSWORD)."""
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{db}"

    def conn(self, db: str = "postgres") -> Conn:
        return Conn({"host": "127.0.0.1", "port": str(self.port), "user": self.superuser, "dbname": db,
                     "password": self.password})  # fmt: skip

    def psql_bin(self) -> Path:
        p = self.bin / "psql"
        return p if p.exists() else find_all("psql")[0].path

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.remove()


def pg_ctl_options(settings: dict[str, str]) -> str:
    """`pg_ctl -o` text: pg_ctl hands it to /bin/sh, so every value is quoted (a path with a space or
    `$(...)` is taken literally)."""
    return " ".join(f"-c {shlex.quote(f'{k}={v}')}" for k, v in settings.items())


def pg_ctl_start(pg_ctl: Path, datadir: Path, log: str, user: str | None, settings: dict[str, str], *,
                 timeout: int = 300) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """`pg_ctl start -w` without any path reaching the shell pg_ctl starts the server with: pg_ctl
    puts -D's and -l's values in double quotes, where `$(...)` still runs, so the data directory goes
    in PGDATA (no -D), the log is named relative to it (pg_ctl runs in it) and every -o value is quoted."""
    if not re.fullmatch(r"[A-Za-z0-9_./-]+", log):
        raise ValueError(f"log name {log!r} must be shell-safe")
    argv = [str(pg_ctl), "-o", pg_ctl_options(settings), "-l", log, "-w", "-t", str(timeout), "start"]
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    env = {**os.environ, "PGDATA": str(datadir)}
    return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=datadir, env=env)


def _has_c_utf8() -> bool:
    try:
        out = subprocess.run(["locale", "-a"], capture_output=True, text=True).stdout.lower()
    except OSError:
        return False
    return "c.utf8" in out or "c.utf-8" in out
