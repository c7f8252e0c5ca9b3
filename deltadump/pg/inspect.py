"""Per-table row counts and content checksums, computed by the server (order-independent sums of
row hashes, so no table is ever held in memory). The one definition of that measurement, used when a
backup is taken (in the dump's own snapshot, pg/snapshot.py), by drills and by the demo.

Table names come from the catalog and are data, never SQL: whoever can create a table chooses its
name (tabs, newlines, quotes, `"; select lo_export(...)`...). They are read with psycopg as values and
put back into queries only as `psycopg.sql.Identifier`; the record's key is the server's
`format('%I.%I', schema, table)`, as in every record written so far. The queries run in a read-only
transaction, with an empty search_path (only pg_catalog's functions and operators) and row security
off (a policy's function never runs as us: the query fails instead)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ..errors import DatabaseError
from .conn import Conn, classify

TABLES_SQL = """
select n.nspname, c.relname, format('%I.%I', n.nspname, c.relname)
from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
where c.relkind in ('r', 'p') and n.nspname not in ('pg_catalog', 'information_schema')
  and n.nspname not like 'pg\\_toast%' and n.nspname not like 'pg\\_temp%'
order by 3
"""
# an order-independent sum of 60-bit slices of each row's md5: equal tables give equal sums
CHECKSUM = "coalesce(sum(('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint::numeric), 0)"

Stats = dict[str, tuple[int, str | None]]


def raw_names(db: Any) -> None:
    """Text read on the psycopg connection `db` comes as str whatever its bytes: UTF-8, and bytes that are
    no UTF-8 (a SQL_ASCII database's, or a name made in one) as lone surrogates (surrogateescape), which
    no real name has; psycopg would return bytes on a SQL_ASCII connection, or fail on them elsewhere."""
    from psycopg.adapt import Loader

    class Raw(Loader):
        def load(self, data: Any) -> str:
            return bytes(data).decode("utf-8", "surrogateescape")

    for t in ("name", "text"):
        db.adapters.register_loader(t, Raw)


def data_session(db: Any) -> bool:
    """Make the psycopg connection `db` fit to read its database's own tables and names; returns whether
    it is a SQL_ASCII database (text is bytes of no known encoding, which psycopg would return as
    bytes): its text is then read through raw_names. A database in an
    encoding Python has no codec for (EUC_TW, MULE_INTERNAL: psycopg refused every query, so such a
    database was never backed up) is read in UTF-8, converted by the server (names as a drill's UTF-8
    database has them), or where it cannot convert, as SQL_ASCII, under which it converts nothing.
    Call it before the first query."""
    if _python_encoding(db, b"UTF8", b"SQL_ASCII") != "ascii":
        return False
    raw_names(db)
    return True


def _python_encoding(db: Any, *instead: bytes) -> str:
    """The Python codec of the connection's client encoding; where Python has none (EUC_TW,
    MULE_INTERNAL: psycopg then refuses every query), the first of `instead` the server accepts as the
    session's client encoding is set. Call it before the first query."""
    import psycopg

    try:
        return str(db.info.encoding)
    except psycopg.NotSupportedError:
        for enc in instead:  # (bytes to libpq: psycopg cannot encode a query yet)
            if db.pgconn.exec_(b"set client_encoding to '" + enc + b"'").status == psycopg.pq.ExecStatus.COMMAND_OK:
                break
        return str(db.info.encoding)


def catalog_session(db: Any) -> None:
    """A connection that reads shared catalog names (pg_database's) as they are stored: raw_names, and
    in a database of an encoding Python has no codec for, SQL_ASCII, under which the server converts
    nothing (a whole-server config whose connection database is EUC_TW listed no database at all)."""
    _python_encoding(db, b"SQL_ASCII")
    raw_names(db)


def not_utf8(name: str) -> bool:
    """A name read through raw_names whose bytes are no UTF-8."""
    return any("\udc80" <= ch <= "\udcff" for ch in name)


def shown(name: str) -> str:
    """A name read through raw_names for a message or a record: bytes that are no UTF-8 as \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def harden(db: Any) -> None:
    """Settings for queries over hostile catalog names, inside the current transaction."""
    db.execute("set local search_path = ''")
    db.execute("set local row_security = off")


def measure(db: Any, checksums: bool) -> Stats:
    """{schema.table: (rows, checksum or None)} for every user table, on an open psycopg connection
    (in the caller's transaction: the backup's exported snapshot, or a drill's read-only one)."""
    from psycopg import sql

    harden(db)
    out: Stats = {}
    raw = data_session(db)
    for schema, name, key in db.execute(TABLES_SQL).fetchall():
        what = sql.SQL(CHECKSUM) if checksums else sql.SQL("null")
        if raw:  # the server's own quoting of the name (format %I), sent back as the bytes it sent
            query: Any = b"select count(*), " + what.as_bytes(db) + b" from only " + key.encode(
                "utf-8", "surrogateescape") + b" t"  # fmt: skip
            key = shown(key)
        else:
            query = sql.SQL("select count(*), {} from only {} t").format(what, sql.Identifier(schema, name))
        rows, cs = db.execute(query).fetchone()
        out[key] = (int(rows), None if cs is None else str(cs))
    return out


def connect_kwargs(conn: Conn, db: str | None = None) -> dict[str, Any]:
    """psycopg.connect() arguments for conn: the password given as a parameter (it stays in this
    process: no passfile, no environment), the database name as a value (never expanded)."""
    kw: dict[str, Any] = {k: v for k, v in conn.keywords.items() if k != "password"}
    if db is not None:
        kw["dbname"] = db
    password = conn.password()
    if password is not None:
        kw["password"] = password
    kw.setdefault("connect_timeout", conn.setting("connect_timeout") or "10")
    kw["application_name"] = "deltadump"
    return kw


@contextlib.contextmanager
def session(conn: Conn, db: str | None = None) -> Iterator[Any]:
    """A psycopg connection in a read-only, repeatable-read transaction (rolled back at the end)."""
    import psycopg

    try:
        c = psycopg.connect(**connect_kwargs(conn, db), autocommit=False)
    except psycopg.Error as exc:
        raise classify(str(exc), conn.with_db(db) if db else conn) from exc
    try:
        data_session(c)
        c.execute("set transaction isolation level repeatable read, read only")
        yield c
    finally:
        with contextlib.suppress(psycopg.Error):
            c.rollback()
        c.close()


def table_stats(conn: Conn, db: str | None = None, *, checksums: bool = True) -> Stats:
    """{schema.table: (rows, checksum)} for every user table of db (checksum None without checksums)."""
    import psycopg

    with session(conn, db) as c:
        try:
            return measure(c, checksums)
        except psycopg.Error as exc:
            where = (conn.with_db(db) if db else conn).where
            raise DatabaseError(f"counting rows in {where} failed: {exc}") from exc
