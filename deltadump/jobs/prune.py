"""Retention as its own use case: the store's plan (store/retention.py), carried out here, in the
backup folder or the offsite copy. References before data: one commit drops every deleted backup's
records (and the notes about them) from the head, then the data no live record names is removed.
`prune --dry-run` prints the same plan and deletes nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config
from ..fsio import checkpoint
from ..store.records import BackupRecord
from ..store.repository import Change, Repository
from ..store.retention import Plan, Policy, plan
from .chain import collect_objects
from .common import Reporter, SilentReporter
from .repo import open_local, reading, tidy
from .ring import ring_of


def policy_of(cfg: Config) -> Policy:
    k = cfg.keep
    return Policy(k.daily, k.weekly, k.monthly, k.keep_last)


def carry_out(repo: Repository, backups: list[BackupRecord], p: Plan) -> None:
    gone = {d.id for d in p.delete}
    if not gone:
        return
    drop = {d.number for d in p.delete} | {n.number for n in repo.notes() if n.backup in gone}
    repo.commit(Change(drop=drop))
    checkpoint("prune committed")


def prune_local(cfg: Config, repo: Repository, policy: Policy, rep: Reporter, *, dry_run: bool = False) -> Plan:
    """Retention in the backup folder (the caller holds the run lock)."""
    backups = repo.backups()
    p = plan(backups, policy, local=True)
    if not dry_run:
        carry_out(repo, backups, p)
        with reading(cfg.dest, exclusive=True):  # never under a restore that reads these objects
            collect_objects(cfg.dest, repo.backups(), cfg.delta.mode, rep)
            repo.collect()
        for d in p.delete:
            rep.info(f"retention: removed backup {d.id} ({d.why})")
    return p


@dataclass
class PruneResult:
    where: str
    plan: Plan
    backups: dict[str, BackupRecord] = field(default_factory=dict)


def prune(
    cfg: Config, *, dry_run: bool = False, offsite: bool = False, reporter: Reporter | None = None,
    identity: Path | None = None, copy: str | None = None,
) -> PruneResult:  # fmt: skip
    """`deltadump prune`: the plan for every backup (keep or delete, and why); carried out unless dry_run.
    `offsite`: the offsite copy named `copy` (None: the only one), with that copy's retention."""
    from ..store.lock import RunLock

    rep = reporter or SilentReporter()
    pol = policy_of(cfg)
    with RunLock(cfg.dest, wait=True):
        local = open_local(cfg, rep, write=not dry_run)
        if not dry_run:
            tidy(local, cfg.dest, rep, ring_of(cfg))  # a switch an interrupted run left is completed first
        if offsite:
            from .offsite import Offsite

            off = Offsite(cfg, rep, write=not dry_run, expect=local.id, identity=identity, copy=copy)
            p, backups = off.prune(off.policy, rep, dry_run=dry_run)
            return PruneResult(off.title(), p, {b.id: b for b in backups})
        backups = local.backups()
        p = prune_local(cfg, local, pol, rep, dry_run=dry_run)
        return PruneResult(str(cfg.dest), p, {b.id: b for b in backups})
