"""The embedded default: a private PostgreSQL server (local binaries, or the pgserver package's),
a sample mail database, two backups a simulated day apart, a restore into a scratch database and a
table-by-table comparison. Leaves no server running."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config, parse
from ..pg.inspect import table_stats
from ..pg.server import LocalServer
from ..store import manifest
from ..store.manifest import BackupRecord
from . import sample
from .backup import backup
from .common import Reporter
from .restore import restore


@dataclass
class DemoResult:
    server_version: str
    server_bin: str
    backups: list[BackupRecord] = field(default_factory=list)
    source: dict[str, tuple[int, str]] = field(default_factory=dict)
    restored: dict[str, tuple[int, str]] = field(default_factory=dict)
    workdir: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.source) and self.source == self.restored


def run_demo(
    reporter: Reporter, show_list: Callable[[list[BackupRecord]], None], keep: Path | None = None
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
        sample.psql(psql_bin, server.conn(), "create database mail")
        reporter.info("loading a sample mail database (settings, users, folders, messages)")
        sample.load(psql_bin, server.conn(), "mail", messages=3000)
        dest = work / "backups"
        dest.mkdir(mode=0o700, exist_ok=True)
        pwfile = work / "db.password"
        pwfile.write_text(server.password + "\n")
        pwfile.chmod(0o600)
        cfg: Config = parse(
            {
                "database": {"dsn": server.dsn("mail"), "password_file": str(pwfile), "pg_bin": str(server.bin)},
                "backup": {"dest": str(dest), "name": "DBBACK-%w.DMP", "format": "custom", "compress": 6},
            }
        )
        for day, when in ((1, "2026-11-25T02:00:00"), (2, "2026-11-26T02:00:00")):
            os.environ["DELTADUMP_NOW"] = when
            if day > 1:
                reporter.info("a day of mail traffic: new messages, some read, moved or deleted")
                sample.mail_day(psql_bin, server.conn(), "mail", day)
            rec = backup(cfg, reporter)
            res.backups.append(rec)
            reporter.info(f"day {day}: backup {rec.path} ({rec.size / 1e6:.1f} MB) in {rec.duration:.1f} s")
        show_list(list(reversed(manifest.load(dest).backups)))
        restore(cfg, "latest", "mail_restored", reporter=reporter)
        res.source = table_stats(psql_bin, server.conn(), "mail")
        res.restored = table_stats(psql_bin, server.conn(), "mail_restored")
        return res
    finally:
        if old_now is None:
            os.environ.pop("DELTADUMP_NOW", None)
        else:
            os.environ["DELTADUMP_NOW"] = old_now
        server.stop()
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
