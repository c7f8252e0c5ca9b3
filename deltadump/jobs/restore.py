"""The restore job: check the backup against its recorded checksums, prepare the target database
(create it; refuse a non-empty one unless clean), then pg_restore or psql, failing on any error."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config
from ..errors import IntegrityError, RestoreError
from ..pg.conn import psql
from ..pg.dump import run_restore
from ..store import manifest
from ..store.manifest import BackupRecord
from .common import Reporter, SilentReporter, major_of, server_for, tool
from .verify import check_record, select

NONEMPTY_SQL = """
select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg_toast%'
  and n.nspname not like 'pg_temp%'
"""


@dataclass
class RestoreResult:
    backup: BackupRecord
    database: str
    created: bool
    seconds: float


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def restore(
    cfg: Config,
    ref: str,
    to_db: str,
    *,
    dsn: str | None = None,
    clean: bool = False,
    jobs: int = 1,
    reporter: Reporter | None = None,
) -> RestoreResult:
    import time

    rep = reporter or SilentReporter()
    t0 = time.monotonic()
    dest = cfg.dest
    (rec,) = select(manifest.load(dest), dest, ref)
    if not rec.current:
        why = f"failed: {rec.error}" if rec.status == "failed" else f"replaced by {rec.replaced_by}"
        raise RestoreError(f"backup {rec.id} cannot be restored: it {why}")
    rep.info(f"checking {rec.path} against its recorded checksums")
    check = check_record(dest, rec, cfg.database.pg_bin, structure=False)
    if not check.ok:
        raise IntegrityError(f"backup {rec.id} is damaged: {check.problems[0]}", hint="restore another backup")
    srv = server_for(cfg, dsn)
    need = max(srv.major, major_of(rec.pg_dump_version))
    pg_restore = tool("pg_restore", cfg, need).path
    admin_db = "postgres" if to_db != "postgres" else "template1"
    exists = psql(srv.psql, srv.conn, f"select 1 from pg_database where datname = {_lit(to_db)}", db=admin_db)
    created = False
    if exists:
        n = int(psql(srv.psql, srv.conn, NONEMPTY_SQL, db=to_db)[0][0])
        if n and not clean:
            raise RestoreError(
                f'database "{to_db}" on {srv.conn.where.split("/")[0]} is not empty ({n} relations)',
                hint="restore into a new database name, or add --clean to drop and recreate it",
            )
        if n:
            rep.info(f'dropping and recreating database "{to_db}" (--clean)')
            psql(srv.psql, srv.conn, f"drop database {_ident(to_db)} with (force)", db=admin_db)
            exists = []
    if not exists:
        psql(srv.psql, srv.conn, f"create database {_ident(to_db)}", db=admin_db)
        created = True
    rep.info(f'restoring {rec.path} into database "{to_db}"')
    run_restore(pg_restore, srv.psql, srv.conn.with_db(to_db), dest / rec.path, rec.format, jobs=jobs)
    return RestoreResult(rec, to_db, created, time.monotonic() - t0)
