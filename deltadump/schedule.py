"""Schedules: `[schedule] at = "HH:MM"` or a five-field `cron`, in a `timezone`; the next runs; the
foreground scheduler loop (`deltadump run`) with an injectable clock; systemd and cron unit text."""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from .config import Config, ScheduleConfig
from .errors import ConfigError, UsageError

FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))
DOW_NAMES = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")


def _field(text: str, name: str, lo: int, hi: int) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        rng, _, step_s = part.partition("/")
        step = int(step_s) if step_s else 1
        if rng == "*":
            a, b = lo, hi
        elif "-" in rng:
            a, b = (int(x) for x in rng.split("-", 1))
        else:
            a = b = int(rng)
            if step_s:
                b = hi
        if not (lo <= a <= hi and lo <= b <= hi) or a > b or step < 1:
            raise ValueError(f"{name} {part!r} out of range {lo}-{hi}")
        out.update(range(a, b + 1, step))
    return out


@dataclass(frozen=True)
class Schedule:
    cron: str
    minutes: frozenset[int]
    hours: frozenset[int]
    doms: frozenset[int]
    months: frozenset[int]
    dows: frozenset[int]
    dom_any: bool
    dow_any: bool
    tz: ZoneInfo | None

    def _day_ok(self, d: date) -> bool:
        dom_ok = d.day in self.doms
        dow_ok = (d.weekday() + 1) % 7 in self.dows
        if self.dom_any or self.dow_any:  # cron: when both are restricted, either may match
            return dom_ok and dow_ok
        return dom_ok or dow_ok

    def next_runs(self, after: datetime, n: int = 1) -> list[datetime]:
        """The next n run times strictly after `after` (aware datetimes in the schedule's zone)."""
        tz = self.tz or after.astimezone().tzinfo
        start = after.astimezone(tz)
        out: list[datetime] = []
        day = start.date()
        for _ in range(366 * 5):
            if day.month in self.months and self._day_ok(day):
                for h in sorted(self.hours):
                    for m in sorted(self.minutes):
                        # normalised: a time that a DST gap skips runs at the first moment after it
                        t = datetime(day.year, day.month, day.day, h, m, tzinfo=tz).astimezone(ZoneInfo("UTC"))
                        t = t.astimezone(tz)
                        if t > start and (not out or t > out[-1]):
                            out.append(t)
                            if len(out) == n:
                                return out
            day += timedelta(days=1)
        return out

    def previous_run(self, before: datetime) -> datetime | None:
        """The last scheduled time at or before `before` (looking back up to 400 days)."""
        probe = before - timedelta(days=400)
        last = None
        for t in self.next_runs(probe, 10_000):
            if t > before:
                break
            last = t
        return last


def parse(cfg: ScheduleConfig) -> Schedule:
    if cfg.at and cfg.cron:
        raise ConfigError("[schedule] takes at or cron, not both")
    expr = cfg.cron
    if cfg.at:
        try:
            hh, mm = (int(x) for x in cfg.at.split(":"))
        except ValueError:
            raise ConfigError(f"[schedule] at = {cfg.at!r}: use HH:MM") from None
        if not (0 <= hh <= 23 and 0 <= mm <= 59):
            raise ConfigError(f"[schedule] at = {cfg.at!r}: use HH:MM")
        expr = f"{mm} {hh} * * *"
    if not expr:
        raise ConfigError('no schedule: set [schedule] at = "02:00" (or cron = "0 2 * * *")')
    parts = expr.split()
    if len(parts) != 5:
        raise ConfigError(f"[schedule] cron = {expr!r}: five fields expected (minute hour day month weekday)")
    try:
        sets = [_field(p, name, lo, hi) for p, (name, lo, hi) in zip(parts, FIELDS, strict=True)]
    except ValueError as exc:
        raise ConfigError(f"[schedule] cron = {expr!r}: {exc}") from None
    dows = {0 if d == 7 else d for d in sets[4]}
    return Schedule(expr, frozenset(sets[0]), frozenset(sets[1]), frozenset(sets[2]), frozenset(sets[3]),
                    frozenset(dows), parts[2] == "*", parts[4] == "*",
                    ZoneInfo(cfg.timezone) if cfg.timezone else None)  # fmt: skip


# -- the foreground scheduler ------------------------------------------------------------------------


class Clock:
    """Real time; tests pass one whose sleep() advances a fake now()."""

    step = 1.0  # longest single wait, so that a stop request (SIGTERM) is seen within a second

    def now(self) -> datetime:
        return datetime.now().astimezone()

    def sleep(self, seconds: float) -> None:
        import time

        time.sleep(seconds)


def run_forever(
    cfg: Config,
    backup: Callable[[], object],
    *,
    clock: Clock | None = None,
    stop: Callable[[], bool] = lambda: False,
    log: Callable[[str], None] = print,
    max_runs: int | None = None,
    last_success: Callable[[], datetime | None] = lambda: None,
) -> int:
    """Run `backup` at every scheduled time; a run missed while the machine was off runs at start-up
    (`last_success` says when the newest good backup started). Returns the number of runs. `stop()` is
    checked between runs and while waiting."""
    clk = clock or Clock()
    sched = parse(cfg.schedule)
    runs = 0
    good = last_success()
    prev = sched.previous_run(clk.now())
    if prev is not None and (good is None or good < prev):
        log(f"a backup scheduled for {prev.isoformat(timespec='minutes')} was missed: running it now")
        _one(backup, log)
        runs += 1
    while not stop() and (max_runs is None or runs < max_runs):
        nxt = sched.next_runs(clk.now())[0]
        log(f"next backup at {nxt.isoformat(timespec='minutes')}")
        while not stop():
            left = (nxt - clk.now()).total_seconds()
            if left <= 0:
                break
            clk.sleep(min(left, clk.step))
        if stop():
            break
        _one(backup, log)
        runs += 1
    return runs


def _one(backup: Callable[[], object], log: Callable[[str], None]) -> None:
    from .errors import DeltadumpError

    try:
        backup()
    except DeltadumpError as exc:  # reported and notified by the backup; the scheduler goes on
        log(f"backup failed: {exc.message}")


# -- units for systemd and cron ------------------------------------------------------------------------


def _oncalendar(s: Schedule) -> str:
    def conv(text: str, names: tuple[str, ...] | None = None, pad: int = 2) -> str:
        if text == "*":
            return "*"
        out = []
        for part in text.split(","):
            rng, _, step = part.partition("/")
            if names is not None:
                rng = "..".join(names[int(x) % 7] for x in rng.split("-")) if rng != "*" else rng
            elif rng != "*":
                rng = "..".join(f"{int(x):0{pad}d}" for x in rng.split("-"))
            if step:
                rng = f"{'0' if rng == '*' else rng}/{step}"
            out.append(rng)
        return ",".join(out)

    mi, hh, dom, mon, dow = s.cron.split()
    days = "" if dow == "*" else conv(dow, DOW_NAMES) + " "
    return f"{days}*-{conv(mon)}-{conv(dom)} {conv(hh)}:{conv(mi)}:00" + (f" {s.tz.key}" if s.tz else "")


def command_line(cfg_path: Path) -> str:
    exe = Path(sys.argv[0]).resolve() if Path(sys.argv[0]).name.startswith("deltadump") else None
    prog = shlex.quote(str(exe)) if exe else f"{shlex.quote(sys.executable)} -m deltadump.cli.main"
    return f"{prog} backup --config {shlex.quote(str(cfg_path.resolve()))} --wait -q"


UNIT_NAME = re.compile(r"[A-Za-z0-9_-]+")


def unit_name(explicit: str | None, cfg_path: Path) -> str:
    """The suffix of the unit or cron.d file names: `--name`, else the config file's name. Only
    [A-Za-z0-9_-]: cron silently ignores files in /etc/cron.d whose name has a dot (or other
    characters), so an explicit name with them is refused and a derived one has them replaced."""
    if explicit is not None:
        if not UNIT_NAME.fullmatch(explicit):
            raise UsageError(f"--name {explicit!r}: use letters, digits, '-' and '_' only (cron ignores other names)")
        return explicit
    name = re.sub(r"[^A-Za-z0-9_-]", "-", cfg_path.stem).strip("-")
    return name or "backup"


def systemd_units(cfg: Config, cfg_path: Path, name: str) -> dict[str, str]:
    s = parse(cfg.schedule)
    service = f"""[Unit]
Description=deltadump backup ({name})
Wants=network-online.target
After=network-online.target postgresql.service

[Service]
Type=oneshot
ExecStart={command_line(cfg_path)}
# let a running backup finish or abort cleanly
KillSignal=SIGTERM
TimeoutStopSec=300
# when the backup exits, only it is stopped: the after-command it started, detached, runs on to its
# own after_timeout (the default, control-group, would kill it together with the backup)
KillMode=process
UMask=0077
"""
    timer = f"""[Unit]
Description=daily deltadump backup ({name})

[Timer]
OnCalendar={_oncalendar(s)}
# a run missed while the machine was off runs at start-up
Persistent=true

[Install]
WantedBy=timers.target
"""
    return {f"deltadump-{name}.service": service, f"deltadump-{name}.timer": timer}


def cron_line(cfg: Config, cfg_path: Path, user: str = "root") -> str:
    s = parse(cfg.schedule)
    tz = f"CRON_TZ={s.tz.key}\n" if s.tz else ""
    command = command_line(cfg_path).replace("%", "\\%")  # cron turns a bare % into a newline (and stdin)
    return f"{tz}{s.cron} {user} {command}\n"
