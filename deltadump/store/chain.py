"""Pure rules of delta chains: which backups' objects reconstruct a backup, and when to take a new base.
No I/O: the jobs carry out what these functions decide. A chain holds the backups of one database only
(BackupRecord.series): a whole-server config has one chain per database."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .records import BackupRecord


def chain_of(by_id: Mapping[str, BackupRecord], rec: BackupRecord) -> list[BackupRecord]:
    """[base, delta, ..., rec]: the backups whose objects reconstruct rec's dump, in patch order.
    ValueError names what is missing or inconsistent."""
    out = [rec]
    seen = {rec.id}
    cur = rec
    while cur.kind == "delta":
        if cur.parent is None:
            raise ValueError(f"delta backup {cur.id} names no parent")
        parent = by_id.get(cur.parent)
        if parent is None or parent.id in seen:
            raise ValueError(f"delta backup {cur.id} needs {cur.parent}, which is not recorded")
        if parent.number >= cur.number or not parent.in_chain or parent.series != cur.series:
            raise ValueError(f"delta backup {cur.id} names {cur.parent}, which cannot be its parent")
        out.append(parent)
        seen.add(parent.id)
        cur = parent
    if cur.kind != "base" or cur.status != "ok":
        raise ValueError(f"backup {cur.id} is not part of a delta chain")
    return list(reversed(out))


def by_series(backups: list[BackupRecord]) -> dict[str, list[BackupRecord]]:
    """The backups of each database (commit order kept): what chains and retention work on."""
    out: dict[str, list[BackupRecord]] = {}
    for b in backups:
        out.setdefault(b.series, []).append(b)
    return out


def same_series(backups: list[BackupRecord], series: str) -> list[BackupRecord]:
    """The backups a new backup of `series` may chain to."""
    return [b for b in backups if b.series == series]


@dataclass(frozen=True)
class Basis:
    """What the next delta backup should be made against (None: take a new base)."""

    record: BackupRecord | None
    reason: str


def next_basis(backups: list[BackupRecord], mode: str, rebase_ratio: float, max_chain: int) -> Basis:
    chained = [b for b in backups if b.in_chain]
    if not chained:
        return Basis(None, "first delta backup: a new base")
    last = chained[-1]
    by_id = {b.id: b for b in backups}
    try:
        chain = chain_of(by_id, last)
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
