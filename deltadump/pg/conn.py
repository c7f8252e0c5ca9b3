"""Connections: a DSN becomes libpq environment variables (never command-line arguments, so no
password is ever visible in a process list), the password a passfile in memory that names exactly
this server, database and user; database names that are plain names (never connection strings);
psql queries and error classification."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import ConfigError, DatabaseError, UsageError, register_secret
from ..naming import plain_dbname

# libpq connection keywords -> environment variables (https://www.postgresql.org/docs/current/libpq-envars.html)
ENV_OF = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "passfile": "PGPASSFILE",
    "service": "PGSERVICE",
    "options": "PGOPTIONS",
    "application_name": "PGAPPNAME",
    "sslmode": "PGSSLMODE",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcrl": "PGSSLCRL",
    "requiressl": "PGREQUIRESSL",
    "gssencmode": "PGGSSENCMODE",
    "krbsrvname": "PGKRBSRVNAME",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "client_encoding": "PGCLIENTENCODING",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "channel_binding": "PGCHANNELBINDING",
}


def parse_dsn(dsn: str) -> dict[str, str]:
    """Parse a libpq URI (postgresql://...) or key=value string into keywords."""
    dsn = dsn.strip()
    if dsn.startswith(("postgresql://", "postgres://")):
        u = urlsplit(dsn)
        kw: dict[str, str] = {}
        if u.username:
            kw["user"] = unquote(u.username)
        if u.password is not None:
            kw["password"] = unquote(u.password)
        netloc = u.netloc.rpartition("@")[2]
        if netloc:
            hostpart, _, port = netloc.rpartition(":") if not netloc.endswith("]") else (netloc, "", "")
            if not hostpart:  # no ':' at all
                hostpart, port = netloc, ""
            if hostpart:
                kw["host"] = unquote(hostpart.strip("[]"))
            if port:
                kw["port"] = port
        if u.path and u.path != "/":
            kw["dbname"] = unquote(u.path[1:])
        for k, v in parse_qsl(u.query, keep_blank_values=True):
            kw[k] = v
        if "password" in kw:
            register_secret(kw["password"])
        return kw
    kw = {}
    key = ""
    i, n = 0, len(dsn)
    while i < n:
        while i < n and dsn[i].isspace():
            i += 1
        if i >= n:
            break
        m = re.match(r"([A-Za-z_]+)\s*=\s*", dsn[i:])
        if not m:  # never echo the text: it may be part of a password
            after = f" after {key!r}" if kw else ""
            raise ConfigError(f"cannot parse dsn at character {i + 1}{after}: expected keyword=value")
        key = m.group(1)
        i += m.end()
        val = []
        if i < n and dsn[i] == "'":
            i += 1
            while i < n and dsn[i] != "'":
                if dsn[i] == "\\" and i + 1 < n:
                    i += 1
                val.append(dsn[i])
                i += 1
            if i >= n:
                raise ConfigError(f"unterminated quoted value of {key!r} in dsn")
            i += 1
        else:
            while i < n and not dsn[i].isspace():
                if dsn[i] == "\\" and i + 1 < n:
                    i += 1
                val.append(dsn[i])
                i += 1
        kw[key] = "".join(val)
    if "password" in kw:
        register_secret(kw["password"])
    return kw


def check_dbname(name: str, what: str = "database name") -> str:
    """A plain database name, never a connection string: libpq expands a database name that contains
    '=' or starts with postgresql:// (pg_restore --dbname, psql's argument) into connection
    parameters, which could point anywhere (another server, the live database). UsageError (exit 2)."""
    if not plain_dbname(name):
        raise UsageError(
            f"{what} {name!r} is not a plain database name",
            hint="give the name alone; the server comes from the config's dsn (or --dsn)",
        )
    return name


def conninfo_quote(value: str) -> str:
    """A libpq key=value string's value, quoted so it is taken literally."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def dbname_arg(name: str) -> str:
    """A database name as a program's --dbname argument: a connection string that names it literally
    (pg_restore, pg_dumpall -l expand a bare name holding '=' into connection parameters). Every other
    program gets the name as PGDATABASE (Conn.env), which libpq never expands."""
    return f"dbname={conninfo_quote(name)}"


class Env(dict[str, str]):
    """The environment of a libpq program, and the file descriptors it must inherit (pass_fds)."""

    fds: tuple[int, ...] = ()


def _passfile_field(v: str) -> str:
    return v.replace("\\", "\\\\").replace(":", "\\:")


def _default_user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return os.environ.get("USER", "")


def _private_fd(data: bytes) -> tuple[int, str]:
    """A file that never touches the disk and dies with the process (a memfd, 0600); its name as a
    path another process can open: /proc/self/fd/N (valid in a child that inherits fd N, and in the
    workers it forks: pg_dump and pg_restore -j open one connection per worker). Linux only."""
    fd = os.memfd_create("deltadump-pgpass", os.MFD_CLOEXEC)
    try:
        os.fchmod(fd, 0o600)  # libpq ignores a passfile readable by group or others
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd, f"/proc/self/fd/{fd}"


@dataclass
class Conn:
    """Where and how to connect, as libpq keywords; secrets never leave the environment."""

    keywords: dict[str, str]
    password_file: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    also_dbs: tuple[str, ...] = ()  # databases the program reconnects to (pg_restore --create): passfile lines too

    @classmethod
    def from_dsn(cls, dsn: str, password_file: str = "") -> Conn:
        kw = parse_dsn(dsn)
        unknown = sorted(set(kw) - set(ENV_OF))
        if unknown:
            raise ConfigError(f"unsupported connection keyword(s) in dsn: {', '.join(unknown)}")
        return cls(kw, password_file)

    def with_db(self, dbname: str) -> Conn:
        return Conn({**self.keywords, "dbname": dbname}, self.password_file, dict(self.extra_env))

    def password(self) -> str | None:
        """The password: password_file's first line, else the dsn's, else PGPASSWORD (registered for
        redaction); None when libpq is to find one itself (~/.pgpass, PGPASSFILE) or none is needed."""
        password = self.keywords.get("password")
        if self.password_file:
            try:
                password = Path(self.password_file).expanduser().read_text().splitlines()[0]
            except (OSError, IndexError) as exc:
                raise ConfigError(f"cannot read password_file {self.password_file}: {exc}") from exc
        if password is None:
            password = self.extra_env.get("PGPASSWORD") or os.environ.get("PGPASSWORD")
        if password is not None:
            register_secret(password)
        return password

    def passfile_lines(self, password: str) -> bytes:
        """One passfile line per host and port this connection may use, naming exactly that host,
        port, database (and `replication`, for pg_basebackup's replication connection) and user."""
        host = self.setting("host") or ""
        hosts = host.split(",") if host else (self.setting("hostaddr") or "localhost").split(",")
        ports = (self.setting("port") or "5432").split(",")
        if len(ports) == 1:
            ports = ports * len(hosts)
        user = self.setting("user") or _default_user()
        pw = _passfile_field(password)
        lines = []
        for h, p in zip(hosts, ports, strict=False):
            names = [h, "localhost"] if h.startswith("/") else [h]  # libpq's default socket matches localhost
            for name in names:
                for db in dict.fromkeys((self.dbname, *self.also_dbs, "replication")):
                    # a line break cannot be escaped in a passfile: a database so named (any role with
                    # CREATEDB can make one) matches as '*', this passfile serving one host and user
                    db = "*" if "\n" in db or "\r" in db else db
                    fields = (name or "localhost", p or "5432", db, user)
                    lines.append(":".join(_passfile_field(f) for f in fields) + f":{pw}\n")
        return "".join(lines).encode()

    def setting(self, key: str) -> str | None:
        if key in self.keywords:
            return self.keywords[key]
        return os.environ.get(ENV_OF[key])

    @property
    def dbname(self) -> str:
        return self.setting("dbname") or self.setting("user") or os.environ.get("USER", "postgres")

    @property
    def where(self) -> str:
        """host:port/db and role, for messages (never the password)."""
        host = self.setting("host") or "local socket"
        port = self.setting("port") or "5432"
        user = self.setting("user") or os.environ.get("USER", "?")
        return f"{host}:{port}/{self.dbname} as {user}"

    @contextlib.contextmanager
    def env(self) -> Iterator[Env]:
        """Environment for a libpq program. A password (password_file, the dsn's, PGPASSWORD) goes
        into a passfile that names this connection's host, port, database and user, and that never
        touches the disk: a memfd the child inherits (`fds`, to give as pass_fds) and libpq opens as
        /proc/self/fd/N; it disappears with the last process holding it, even after a kill."""
        env = Env(os.environ)
        env.update(self.extra_env)
        for k, v in self.keywords.items():
            if k != "password":
                env[ENV_OF[k]] = v
        password = self.password()
        fd = -1
        try:
            if password is not None:
                env.pop("PGPASSWORD", None)
                fd, path = _private_fd(self.passfile_lines(password))
                env["PGPASSFILE"] = path
                env.fds = (fd,)
            env.setdefault("PGCONNECT_TIMEOUT", "10")
            env["PGAPPNAME"] = env.get("PGAPPNAME", "deltadump")
            yield env
        finally:
            if fd >= 0:
                os.close(fd)


def classify(stderr: str, conn: Conn) -> DatabaseError:
    """Turn libpq/psql/pg_dump connection errors into one clear sentence."""
    text = " ".join(stderr.split())
    where = conn.where
    if "password authentication failed" in text or "no password supplied" in text:
        return DatabaseError(
            f"wrong or missing password for {where}",
            hint="set [database] password_file, PGPASSWORD or ~/.pgpass",
        )
    m = re.search(r'database "([^"]+)" does not exist', text)
    if m:
        return DatabaseError(f'database "{m.group(1)}" does not exist on {where}')
    m = re.search(r'role "([^"]+)" does not exist', text)
    if m:
        return DatabaseError(f'role "{m.group(1)}" does not exist on {where}')
    if any(
        s in text
        for s in ("Connection refused", "could not connect", "No such file or directory", "timeout expired",
                  "could not translate host name", "Network is unreachable", "No route to host")
    ):  # fmt: skip
        reason = next((r for r in ("Connection refused", "timeout expired", "could not translate host name",
                                    "Network is unreachable", "No route to host", "No such file or directory")
                       if r in text), _last_sentence(text))  # fmt: skip
        return DatabaseError(
            f"cannot reach the database server at {where}: {reason}",
            hint="is the server running, and are host and port right?",
        )
    if "no pg_hba.conf entry" in text:
        return DatabaseError(f"the server refused the connection ({where}): no pg_hba.conf entry")
    return DatabaseError(f"database error on {where}: {_last_sentence(text)}")


def _last_sentence(text: str) -> str:
    text = re.sub(r"^(psql|pg_dump|pg_restore): (error: )?", "", text)
    return text[:300]


def psql(psql_bin: Path, conn: Conn, sql: str, *, db: str | None = None, timeout: float = 120) -> list[list[str]]:
    """Run one SQL text with psql; rows as lists of strings (unaligned, tab-separated)."""
    c = conn.with_db(db) if db else conn
    with c.env() as env:
        try:
            res = subprocess.run(
                [str(psql_bin), "-X", "-A", "-t", "-q", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", sql],
                env=env,
                pass_fds=env.fds,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise DatabaseError(f"the database at {c.where} did not answer within {timeout:.0f} s") from exc
    if res.returncode != 0:
        raise classify(res.stderr, c)
    return [line.split("\t") for line in res.stdout.splitlines() if line]
