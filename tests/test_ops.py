"""Drills, status, notifications (a real SMTP server and a real HTTP server), the scheduler (with an
injectable clock, so no test sleeps for real minutes), its lock, and the unit files it writes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import cli, history, write_config, write_load

from deltadump import clock
from deltadump.config import load
from deltadump.jobs.backup import backup_and_report
from deltadump.jobs.drill import drill
from deltadump.pg.conn import psql
from deltadump.pg.server import LocalServer, free_port
from deltadump.schedule import Clock, parse, run_forever, systemd_units
from deltadump.store.lock import RunLock


@pytest.fixture
def dest(tmp: Path) -> Path:
    d = tmp / "dest"
    d.mkdir()
    return d


def test_drill_passes_on_good_backup_and_catches_an_injected_difference(
    pg: LocalServer, pwfile: Path, maildb: str, dest: Path, tmp: Path
) -> None:
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
    c.write_text(c.read_text() + "\n[drill]\nchecksums = true\n")
    assert cli("backup", "--config", c).returncode == 0
    h = history(c)
    tables = h.repo.tables(h.latest())
    assert tables["public.messages"][0] == 300 and tables["public.messages"][1]
    r = cli("drill", "latest", "--config", c)
    assert r.returncode == 0, r.stderr
    assert "drill passed" in r.stdout and "public.messages" in r.stdout
    cfg = load(c)
    # a difference injected into the restored copy: a changed row (same count) and a lost row
    res = drill(
        cfg,
        "latest",
        before_compare=lambda db: psql(
            pg.psql_bin(),
            pg.conn(),
            "update settings set value = 'x' where key = 'tls'; delete from users where id = 3",
            db=db,
        ),
    )
    assert not res.ok
    assert any("public.settings: content checksum differs" in d for d in res.differences)
    assert any("public.users: 5 rows recorded, 4 restored" in d for d in res.differences)
    h = history(c)
    drills = [n for n in h.notes if n.kind == "drill" and n.backup == h.latest().id]
    assert len(drills) == 1 and not drills[0].ok  # the newest drill replaced the passing one
    leftover = psql(pg.psql_bin(), pg.conn(), "select datname from pg_database where datname like 'deltadump_drill_%'")
    assert leftover == []


def test_drill_record_is_from_the_dump_snapshot(
    pg: LocalServer, pwfile: Path, maildb: str, dest: Path, tmp: Path
) -> None:
    """Rows inserted while the dump runs are in neither the dump nor the record."""
    cfg = load(write_config(tmp / "c.toml", pg, pwfile, maildb, dest))
    with write_load(pg, maildb, "insert into settings values (md5(random()::text), 'v')"):
        for _ in range(3):
            backup_and_report(cfg)
    assert drill(cfg, "latest").ok


def test_status_and_alert_after(pg: LocalServer, pwfile: Path, maildb: str, dest: Path, tmp: Path) -> None:
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
    r = cli("status", "--config", c)
    assert r.returncode == 1 and "too old" in r.stderr
    assert cli("backup", "--config", c, env={"DELTADUMP_NOW": "2026-11-20T02:00:00"}).returncode == 0
    r = cli("status", "--json", "--config", c, env={"DELTADUMP_NOW": "2026-11-21T01:00:00"})
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["last_good_age_hours"] == 23.0 and not st["stale"]
    r = cli("status", "--config", c, env={"DELTADUMP_NOW": "2026-11-21T05:00:00"})  # 27 h > 26 h
    assert r.returncode == 1 and "too old" in r.stderr


class Hooks:
    def __init__(self) -> None:
        self.posts: list[dict[str, object]] = []
        hooks = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_POST(self) -> None:
                hooks.posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def smtp() -> object:
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    class Box(Message):
        def __init__(self) -> None:
            super().__init__()
            self.messages: list[object] = []

        def handle_message(self, message: object) -> None:
            self.messages.append(message)

    box = Box()
    ctl = Controller(box, hostname="127.0.0.1", port=free_port())
    ctl.start()
    yield ctl, box
    ctl.stop()


def test_notifications_on_failure_success_and_drill(
    pg: LocalServer, pwfile: Path, maildb: str, dest: Path, tmp: Path, smtp: object
) -> None:
    ctl, box = smtp  # type: ignore[misc]
    hooks = Hooks()
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
    c.write_text(c.read_text() + f'\n[drill]\nevery = "1d"\n[notify]\nemail = ["admin@example.com"]\nsmtp = "127.0.0.1:{ctl.port}"\ntls = "none"\n'
                 f'webhook = "{hooks.url}"\non = ["failure", "success", "drill"]\n')  # fmt: skip
    assert cli("backup", "--config", c).returncode == 0
    kinds = [(p["job"], p["status"]) for p in hooks.posts]
    assert ("drill", "drill passed") in kinds and ("backup", "ok") in kinds
    ok = next(p for p in hooks.posts if p["job"] == "backup")
    assert ok["size"] and ok["duration"] is not None and str(ok["path"]).startswith(str(dest))
    assert len(box.messages) == 2 and "admin@example.com" in box.messages[0]["To"]
    # a failure: wrong database
    bad = write_config(tmp / "bad.toml", pg, pwfile, "no_such_db", dest)
    bad.write_text(
        bad.read_text()
        + f'\n[notify]\nwebhook = "{hooks.url}"\nemail = ["a@b.c"]\nsmtp = "127.0.0.1:{ctl.port}"\ntls = "none"\n'
    )
    assert cli("backup", "--config", bad).returncode == 1
    fail = hooks.posts[-1]
    assert fail["status"] == "failed" and "does not exist" in str(fail["error"])
    assert "failed" in box.messages[-1]["Subject"]
    hooks.server.shutdown()


def test_unreachable_smtp_and_webhook_never_fail_the_backup(
    pg: LocalServer, pwfile: Path, maildb: str, dest: Path, tmp: Path
) -> None:
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
    c.write_text(c.read_text() + f'\n[notify]\nemail = ["a@b.c"]\nsmtp = "127.0.0.1:{free_port()}"\ntls = "none"\n'
                 f'webhook = "http://127.0.0.1:{free_port()}/x"\non = ["success"]\ntimeout = 3\n')  # fmt: skip
    r = cli("backup", "--config", c)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("notification failed") == 2
    assert history(c).backups[-1].status == "ok"


def test_schedule_next_runs() -> None:
    from deltadump.config import ScheduleConfig

    s = parse(ScheduleConfig(at="02:00", timezone="Europe/Berlin"))
    t0 = datetime(2026, 3, 28, 12, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    runs = s.next_runs(t0, 3)
    assert [r.isoformat() for r in runs] == [
        "2026-03-29T03:00:00+02:00",  # 02:00 does not exist that day (DST): once, right after the gap
        "2026-03-30T02:00:00+02:00",
        "2026-03-31T02:00:00+02:00",
    ]
    s = parse(ScheduleConfig(cron="30 1,13 * * 1-5"))
    runs = s.next_runs(datetime(2026, 11, 27, 14, 0).astimezone(), 3)  # a Friday afternoon
    assert [(r.weekday(), r.hour, r.minute) for r in runs] == [(0, 1, 30), (0, 13, 30), (1, 1, 30)]
    units = systemd_units(load_cfg_stub(s.cron), Path("/etc/deltadump/mail.toml"), "mail")
    assert "OnCalendar=Mon..Fri *-*-* 01,13:30:00" in units["deltadump-mail.timer"]
    assert "Persistent=true" in units["deltadump-mail.timer"]


def load_cfg_stub(cron: str):  # type: ignore[no-untyped-def]
    from deltadump.config import parse as parse_cfg

    return parse_cfg({"database": {"dsn": "dbname=x"}, "backup": {"dest": "/tmp"}, "schedule": {"cron": cron}})


class FakeClock(Clock):
    step = float("inf")

    def __init__(self, t: datetime) -> None:
        self.t = t
        self.slept = 0.0

    def now(self) -> datetime:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.t += timedelta(seconds=seconds)


def test_scheduler_runs_on_time_and_catches_up_a_missed_run(
    pg: LocalServer, pwfile: Path, maildb: str, dest: Path, tmp: Path
) -> None:
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
    c.write_text(c.read_text() + '\n[schedule]\nat = "02:00"\n')
    cfg = load(c)
    fake = FakeClock(datetime(2026, 11, 26, 9, 0).astimezone())  # the 02:00 run was missed (machine off)
    clock.set_source(fake.now)
    started: list[datetime] = []
    try:
        n = run_forever(
            cfg,
            lambda: started.append(fake.now()) or backup_and_report(cfg),
            clock=fake,
            max_runs=3,
            log=lambda m: None,
            last_success=lambda: None,
        )
    finally:
        clock.set_source(None)
    assert n == 3
    assert [t.strftime("%d %H:%M") for t in started] == ["26 09:00", "27 02:00", "28 02:00"]
    recs = history(c).backups
    assert [b.started.strftime("%d %H:%M") for b in recs] == ["26 09:00", "27 02:00", "28 02:00"]
    assert fake.slept > 40 * 3600  # it waited (in fake time) for its runs


def test_scheduler_refuses_a_second_instance_and_stops_on_sigterm(
    pg: LocalServer, pwfile: Path, maildb: str, dest: Path, tmp: Path
) -> None:
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
    c.write_text(c.read_text() + '\n[schedule]\nat = "02:00"\n')
    with RunLock(dest, name="deltadump-scheduler.lock"):
        r = cli("run", "--config", c, timeout=60)
        assert r.returncode == 1 and "already running" in r.stderr
    p = subprocess.Popen(
        [sys.executable, "-m", "deltadump.cli.main", "run", "--config", str(c)], stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(dest.glob("records/*.json")):
        time.sleep(0.2)
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 0
    assert "stopping" in (p.stderr.read() if p.stderr else "")
    assert [b.status for b in history(c).backups] == ["ok"]  # the missed run at start-up, finished


def test_second_backup_waits_with_wait_flag(pg: LocalServer, pwfile: Path, maildb: str, dest: Path, tmp: Path) -> None:
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
    with RunLock(dest):
        assert "already running" in cli("backup", "--config", c).stderr
    assert cli("backup", "--wait", "--config", c).returncode == 0


def test_schedule_install_writes_units(pg: LocalServer, pwfile: Path, maildb: str, dest: Path, tmp: Path) -> None:
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
    c.write_text(c.read_text() + '\n[schedule]\ncron = "15 3 * * *"\ntimezone = "UTC"\n')
    r = cli("schedule", "install", "--systemd", "--dir", tmp / "units", "--config", c)
    assert r.returncode == 0, r.stderr
    timer = (tmp / "units" / "deltadump-c.timer").read_text()
    service = (tmp / "units" / "deltadump-c.service").read_text()
    assert "OnCalendar=*-*-* 03:15:00 UTC" in timer and f"--config {c}" in service and "backup" in service
    assert cli("schedule", "install", "--systemd", "--dir", tmp / "units", "--config", c).returncode == 2  # exists
    r = cli("schedule", "install", "--cron", "--dir", tmp / "cron", "--config", c)
    assert r.returncode == 0 and "15 3 * * * root" in (tmp / "cron" / "deltadump-c").read_text()
    r = cli("schedule", "show", "--config", c, env={"DELTADUMP_NOW": "2026-11-26T10:00:00+00:00"})
    assert r.returncode == 0 and r.stdout.count("T03:15") == 5 and "2026-11-27T03:15" in r.stdout
