"""Databases as things a restore creates, checks, swaps and drops: every name travels as a value or a
`psycopg.sql.Identifier`, never pasted into SQL or expanded by libpq as a connection string.

`--clean` never drops the target first: the backup is restored into a new database beside it, and
only once that succeeded are the names swapped (the old one renamed aside, the new one renamed into
place, the old one dropped). A restore that fails leaves the old database as it was."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from typing import Any

from ..errors import DatabaseError, RestoreError
from .conn import Conn, classify
from .inspect import catalog_session, connect_kwargs

NONEMPTY_SQL = """
select count(*) from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
where n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\\_toast%'
  and n.nspname not like 'pg\\_temp%'
"""
MAX_NAME = 63  # bytes of a PostgreSQL identifier


def admin_db(name: str) -> str:
    """A database to connect to while creating, renaming or dropping `name`."""
    return "postgres" if name != "postgres" else "template1"


@contextlib.contextmanager
def _admin(conn: Conn, name: str) -> Iterator[Any]:
    import psycopg

    try:
        c = psycopg.connect(**connect_kwargs(conn, admin_db(name)), autocommit=True)
    except psycopg.Error as exc:
        raise classify(str(exc), conn.with_db(admin_db(name))) from exc
    try:
        yield c
    finally:
        c.close()


def _run(conn: Conn, name: str, query: Any, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    import psycopg

    with _admin(conn, name) as c:
        try:
            cur = c.execute(query, params)
            return cur.fetchall() if cur.description else []
        except psycopg.Error as exc:
            raise DatabaseError(f"{_server(conn)}: {str(exc).strip().splitlines()[0]}") from exc


def _server(conn: Conn) -> str:
    return conn.where.split("/")[0]


def target_state(conn: Conn, name: str, clean: bool) -> str:
    """'absent' (to create), 'empty' (restore into it) or 'replace' (non-empty, with --clean: restore
    beside it, then swap); a non-empty database without --clean is refused."""
    import psycopg

    if not _run(conn, name, "select 1 from pg_catalog.pg_database where datname = %s", (name,)):
        return "absent"
    try:
        with psycopg.connect(**connect_kwargs(conn, name), autocommit=True) as c:
            catalog_session(c)  # (a database of an encoding Python has no codec for: EUC_TW, MULE_INTERNAL)
            row = c.execute(NONEMPTY_SQL).fetchone()
            n = int(row[0]) if row else 0
    except psycopg.Error as exc:
        raise classify(str(exc), conn.with_db(name)) from exc
    if n and not clean:
        raise RestoreError(
            f'database "{name}" on {_server(conn)} is not empty ({n} relations)',
            hint="restore into a new database name, or add --clean to replace it once the restore succeeded",
        )
    return "replace" if n else "empty"


def side_name(name: str, tag: str) -> str:
    """A new database name beside `name` (at most 63 bytes): name_<tag>_<random>."""
    suffix = f"_{tag}_{secrets.token_hex(4)}"
    base = name.encode()[: MAX_NAME - len(suffix)].decode(errors="ignore")
    return base + suffix


def create(conn: Conn, name: str, encoding: str | None = None, *, libc: bool = False) -> None:
    """A new database `name`; with `encoding`, in that encoding (from template0, locale C: the only
    locale every encoding takes; `libc`: the server has locale providers, and may default to ICU)."""
    from psycopg import sql

    q = sql.SQL("create database {}").format(sql.Identifier(name))
    if encoding is not None:
        q = sql.SQL("{} template template0 encoding {} lc_collate 'C' lc_ctype 'C'{}").format(
            q, sql.Literal(encoding), sql.SQL(" locale_provider libc" if libc else "")
        )
    _run(conn, name, q)


def drop(conn: Conn, name: str) -> None:
    from psycopg import sql

    _run(conn, name, sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def swap(conn: Conn, new: str, target: str, *, tries: int = 10) -> None:
    """Put the database `new` in the place of `target`: target renamed aside (its sessions are ended
    first; a client reconnecting in between makes us try again), new renamed to target, the old one
    dropped. At any moment both databases exist under some name: nothing is lost to a kill."""
    import psycopg
    from psycopg import sql

    aside = side_name(target, "old")
    with _admin(conn, target) as c:
        for attempt in range(tries):
            c.execute("select pg_catalog.pg_terminate_backend(pid) from pg_catalog.pg_stat_activity "
                      "where datname = %s and pid <> pg_catalog.pg_backend_pid()", (target,))  # fmt: skip
            try:
                c.execute(
                    sql.SQL("alter database {} rename to {}").format(sql.Identifier(target), sql.Identifier(aside))
                )
                break
            except psycopg.errors.ObjectInUse as exc:
                if attempt == tries - 1:
                    raise DatabaseError(f'database "{target}" stays in use; the restored copy is "{new}"') from exc
                time.sleep(0.2 * (attempt + 1))
        try:
            _rename(c, new, target)
        except psycopg.Error as exc:  # put the old one back: the target is never left missing
            with contextlib.suppress(psycopg.Error):
                c.execute(
                    sql.SQL("alter database {} rename to {}").format(sql.Identifier(aside), sql.Identifier(target))
                )
            raise DatabaseError(f'could not rename "{new}" to "{target}": {exc}') from exc
        try:
            c.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(aside)))
        except psycopg.Error as exc:
            raise DatabaseError(
                f'restored into "{target}", but the old copy "{aside}" could not be dropped: {exc}'
            ) from exc


def _rename(c: Any, old: str, new: str) -> None:
    from psycopg import sql

    c.execute(sql.SQL("alter database {} rename to {}").format(sql.Identifier(old), sql.Identifier(new)))


def databases(conn: Conn) -> list[str]:
    """The names of the databases that accept connections (templates excepted), as values."""
    rows = _run(conn, "postgres", "select datname from pg_catalog.pg_database where datallowconn "
                "and not datistemplate order by 1")  # fmt: skip
    return [str(r[0]) for r in rows]


def disable_subscriptions(conn: Conn) -> list[str]:
    """On a restored copy: every subscription of every database disabled and detached from its
    replication slot (slot_name = NONE), so that the copy, whatever it is started with later, never
    applies changes from a publisher nor takes over production's slot. Returns db.subscription names."""
    import psycopg
    from psycopg import sql

    done = []
    for db in databases(conn):
        try:
            with psycopg.connect(**connect_kwargs(conn, db), autocommit=True) as c:
                subs = c.execute("select subname from pg_catalog.pg_subscription s join pg_catalog.pg_database d "
                                 "on d.oid = s.subdbid where d.datname = current_database()").fetchall()  # fmt: skip
                for (name,) in subs:
                    c.execute(sql.SQL("alter subscription {} disable").format(sql.Identifier(name)))
                    c.execute(sql.SQL("alter subscription {} set (slot_name = none)").format(sql.Identifier(name)))
                    done.append(f"{db}.{name}")
        except psycopg.Error as exc:
            raise DatabaseError(f"could not disable the subscriptions of {db!r} on the copy: {exc}") from exc
    return done
