"""A consistent view for a backup: a REPEATABLE READ transaction that exports its snapshot, so that
pg_dump (--snapshot) and the row counts and checksums recorded for restore drills see the very same
data. Held open with psycopg until the dump has finished."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from ..errors import DatabaseError
from .conn import Conn, classify
from .inspect import TABLES_SQL

CHECKSUM = "coalesce(sum(('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint::numeric), 0)"


class SnapshotSession:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self._env_cm: Any = None
        self.db: Any = None
        self.snapshot_id = ""

    def __enter__(self) -> SnapshotSession:
        import psycopg

        self._env_cm = self.conn.env()
        env = self._env_cm.__enter__()
        kw: dict[str, Any] = {k: v for k, v in self.conn.keywords.items() if k != "password"}
        if "PGPASSFILE" in env:
            kw["passfile"] = env["PGPASSFILE"]
        kw.setdefault("connect_timeout", env.get("PGCONNECT_TIMEOUT", "10"))
        kw["application_name"] = "deltadump"
        try:
            self.db = psycopg.connect(**kw, autocommit=False)
            self.db.execute("set transaction isolation level repeatable read, read only")
            self.snapshot_id = self.db.execute("select pg_export_snapshot()").fetchone()[0]
        except psycopg.Error as exc:
            self._close()
            raise classify(str(exc), self.conn) from exc
        return self

    def table_stats(self, checksums: bool) -> dict[str, tuple[int, str | None]]:
        import psycopg

        try:
            tables = [r[0] for r in self.db.execute(TABLES_SQL).fetchall()]
            out: dict[str, tuple[int, str | None]] = {}
            for t in tables:
                if checksums:
                    rows, cs = self.db.execute(f"select count(*), {CHECKSUM} from only {t} t").fetchone()
                    out[t] = (int(rows), str(cs))
                else:
                    out[t] = (int(self.db.execute(f"select count(*) from only {t}").fetchone()[0]), None)
            return out
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
        if self._env_cm is not None:
            self._env_cm.__exit__(None, None, None)
            self._env_cm = None

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self._close()
