"""Shared fixtures. Real parts only: the real rdiff, a real PostgreSQL server, a real S3 server."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_TOOLS = ROOT / "tests" / "system-tools.txt"


def system_tools() -> dict[str, str]:
    """tests/system-tools.txt: program -> Debian package, the one list ./run test installs from."""
    out = {}
    for line in SYSTEM_TOOLS.read_text().splitlines():
        parts = line.split("#", 1)[0].split()
        if parts:
            out[parts[0]] = parts[1]
    return out


def require_tool(name: str) -> str:
    """The path of a program the tests need. It must be listed in tests/system-tools.txt (so ./run test
    installs it on a fresh machine); missing is a failure, never a skip."""
    if name not in system_tools():
        pytest.fail(f"{name} is not listed in tests/system-tools.txt, so a fresh machine would not have it")
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(f"{name} is not installed; run ./run test (or apt-get install it) before the tests")
    return path


@pytest.fixture(scope="session")
def rdiff_bin() -> str:
    return require_tool("rdiff")


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    os.chmod(tmp_path, 0o755)
    return tmp_path


# --- a real PostgreSQL server, started by the tests -------------------------------------------

import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterator  # noqa: E402

from deltadump.jobs import sample  # noqa: E402
from deltadump.pg.conn import psql  # noqa: E402
from deltadump.pg.server import LocalServer  # noqa: E402


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    require_tool("runuser") if os.geteuid() == 0 else None
    server = LocalServer()
    server.start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def pwfile(pg: LocalServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("secret") / "db.password"
    p.write_text(pg.password + "\n")
    p.chmod(0o600)
    return p


_dbs = iter(range(10**6))


@pytest.fixture
def maildb(pg: LocalServer) -> str:
    """A fresh small mail database for one test."""
    name = f"mail{next(_dbs)}_{os.getpid()}"
    psql(pg.psql_bin(), pg.conn(), f"create database {name}")
    sample.load(pg.psql_bin(), pg.conn(), name, users=5, messages=300, words=20)
    return name


def write_config(path: Path, pg: LocalServer, pwfile: Path, db: str, dest: Path, **backup: object) -> Path:
    import json

    lines = ["[database]", f"dsn = {json.dumps(pg.dsn(db))}", f"password_file = {json.dumps(str(pwfile))}",
             f"pg_bin = {json.dumps(str(pg.bin))}", "", "[backup]", f"dest = {json.dumps(str(dest))}"]  # fmt: skip
    for k, v in backup.items():
        lines.append(f"{k} = {json.dumps(v)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the real deltadump command line."""
    return subprocess.run(
        [sys.executable, "-m", "deltadump.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


# --- a real S3 protocol over HTTP: moto's server, started by the tests ---------------------------


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    from deltadump.pg.server import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    import time
    import urllib.request

    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("moto's S3 server did not start")
            time.sleep(0.2)
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


_buckets = iter(range(10**6))


@pytest.fixture
def bucket(s3_server: str) -> str:
    import boto3

    name = f"bucket{next(_buckets)}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


@contextlib.contextmanager
def write_load(pg: LocalServer, db: str, sql: str) -> Iterator[None]:
    """A database under write load: `sql` runs over and over in another thread while the block runs."""
    import threading

    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            psql(pg.psql_bin(), pg.conn(), sql, db=db)

    t = threading.Thread(target=writer)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()


# --- reading a config's backup folder as a user would (through the repository, signatures checked) ---


class History:
    """The live records of a config's backup folder, newest last (commit order)."""

    def __init__(self, cfg_path: Path) -> None:
        from deltadump.config import load
        from deltadump.jobs.common import SilentReporter
        from deltadump.jobs.repo import local_view, open_local

        self.cfg = load(cfg_path)
        self.repo = open_local(self.cfg, SilentReporter())
        self.view = local_view(self.repo, self.cfg.dest, self.cfg.backup.remote)
        self.backups = self.view.backups
        self.notes = self.repo.notes()
        self.owners = self.view.owners

    def by_id(self, bid: str):  # type: ignore[no-untyped-def]
        return next((b for b in self.backups if b.id == bid), None)

    def latest(self):  # type: ignore[no-untyped-def]
        return next(b for b in reversed(self.backups) if b.status == "ok")

    def current(self, b) -> bool:  # type: ignore[no-untyped-def]
        return self.owners.get(b.path) is b


def history(cfg_path: Path) -> History:
    return History(cfg_path)


# --- real SMB and SSH servers (Samba's smbd, OpenSSH's sshd), started by the tests: tests/servers.py ---


@pytest.fixture(scope="session")
def smb_server() -> Iterator[object]:
    from servers import SambaServer

    server = SambaServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def sftp_server() -> Iterator[object]:
    from servers import SSHServer

    server = SSHServer()
    try:
        server.trust()
        server.start()
        yield server
    finally:
        server.remove()
