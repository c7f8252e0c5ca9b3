"""Hostile input never runs code or leaks a secret (issue 11): crafted tar files, tablespaces, table
names chosen by a low-privilege role, --to-db connection strings, secrets in every way out, SMTP TLS,
the after-command runner, the embedded server, throwaway servers, and the smaller items. Real parts
only: the `pg` server, tar files built with tarfile, aiosmtpd with a certificate made here, an HTTP
server, the real deltadump command line."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import ROOT, cli, history, require_tool, write_config

from deltadump.errors import IntegrityError, RsyncError
from deltadump.pg import physical
from deltadump.pg.conn import Conn, psql
from deltadump.pg.physical import run_as_user
from deltadump.pg.server import LocalServer, free_port


@pytest.fixture
def dest(tmp: Path) -> Path:
    d = tmp / "dest"
    d.mkdir()
    return d


@pytest.fixture
def outside() -> Iterator[Path]:
    """A folder the unprivileged server user can reach (pytest's tmp is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="deltadump-hostile-"))
    d.chmod(0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def stop_server(pg_ctl: Path, data: Path) -> None:
    argv = [str(pg_ctl), "-D", str(data), "-m", "immediate", "-w", "stop"]
    user = run_as_user()
    subprocess.run(["runuser", "-u", user, "--", *argv] if user else argv, capture_output=True)


def files_of(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


# --- crafted tar files ------------------------------------------------------------------------------


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> str:
    with tarfile.open(path, "w:gz" if path.name.endswith(".gz") else "w") as t:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _info(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o600, link: str = "") -> tarfile.TarInfo:
    i = tarfile.TarInfo(name)
    i.type, i.mode, i.linkname = kind, mode, link
    return i


GOOD = [(_info("PG_VERSION"), b"15\n"), (_info("global", tarfile.DIRTYPE, 0o700), None)]


@pytest.mark.parametrize(
    "evil",
    [
        pytest.param(lambda out: [(_info(str(out / "pwned")), b"x")], id="absolute"),
        pytest.param(lambda out: [(_info(f"../{out.name}/pwned"), b"x")], id="dotdot"),
        pytest.param(
            lambda out: [
                (_info("escape", tarfile.SYMTYPE, link=f"../{out.name}"), None),
                (_info("escape/pwned"), b"x"),
            ],
            id="relative-symlink-escape",
        ),
        pytest.param(
            lambda out: [(_info("escape", tarfile.SYMTYPE, link=str(out)), None), (_info("escape/pwned"), b"x")],
            id="absolute-symlink",
        ),
        pytest.param(lambda out: [(_info("passwd", tarfile.LNKTYPE, link="/etc/passwd"), None)], id="hardlink-out"),
        pytest.param(lambda out: [(_info("null", tarfile.CHRTYPE), None)], id="device"),
        pytest.param(lambda out: [(_info("fifo", tarfile.FIFOTYPE), None)], id="fifo"),
    ],
)
def test_crafted_tar_refused_with_nothing_written_outside(tmp: Path, evil: Any) -> None:
    out = tmp / "victim"
    out.mkdir()
    backup, data = tmp / "backup", tmp / "restore" / "data"
    backup.mkdir()
    sha = _tar(backup / "base.tar", GOOD + evil(out))
    with pytest.raises(IntegrityError, match="refused"):
        physical.extract(backup, {"base.tar": sha}, data)
    assert list(out.iterdir()) == []  # nothing written outside
    assert not data.exists() or list(data.iterdir()) == []  # and nothing left laid out
    assert Path("/etc/passwd").stat().st_nlink == 1


def test_tar_modes_owners_hashes_and_unlisted_files(tmp: Path) -> None:
    backup, data = tmp / "backup", tmp / "data"
    backup.mkdir()
    suid = _info("bin", mode=0o6755)
    suid.uid, suid.gid = 4242, 4242
    link = _info("lnk", tarfile.SYMTYPE, link="global")
    sha = _tar(backup / "base.tar", [*GOOD, (suid, b"#!/bin/sh\n"), (link, None)])
    # a tar the record does not name is never read, even if it sits in the folder
    _tar(backup / "pg_wal.tar", [(_info("/tmp/deltadump-unlisted-pwned"), b"x")])
    physical.extract(backup, {"base.tar": sha}, data)
    st = (data / "bin").stat()
    assert st.st_mode & 0o7777 == 0o755  # setuid and setgid dropped
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())  # owners never taken from the tar
    assert os.readlink(data / "lnk") == "global"
    assert not Path("/tmp/deltadump-unlisted-pwned").exists() and not (data / "pg_wal").exists()
    # compressed (pg_basebackup --compress): the same, the hash being the compressed file's
    gz = tmp / "gz"
    gz.mkdir()
    physical.extract(gz, {"base.tar.gz": _tar(gz / "base.tar.gz", [*GOOD, (suid, b"#!/bin/sh\n")])}, tmp / "data2")
    assert (tmp / "data2" / "bin").stat().st_mode & 0o7777 == 0o755
    # a content that does not match the recorded sha256: refused, and what was laid out removed
    shutil.rmtree(data)
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        physical.extract(backup, {"base.tar": "0" * 64}, data)
    assert not data.exists() or list(data.iterdir()) == []


def test_a_server_is_not_started_on_tablespaces_outside_the_restore(tmp: Path) -> None:
    from deltadump.errors import RestoreError

    data = tmp / "data"
    (data / "pg_tblspc").mkdir(parents=True)
    (tmp / "data.tablespaces" / "16400").mkdir(parents=True)
    (data / "pg_tblspc" / "16400").symlink_to(tmp / "data.tablespaces" / "16400")
    (data / "tablespace_map").write_text(f"16400 {tmp / 'data.tablespaces' / '16400'}\n")
    physical.check_confined(data)  # inside its own folder: fine
    (data / "tablespace_map").write_text("16400 /var/lib/postgresql/live_space\n")
    with pytest.raises(RestoreError, match="outside the restore"):
        physical.check_confined(data)
    (data / "tablespace_map").unlink()
    (data / "pg_tblspc" / "16401").symlink_to(tmp / "data.tablespaces" / ".." / "..")
    with pytest.raises(RestoreError, match="outside the restore"):
        physical.check_confined(data)


def test_verify_of_a_physical_backup_leaves_no_scratch(pg: LocalServer, pwfile: Path, maildb: str, tmp: Path) -> None:
    dest = tmp / "dest"
    dest.mkdir()
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest, kind="physical", name="SNAP", compress=0)
    assert cli("backup", "--config", c).returncode == 0
    r = cli("verify", "--config", c)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [p.name for p in dest.iterdir() if p.name.startswith(".tmp-")] == []


# --- a production server with a tablespace in use and archiving on; throwaway servers ---------------


@pytest.fixture(scope="module")
def prod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A server of its own: archive_mode = on with an archive_command into a folder, a tablespace in
    use in a folder owned by the server's user, a physical backup of it in a backup folder."""
    top = Path(tempfile.mkdtemp(prefix="deltadump-prod-"))
    top.chmod(0o711)
    server = LocalServer(top / "server")
    user = run_as_user()
    archive, space = top / "archive", top / "space"
    for d in (archive, space):
        d.mkdir(mode=0o700)
        if user:
            shutil.chown(d, user, user)
    try:
        server.start()
        pb, conn = server.psql_bin(), server.conn()
        psql(pb, conn, "alter system set archive_mode = on")
        # every archived file is logged with the data directory of the server that archived it
        psql(pb, conn, f"alter system set archive_command = 'cp %p {archive}/%f && pwd >> {archive}/who'")
        server.stop()
        server.start()
        psql(pb, conn, f"create tablespace outer_space location '{space}'")
        psql(pb, conn, "create database shop")
        psql(pb, conn, "create table orders tablespace outer_space as select g as id, md5(g::text) as note "
             "from generate_series(1, 5000) g", db="shop")  # fmt: skip
        # an enabled subscription (to a publisher that is not there: its worker just retries)
        psql(pb, conn, "create subscription prod_sub connection 'host=127.0.0.1 port=1 dbname=x' "
             "publication p with (connect = false)", db="shop")  # fmt: skip
        psql(pb, conn, "alter subscription prod_sub set (slot_name = 'prod_sub')", db="shop")
        psql(pb, conn, "alter subscription prod_sub enable", db="shop")
        psql(pb, conn, "select pg_switch_wal()")
        pw = top / "pw"
        pw.write_text(server.password + "\n")
        pw.chmod(0o600)
        dest = tmp_path_factory.mktemp("prod") / "dest"
        dest.mkdir()
        cfg = write_config(top / "prod.toml", server, pw, "shop", dest, kind="physical", name="SNAP", compress=0)
        r = cli("backup", "--config", cfg)
        assert r.returncode == 0, r.stderr
        yield {"server": server, "cfg": cfg, "dest": dest, "archive": archive, "space": space, "top": top}
    finally:
        server.remove()
        shutil.rmtree(top, ignore_errors=True)


def test_tablespace_backed_up_verified_restored_and_drilled_production_untouched(
    prod: dict[str, Any], outside: Path
) -> None:
    server, cfg, space = prod["server"], prod["cfg"], prod["space"]
    rec = history(cfg).latest()
    oid = psql(server.psql_bin(), server.conn(), "select oid from pg_tablespace where spcname = 'outer_space'")[0][0]
    assert f"SNAP/{oid}.tar" in {f.path for f in rec.files}  # the tablespace's tar is recorded and hashed
    r = cli("verify", "--config", cfg)
    assert r.returncode == 0, r.stdout + r.stderr
    before = files_of(space)
    port = free_port()
    data = outside / "copy"
    r = cli("restore", "latest", "--to-datadir", data, "--start", "--port", str(port), "--config", cfg)
    try:
        assert r.returncode == 0, r.stderr
        copy = Conn({"host": "127.0.0.1", "port": str(port), "user": "postgres", "dbname": "shop",
                     "password": server.password})  # fmt: skip
        psql(server.psql_bin(), copy, "insert into orders select g, 'copy' from generate_series(1, 3000) g")
        psql(server.psql_bin(), copy, "checkpoint")
        assert psql(server.psql_bin(), copy, "select count(*) from orders")[0][0] == "8000"
        location = psql(server.psql_bin(), copy, f"select pg_tablespace_location({oid})")[0][0]
        assert Path(location).resolve() == (outside / "copy.tablespaces" / oid).resolve()
    finally:
        stop_server(server.bin / "pg_ctl", data)
    r = cli("drill", "latest", "--config", cfg)
    assert r.returncode == 0 and "shop: public.orders" in r.stdout, r.stdout + r.stderr
    assert files_of(space) == before  # production's tablespace folder: same files, same sizes and times
    assert int(psql(server.psql_bin(), server.conn(), "select count(*) from orders", db="shop")[0][0]) == 5000


def test_throwaway_server_keeps_away_from_production(prod: dict[str, Any], outside: Path) -> None:
    server, cfg, archive = prod["server"], prod["cfg"], prod["archive"]
    marker = outside / "ran"
    data = outside / f"a data dir $(touch {marker}) `touch {marker}`"
    port = free_port()
    r = cli("restore", "latest", "--to-datadir", data, "--start", "--port", str(port), "--config", cfg)
    try:
        assert r.returncode == 0, r.stderr
        copy = Conn({"host": "127.0.0.1", "port": str(port), "user": "postgres", "dbname": "shop",
                     "password": server.password})  # fmt: skip
        pb = server.psql_bin()
        got = {k: psql(pb, copy, f"show {k}")[0][0] if psql(pb, copy, f"show {k}") else ""
               for k in ("archive_mode", "max_wal_senders", "max_logical_replication_workers", "primary_conninfo",
                         "listen_addresses", "unix_socket_permissions")}  # fmt: skip
        assert got == {
            "archive_mode": "off",
            "max_wal_senders": "0",
            "max_logical_replication_workers": "0",
            "primary_conninfo": "",
            "listen_addresses": "127.0.0.1",
            "unix_socket_permissions": "0700",
        }
        subs = "select subenabled, coalesce(subslotname::text, '-') from pg_subscription"
        assert psql(pb, copy, subs) == [["f", "-"]]  # disabled, and production's slot left alone
        assert psql(pb, server.conn("shop"), subs) == [["t", "prod_sub"]]  # production's own: untouched
        sock = Path(psql(pb, copy, "show unix_socket_directories")[0][0])
        # a private folder of its own (this data directory's name is no socket folder name)
        assert sock.stat().st_mode & 0o777 == 0o700 and not str(sock).startswith(str(data))
        psql(pb, copy, "insert into orders select g, 'diverging' from generate_series(1, 20000) g")
        psql(pb, copy, "select pg_switch_wal()")
        psql(pb, copy, "checkpoint")
    finally:
        stop_server(server.bin / "pg_ctl", data)
    shutil.rmtree(sock)
    assert not marker.exists()  # the folder's name was taken literally
    r = cli("drill", "latest", "--config", cfg)
    assert r.returncode == 0, r.stdout + r.stderr
    # the copies (this one, the drill's) archived nothing: every archived file is production's
    who = {Path(line).resolve() for line in (archive / "who").read_text().split()}
    assert who == {server.data.resolve()}


# --- table names chosen by a role that may only create tables -----------------------------------------


HOSTILE_NAMES = [
    "tab\there",
    "new\nline",
    'quo"te',
    "it's",
    "back\\slash",
    "ünï cødé ☃",
    "\"; select lo_export(4242, '/tmp/dd-pwn1'); --",
    "x\tfrom pg_class; copy (select 1) to '/tmp/dd-pwn2'; --",
    "y\npg_class t union all select '',lo_export(4242,'/tmp/dd-p3')--",
]  # each under 64 bytes (the server cuts longer names)


def test_drill_counts_and_checksums_hostile_table_names_without_running_them(
    pg: LocalServer, pwfile: Path, tmp: Path
) -> None:
    from psycopg import sql

    db, role = f"names_{secrets.token_hex(3)}", f"app_{secrets.token_hex(3)}"
    psql(pg.psql_bin(), pg.conn(), f"create database {db}")
    psql(pg.psql_bin(), pg.conn(), f"create role {role} login password 'app-pw'")
    psql(pg.psql_bin(), pg.conn(), f"create schema app; grant usage, create on schema app to {role}", db=db)
    side_effects = [Path(p) for p in ("/tmp/dd-pwn1", "/tmp/dd-pwn2", "/tmp/dd-p3")]
    with psycopg.connect(host="127.0.0.1", port=pg.port, user=role, password="app-pw", dbname=db, autocommit=True) as c:
        c.execute("select lo_create(4242)")  # a large object of its own, for lo_export to write out
        for i, name in enumerate(HOSTILE_NAMES):
            t = sql.Identifier("app", name)
            c.execute(sql.SQL("create table {} (id int, v text)").format(t))
            c.execute(
                sql.SQL("insert into {} select g, md5(g::text) from generate_series(1, %s) g").format(t), (i + 3,)
            )
        want = {k: (int(n), str(cs)) for k, n, cs in (
            c.execute(sql.SQL("select format('%I.%I', 'app', {}::text), count(*), coalesce(sum(('x' || substr("
                              "md5(t::text), 1, 15))::bit(60)::bigint::numeric), 0) from {} t").format(
                sql.Literal(name), sql.Identifier("app", name))).fetchone() for name in HOSTILE_NAMES)}  # fmt: skip
    dest = tmp / "dest"
    dest.mkdir()
    c = write_config(tmp / "c.toml", pg, pwfile, db, dest)
    c.write_text(c.read_text() + "\n[drill]\nchecksums = true\n")
    r = cli("backup", "--config", c)
    assert r.returncode == 0, r.stderr
    h = history(c)
    rec = h.latest()
    assert {k: (v[0], v[1]) for k, v in h.repo.tables(rec).items()} == want
    r = cli("drill", "latest", "--config", c)
    assert r.returncode == 0 and "drill passed" in r.stdout, r.stdout + r.stderr
    assert [p for p in side_effects if p.exists()] == []


# --- --to-db: plain names only; the passfile ---------------------------------------------------------


class Listener:
    """A TCP port that counts the connections made to it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.count += 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


def test_to_db_connection_strings_are_refused_before_any_connection(
    pg: LocalServer, pwfile: Path, maildb: str, dest: Path, tmp: Path
) -> None:
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
    assert cli("backup", "--config", c).returncode == 0
    before = psql(pg.psql_bin(), pg.conn(), "select count(*) from messages", db=maildb)
    other = Listener()
    try:
        for to_db in (f"host=127.0.0.1 port={other.port} dbname=x", f"dbname={maildb}",
                      f"postgresql://127.0.0.1:{other.port}/x", f"postgres://postgres@127.0.0.1:{pg.port}/{maildb}"):  # fmt: skip
            r = cli("restore", "latest", "--to-db", to_db, "--config", c)
            assert r.returncode == 2 and "not a plain database name" in r.stderr, (to_db, r.stderr)
        assert other.count == 0
    finally:
        other.close()
    assert psql(pg.psql_bin(), pg.conn(), "select count(*) from messages", db=maildb) == before
    names = [r[0] for r in psql(pg.psql_bin(), pg.conn(), "select datname from pg_database")]
    assert not [n for n in names if "=" in n or "://" in n]


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(d.name))
    return out


def _cmdlines() -> list[bytes]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                out.append((d / "cmdline").read_bytes())
    return out


@pytest.fixture(scope="module")
def bigdb(pg: LocalServer) -> str:
    """A database whose pg_dump takes a few seconds (to look at it while it runs)."""
    name = f"big_{os.getpid()}"
    psql(pg.psql_bin(), pg.conn(), f"create database {name}")
    psql(pg.psql_bin(), pg.conn(), "create table big as select g as id, md5(g::text) || md5((g + 1)::text) as v "
         "from generate_series(1, 1200000) g", db=name, timeout=600)  # fmt: skip
    return name


def _pgpass_files() -> set[str]:
    """Every file or folder named like a passfile in the temporary folders."""
    found = set()
    for top in {tempfile.gettempdir(), "/tmp", "/dev/shm", "/var/tmp"}:
        for root, dirs, names in os.walk(top):  # (other programs' folders may vanish meanwhile: skipped)
            found |= {os.path.join(root, n) for n in dirs + names if "pgpass" in n}
            if root.count(os.sep) - top.count(os.sep) >= 2:
                dirs[:] = []
    return found


def test_passfile_names_the_server_and_never_touches_the_disk(
    pg: LocalServer, pwfile: Path, bigdb: str, dest: Path, tmp: Path
) -> None:
    c = write_config(tmp / "c.toml", pg, pwfile, bigdb, dest, compress=9)
    before = _pgpass_files()
    proc = subprocess.Popen([sys.executable, "-m", "deltadump.cli.main", "backup", "--config", str(c)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    line = b""
    try:
        deadline = time.monotonic() + 120
        while not line and time.monotonic() < deadline and proc.poll() is None:
            for child in _children(proc.pid):
                try:
                    if b"pg_dump" not in Path(f"/proc/{child}/cmdline").read_bytes():
                        continue
                    env = dict(
                        kv.split(b"=", 1)
                        for kv in Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
                        if b"=" in kv
                    )
                    assert b"PGPASSWORD" not in env
                    if b"PGPASSFILE" not in env:  # pg_dump --version, while the tools are found
                        continue
                    passfile = env[b"PGPASSFILE"].decode()
                    assert passfile.startswith("/proc/self/fd/")
                    line = Path(f"/proc/{child}/fd/{passfile.rsplit('/', 1)[1]}").read_bytes()
                except (FileNotFoundError, ProcessLookupError):
                    continue
        assert line, "pg_dump was not seen running"
        assert line.decode().startswith(f"127.0.0.1:{pg.port}:{bigdb}:postgres:"), line
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert sorted(_pgpass_files() - before) == []  # nothing left by the killed run


# --- secrets: one redaction for everything that leaves the process ---------------------------------------


class Hooks:
    def __init__(self) -> None:
        self.posts: list[bytes] = []
        hooks = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_POST(self) -> None:
                hooks.posts.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def make_cert(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, made here with `cryptography`."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_p, key_p = folder / "cert.pem", folder / "key.pem"
    cert_p.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_p.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))  # fmt: skip
    return cert_p, key_p


class Mailbox:
    """A real SMTP server (aiosmtpd) offering STARTTLS with a self-signed certificate; logins are
    accepted over TLS only, for one user and password."""

    def __init__(self, folder: Path, user: str = "", password: str = "", *, smtps: bool = False) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        self.cert, key = make_cert(folder)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, key)
        self.messages: list[bytes] = []
        self.logins: list[tuple[bytes, bytes]] = []
        box = self

        class Handler:
            async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
                box.messages.append(envelope.original_content or envelope.content)
                return "250 OK"

        def auth(server: object, session: object, envelope: object, mechanism: str, data: Any) -> Any:
            box.logins.append((data.login, data.password))
            return AuthResult(success=(data.login, data.password) == (user.encode(), password.encode()))

        tls: dict[str, Any] = {"ssl_context": ctx} if smtps else {"tls_context": ctx}
        self.ctl = Controller(Handler(), hostname="127.0.0.1", port=free_port(), authenticator=auth,
                              auth_require_tls=True, **tls)  # fmt: skip
        self.ctl.start()
        self.port = self.ctl.port

    def close(self) -> None:
        self.ctl.stop()


def test_smtp_tls_is_verified_by_default(pg: LocalServer, pwfile: Path, maildb: str, dest: Path, tmp: Path) -> None:
    box = Mailbox(tmp)
    try:
        c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
        base = (
            c.read_text()
            + f'\n[notify]\nemail = ["admin@example.com"]\nsmtp = "127.0.0.1:{box.port}"\non = ["success"]\n'
        )
        c.write_text(base)
        r = cli("backup", "--config", c)
        assert r.returncode == 0, r.stderr  # the backup succeeds; the notification says why it was not sent
        assert "notification failed" in r.stderr and "certificate" in r.stderr, r.stderr
        assert box.messages == []
        c.write_text(base + f'ca_file = "{box.cert}"\n')
        r = cli("backup", "--config", c)
        assert r.returncode == 0 and "notification failed" not in r.stderr, r.stderr
        assert len(box.messages) == 1
        c.write_text(base + "tls_verify = false\n")  # the explicit escape hatch
        r = cli("backup", "--config", c)
        assert r.returncode == 0 and "notification failed" not in r.stderr, r.stderr
        assert len(box.messages) == 2
    finally:
        box.close()
    box = Mailbox(tmp, smtps=True)  # TLS from the first byte (port 465 style)
    try:
        notify = f'\n[notify]\nemail = ["admin@example.com"]\nsmtp = "127.0.0.1:{box.port}"\non = ["success"]\n'
        c.write_text(base.split("\n[notify]")[0] + notify + 'tls = "smtps"\n')
        r = cli("backup", "--config", c)
        assert "certificate" in r.stderr and box.messages == []
        c.write_text(c.read_text() + f'ca_file = "{box.cert}"\n')
        r = cli("backup", "--config", c)
        assert r.returncode == 0 and "notification failed" not in r.stderr and len(box.messages) == 1, r.stderr
    finally:
        box.close()


@pytest.mark.parametrize(
    ("notify", "words"),
    [
        ('username = "u"\ntls = "none"\n', "login"),
        ('username = "u"\nstarttls = false\n', "login"),
        ('tls = "smtps"\nstarttls = true\n', "contradicts"),
        ('webhook = "file:///etc/passwd"\n', "http"),
        ('webhook = "gopher://127.0.0.1/x"\n', "http"),
    ],
)
def test_notify_config_refuses_login_without_tls_and_non_http_webhooks(tmp: Path, notify: str, words: str) -> None:
    dest = tmp / "dest"
    dest.mkdir()
    c = tmp / "c.toml"
    c.write_text(f'[database]\ndsn = "postgresql://x@127.0.0.1/x"\n[backup]\ndest = "{dest}"\n[notify]\n{notify}')
    r = cli("list", "--config", c)
    assert r.returncode == 2 and words in r.stderr, r.stderr
    c.write_text(f'[database]\ndsn = "postgresql://x@127.0.0.1/x"\n[backup]\ndest = "{dest}"\n[notify]\n'
                 'username = "u"\nstarttls = true\nwebhook = "https://example.invalid/x"\n')  # fmt: skip
    assert cli("list", "--config", c).returncode == 0  # an existing config with starttls = true keeps working


def test_a_sentinel_password_never_leaves(pg: LocalServer, bigdb: str, tmp: Path) -> None:
    role = f"backup_{secrets.token_hex(3)}"
    s_dsn, s_file, s_smtp, s_parse = (f"Sentinel{k}{secrets.token_hex(8)}" for k in "ABCD")
    psql(pg.psql_bin(), pg.conn(), f"create role {role} login superuser replication password '{s_file}'")
    pw, smtp_pw = tmp / "db.pw", tmp / "smtp.pw"
    pw.write_text(s_file + "\n")
    smtp_pw.write_text(s_smtp + "\n")
    dest, remote = tmp / "dest", tmp / "remote"
    dest.mkdir()
    remote.mkdir()
    box, hooks = Mailbox(tmp, "mailer", s_smtp), Hooks()
    notify = (f'\n[notify]\nemail = ["admin@example.com"]\nsmtp = "127.0.0.1:{box.port}"\nca_file = "{box.cert}"\n'
              f'username = "mailer"\npassword_file = "{smtp_pw}"\nwebhook = "{hooks.url}"\non = ["failure", "success"]\n')  # fmt: skip
    common = (f'\n[backup]\ndest = "{dest}"\nafter = "echo after-command-output"\n[delta]\nenabled = true\n'
              f'[offsite]\nurl = "file://{remote}"\n{notify}')  # fmt: skip
    good = tmp / "good.toml"
    good.write_text(f'[database]\ndsn = "postgresql://{role}@127.0.0.1:{pg.port}/{bigdb}"\n'
                    f'password_file = "{pw}"\npg_bin = "{pg.bin}"\n{common}')  # fmt: skip
    in_dsn = tmp / "dsn.toml"  # the password in the dsn, and a database that does not exist: a failure
    in_dsn.write_text(f'[database]\ndsn = "postgresql://{role}:{s_dsn}@127.0.0.1:{pg.port}/no_such_db"\n'
                      f'pg_bin = "{pg.bin}"\n{common}')  # fmt: skip
    kw = tmp / "kw.toml"
    kw.write_text(f"[database]\ndsn = \"host=127.0.0.1 port={pg.port} dbname=x password='{s_dsn}' user={role}\"\n"
                  f'pg_bin = "{pg.bin}"\n{common}')  # fmt: skip
    broken = tmp / "broken.toml"  # a password with a space, unquoted: a dsn parse error
    broken.write_text(f'[database]\ndsn = "host=127.0.0.1 password=abc {s_parse}"\n{common}')
    nodest = tmp / "nodest.toml"  # the password in the dsn, and a failure before any record exists
    nodest.write_text(in_dsn.read_text().replace(f'dest = "{dest}"', f'dest = "{tmp / "unmounted"}"'))
    # each sentinel whole, and its first and last 16 characters (a message must not echo a part either)
    sentinels = [x.encode() for s in (s_dsn, s_file, s_smtp, s_parse) for x in (s, s[:16], s[-16:])]
    seen: list[bytes] = []
    outputs: list[bytes] = []
    try:
        proc = subprocess.Popen([sys.executable, "-m", "deltadump.cli.main", "backup", "--config", str(good)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        sampler = threading.Thread(
            target=lambda: [
                seen.extend(_cmdlines()) for _ in iter(lambda: proc.poll() is None and time.sleep(0.02) is None, False)
            ]
        )
        sampler.start()
        out, err = proc.communicate(timeout=600)
        sampler.join()
        assert proc.returncode == 0, err
        outputs += [out, err]
        assert len(seen) > 100  # /proc was sampled all along the backup
        for cfg, code in ((in_dsn, 1), (kw, 1), (broken, 2), (nodest, 1)):
            r = subprocess.run([sys.executable, "-m", "deltadump.cli.main", "backup", "--config", str(cfg)],
                               capture_output=True)  # fmt: skip
            assert r.returncode == code, r.stderr
            outputs += [r.stdout, r.stderr]
        deadline = time.monotonic() + 30  # the detached after-command, for the log
        while b"exited with" not in (
            (dest / "deltadump-after.log").read_bytes() if (dest / "deltadump-after.log").exists() else b""
        ):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        box.close()
        hooks.server.shutdown()
    assert b"after-command-output" in (dest / "deltadump-after.log").read_bytes()
    assert (len(hooks.posts), len(box.messages)) == (5, 5)
    assert box.logins and all(p == s_smtp.encode() for _, p in box.logins)  # the SMTP login did happen, over TLS
    stored = [p.read_bytes() for root in (dest, remote) for p in root.rglob("*") if p.is_file()]
    assert any(f.endswith(".log") for f in map(str, dest.rglob("*")))
    places = {"webhook": hooks.posts, "email": box.messages, "cli": outputs, "files": stored, "cmdline": seen}
    leaks = {(where, s.decode()) for where, blobs in places.items() for b in blobs for s in sentinels if s in b}
    assert leaks == set()


# --- the after-command runner ------------------------------------------------------------------------


def test_after_command_from_a_hostile_working_folder(
    pg: LocalServer, pwfile: Path, maildb: str, dest: Path, tmp: Path
) -> None:
    evil = tmp / "evil"
    (evil / "deltadump" / "jobs").mkdir(parents=True)
    marker = tmp / "imported-from-cwd"
    payload = f"open({str(marker)!r}, 'w').write('ran')\n"
    for f in ("deltadump/__init__.py", "deltadump/jobs/__init__.py", "deltadump/jobs/after.py"):
        (evil / f).write_text(payload)
    token = f"token-{secrets.token_hex(8)}"
    where = tmp / "where"
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest, after=f"pwd > {where}; sleep 2; : {token}")
    deltadump = Path(sys.executable).parent / "deltadump"  # the installed command, as cron or systemd runs it
    seen: list[bytes] = []
    r = subprocess.run([str(deltadump), "backup", "--config", str(c)], cwd=evil, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 30
    while not (where.exists() and where.read_text()) and not marker.exists():
        seen.extend(_cmdlines())
        assert time.monotonic() < deadline, "the after-command did not run"
    assert not marker.exists()  # nothing from the caller's working folder was imported
    note = None
    while time.monotonic() < deadline and note is None:
        seen.extend(_cmdlines())
        h = history(c)
        rec = h.latest()
        note = next((n for n in h.notes if n.backup == rec.id and n.kind == "after"), None)
    assert note is not None and note.exit_code == 0
    assert not marker.exists()  # nothing from the caller's working folder was imported
    assert Path(where.read_text().strip()) == dest  # the command runs in the backup folder
    assert [c for c in seen if token.encode() in c] == []
    log = (dest / "deltadump-after.log").read_text()
    assert token not in log and f"backup {rec.id}" in log and "exited with 0" in log


def test_systemd_unit_keeps_the_after_command_alive(pg: LocalServer, pwfile: Path, maildb: str, tmp: Path) -> None:
    from deltadump.config import load
    from deltadump.schedule import systemd_units

    dest = tmp / "dest"
    dest.mkdir()
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
    c.write_text(c.read_text() + '\n[schedule]\nat = "02:00"\n')
    service = systemd_units(load(c), c, "mail")["deltadump-mail.service"]
    assert "\nKillMode=process\n" in service


# --- the embedded server --------------------------------------------------------------------------------


def test_embedded_server_refuses_another_local_user(tmp: Path) -> None:
    """Started by an unprivileged user (as `deltadump demo` is), in a folder others may traverse: another
    user (nobody) can connect neither through the socket nor over TCP without the password."""
    runuser = require_tool("runuser")
    require_tool("python3")
    owner, other = run_as_user(), "nobody"
    assert owner and owner != other, "the test needs root (as in CI), a server user and nobody"
    top = Path(tempfile.mkdtemp(prefix="deltadump-embedded-"))
    top.chmod(0o711)
    shutil.chown(top, owner)
    info = top / "info.json"
    script = (f"import sys, json, time; sys.path.insert(0, {str(ROOT)!r})\n"
              "from deltadump.pg.server import LocalServer\n"
              f"s = LocalServer(__import__('pathlib').Path({str(top / 'srv')!r})).start()\n"
              f"open({str(info)!r}, 'w').write(json.dumps({{'port': s.port, 'sock': str(s.sock), 'pw': s.password}}))\n"
              "sys.stdin.read()\ns.remove()\n")  # fmt: skip
    python = "/usr/bin/python3"  # the system's: the test's own interpreter may sit in a folder only root can read
    env = {
        **os.environ,
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
    }  # (root's own folders are not the owner's)
    proc = subprocess.Popen([runuser, "-u", owner, "--", python, "-c", script],
                            stdin=subprocess.PIPE, cwd=top, env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not info.exists() or not info.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, "the embedded server did not start"
            time.sleep(0.1)
        srv = json.loads(info.read_text())
        psql_bin = shutil.which("psql")
        assert psql_bin
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}

        def as_other(host: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
            e = {**env, **({"PGPASSWORD": password} if password else {})}
            return subprocess.run(["runuser", "-u", other, "--", psql_bin, "-w", "-X", "-h", host, "-p", str(srv["port"]),
                                   "-U", "postgres", "-d", "postgres", "-c", "select 1"],
                                  capture_output=True, text=True, env=e, cwd="/")  # fmt: skip

        assert as_other(srv["sock"]).returncode != 0
        assert as_other("127.0.0.1").returncode != 0
        assert as_other("127.0.0.1", srv["pw"]).returncode == 0  # the server answers: only the password was missing
        assert Path(srv["sock"]).stat().st_mode & 0o777 == 0o700
    finally:
        with contextlib.suppress(BrokenPipeError):  # (the child may have ended already)
            proc.communicate(b"", timeout=120)
        shutil.rmtree(top, ignore_errors=True)


# --- smaller items -----------------------------------------------------------------------------------------


def test_markup_in_recorded_strings_is_printed_literally(pg: LocalServer, pwfile: Path, dest: Path, tmp: Path) -> None:
    for db in ("[bold red]x[/]", "[link=https://example.invalid]y[/link]"):
        c = write_config(tmp / "c.toml", pg, pwfile, db, dest)
        r = cli("backup", "--config", c)
        assert r.returncode == 1 and db in r.stderr, r.stderr
        r = cli("list", "--config", c)
        assert r.returncode == 0 and db in r.stdout, r.stdout + r.stderr
        r = cli("status", "--config", c)
        assert db in r.stdout, r.stdout + r.stderr


def test_cron_file_names_and_percent(pg: LocalServer, pwfile: Path, maildb: str, tmp: Path) -> None:
    dest = tmp / "dest"
    dest.mkdir()
    folder = tmp / "conf 100%"
    folder.mkdir()
    c = write_config(folder / "mail.prod.toml", pg, pwfile, maildb, dest)
    c.write_text(c.read_text() + '\n[schedule]\nat = "02:00"\n')
    crond = tmp / "cron.d"
    r = cli("schedule", "install", "--cron", "--dir", crond, "--config", c)
    assert r.returncode == 0, r.stderr
    assert [p.name for p in crond.iterdir()] == ["deltadump-mail-prod"]  # cron ignores names with a dot
    line = (crond / "deltadump-mail-prod").read_text()
    assert "100\\%" in line and line.count("%") == line.count("\\%")  # cron makes a bare % a newline
    r = cli("schedule", "install", "--cron", "--dir", crond, "--name", "a.b", "--config", c)
    assert r.returncode == 2 and not (crond / "deltadump-a.b").exists()


def test_init_escapes_the_password_file_path(pg: LocalServer, tmp: Path) -> None:
    from deltadump.config import load

    dest = tmp / "dest"
    dest.mkdir()
    pw = tmp / 'pass "word" \\ file'
    pw.write_text(pg.password + "\n")
    c = tmp / "c.toml"
    r = cli("init", "--dsn", pg.dsn(), "--dest", dest, "--password-file", pw, "--config", c)
    assert r.returncode == 0, r.stderr
    assert load(c).database.password_file == str(pw)


def test_tool_discovery_survives_odd_path_entries(monkeypatch: pytest.MonkeyPatch, tmp: Path) -> None:
    from deltadump.pg.tools import find_all

    monkeypatch.setenv("PATH", os.pathsep.join([str(tmp / ("x" * 300)), str(tmp / "missing"), "", os.environ["PATH"]]))
    assert find_all("psql")
    monkeypatch.delenv("PATH")
    find_all("psql")  # no PATH at all: the package folders are still searched
    # an entry the user may not read (root's private folder, as seen by nobody)
    private = tmp / "private"
    private.mkdir(mode=0o700)
    script = f"import sys; sys.path.insert(0, {str(ROOT)!r})\nfrom deltadump.pg.tools import find_all\nprint(len(find_all('psql')))"
    r = subprocess.run([require_tool("runuser"), "-u", "nobody", "--", "/usr/bin/python3", "-c", script],
                       capture_output=True, text=True, cwd="/", env={"PATH": f"{private}:/usr/local/bin:/usr/bin:/bin"})  # fmt: skip
    assert r.returncode == 0 and int(r.stdout) >= 1, r.stderr


@pytest.mark.parametrize(
    ("pos", "length"),
    [(2**63 - 8, 16), (8, 2**63 - 4), (2**64 - 1, 1), (0, 2**64 - 1), (2**62, 2**62)],
)
def test_composition_rejects_overflowing_copies(tmp: Path, pos: int, length: int) -> None:
    from deltadump.rsync.compose import compose

    d = tmp / "d"
    d.write_bytes(b"rs\x026" + bytes([0x54]) + struct.pack(">QQ", pos, length) + b"\0")
    with pytest.raises(RsyncError) as e:
        compose(100, [d])
    assert e.value.rs_code == RsyncError.RS_CORRUPT


def test_clean_swaps_only_after_a_successful_restore(
    pg: LocalServer, pwfile: Path, maildb: str, dest: Path, tmp: Path
) -> None:
    owner = f"gone_{secrets.token_hex(3)}"
    pb, conn = pg.psql_bin(), pg.conn()
    psql(pb, conn, f"create role {owner}")
    psql(pb, conn, f"create table owned (x int); alter table owned owner to {owner}", db=maildb)
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
    assert cli("backup", "--config", c).returncode == 0
    psql(pb, conn, "drop table owned", db=maildb)
    psql(pb, conn, f"drop role {owner}")  # the restore now fails at ALTER TABLE ... OWNER TO
    target = f"target_{secrets.token_hex(3)}"
    psql(pb, conn, f"create database {target}")
    psql(pb, conn, "create table keep_me (x int); insert into keep_me values (42)", db=target)
    r = cli("restore", "latest", "--to-db", target, "--clean", "--config", c)
    assert r.returncode == 1, r.stderr
    assert psql(pb, conn, "select x from keep_me", db=target) == [["42"]]  # the old database survived
    psql(pb, conn, f"create role {owner}")
    r = cli("restore", "latest", "--to-db", target, "--clean", "--jobs", "2", "--config", c)
    assert r.returncode == 0, r.stderr
    assert psql(pb, conn, "select count(*) from messages", db=target) == [["300"]]
    assert psql(pb, conn, "select to_regclass('keep_me') is null", db=target) == [["t"]]
    names = [r[0] for r in psql(pb, conn, "select datname from pg_database")]
    assert [n for n in names if n.startswith(target) and n != target] == []  # no database left beside it
