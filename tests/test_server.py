"""Whole-server backups (issue 14), against real servers: the suite's `pg` server as the source and a
second, empty server started here as the target of `restore --server`; the real pg_dump, pg_dumpall,
pg_restore and psql. A source with several databases owned by different roles, a role with a
membership (and one whose name is made of quotes, a semicolon and a newline), grants on schemas and
tables, database-level and per-role-in-database settings is backed up with `databases = "all"` and
restored onto the empty server; tables are compared by row counts and checksums, owners and grants
through the catalogs. Then: a database added between two runs, one dropped, one dropped mid-run and
one the backup role may not connect to; and a single-database folder written by the code before this
feature, backed up on by this one."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote

import psycopg
import pytest
from conftest import ROOT, cli, history, write_config
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql

from deltadump.config import load
from deltadump.errors import DumpError, IntegrityError
from deltadump.jobs import sample
from deltadump.jobs.backup import backup_and_report
from deltadump.jobs.common import SilentReporter
from deltadump.naming import GLOBALS_PART, db_part
from deltadump.pg.cluster import parse_globals
from deltadump.pg.inspect import connect_kwargs, table_stats
from deltadump.pg.server import LocalServer
from deltadump.store.chain import chain_of
from deltadump.store.records import BackupRecord, ObjectRecord, decode, encode
from deltadump.store.retention import Policy, plan

DAYS = [f"2026-12-{d:02d}T02:00:00" for d in range(1, 20)]
# the commit this feature was built on: the deltadump that wrote single-database folders before it
BEFORE = "69d2bed78e749b529fd1b98d1978d70ed8e89481"
_ids = itertools.count()


def uid() -> str:
    return f"{os.getpid()}_{next(_ids)}"


@pytest.fixture
def target() -> Iterator[LocalServer]:
    """A second, empty server: what restore --server restores onto."""
    server = LocalServer()
    server.start()
    try:
        yield server
    finally:
        server.remove()


def secret_file(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def run(server: LocalServer, db: str, *statements: sql.Composable | str, params: tuple[object, ...] = ()) -> None:
    with psycopg.connect(**connect_kwargs(server.conn(), db), autocommit=True) as c:
        for s in statements:
            c.execute(s, params or None)  # type: ignore[arg-type]


def rows(server: LocalServer, db: str, query: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with psycopg.connect(**connect_kwargs(server.conn(), db), autocommit=True) as c:
        return sorted(c.execute(query, params or None).fetchall(), key=repr)  # type: ignore[arg-type]


def databases(server: LocalServer) -> list[str]:
    return [str(r[0]) for r in rows(server, "postgres", "select datname from pg_database where not datistemplate")]


def whole_config(path: Path, pg: LocalServer, pwfile: Path, dest: Path, *, dsn: str | None = None,
                 extra: str = "", **database: object) -> Path:  # fmt: skip
    """A whole-server config: [database] databases (and exclude), slots named %D/..., more sections."""
    text = "\n".join([
        "[database]", f"dsn = {json.dumps(dsn or pg.dsn('postgres'))}", f"password_file = {json.dumps(str(pwfile))}",
        f"pg_bin = {json.dumps(str(pg.bin))}", *(f"{k} = {json.dumps(v)}" for k, v in database.items()), "",
        "[backup]", f"dest = {json.dumps(str(dest))}", 'name = "%D/DBBACK-%w.DMP"', "",
    ])  # fmt: skip
    path.write_text(text + extra)
    return path


# an ACL as the set it is (the server keeps its items in the order they were granted)
ACL = "(select array_agg(a::text order by a::text) from unnest({}) a)"


def ident(*names: str) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


# --- a source server with three databases, owners, a membership, grants and settings -----------------


class Source:
    def __init__(self, pg: LocalServer, u: str) -> None:
        self.own_a, self.own_b, self.readers, self.member = (
            f"{k}_{u}" for k in ("own_a", "own_b", "readers", "member")
        )
        self.odd = f"we;ird \"role\" \\ 'x' -- {u}"  # pg_dumpall quotes it: the globals reader must too
        self.dbs = [f"srv_{u}_{x}" for x in "abc"]
        self.roles = [self.own_a, self.own_b, self.readers, self.member, self.odd]
        self.passwords = {self.own_a: f"pw-a-{u}", self.own_b: f"pw b '{u}", self.member: f"pw-m-{u}"}
        a, b, c = self.dbs
        for role, pw in self.passwords.items():
            run(
                pg,
                "postgres",
                sql.SQL("create role {} login password {}").format(sql.Identifier(role), sql.Literal(pw)),
            )
        run(pg, "postgres", sql.SQL("create role {} nologin").format(ident(self.readers)),
            sql.SQL("create role {} nologin connection limit 3").format(ident(self.odd)),
            sql.SQL("grant {} to {}").format(ident(self.readers), ident(self.member)),
            sql.SQL("grant {} to {} with admin option").format(ident(self.readers), ident(self.odd)),
            sql.SQL("create database {} owner {}").format(ident(a), ident(self.own_a)),
            sql.SQL("create database {} owner {}").format(ident(b), ident(self.own_b)),
            sql.SQL("create database {} owner {}").format(ident(c), ident(self.own_a)),
            sql.SQL("alter database {} set work_mem = '3MB'").format(ident(a)),
            sql.SQL("alter role {} in database {} set search_path = app, public").format(ident(self.member), ident(b)),
            sql.SQL("revoke connect on database {} from public").format(ident(c)),
            sql.SQL("grant connect on database {} to {}").format(ident(c), ident(self.member)))  # fmt: skip
        run(pg, a, sql.SQL("create schema app authorization {}").format(ident(self.own_a)),
            "create table app.items (id int primary key, name text, added timestamptz default now())",
            "insert into app.items select g, 'item ' || g from generate_series(1, 500) g",
            sql.SQL("alter table app.items owner to {}").format(ident(self.own_a)),
            sql.SQL("grant usage on schema app to {}").format(ident(self.readers)),
            sql.SQL("grant select on app.items to {}").format(ident(self.readers)),
            sql.SQL("grant update (name) on app.items to {}").format(ident(self.odd)))  # fmt: skip
        sample.load(pg.psql_bin(), pg.conn(), b, users=4, messages=80, words=12)
        run(pg, b, sql.SQL("grant select on all tables in schema public to {}").format(ident(self.readers)),
            sql.SQL("create schema app authorization {}").format(ident(self.own_b)))  # fmt: skip
        run(pg, c, "create table notes (id serial primary key, body text)",
            "insert into notes (body) select md5(g::text) from generate_series(1, 300) g",
            sql.SQL("alter table notes owner to {}").format(ident(self.own_a)),
            sql.SQL("grant insert on notes to {}").format(ident(self.member)))  # fmt: skip

    def catalog(self, server: LocalServer) -> dict[str, object]:
        """Owners, grants, memberships and settings as the catalogs tell them (names, never oids)."""
        roles, dbs = (self.roles,), (self.dbs,)
        out: dict[str, object] = {
            "roles": rows(server, "postgres", "select rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, "
                          "rolcanlogin, rolreplication, rolbypassrls, rolconnlimit from pg_roles "
                          "where rolname = any(%s)", roles),
            "members": rows(server, "postgres", "select r.rolname, m.rolname, g.rolname, (to_jsonb(a) - 'oid' - "
                            "'roleid' - 'member' - 'grantor')::text from pg_auth_members a join pg_roles r on "
                            "r.oid = a.roleid join pg_roles m on m.oid = a.member join pg_roles g on g.oid = a.grantor "
                            "where r.rolname = any(%s) or m.rolname = any(%s)", roles * 2),
            "databases": rows(server, "postgres", "select datname, pg_get_userbyid(datdba), " + ACL.format("datacl") + ", "
                              "pg_encoding_to_char(encoding), datcollate, datctype, datconnlimit from pg_database "
                              "where datname = any(%s)", dbs),
            "settings": rows(server, "postgres", "select d.datname, r.rolname, s.setconfig from pg_db_role_setting s "
                             "left join pg_database d on d.oid = s.setdatabase left join pg_roles r on r.oid = "
                             "s.setrole where d.datname = any(%s) or r.rolname = any(%s)", dbs + roles),
        }  # fmt: skip
        for db in self.dbs:
            out[f"{db} schemas"] = rows(
                server,
                db,
                "select nspname, pg_get_userbyid(nspowner), " + ACL.format("nspacl") + " from "
                "pg_namespace where nspname !~ '^pg_' and nspname <> 'information_schema'",
            )
            out[f"{db} relations"] = rows(server, db, "select n.nspname, c.relname, c.relkind, "
                                          "pg_get_userbyid(c.relowner), " + ACL.format("c.relacl") + ", "
                                          "(select array_agg(attname || ':' || " + ACL.format("attacl") + "::text order by attname) from "
                                          "pg_attribute where attrelid = c.oid and attacl is not null) from pg_class c "
                                          "join pg_namespace n on n.oid = c.relnamespace where n.nspname !~ '^pg_' "
                                          "and n.nspname <> 'information_schema'")  # fmt: skip
        return out


def test_whole_server_restored_onto_an_empty_server_from_the_encrypted_offsite_copy_alone(
    pg: LocalServer, pwfile: Path, tmp: Path, target: LocalServer
) -> None:
    import pyrage

    ident_ = pyrage.x25519.Identity.generate()
    key = secret_file(tmp / "key.txt", str(ident_))
    others = databases(pg)  # the suite's other databases: not this test's
    src = Source(pg, uid())
    dest, remote = tmp / "dest", tmp / "remote"
    dest.mkdir()
    remote.mkdir()
    c = whole_config(tmp / "c.toml", pg, pwfile, dest, databases="all", exclude=others, extra=(
        'globals = "with-passwords"\n\n[delta]\nenabled = true\n\n[drill]\nchecksums = true\n\n'
        f'[offsite]\nurl = "file://{remote}"\nencrypt = true\nrecipients = ["{ident_.to_public()}"]\n'))  # fmt: skip
    r = cli("backup", "--config", c)
    assert r.returncode == 0, r.stderr
    h = history(c)
    g = h.backups[0]
    assert g.format == "globals" and g.db is None and g.databases == sorted(src.dbs)
    assert [b.db for b in h.backups[1:]] == sorted(src.dbs) and all(b.status == "ok" for b in h.backups)
    assert all(b.tables is not None for b in h.backups[1:])  # each its own drill record
    assert all(b.path.startswith(f"{GLOBALS_PART if b.db is None else b.db}/DBBACK-") for b in h.backups)
    script = dest / g.path
    assert stat.S_IMODE(script.stat().st_mode) == 0o600
    assert script.read_bytes().count(b"SCRAM-SHA-256$") >= 3  # with-passwords: the roles' password hashes
    # offsite, encrypted like everything else: no password hash, no role name in the clear
    sent = [p for p in remote.rglob("*") if p.is_file()]
    assert any(f"full/{g.id}/" in p.as_posix() for p in sent)
    assert not any(b"SCRAM-SHA-256" in p.read_bytes() or src.member.encode() in p.read_bytes() for p in sent)
    # a second run: each database a delta against its own previous backup (one chain per database)
    run(pg, src.dbs[0], "insert into app.items select g, 'more ' || g from generate_series(501, 600) g")
    r = cli("backup", "--config", c)
    assert r.returncode == 0, r.stderr
    h = history(c)
    first = {b.db: b for b in h.backups if b.db and b.kind == "base"}
    second = {b.db: b for b in h.backups if b.db and b.kind == "delta"}
    assert set(second) == set(src.dbs), [(b.db, b.kind) for b in h.backups]
    assert all(second[d].parent == first[d].id for d in src.dbs)
    assert cli("verify", "--config", c).returncode == 0
    # the backup folder is lost: the offsite copy alone restores the server onto an empty one
    shutil.move(dest, tmp / "lost")
    dest.mkdir()
    before = {r[0] for r in rows(target, "postgres", "select rolname from pg_roles")}
    tpw = secret_file(tmp / "target.password", target.password)
    r = cli("restore", "--server", "--from", "offsite", "--identity", key, "--to-dsn", target.dsn(), "--password-file",
            tpw, "--config", c)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert 'kept as they are (never altered): role "postgres"' in r.stderr
    assert all(f"ok      {db}:" in r.stdout and "drill passed" in r.stdout for db in src.dbs), r.stdout
    for db in src.dbs:
        assert table_stats(target.conn(), db) == table_stats(pg.conn(), db)
    assert src.catalog(target) == src.catalog(pg)
    for role, password in src.passwords.items():  # the logins work with their original passwords
        kw = {**connect_kwargs(target.conn(), src.dbs[0]), "user": role, "password": password}
        with psycopg.connect(**kw) as conn:
            assert conn.execute("select current_user").fetchone() == (role,)
    with psycopg.connect(**connect_kwargs(target.conn())) as conn:  # its own superuser: password unchanged
        assert conn.execute("select rolname from pg_roles").fetchall()
    assert before <= {r[0] for r in rows(target, "postgres", "select rolname from pg_roles")}
    assert target.password not in r.stdout + r.stderr and "SCRAM" not in r.stdout + r.stderr


def test_restore_server_checks_the_target_first_and_keeps_what_it_has(
    pg: LocalServer, pwfile: Path, tmp: Path, target: LocalServer
) -> None:
    others = databases(pg)
    u = uid()
    own, reader = f"own_{u}", f"reader_{u}"
    x, y = f"keep_{u}_x", f"keep_{u}_y"
    run(pg, "postgres", sql.SQL("create role {} login password 'own-pw'").format(ident(own)),
        sql.SQL("create role {} login password 'reader-pw'").format(ident(reader)),
        sql.SQL("create database {} owner {}").format(ident(x), ident(own)),
        sql.SQL("create database {} owner {}").format(ident(y), ident(own)))  # fmt: skip
    for db in (x, y):
        run(pg, db, "create table t (id int, v text)", "insert into t select g, md5(g::text) from generate_series(1, 99) g",
            sql.SQL("alter table t owner to {}").format(ident(own)),
            sql.SQL("grant select on t to {}").format(ident(reader)))  # fmt: skip
    dest = tmp / "dest"
    dest.mkdir()
    c = whole_config(tmp / "c.toml", pg, pwfile, dest, databases="all", exclude=others)
    r = cli("backup", "--config", c)
    assert r.returncode == 0, r.stderr
    g = history(c).backups[0]
    assert g.format == "globals" and b"PASSWORD" not in (dest / g.path).read_bytes()  # the default: no passwords
    # the target: the owner role exists already (other attributes, another password), y is not empty
    run(target, "postgres", sql.SQL("create role {} nologin password 'theirs'").format(ident(own)),
        sql.SQL("create database {}").format(ident(y)))  # fmt: skip
    run(target, y, "create table theirs (i int)")
    roles_before = rows(target, "postgres", "select rolname, rolcanlogin, rolpassword from pg_authid")
    tpw = secret_file(tmp / "target.password", target.password)
    r = cli("restore", "--server", "--to-dsn", target.dsn(), "--password-file", tpw, "--config", c)
    assert r.returncode == 1 and f'database "{y}"' in r.stderr and "not empty" in r.stderr, r.stderr
    assert rows(target, "postgres", "select rolname, rolcanlogin, rolpassword from pg_authid") == roles_before
    assert x not in databases(target)  # refused before anything was created
    # --only x: the roles first (the existing one kept as it was), then x alone
    r = cli("restore", "--server", "latest", "--only", x, "--to-dsn", target.dsn(), "--password-file", tpw,
            "--config", c)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f'kept as they are (never altered): role "{own}"' in r.stderr and "without passwords" in r.stderr
    mine = [
        r for r in rows(target, "postgres", "select rolname, rolcanlogin, rolpassword from pg_authid") if r[0] == own
    ]
    assert mine == [r for r in roles_before if r[0] == own] and mine[0][1] is False  # not altered
    assert table_stats(target.conn(), x) == table_stats(pg.conn(), x)
    assert rows(target, "postgres", "select pg_get_userbyid(datdba) from pg_database where datname = %s", (x,)) == [
        (own,)
    ]
    assert rows(target, x, "select " + ACL.format("relacl") + " from pg_class where relname = 't'") == rows(
        pg, x, "select " + ACL.format("relacl") + " from pg_class where relname = 't'")  # fmt: skip
    assert rows(target, y, "select count(*) from theirs") == [(0,)]  # y untouched
    with pytest.raises(psycopg.OperationalError):  # no password came with the backup
        psycopg.connect(**{**connect_kwargs(target.conn(), x), "user": reader, "password": "reader-pw"}).close()
    # an existing empty database gets the contents; its owner stays the target's
    run(target, y, "drop table theirs")
    r = cli("restore", "--server", "--only", y, "--to-dsn", target.dsn(), "--password-file", tpw, "--config", c)
    assert r.returncode == 0, r.stderr
    assert "into the existing database" in r.stdout and "its owner and settings stay as they are" in r.stderr
    assert table_stats(target.conn(), y) == table_stats(pg.conn(), y)
    assert rows(target, "postgres", "select pg_get_userbyid(datdba) from pg_database where datname = %s", (y,)) == [
        ("postgres",)]  # fmt: skip
    # a database of no run, and the single-database commands' ambiguity
    r = cli("restore", "--server", "--only", "nope", "--to-dsn", target.dsn(), "--password-file", tpw, "--config", c)
    assert r.returncode == 1 and "not among the databases" in r.stderr
    r = cli("restore", "latest", "--to-db", "z", "--config", c)
    assert r.returncode == 2 and "--db" in cli("restore", "latest", "--to-db", "z", "-v", "--config", c).stderr
    r = cli("restore", "latest", "--db", x, "--to-db", f"{x}_copy", "--config", c)
    assert r.returncode == 0, r.stderr
    assert table_stats(pg.conn(), f"{x}_copy") == table_stats(pg.conn(), x)
    r = cli("drill", "--db", y, "--config", c)
    assert r.returncode == 0 and "drill passed" in r.stdout, r.stderr
    r = cli("restore", g.id, "--to-db", "z", "--config", c)
    assert r.returncode == 1 and "restore --server" in cli("restore", g.id, "--to-db", "z", "-v", "--config", c).stderr


def test_databases_named_like_connection_strings_are_backed_up_and_restored_by_their_names(
    pg: LocalServer, pwfile: Path, tmp: Path, target: LocalServer
) -> None:
    """A name holding '=' or starting with postgresql:// is a database name like any other (any role with
    CREATEDB can make one). Such a database made every whole-server run exit 1 ("not a plain database
    name"), and could be neither backed up nor excluded. Now it is given to libpq as PGDATABASE or a quoted
    dbname='...' value, never expanded: the one that would connect to port 1 if it were is backed up, the
    config's own database may be one (pg_dumpall -l), `exclude` names one, and restore --server puts them
    back under their names."""
    others = databases(pg)
    u = uid()
    plain, uri, conninfo, skip = (f"a=b {u}", f"postgresql://127.0.0.1:1/x{u}",
                                  f"host=127.0.0.1 port=1 dbname=y{u}", f"skip=me {u}")  # fmt: skip
    names = (plain, uri, conninfo, skip)
    for i, n in enumerate(names):
        run(pg, "postgres", sql.SQL("create database {}").format(ident(n)))
        run(pg, n, "create table t (i int)", sql.SQL("insert into t select generate_series(1, {})").format(
            sql.Literal(10 + i)))  # fmt: skip
    try:
        dest = tmp / "dest"
        dest.mkdir()
        dsn = f"host=127.0.0.1 port={pg.port} user={pg.superuser} dbname='{plain}'"
        c = whole_config(tmp / "c.toml", pg, pwfile, dest, dsn=dsn, databases="all", exclude=[*others, skip])
        r = cli("backup", "--config", c)
        assert r.returncode == 0, r.stdout + r.stderr
        h = history(c)
        assert {b.db: b.status for b in h.backups} == {None: "ok", plain: "ok", uri: "ok", conninfo: "ok"}
        r = cli("drill", "--db", conninfo, "--config", c)
        assert r.returncode == 0 and "drill passed" in r.stdout, r.stdout + r.stderr
        r = cli("restore", "latest", "--db", uri, "--to-db", f"copy_{u}", "--config", c)
        assert r.returncode == 0, r.stderr
        assert table_stats(pg.conn(), f"copy_{u}") == table_stats(pg.conn(), uri)
        tpw = secret_file(tmp / "target.password", target.password)
        r = cli("restore", "--server", "--only", conninfo, "--to-dsn", target.dsn(), "--password-file", tpw,
                "--config", c)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert set(databases(target)) - {"postgres"} == {conninfo}
        r = cli("restore", "--server", "--to-dsn", target.dsn(), "--password-file", tpw, "--config", c)
        assert r.returncode == 1 and "not empty" in r.stderr  # (conninfo is there already)
        run(target, "postgres", sql.SQL("drop database {}").format(ident(conninfo)))
        r = cli("restore", "--server", "--to-dsn", target.dsn(), "--password-file", tpw, "--config", c)
        assert r.returncode == 0, r.stderr
        for n in (plain, uri, conninfo):
            assert rows(target, n, "select count(*) from t") == rows(pg, n, "select count(*) from t")
        assert skip not in databases(target)
    finally:
        run(pg, "postgres", *(sql.SQL("drop database if exists {}").format(ident(n)) for n in (*names, f"copy_{u}")))


def test_a_new_database_is_picked_up_and_announced_and_a_vanished_one_keeps_its_backups(
    pg: LocalServer, pwfile: Path, tmp: Path
) -> None:
    from test_ops import Hooks

    hooks = Hooks()
    others = databases(pg)
    u = uid()
    p, q, new = f"p_{u}", f"q_{u}", f"new_{u}"
    for db in (p, q):
        run(pg, "postgres", sql.SQL("create database {}").format(ident(db)))
        run(pg, db, "create table t (i int)", "insert into t select generate_series(1, 10)")
    dest, metrics = tmp / "dest", tmp / "m.prom"
    dest.mkdir()
    c = whole_config(tmp / "c.toml", pg, pwfile, dest, databases="all", exclude=others, extra=(
        '\n[retention]\ndaily = 1\nweekly = 0\nmonthly = 0\nkeep_last = 1\n\n[drill]\nevery = "7d"\n'

        f'\n[notify]\nwebhook = "{hooks.url}"\non = ["failure", "success"]\nmetrics_file = "{metrics}"\n'))  # fmt: skip
    c.write_text(c.read_text().replace("%D/DBBACK-%w.DMP", "%D/DBBACK.DMP"))

    def per_database() -> set[str]:
        from prometheus_client.parser import text_string_to_metric_families

        families = text_string_to_metric_families(metrics.read_text())
        name = "deltadump_database_last_success_timestamp_seconds"
        return {s.labels["database"] for f in families for s in f.samples if s.name == name}

    assert cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[0]}).returncode == 0
    h = history(c)  # a drill is due for each database: each is drilled
    drilled = {n.backup for n in h.notes if n.kind == "drill" and n.ok}
    assert {b.db for b in h.backups if b.id in drilled} == {p, q}
    run(pg, "postgres", sql.SQL("create database {}").format(ident(new)))
    run(pg, new, "create table n (i int)", "insert into n select generate_series(1, 7)")
    r = cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[1]})
    assert r.returncode == 0, r.stderr
    announced = f'new database "{new}": backed up for the first time'
    assert announced in r.stderr and f"(database {new})" in r.stdout
    body = hooks.posts[-1]
    assert body["status"] == "ok" and announced in body["databases_changed"]  # type: ignore[operator]
    assert {b["database"] for b in body["backups"]} == {"(globals)", p, q, new}  # type: ignore[union-attr,index]
    assert per_database() == {"(globals)", p, q, new}  # metrics: each database's last success
    h = history(c)
    assert h.backups[-4].databases == sorted([new, p, q]) and h.latest().db in (new, p, q)
    q_backup = next(b for b in reversed(h.backups) if b.db == q)
    q_rows = table_stats(pg.conn(), q)
    run(pg, "postgres", sql.SQL("drop database {} with (force)").format(ident(q)))
    gone_note = f'database "{q}" is no longer on the server: not backed up, its backups are kept'
    for day in (2, 3):  # the vanished database: reported when it went, its newest backup kept from then on
        r = cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[day]})
        assert r.returncode == 0, r.stderr
        assert (gone_note in r.stderr) == (day == 2)
        assert (gone_note in hooks.posts[-1].get("databases_changed", [])) == (day == 2)  # type: ignore[operator]
        h = history(c)
        assert [b.id for b in h.backups if b.db == q] == [q_backup.id]
        assert len([b for b in h.backups if b.db == p]) == 1  # p's older ones: retention, per database
        assert per_database() == {"(globals)", p, new}
    st = json.loads(cli("status", "--json", "--config", c, env={"DELTADUMP_NOW": DAYS[3]}).stdout)
    gone = next(d for d in st["databases"] if d["database"] == q)
    assert gone["in_last_run"] is False and gone["last_good_id"] == q_backup.id and not st["stale"]
    assert cli("verify", "--db", q, "--config", c).returncode == 0
    dry = json.loads(cli("prune", "--dry-run", "--json", "--config", c).stdout)
    assert {d["database"]: d["why"] for d in dry if d["keep"]}[q] == "newest good backup"
    r = cli("restore", "latest", "--db", q, "--to-db", f"{q}_back", "--config", c)
    assert r.returncode == 0, r.stderr
    assert table_stats(pg.conn(), f"{q}_back") == q_rows
    hooks.server.shutdown()


def test_a_failing_database_fails_the_run_but_not_the_others(pg: LocalServer, pwfile: Path, tmp: Path) -> None:
    from test_ops import Hooks

    hooks = Hooks()
    u = uid()
    bk, x, y, z = f"bk_{u}", f"f_{u}_x", f"f_{u}_y", f"f_{u}_z"
    run(pg, "postgres", sql.SQL("create role {} login password 'bk-pw' in role pg_read_all_data").format(ident(bk)))
    for db in (x, y, z):
        run(pg, "postgres", sql.SQL("create database {}").format(ident(db)))
        run(pg, db, "create table t (i int)", "insert into t select generate_series(1, 20)")
    run(pg, "postgres", sql.SQL("revoke connect on database {} from public").format(ident(z)))  # permission denied
    dest = tmp / "dest"
    dest.mkdir()
    bkpw = secret_file(tmp / "bk.password", "bk-pw")
    c = whole_config(tmp / "c.toml", pg, bkpw, dest, dsn=f"postgresql://{bk}@127.0.0.1:{pg.port}/postgres",
                     databases=[x, y, z], extra=f'\n[notify]\nwebhook = "{hooks.url}"\non = ["failure", "success"]\n')  # fmt: skip

    class DropsY(SilentReporter):
        """Drops y while x is being dumped: after the run listed it, before its turn."""

        def info(self, msg: str) -> None:
            if msg.startswith("dumping") and f"/{x} as" in msg:
                run(pg, "postgres", sql.SQL("drop database {} with (force)").format(ident(y)))

    with pytest.raises(DumpError) as failed:
        backup_and_report(load(c), DropsY())
    assert failed.value.exit_code == 1
    assert f'database "{y}"' in failed.value.message and f'database "{z}"' in failed.value.message
    assert x in failed.value.message.split("committed:")[1]
    h = history(c)
    by_db = {b.db: b for b in h.backups}
    assert h.backups[0].format == "globals" and h.backups[0].status == "ok" and h.backups[0].databases == [x, y, z]
    assert by_db[x].status == "ok"
    assert by_db[y].status == "failed" and "does not exist" in by_db[y].error
    assert by_db[z].status == "failed" and "permission denied" in by_db[z].error
    fail = hooks.posts[-1]
    assert fail["status"] == "failed" and y in str(fail["error"]) and z in str(fail["error"])
    assert [b["database"] for b in fail["backups"]] == ["(globals)", x]  # type: ignore[index,union-attr]
    admin = whole_config(tmp / "admin.toml", pg, pwfile, dest, databases=[x, y, z])  # restores need a superuser
    r = cli("restore", "latest", "--db", x, "--to-db", f"{x}_back", "--config", admin)
    assert r.returncode == 0, r.stderr
    assert table_stats(pg.conn(), f"{x}_back") == table_stats(pg.conn(), x)
    # the CLI: exit 1, one line naming what failed, the others committed again
    r = cli("backup", "--config", c)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("deltadump: error: 2 of 4 backups")
    newest_x = [b for b in history(c).backups if b.db == x][-1]
    assert newest_x.status == "ok" and newest_x.number > by_db[x].number
    st = json.loads(cli("status", "--json", "--config", c).stdout)
    assert {d["database"]: d["last_status"] for d in st["databases"]} == {"(globals)": "ok", x: "ok", y: "failed",
                                                                          z: "failed"}  # fmt: skip
    assert st["stale"] and cli("status", "--config", c).returncode == 1
    hooks.server.shutdown()


def test_a_role_name_that_would_end_a_comment_never_runs_as_sql(
    pg: LocalServer, pwfile: Path, tmp: Path, target: LocalServer
) -> None:
    """A role whose name holds a line break and SQL after it, with a setting (so that pg_dumpall writes
    its "User Config" comment): whoever may create roles must not make another one a superuser on the
    restored server (CVE-2025-8714 in pg_dumpall before 16.10). With such a pg_dumpall the globals are
    not backed up (and the databases are); with a fixed one the restore keeps the name a name."""
    others = databases(pg)
    u = uid()
    victim, db = f"victim_{u}", f"inj_{u}"
    evil = f"x{u}\nALTER ROLE {victim} SUPERUSER;--"
    run(pg, "postgres", sql.SQL("create role {} login").format(ident(victim)),
        sql.SQL("create role {}").format(ident(evil)),
        sql.SQL("alter role {} set work_mem = '1MB'").format(ident(evil)),
        sql.SQL("create database {}").format(ident(db)))  # fmt: skip
    try:
        check_injection(pg, tmp, target, pwfile, others, victim, db)
    finally:  # the suite's other whole-server tests back up this server's roles too
        run(pg, "postgres", sql.SQL("drop role {}").format(ident(evil)))


def check_injection(pg: LocalServer, tmp: Path, target: LocalServer, pwfile: Path, others: list[str], victim: str,
                    db: str) -> None:  # fmt: skip
    dest = tmp / "dest"
    dest.mkdir()
    c = whole_config(tmp / "c.toml", pg, pwfile, dest, databases="all", exclude=others)
    r = cli("backup", "--config", c)
    h = history(c)
    g = h.backups[0]
    assert next(b for b in h.backups if b.db == db).status == "ok"  # the databases are backed up all the same
    if g.status == "failed":
        assert r.returncode == 1 and "CVE-2025-8714" in g.error and "line break" in r.stderr
        return
    assert r.returncode == 0, r.stderr
    tpw = secret_file(tmp / "target.password", target.password)
    r = cli("restore", "--server", "--to-dsn", target.dsn(), "--password-file", tpw, "--config", c)
    assert r.returncode == 0, r.stderr
    assert rows(target, "postgres", "select rolsuper from pg_roles where rolname = %s", (victim,)) == [(False,)]


# --- a single-database folder written before whole-server backups, backed up on by this code ----------


@pytest.fixture(scope="module")
def before_code(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("before")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", BEFORE, "deltadump"], capture_output=True)
    assert archive.returncode == 0, "the history of this repository (a full clone) holds the code before issue 14"
    (out / "code.tar").write_bytes(archive.stdout)
    with tarfile.open(out / "code.tar") as t:
        t.extractall(out, filter="data")
    return out


def old_cli(code: Path, *args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deltadump.cli.main", *map(str, args)], capture_output=True, text=True,
                          cwd=code, env={**os.environ, "PYTHONPATH": str(code), **(env or {})}, timeout=300)  # fmt: skip


def test_a_single_database_config_and_its_folder_keep_working(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path, before_code: Path
) -> None:
    dest, remote = tmp / "dest", tmp / "remote"
    dest.mkdir()
    remote.mkdir()
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
    c.write_text(c.read_text() + f'\n[delta]\nenabled = true\n\n[offsite]\nurl = "file://{remote}"\n')
    for day in range(2):  # the code before: a base and a delta, here and offsite
        if day:
            sample.mail_day(pg.psql_bin(), pg.conn(), maildb, day, new=10, words=10)
        r = old_cli(before_code, "backup", "--config", c, env={"DELTADUMP_NOW": DAYS[day]})
        assert r.returncode == 0, r.stderr
    old = history(c).backups
    snaps = []
    for day in range(2, 4):  # and on with this code
        sample.mail_day(pg.psql_bin(), pg.conn(), maildb, day, new=10, words=10)
        r = cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[day]})
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("backup ") and "(database" not in r.stdout
        snaps.append(table_stats(pg.conn(), maildb))
    h = history(c)
    assert [b.id for b in h.backups[:2]] == [b.id for b in old]
    assert [b.kind for b in h.backups] == ["base", "delta", "delta", "delta"] and h.backups[2].parent == old[1].id
    assert all(b.db is None and b.series == "" for b in h.backups)
    for b in h.backups:  # records as before: no key of whole-server backups in them
        raw = json.loads((dest / b.file_name).read_text())
        assert "db" not in raw and "databases" not in raw
    listed = cli("list", "--config", c)
    assert listed.returncode == 0 and "┃ database" not in listed.stdout
    assert cli("verify", "--config", c).returncode == 0 and cli("verify", "--offsite", "--config", c).returncode == 0
    r = cli("restore", "latest", "--to-db", f"{maildb}_again", "--config", c)
    assert r.returncode == 0, r.stderr
    assert table_stats(pg.conn(), f"{maildb}_again") == snaps[-1]
    assert old_cli(before_code, "list", "--config", c).returncode == 0  # and the code before still reads it
    r = cli("restore", "--server", "--to-dsn", pg.dsn(), "--password-file", pwfile, "--config", c)
    assert r.returncode == 1 and "no whole-server backup" in r.stderr, r.stderr


# --- rules without a server ---------------------------------------------------------------------------


def test_whole_server_configs_are_checked_when_loaded(pg: LocalServer, pwfile: Path, tmp: Path) -> None:
    dest = tmp / "dest"
    dest.mkdir()
    c = whole_config(tmp / "c.toml", pg, pwfile, dest, databases=["mail", "calendar"])
    assert cli("list", "--config", c).returncode == 0
    c.write_text(c.read_text().replace("%D/DBBACK-%w.DMP", "DBBACK-%w.DMP"))
    r = cli("list", "--config", c)
    assert r.returncode == 2 and "has no %D" in r.stderr
    bad = {"everything": 'or "all"', ("",): "empty", (): "no database", ("x", "x"): "named twice",
           ("x" * 64,): "63 bytes"}  # fmt: skip
    for value, why in bad.items():
        c = whole_config(tmp / "c.toml", pg, pwfile, dest, databases=value if isinstance(value, str) else list(value))
        r = cli("list", "--config", c)
        assert r.returncode == 2 and why in r.stderr, (value, r.stderr)
    c = whole_config(tmp / "c.toml", pg, pwfile, dest, databases=["x"], exclude=["y"])
    assert cli("list", "--config", c).returncode == 2
    single = write_config(tmp / "s.toml", pg, pwfile, "mail", dest, name="%D.dump")
    r = cli("list", "--config", single)
    assert r.returncode == 2 and "%D" in r.stderr
    single = write_config(tmp / "s.toml", pg, pwfile, "mail", dest, globals="with-passwords")
    assert cli("list", "--config", single).returncode == 2


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=63))
def test_a_database_name_is_one_safe_part_of_a_slot_name_never_another_s(name: str) -> None:
    part = db_part(name)
    assert "/" not in part and "\\" not in part and not part.startswith(".") and part != GLOBALS_PART
    assert all(c.isprintable() and c not in '<>:"|?*()' for c in part)
    assert unquote(part, errors="surrogatepass") == name  # reversible: two names never share a slot


@pytest.mark.parametrize(("script", "why"), [
    ("DROP ROLE postgres;", "not one of the globals' forms"),
    ("\\! touch /tmp/pwned\n", "meta-command"),
    ("CREATE ROLE x; COPY t FROM PROGRAM 'id';", "not one of the globals' forms"),
    ("GRANT ALL ON DATABASE postgres TO x;", "privileges on database"),
    ("CREATE ROLE 'x;", "unterminated"),
    ("ALTER ROLE x WITH LOGIN", "no ';'"),
    ('-- User Config "x\nALTER ROLE v SUPERUSER;--"\n', "line break written into a comment"),
    ('-- User Config "x\rALTER ROLE v SUPERUSER;--"\n', "line break written into a comment"),
])  # fmt: skip
def test_a_globals_script_of_another_form_is_refused_before_anything_runs(script: str, why: str) -> None:
    with pytest.raises(IntegrityError) as e:
        parse_globals(script)
    assert why in e.value.message


def _rec(n: int, db: str | None, day: int, **kw: object) -> BackupRecord:
    fields: dict[str, object] = {"repository": "0" * 32, "number": n, "id": f"r{n}", "started": datetime(2026, 12, day),
                                 "status": "ok", "path": f"{db}/x.dump", "db": db, "format": "custom"}  # fmt: skip
    fields.update(kw)
    return BackupRecord(**fields)  # type: ignore[arg-type]


def test_retention_and_chains_are_per_database() -> None:
    # A backs up daily for five days, B only on the first two: B's backups are kept by B's own buckets
    a = [_rec(i, "a", i) for i in range(1, 6)]
    b = [_rec(10 + i, "b", i) for i in (1, 2)]
    history_ = sorted(a + b, key=lambda r: r.started)
    p = plan(history_, Policy(daily=2, weekly=0, monthly=0, keep_last=1), local=False)
    kept = {d.id for d in p.keep}
    assert kept == {"r5", "r4", "r12", "r11"}, p.decisions
    assert next(d for d in p.decisions if d.id == "r12").why == "newest good backup"
    # a delta never chains to another database's backup
    obj = [ObjectRecord(path="chain/x", size=1, sha256="0" * 64)]
    base = _rec(1, "a", 1, kind="base", base="r1", objects=obj)
    other = _rec(2, "b", 1, kind="delta", base="r1", parent="r1", objects=obj)
    with pytest.raises(ValueError, match="cannot be its parent"):
        chain_of({r.id: r for r in (base, other)}, other)
    # records of a whole-server config carry the database; a single-database config's stay as they were
    assert b'"db": "a"' in encode(base) and b'"db"' not in encode(_rec(3, None, 1))
    assert decode(encode(base), BackupRecord, "x") == base


# --- a whole-server run killed at every step ----------------------------------------------------------


def test_kill_a_whole_server_run_at_every_step(pg: LocalServer, pwfile: Path, tmp: Path) -> None:
    """A run of the globals and a database (a delta chain), killed with SIGKILL at each of its step
    boundaries in turn (DELTADUMP_KILL_AT, as tests/test_crash.py): no backup listed good before the
    kill is lost, every listed backup verifies, the newest good backup of the database restores to the
    data it was taken from, and the next run succeeds and leaves nothing behind."""
    import signal
    from datetime import timedelta

    from test_crash import leftovers, listed, lost

    def crash_run(c: Path, day: int, kill_at: int = 0) -> subprocess.CompletedProcess[str]:
        env = {"DELTADUMP_NOW": (datetime(2027, 1, 1, 2) + timedelta(days=day)).isoformat()}
        if kill_at:
            env["DELTADUMP_KILL_AT"] = str(kill_at)
        return cli("backup", "--config", c, env=env)

    from deltadump.jobs.restore import restore
    from deltadump.jobs.verify import verify

    others = databases(pg)
    u = uid()
    dbs = [f"k_{u}_a"]
    for db in dbs:
        run(pg, "postgres", sql.SQL("create database {}").format(ident(db)))
        sample.load(pg.psql_bin(), pg.conn(), db, users=2, messages=40, words=8)
    dest = tmp / "dest"
    dest.mkdir()
    c = whole_config(tmp / "c.toml", pg, pwfile, dest, databases="all", exclude=others,
                     extra="\n[delta]\nenabled = true\n")  # fmt: skip
    c.write_text(c.read_text().replace("%D/DBBACK-%w.DMP", "%D/DBBACK.DMP"))
    snaps: dict[str, dict[str, tuple[int, str | None]]] = {}

    def good() -> dict[str, str]:
        """The newest good backup of each database, by id."""
        out: dict[str, str] = {}
        for b in reversed(listed(c)):
            if b["state"] == "ok" and b["db"]:
                out[str(b["db"])] = str(b["id"])
        return out

    def remember() -> None:
        for db, bid in good().items():
            snaps.setdefault(bid, table_stats(pg.conn(), db))

    for day in (0, 1):
        assert crash_run(c, day).returncode == 0
        remember()
    cfg = load(c)
    day, n = 2, 1
    while True:
        for db in dbs:
            sample.mail_day(pg.psql_bin(), pg.conn(), db, day, new=3, words=8)
        before = listed(c)
        r = crash_run(c, day, n)
        day += 1
        if r.returncode != -signal.SIGKILL:
            assert r.returncode == 0, r.stderr
            break
        assert not lost(before, listed(c)), f"kill at step {n}"
        remember()  # a backup committed by the killed run holds today's data
        report = verify(cfg, reporter=SilentReporter())
        assert report.ok, f"kill at step {n}: {[x.problems for x in report.results]}"
        for db, bid in good().items():
            restore(cfg, bid, f"kk{n}_{os.getpid()}", reporter=SilentReporter())
            assert table_stats(pg.conn(), f"kk{n}_{os.getpid()}") == snaps[bid], f"kill at step {n}: {db}"
            run(pg, "postgres", sql.SQL("drop database {}").format(ident(f"kk{n}_{os.getpid()}")))
        r = crash_run(c, day)
        day += 1
        assert r.returncode == 0, f"the run after a kill at step {n} failed: {r.stderr}"
        remember()
        assert leftovers(dest, None) == [], f"after a kill at step {n}"
        n += 1
    print(f"\nF04 whole-server run: {n - 1} kill points, 0 backups lost")
    assert n - 1 >= 15
    h = history(c)
    assert {b.db for b in h.backups if b.status == "ok"} >= set(dbs)


def test_a_fifo_in_place_of_the_globals_script_is_refused_not_waited_on(
    pg: LocalServer, pwfile: Path, tmp: Path, target: LocalServer
) -> None:
    """restore --server read the run's globals script from the backup folder with a blocking open: a
    FIFO planted there (a backup-folder writer, no signing key) made it wait for ever for a writer."""
    others = databases(pg)
    x = f"fifo_{uid()}"
    run(pg, "postgres", sql.SQL("create database {}").format(ident(x)))
    try:
        dest = tmp / "dest"
        dest.mkdir()
        c = whole_config(tmp / "c.toml", pg, pwfile, dest, databases="all", exclude=others)
        assert cli("backup", "--config", c).returncode == 0
        g = next(b for b in history(c).backups if b.format == "globals")
        (dest / g.path).unlink()
        os.mkfifo(dest / g.path)
        tpw = secret_file(tmp / "target.password", target.password)
        try:
            r = cli("restore", "--server", "--to-dsn", target.dsn(), "--password-file", tpw, "--config", c, timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError("restore --server waited on a FIFO in place of the globals script") from None
        assert r.returncode == 1 and "not a regular file" in r.stderr, r.stderr
        assert x not in databases(target)
    finally:
        run(pg, "postgres", sql.SQL("drop database if exists {}").format(ident(x)))
