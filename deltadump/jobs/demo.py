"""The embedded default: a private PostgreSQL server (local binaries, or the pgserver package's) with
a sample mail database, and the whole cycle on it: several simulated days of mail traffic, each
backed up as a delta with an offsite copy (what was sent that day, beside the size of a compressed
`pg_dump -Fc` of the same day), a restore drill of the latest backup compared table by table, then a
restore from the offsite copy alone (the local backup folder set aside) compared with the source.
Leaves no server running."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config, parse
from ..pg.conn import psql
from ..pg.dump import run_pg_dump
from ..pg.inspect import table_stats
from ..pg.server import LocalServer
from ..store.records import BackupRecord, Note
from . import sample
from .backup import backup
from .common import Reporter
from .drill import DrillResult, drill
from .repo import LocalView, local_view, open_local
from .restore import restore

DAYS = ("2026-11-23T02:00:00", "2026-11-24T02:00:00", "2026-11-25T02:00:00", "2026-11-26T02:00:00")


@dataclass
class DemoDay:
    day: int
    backup: BackupRecord
    uploaded: int  # bytes that reached the offsite copy that day (new or changed files)
    compressed_dump: int  # size of a `pg_dump -Fc` (compression 6) of the same day


@dataclass
class DemoResult:
    server_version: str
    server_bin: str
    days: list[DemoDay] = field(default_factory=list)
    drill: DrillResult | None = None
    source: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    restored: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    workdir: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.source) and self.source == self.restored and self.drill is not None and self.drill.ok


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (st.st_size, st.st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and (st := p.stat())}  # fmt: skip


def run_demo(
    reporter: Reporter,
    show_list: Callable[[list[BackupRecord], list[Note], LocalView], None],
    keep: Path | None = None,
) -> DemoResult:
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="deltadump-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o711)  # the server may run as another (unprivileged) user: it must reach its folder
    server = LocalServer(work / "server")
    reporter.info(f"starting a private PostgreSQL {server.version} from {server.bin} on port {server.port}")
    old_now = os.environ.get("DELTADUMP_NOW")
    try:
        server.start()
        res = DemoResult(server.version, str(server.bin), workdir=str(work))
        psql_bin = server.psql_bin()
        psql(psql_bin, server.conn(), "create database mail")
        reporter.info("loading a sample mail database (settings, users, folders, messages)")
        sample.load(psql_bin, server.conn(), "mail", messages=6000)
        dest, offsite = work / "backups", work / "offsite"
        for d in (dest, offsite):
            d.mkdir(mode=0o700, exist_ok=True)
        pwfile = work / "db.password"
        pwfile.write_text(server.password + "\n")
        pwfile.chmod(0o600)
        cfg: Config = parse(
            {
                "database": {"dsn": server.dsn("mail"), "password_file": str(pwfile), "pg_bin": str(server.bin)},
                "backup": {"dest": str(dest), "name": "DBBACK-%w.DMP", "signing_key": str(work / "demo.key")},
                "delta": {"enabled": True},
                "offsite": {"url": f"file://{offsite}"},
            }
        )
        for day, when in enumerate(DAYS, 1):
            os.environ["DELTADUMP_NOW"] = when
            if day > 1:
                reporter.info(f"day {day}: a day of mail traffic (new messages, some read, moved or deleted)")
                sample.mail_day(psql_bin, server.conn(), "mail", day)
            before = _files(offsite)
            rec = backup(cfg, reporter)
            after = _files(offsite)
            sent = sum(size for k, (size, mt) in after.items() if before.get(k) != (size, mt))
            fc = work / "compare.dump"
            run_pg_dump(server.bin / "pg_dump", server.conn("mail"), fc, fmt="custom", compress=6, options=[])
            res.days.append(DemoDay(day, rec, sent, fc.stat().st_size))
            fc.unlink()
        repo = open_local(cfg, reporter)
        show_list(repo.backups(), repo.notes(), local_view(repo, dest))
        reporter.info("restore drill of the latest backup: restored into a throwaway database, compared, dropped")
        res.drill = drill(cfg, "latest", reporter=reporter)
        aside = work / "backups-set-aside"
        dest.rename(aside)  # from here on, only the offsite copy exists
        reporter.info(f"the local backup folder is set aside; restoring the latest backup from {offsite} alone")
        restore(cfg, "latest", "mail_from_offsite", reporter=reporter, from_offsite=True)
        res.source = table_stats(server.conn(), "mail")
        res.restored = table_stats(server.conn(), "mail_from_offsite")
        return res
    finally:
        if old_now is None:
            os.environ.pop("DELTADUMP_NOW", None)
        else:
            os.environ["DELTADUMP_NOW"] = old_now
        server.stop()
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
