"""A consistent view for a backup: a REPEATABLE READ transaction that exports its snapshot, so that
pg_dump (--snapshot) and the row counts and checksums recorded for restore drills see the very same
data. Held open with psycopg until the dump has finished."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from ..errors import DatabaseError
from .conn import Conn, classify
from .inspect import connect_kwargs, data_session, measure


class SnapshotSession:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.db: Any = None
        self.snapshot_id = ""

    def __enter__(self) -> SnapshotSession:
        import psycopg

        try:
            self.db = psycopg.connect(**connect_kwargs(self.conn), autocommit=False)
            data_session(self.db)
            self.db.execute("set transaction isolation level repeatable read, read only")
            self.snapshot_id = self.db.execute("select pg_export_snapshot()").fetchone()[0]
        except psycopg.Error as exc:
            self._close()
            raise classify(str(exc), self.conn) from exc
        return self

    def table_stats(self, checksums: bool) -> dict[str, tuple[int, str | None]]:
        """pg/inspect.py's measurement, in this snapshot."""
        import psycopg

        try:
            return measure(self.db, checksums)
        except psycopg.Error as exc:
            raise DatabaseError(f"counting rows for the drill record failed: {exc}") from exc

    def _close(self) -> None:
        if self.db is not None:
            try:
                self.db.rollback()
                self.db.close()
            except Exception:
                pass
            self.db = None

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self._close()
