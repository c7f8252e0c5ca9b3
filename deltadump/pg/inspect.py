"""Per-table row counts and content checksums, computed by the server (order-independent sums of
row hashes, so no table is ever held in memory). Used by restore checks, drills and the demo."""

from __future__ import annotations

from pathlib import Path

from .conn import Conn, psql

TABLES_SQL = """
select format('%I.%I', n.nspname, c.relname)
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where c.relkind in ('r', 'p') and n.nspname not in ('pg_catalog', 'information_schema')
  and n.nspname not like 'pg_toast%' and n.nspname not like 'pg_temp%'
order by 1
"""


def user_tables(psql_bin: Path, conn: Conn, db: str | None = None) -> list[str]:
    return [r[0] for r in psql(psql_bin, conn, TABLES_SQL, db=db)]


def table_stats(psql_bin: Path, conn: Conn, db: str | None = None) -> dict[str, tuple[int, str]]:
    """{schema.table: (rows, checksum)} for every user table."""
    tables = user_tables(psql_bin, conn, db)
    if not tables:
        return {}
    from .snapshot import CHECKSUM

    parts = [f"select {_lit(t)}, count(*), {CHECKSUM} from only {t} t" for t in tables]
    rows = psql(psql_bin, conn, " union all ".join(parts), db=db, timeout=3600)
    return {r[0]: (int(r[1]), r[2]) for r in rows}


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"
