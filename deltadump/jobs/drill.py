"""Restore drills: restore a backup into a throwaway database, compare every table with the row
counts (and content checksums) recorded in the dump's own snapshot, drop what was created."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..clock import now
from ..config import Config
from ..errors import RestoreError
from ..pg import database
from ..pg.inspect import table_stats
from ..store import manifest
from ..store.manifest import BackupRecord, DrillRecord
from .common import Reporter, SilentReporter, server_for
from .restore import pick, restore


@dataclass
class DrillResult:
    backup: BackupRecord
    rows: list[tuple[str, int | None, int | None, str]] = field(default_factory=list)  # table, want, got, verdict
    differences: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.differences


def compare(want: dict[str, tuple[int, str | None]], got: dict[str, tuple[int, str | None]]) -> DrillResult:
    res = DrillResult(backup=None)  # type: ignore[arg-type]
    for t in sorted(set(want) | set(got)):
        w, g = want.get(t), got.get(t)
        if w is None:
            res.rows.append((t, None, g[0] if g else None, "not in the backup's record"))
            res.differences.append(f"{t}: present after restore, not recorded at backup time")
        elif g is None:
            res.rows.append((t, w[0], None, "MISSING"))
            res.differences.append(f"{t}: missing after restore")
        elif w[0] != g[0]:
            res.rows.append((t, w[0], g[0], "ROWS DIFFER"))
            res.differences.append(f"{t}: {w[0]} rows recorded, {g[0]} restored")
        elif w[1] is not None and w[1] != g[1]:
            res.rows.append((t, w[0], g[0], "CONTENT DIFFERS"))
            res.differences.append(f"{t}: content checksum differs")
        else:
            res.rows.append((t, w[0], g[0], "ok" + (" (checksum)" if w[1] is not None else "")))
    return res


def drill(
    cfg: Config,
    ref: str = "latest",
    *,
    offsite: bool = False,
    identity: Path | None = None,
    reporter: Reporter | None = None,
    before_compare: Callable[[str], None] | None = None,
) -> DrillResult:
    rep = reporter or SilentReporter()
    t0 = time.monotonic()
    if offsite:
        from .offsite import Offsite

        rec = pick(Offsite(cfg, identity).manifest(), ref)
    else:
        rec = pick(manifest.load(cfg.dest), ref, cfg.dest)
    if rec.format == "physical":
        res = _physical_drill(cfg, rec, rep, offsite, identity)
        res.seconds = time.monotonic() - t0
        _record(cfg, rec, res, offsite)
        return res
    if not rec.tables:
        raise RestoreError(f"backup {rec.id} has no drill record (row counts were not recorded at backup time)")
    db = f"deltadump_drill_{secrets.token_hex(4)}"
    srv = server_for(cfg)
    try:
        restore(cfg, rec.id, db, reporter=rep, from_offsite=offsite, identity=identity)
        if before_compare is not None:
            before_compare(db)
        want_checksums = any(v[1] is not None for v in rec.tables.values())
        res = compare(rec.tables, table_stats(srv.conn, db, checksums=want_checksums))
    finally:
        try:
            database.drop(srv.conn, db)
        except Exception as exc:  # report, but keep the drill's own verdict
            rep.info(f"could not drop the drill database {db}: {exc}")
    res.backup = rec
    res.seconds = time.monotonic() - t0
    _record(cfg, rec, res, offsite)
    return res


def _record(cfg: Config, rec: BackupRecord, res: DrillResult, offsite: bool) -> None:
    if (cfg.dest / manifest.MANIFEST_NAME).exists():
        with manifest.updating(cfg.dest) as m:
            for b in m.backups:
                if b.id == rec.id:
                    b.drill = DrillRecord(
                        at=now(),
                        ok=res.ok,
                        tables=len(res.rows),
                        differences=res.differences,
                        seconds=round(res.seconds, 3),
                        source="offsite" if offsite else "local",
                    )


def _physical_drill(cfg: Config, rec: BackupRecord, rep: Reporter, offsite: bool, identity: Path | None) -> DrillResult:
    """A throwaway server: lay the backup out, start it (WAL replay), check that every database
    answers and count its tables' rows, stop it, remove it."""
    import shutil
    import subprocess
    import tempfile

    from ..pg.physical import run_as_user
    from ..pg.server import free_port
    from ..pg.tools import find
    from .common import major_of
    from .restore import restore_datadir

    res = DrillResult(backup=rec)
    work = Path(tempfile.mkdtemp(prefix="deltadump-drill-"))
    work.chmod(0o711)  # the server may run as an unprivileged user
    data = work / "data"
    port = free_port()
    srv = server_for(cfg)
    conn = srv.conn.with_db("postgres")
    conn.keywords.update(host="127.0.0.1", port=str(port))
    try:
        try:
            restore_datadir(cfg, rec.id, data, start=True, port=port, reporter=rep, from_offsite=offsite,
                            identity=identity, socket_dir=work / "sock")  # fmt: skip
        except Exception as exc:
            res.differences.append(f"the throwaway server did not start: {exc}")
            return res
        dbs = database.databases(conn)
        for db in dbs:
            try:
                for table, (rows, _) in sorted(table_stats(conn, db, checksums=False).items()):
                    res.rows.append((f"{db}: {table}", None, rows, "answers"))
            except Exception as exc:
                res.rows.append((db, None, None, "FAILED"))
                res.differences.append(f"database {db} does not answer: {exc}")
        if not dbs:
            res.differences.append("the restored server has no database")
    finally:
        pg_ctl = find("pg_ctl", cfg.database.pg_bin, min_major=major_of(rec.server_version)).path
        argv = [str(pg_ctl), "-D", str(data), "-m", "immediate", "-w", "stop"]
        user = run_as_user()
        subprocess.run(["runuser", "-u", user, "--", *argv] if user else argv, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return res
