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
from ..errors import DeltadumpError, RestoreError, redact
from ..pg import database
from ..pg.inspect import table_stats
from ..store.records import BackupRecord, Note
from ..store.repository import Change
from .common import Reporter, SilentReporter, server_for
from .restore import open_source, restore


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
    trust: str | None = None,
    allow_older: bool = False,
    reporter: Reporter | None = None,
    before_compare: Callable[[str], None] | None = None,
    of_db: str | None = None,
    copy: str | None = None,
) -> DrillResult:
    """`offsite`: from the offsite copy named `copy` (None: the only one) alone."""
    rep = reporter or SilentReporter()
    t0 = time.monotonic()
    with open_source(cfg, rep, from_offsite=offsite, identity=identity, trust=trust, allow_older=allow_older,
                     copy=copy) as src:  # fmt: skip
        rec = src.pick(ref, cfg.dest, of_db)
        want = src.repo.tables(rec) if rec.format not in ("physical", "globals") else {}
    if rec.format == "globals":
        raise RestoreError(f"backup {rec.id} holds the server's roles and tablespaces, no database to drill",
                           hint="verify checks it; restore --server restores it and drills every database")  # fmt: skip
    if rec.format == "physical":
        res = _physical_drill(cfg, rec, rep, offsite, identity, trust, allow_older, copy)
        res.seconds = time.monotonic() - t0
        _record(cfg, rec, res, offsite, rep)
        return res
    if not want:
        raise RestoreError(f"backup {rec.id} has no drill record (row counts were not recorded at backup time)")
    db = f"deltadump_drill_{secrets.token_hex(4)}"
    srv = server_for(cfg)
    try:
        restore(cfg, rec.id, db, reporter=rep, from_offsite=offsite, identity=identity, trust=trust,
                allow_older=allow_older, copy=copy)  # fmt: skip
        if before_compare is not None:
            before_compare(db)
        want_checksums = any(v[1] is not None for v in want.values())
        res = compare(want, table_stats(srv.conn, db, checksums=want_checksums))
    finally:
        try:
            database.drop(srv.conn, db)
        except Exception as exc:  # report, but keep the drill's own verdict
            rep.info(f"could not drop the drill database {db}: {exc}")
    res.backup = rec
    res.seconds = time.monotonic() - t0
    _record(cfg, rec, res, offsite, rep)
    return res


def _record(cfg: Config, rec: BackupRecord, res: DrillResult, offsite: bool, rep: Reporter) -> None:
    """The drill's result, as a note in the backup folder's repository (when it holds that backup)."""
    from .repo import open_local

    try:
        repo = open_local(cfg, rep, write=True)
    except DeltadumpError as exc:
        rep.info(f"the drill result could not be recorded: {exc.message}")
        return
    if repo.by_id(rec.id) is None:
        return
    old = {n.number for n in repo.notes() if n.backup == rec.id and n.kind == "drill"}
    repo.commit(
        Change(
            make=lambda n: [Note(repository=repo.id or "", number=n, backup=rec.id, kind="drill", at=now(), ok=res.ok,
                                 tables=len(res.rows), differences=[redact(d) for d in res.differences],
                                 seconds=round(res.seconds, 3), source="offsite" if offsite else "local")],
            drop=old,  # the newest drill of a backup replaces the one before
        )
    )  # fmt: skip


def _physical_drill(
    cfg: Config, rec: BackupRecord, rep: Reporter, offsite: bool, identity: Path | None, trust: str | None,
    allow_older: bool, copy: str | None = None,
) -> DrillResult:  # fmt: skip
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
                            identity=identity, trust=trust, allow_older=allow_older,
                            socket_dir=work / "sock", copy=copy)  # fmt: skip
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
