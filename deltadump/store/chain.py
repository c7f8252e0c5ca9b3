"""Pure rules of delta chains and retention: which objects a backup needs, when to take a new
base, and what a retention policy keeps. No I/O: the jobs carry out what these functions decide."""

from __future__ import annotations

from dataclasses import dataclass, field

from .manifest import BackupRecord, Manifest


def chain_of(m: Manifest, rec: BackupRecord) -> list[BackupRecord]:
    """[base, delta, ..., rec]: the backups whose objects reconstruct rec's dump, in patch order."""
    out = [rec]
    seen = {rec.id}
    cur = rec
    while cur.kind == "delta":
        if cur.parent is None:
            raise ValueError(f"delta backup {cur.id} names no parent")
        parent = m.by_id(cur.parent)
        if parent is None or parent.id in seen:
            raise ValueError(f"delta backup {cur.id} needs {cur.parent}, which is not recorded")
        out.append(parent)
        seen.add(parent.id)
        cur = parent
    if cur.kind != "base":
        raise ValueError(f"backup {cur.id} is not part of a delta chain")
    return list(reversed(out))


@dataclass(frozen=True)
class Basis:
    """What the next delta backup should be made against (None: take a new base)."""

    record: BackupRecord | None
    reason: str


def next_basis(m: Manifest, mode: str, rebase_ratio: float, max_chain: int) -> Basis:
    chained = [b for b in m.backups if b.in_chain and not b.pruned]
    if not chained:
        return Basis(None, "first delta backup: a new base")
    last = chained[-1]
    try:
        chain = chain_of(m, last)
    except ValueError as exc:
        return Basis(None, f"chain broken ({exc}): a new base")
    base = chain[0]
    deltas = [b for b in chained if b.base == base.id and b.kind == "delta"]
    if len(deltas) >= max_chain:
        return Basis(None, f"{len(deltas)} deltas since the base (max_chain {max_chain}): a new base")
    base_size = sum(o.size for o in base.objects) or 1
    delta_bytes = sum(o.size for b in deltas for o in b.objects)
    if delta_bytes > rebase_ratio * base_size:
        return Basis(None, f"deltas add up to {delta_bytes / base_size:.0%} of the base (rebase_ratio "
                           f"{rebase_ratio:.0%}): a new base")  # fmt: skip
    return Basis(last if mode == "incremental" else base, "delta")


@dataclass
class RetentionPlan:
    keep: dict[str, str] = field(default_factory=dict)  # id -> why
    delete: dict[str, str] = field(default_factory=dict)  # id -> why


def plan_retention(m: Manifest, daily: int, weekly: int, monthly: int) -> RetentionPlan:
    """Keep the newest good backup of each of the last `daily` days, `weekly` ISO weeks and
    `monthly` months that have one, the newest good backup always, and every backup a kept one
    needs to be reconstructed. Everything else that is good and still stored may be deleted."""
    good = sorted((b for b in m.backups if b.status == "ok" and not b.pruned), key=lambda b: b.started, reverse=True)
    plan = RetentionPlan()
    if not good:
        return plan
    plan.keep[good[0].id] = "newest good backup"

    def bucket(n: int, key: object, label: str) -> None:
        seen: list[object] = []
        for b in good:
            k = key(b)  # type: ignore[operator]
            if k in seen:
                continue
            if len(seen) >= n:
                break
            seen.append(k)
            plan.keep.setdefault(b.id, f"{label} {k}")

    bucket(daily, lambda b: b.started.date(), "daily")
    bucket(weekly, lambda b: tuple(b.started.date().isocalendar())[:2], "weekly")
    bucket(monthly, lambda b: (b.started.year, b.started.month), "monthly")
    for bid in list(plan.keep):
        rec = m.by_id(bid)
        if rec is not None and rec.kind == "delta":
            try:
                for need in chain_of(m, rec)[:-1]:
                    plan.keep.setdefault(need.id, f"needed by {bid}")
            except ValueError:
                pass
    for b in good:
        if b.id not in plan.keep:
            plan.delete[b.id] = "outside the retention policy"
    return plan
