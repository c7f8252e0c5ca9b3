"""Retention: which backups to keep and which to delete, and why. A pure function of the records; the
prune job carries out its plan (references first, data after) and `prune --dry-run` prints it.

"Newest" always means the newest by commit order (the record number), never by clock: a clock that
jumps backwards can neither make a new backup look old nor prune it.

A whole-server config's backups are planned database by database (BackupRecord.series: each database,
and the globals): one database's backups never fill another's buckets, and the newest good backup of
each is kept, also of a database that no longer exists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

from .chain import by_series, chain_of
from .records import BackupRecord


@dataclass(frozen=True)
class Policy:
    daily: int = 7
    weekly: int = 4
    monthly: int = 6
    keep_last: int = 1


@dataclass(frozen=True)
class Decision:
    number: int
    id: str
    keep: bool
    why: str


@dataclass
class Plan:
    decisions: list[Decision] = field(default_factory=list)

    @property
    def delete(self) -> list[Decision]:
        return [d for d in self.decisions if not d.keep]

    @property
    def keep(self) -> list[Decision]:
        return [d for d in self.decisions if d.keep]


def plan(backups: list[BackupRecord], policy: Policy, *, local: bool) -> Plan:
    """Decide for every live backup record (commit order). `local`: the backup folder, where a backup
    whose rotation slot still holds its dump is kept (the name template decides when it goes), and a
    backup without a chain whose slot was reused has nothing left to keep."""
    owners: dict[str, BackupRecord] = {}
    if local:
        for b in backups:
            if b.status == "ok" and b.path:
                owners[b.path] = b
    groups = by_series(backups)
    if len(groups) <= 1:
        return _plan(backups, policy, local, owners, owners)
    decided: dict[int, Decision] = {}
    for group in groups.values():
        mine = {path: b for path, b in owners.items() if b.series == group[0].series}
        for d in _plan(group, policy, local, mine, owners).decisions:
            decided[d.number] = d
    return Plan([decided[b.number] for b in backups])


def _plan(
    backups: list[BackupRecord],
    policy: Policy,
    local: bool,
    owners: dict[str, BackupRecord],
    every_owner: dict[str, BackupRecord],
) -> Plan:
    """The plan of one database's backups: `owners`, the slots that hold one of them; `every_owner`,
    which backup (of any database) each slot holds."""
    by_id = {b.id: b for b in backups}
    keep: dict[str, str] = {}
    drop: dict[str, str] = {}
    # locally, a backup without a chain whose slot was reused has nothing left to keep
    gone = {b.id for b in backups if local and b.status == "ok" and not b.in_chain and every_owner.get(b.path) is not b}
    good = [b for b in backups if b.status == "ok" and b.id not in gone]
    newest = good[-1] if good else None
    for b in backups:
        if b.status == "failed":
            if newest is not None and b.number < newest.number:
                drop[b.id] = f"failed run; backup {newest.id} succeeded after it"
            else:
                keep[b.id] = "failed run after the newest good backup (kept to tell of it)"
        elif b.id in gone:
            owner = every_owner.get(b.path)
            drop[b.id] = f"its slot {b.path} was reused by {owner.id}" if owner else "its file is gone"
    if newest is not None:
        keep[newest.id] = "newest good backup"
    newest_first = list(reversed(good))
    for b in newest_first[: max(policy.keep_last, 0)]:
        keep.setdefault(b.id, f"one of the last {policy.keep_last}")

    def bucket(n: int, key: Callable[[date], str]) -> None:
        seen: list[str] = []
        for b in newest_first:
            k = key(b.started.date())
            if k in seen:
                continue
            if len(seen) >= n:
                break
            seen.append(k)
            keep.setdefault(b.id, k)

    bucket(policy.daily, lambda d: f"daily {d.isoformat()}")
    bucket(policy.weekly, lambda d: "weekly {}-W{:02d}".format(*d.isocalendar()[:2]))
    bucket(policy.monthly, lambda d: f"monthly {d.year}-{d.month:02d}")
    for slot, b in owners.items():
        keep.setdefault(b.id, f"its dump is still in slot {slot}")
    for b in good:  # every backup a kept one needs to be rebuilt
        if b.id in keep and b.kind == "delta":
            try:
                for need in chain_of(by_id, b)[:-1]:
                    keep.setdefault(need.id, f"needed by {b.id}")
            except ValueError:
                pass  # a broken chain keeps nothing more; verify reports it
    for b in good:
        if b.id not in keep:
            drop[b.id] = "outside the retention policy"
    out = Plan()
    for b in backups:
        if b.id in keep:
            out.decisions.append(Decision(b.number, b.id, True, keep[b.id]))
        else:
            out.decisions.append(Decision(b.number, b.id, False, drop.get(b.id, "outside the retention policy")))
    return out
