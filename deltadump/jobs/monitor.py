"""Telling the world how a run went, so that silence is noticed too: notifications (email, webhook),
dead-man pings (`[notify] ping_url`: URL/start when a run begins, URL on success, URL/fail with the
error line on failure: the form healthchecks.io and Uptime Kuma's push monitors read), and metrics for
Prometheus (`[notify] metrics_file`, a node_exporter textfile written atomically after every run).
None of it ever fails a backup: what cannot be sent is reported."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .. import notify
from ..clock import now
from ..config import Config, parse_duration
from ..errors import DeltadumpError, redact
from ..fsio import write_bytes_atomic
from ..store.records import BackupRecord, Note
from .common import Reporter

if TYPE_CHECKING:
    from .backup import RunResult
    from .offsite import SyncStats


@dataclass
class Facts:
    """What the metrics say, read from the records after a run."""

    last_success: float | None = None
    dump_size: int = 0
    last_drill_ok: bool | None = None
    last_drill_at: float | None = None
    offsite_lag: dict[str, float | None] = field(default_factory=dict)  # per copy: seconds the newest good
    # backup has waited for it (0: it is there; None: unknown, the copy could not be read)
    databases: dict[str, float | None] = field(default_factory=dict)  # whole-server: each one's last success


class Monitor:
    def __init__(self, cfg: Config, rep: Reporter) -> None:
        self.cfg = cfg
        self.rep = rep
        self.db = cfg.database.dsn.rsplit("/", 1)[-1].split("?")[0] if "://" in cfg.database.dsn else ""

    # -- pings -------------------------------------------------------------------------------------
    def _ping(self, suffix: str, body: str = "") -> None:
        url = self.cfg.notify.ping_url
        if not url:
            return
        try:
            req = urllib.request.Request(url.rstrip("/") + suffix, data=redact(body).encode()[:10000], method="POST")
            with urllib.request.urlopen(req, timeout=self.cfg.notify.timeout) as r:
                r.read()
        except (OSError, urllib.error.URLError, ValueError) as exc:
            self.rep.info(f"ping {url.split('?')[0]}{suffix} failed: {exc}")

    def start(self) -> None:
        self._ping("/start")

    # -- outcomes ----------------------------------------------------------------------------------
    def failed(self, error: str, seconds: float, res: RunResult | None = None) -> None:
        from .backup import notify_body

        body = notify_body(self.cfg, "backup", "failed", None, error, res=res)  # res: some backups of a run failed
        for e in notify.send(self.cfg.notify, "failure", body):
            self.rep.info(f"notification failed: {e}")
        self._ping("/fail", error)
        self._metrics(ok=False, seconds=seconds, upload=0)

    def succeeded(self, res: RunResult, seconds: float, drill_ok: bool | None) -> None:
        from .backup import notify_body

        rec = res.record
        for e in notify.send(self.cfg.notify, "success", notify_body(self.cfg, "backup", "ok", rec, res=res)):
            self.rep.info(f"notification failed: {e}")
        if res.offsite_error is not None:
            from .offsite import failure_text

            msg = f"backup {rec.id} is safe locally, but {failure_text(self.cfg, res.offsite_error)}"
            for e in notify.send(self.cfg.notify, "failure", notify_body(self.cfg, "offsite", "failed", rec, msg)):
                self.rep.info(f"notification failed: {e}")
            self._ping("/fail", msg)
        else:
            self._ping("")
        upload = res.offsite.uploaded if res.offsite is not None else 0
        self._metrics(ok=res.offsite_error is None, seconds=seconds, upload=upload, copies=res.offsite)

    def drill_if_due(self, rec: BackupRecord) -> bool | None:
        """A drill of `rec` when [drill] every says one is due; its result (None: none ran)."""
        if not self.cfg.drill.every:
            return None
        from .backup import notify_body
        from .drill import drill
        from .repo import open_local

        repo = open_local(self.cfg, self.rep)
        series = {b.id: b.series for b in repo.backups()}  # a whole-server config: this database's drills
        drills = [n.at for n in repo.notes() if n.kind == "drill" and series.get(n.backup) == rec.series]
        if drills and (now() - max(drills)).total_seconds() < parse_duration(self.cfg.drill.every):
            return None
        try:
            res = drill(self.cfg, rec.id, reporter=self.rep)
        except DeltadumpError as exc:
            self.rep.info(f"drill of {rec.id} could not run: {exc.message}")
            body = notify_body(self.cfg, "drill", "drill failed", rec, exc.message)
            for e in notify.send(self.cfg.notify, "failure", body):
                self.rep.info(f"notification failed: {e}")
            return False
        self.rep.info(f"drill of {rec.id}: {'passed' if res.ok else 'FAILED: ' + '; '.join(res.differences)}")
        body = notify_body(self.cfg, "drill", "drill passed" if res.ok else "drill failed", rec,
                           "; ".join(res.differences))  # fmt: skip
        body["drill"] = {"ok": res.ok, "differences": res.differences}
        for e in notify.send(self.cfg.notify, "drill" if res.ok else "failure", body):
            self.rep.info(f"notification failed: {e}")
        return res.ok

    # -- metrics -----------------------------------------------------------------------------------
    def facts(self) -> Facts:
        from ..store.repository import newest_good
        from .repo import open_local

        f = Facts()
        try:
            repo = open_local(self.cfg, self.rep)
            backups = repo.backups()
            good = newest_good(backups)
            if good is not None:
                f.last_success = (good.finished or good.started).timestamp()
                f.dump_size = good.size
            if self.cfg.whole_server:
                from .cluster import last_successes

                f.databases = last_successes(backups)
            drills = sorted((n for n in repo.notes() if n.kind == "drill"), key=lambda n: n.number)
            if drills:
                f.last_drill_ok, f.last_drill_at = drills[-1].ok, drills[-1].at.timestamp()
            if self.cfg.offsite_enabled and good is not None:
                from .status import offsite_states

                f.offsite_lag = {st.name: st.lag_seconds for st in offsite_states(self.cfg, repo, backups, self.rep)}
        except DeltadumpError as exc:
            self.rep.info(f"metrics: the repository could not be read: {exc.message}")
        return f

    def _metrics(self, *, ok: bool, seconds: float, upload: int, copies: SyncStats | None = None) -> None:
        path = self.cfg.notify.metrics_file
        if not path:
            return
        f = self.facts()
        lab = '{database="' + _escape(self.db) + '"}'
        rows: list[tuple[str, str, float | int | None]] = [
            ("deltadump_last_run_timestamp_seconds", "When the last run ended.", time.time()),
            ("deltadump_last_run_success", "1 if the last run succeeded (offsite copies included), else 0.", int(ok)),
            ("deltadump_last_run_duration_seconds", "How long the last run took.", round(seconds, 3)),
            ("deltadump_last_success_timestamp_seconds", "When the newest good backup finished.", f.last_success),
            ("deltadump_last_dump_size_bytes", "Size of the newest good backup's dump.", f.dump_size),
            ("deltadump_last_upload_bytes", "Bytes sent offsite by the last run (every copy).", upload),
            ("deltadump_last_drill_success", "1 if the last restore drill passed, else 0.",
             None if f.last_drill_ok is None else int(f.last_drill_ok)),
            ("deltadump_last_drill_timestamp_seconds", "When the last restore drill ran.", f.last_drill_at),
        ]  # fmt: skip
        lines = []
        for name, help_, value in rows:
            if value is None:
                continue
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name}{lab} {value}"]
        if f.databases:  # a whole-server config: each database of the last run (and the globals)
            name = "deltadump_database_last_success_timestamp_seconds"
            lines += [f"# HELP {name} When the newest good backup of each database finished.", f"# TYPE {name} gauge"]
            lines += [f"{name}{_label(db)} {t}" for db, t in f.databases.items() if t is not None]
        # each offsite copy, labelled with its name
        names = [c.copy_name for c in self.cfg.copies]
        per_copy: list[tuple[str, str, dict[str, float | int | None]]] = [
            ("deltadump_offsite_lag_seconds", "How long the newest good backup has waited for this offsite copy "
             "(0 when it is there).", {n: f.offsite_lag.get(n) for n in names}),
        ]  # fmt: skip
        if copies is not None:
            per_copy += [
                ("deltadump_offsite_last_sync_success", "1 if the last run's sync of this offsite copy succeeded.",
                 {n: int(n not in copies.failed) for n in names}),
                ("deltadump_offsite_last_upload_bytes", "Bytes the last run sent to this offsite copy.",
                 {n: copies.copies[n].uploaded if n in copies.copies else 0 for n in names}),
            ]  # fmt: skip
        for name, help_, values in per_copy:
            shown = [(n, v) for n, v in values.items() if v is not None]
            if not shown:
                continue
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge"]
            lines += [f'{name}{lab[:-1]},copy="{_escape(n)}"}} {v}' for n, v in shown]
        try:
            write_bytes_atomic(Path(path).expanduser(), ("\n".join(lines) + "\n").encode(), mode=0o644)
        except DeltadumpError as exc:
            self.rep.info(f"metrics file {path} could not be written: {exc.message}")


def _escape(label: str) -> str:
    """A Prometheus label value, escaped."""
    return label.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _label(db: str) -> str:
    return '{database="' + _escape(db) + '"}'


def latest_drill(notes: list[Note]) -> Note | None:
    drills = [n for n in notes if n.kind == "drill"]
    return max(drills, key=lambda n: n.number) if drills else None
