"""Status for monitoring: the last backup, its age, the last drill, the offsite state; 'stale' when
the last good backup is older than [schedule] alert_after."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..clock import now
from ..config import Config, parse_duration
from ..store import manifest


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
    backups: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def status(cfg: Config) -> Status:
    m = manifest.load(cfg.dest) if (cfg.dest / manifest.MANIFEST_NAME).exists() else manifest.Manifest()
    last = m.backups[-1] if m.backups else None
    good = [b for b in m.backups if b.status == "ok"]
    lg = good[-1] if good else None
    age = (now() - lg.started).total_seconds() / 3600 if lg else None
    alert = parse_duration(cfg.schedule.alert_after) / 3600
    drills = [b for b in m.backups if b.drill is not None]
    ld = max(drills, key=lambda b: b.drill.at) if drills else None  # type: ignore[union-attr]
    if not cfg.offsite_enabled:
        off = "not configured"
    elif lg is None:
        off = f"{cfg.offsite.url}: nothing yet"
    else:
        off = f"{cfg.offsite.url}: last good backup {'sent' if lg.uploaded or not lg.in_chain else 'NOT sent yet'}"
    return Status(
        last_id=last.id if last else None,
        last_status=last.status if last else None,
        last_started=last.started.isoformat(timespec="seconds") if last else None,
        last_error=last.error if last else "",
        last_good_id=lg.id if lg else None,
        last_good_age_hours=round(age, 2) if age is not None else None,
        alert_after_hours=alert,
        stale=age is None or age > alert,
        last_drill_at=ld.drill.at.isoformat(timespec="seconds") if ld and ld.drill else None,
        last_drill_ok=ld.drill.ok if ld and ld.drill else None,
        offsite=off,
        backups=len(good),
    )
