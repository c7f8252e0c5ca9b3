"""Status for monitoring: the last run, the newest good backup and its age, the last drill, and the
offsite copies as they really are (each copy's head is read and compared with the records, never
assumed). Stale when the newest good backup is older than [schedule] alert_after, or has not reached
an offsite copy after that copy's alert_after."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..clock import now
from ..config import DEFAULT_COPY, Config, OffsiteConfig, parse_duration
from ..errors import DeltadumpError
from ..store.records import BackupRecord
from ..store.repository import Repository, newest_good
from .common import Reporter, SilentReporter


@dataclass
class OffsiteState:
    text: str
    newest_sent: bool | None  # None: unknown (the copy could not be read)
    lag_seconds: float | None
    stale: bool
    name: str = DEFAULT_COPY
    url: str = ""
    alert_after_hours: float = 0.0


def offsite_state(
    cfg: Config, local: Repository, backups: list[BackupRecord], rep: Reporter, copy: OffsiteConfig | None = None
) -> OffsiteState:
    """One copy's state (`copy`: None for the only one)."""
    c = copy or cfg.offsite_copy()
    st = _offsite_state(cfg, c, local, backups, rep)
    st.name, st.url, st.alert_after_hours = c.copy_name, c.url, parse_duration(c.alert_after) / 3600
    return st


def offsite_states(cfg: Config, local: Repository, backups: list[BackupRecord], rep: Reporter) -> list[OffsiteState]:
    """Every configured copy's state, in config order."""
    return [offsite_state(cfg, local, backups, rep, c) for c in cfg.copies]


def _offsite_state(
    cfg: Config, c: OffsiteConfig, local: Repository, backups: list[BackupRecord], rep: Reporter
) -> OffsiteState:
    from .offsite import Offsite

    good = newest_good(backups)
    alert = parse_duration(c.alert_after)
    url = c.url
    if good is None:
        return OffsiteState(f"{url}: nothing to send yet", True, 0.0, False)
    lag = (now() - (good.finished or good.started)).total_seconds()
    try:
        off = Offsite(cfg, rep, expect=local.id, copy=c.copy_name)
        head = off.mirror.load(fresh=True)
        have = off.target.list()  # the store as it is: what this host committed must really be there
    except DeltadumpError as exc:
        return OffsiteState(f"{url}: newest good backup {good.id} is NOT there for {lag / 3600:.1f} h "
                            f"as far as can be told: the copy cannot be read ({exc.message})", None, lag,
                            lag > alert)  # fmt: skip
    from .offsite import offsite_objects

    there = head is not None and good.number in head.live_numbers()
    missing = [o.path for o in offsite_objects(good) if o.path not in have]
    if there and good.file_name not in have:
        missing.append(good.file_name)
    if there and not missing and head is not None:
        return OffsiteState(f"{url}: newest good backup {good.id} is there (head {head.seq}, "
                            f"{head.time.isoformat(timespec='seconds')})", True, 0.0, False)  # fmt: skip
    why = f"{len(missing)} of its files are missing there" if there else "not sent yet"
    return OffsiteState(
        f"{url}: newest good backup {good.id} NOT there ({why}) for {lag / 3600:.1f} h",
        False,
        lag,
        lag > alert,
    )


@dataclass
class Status:
    last_id: str | None
    last_status: str | None
    last_started: str | None
    last_error: str
    last_good_id: str | None
    last_good_age_hours: float | None
    alert_after_hours: float
    stale: bool
    last_drill_at: str | None
    last_drill_ok: bool | None
    offsite: str
    offsite_stale: bool
    backups: int
    head_seq: int | None
    # each offsite copy: name, url, text, there (the newest good backup is there; None: unknown),
    # lag_seconds, stale, alert_after_hours
    copies: list[dict[str, object]] = field(default_factory=list)
    databases: list[dict[str, object]] = field(default_factory=list)  # whole-server: each database, the globals

    @property
    def stale_databases(self) -> list[str]:
        return [str(d["database"]) for d in self.databases if d["stale"]]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def status(cfg: Config, reporter: Reporter | None = None) -> Status:
    from .monitor import latest_drill
    from .repo import open_local

    rep = reporter or SilentReporter()
    repo = open_local(cfg, rep)
    backups = repo.backups()
    last = backups[-1] if backups else None
    lg = newest_good(backups)
    age = (now() - lg.started).total_seconds() / 3600 if lg else None
    alert = parse_duration(cfg.schedule.alert_after) / 3600
    ld = latest_drill(repo.notes())
    from .cluster import database_states

    dbs = [asdict(d) for d in database_states(cfg, backups)] if cfg.whole_server else []
    states = offsite_states(cfg, repo, backups, rep) if cfg.offsite_enabled else []
    if not states:
        off_text, off_stale = "not configured", False
    elif len(states) == 1:
        off_text, off_stale = states[0].text, states[0].stale
    else:
        off_text, off_stale = "; ".join(f"{s.name}: {s.text}" for s in states), any(s.stale for s in states)
    return Status(
        last_id=last.id if last else None,
        last_status=last.status if last else None,
        last_started=last.started.isoformat(timespec="seconds") if last else None,
        last_error=last.error if last else "",
        last_good_id=lg.id if lg else None,
        last_good_age_hours=round(age, 2) if age is not None else None,
        alert_after_hours=alert,
        stale=age is None or age > alert or off_stale or any(d["stale"] for d in dbs),
        last_drill_at=ld.at.isoformat(timespec="seconds") if ld else None,
        last_drill_ok=ld.ok if ld else None,
        offsite=off_text,
        offsite_stale=off_stale,
        backups=sum(1 for b in backups if b.status == "ok"),
        head_seq=repo.head.seq if repo.head else None,
        databases=dbs,
        copies=[_copy_dict(s) for s in states],
    )


def _copy_dict(s: OffsiteState) -> dict[str, object]:
    return {"name": s.name, "url": s.url, "text": s.text, "there": s.newest_sent, "lag_seconds": s.lag_seconds,
            "stale": s.stale, "alert_after_hours": s.alert_after_hours}  # fmt: skip
