"""Offsite copies: a second repository of the same backups on a Target (a folder, S3, ...), with its own
head. After each backup, `sync` sends what the copy lacks, backup by backup and newest first (objects,
then the backup's signed records as they are), commits a new offsite head that adds the complete ones
and drops what the copy's retention lets go, then deletes the data no live record names (references
before data). A backup that can no longer be sent (its slot was reused before it got there) is
reported and skipped; nothing one backup lacks stops the others.

Offsite layout (docs/offsite.md): heads/, records/ (copied byte for byte from the backup folder,
signatures included), chain/ID.base.zst and chain/ID.delta.zst, full/ID/FILE for backups without delta,
RECOVERY.txt. With encrypt = true every name but RECOVERY.txt gets ".age" and is age-encrypted.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..config import DEFAULT_COPY, Config, OffsiteConfig
from ..errors import ConfigError, DeltadumpError, IntegrityError, TargetError, TrustError
from ..fsio import checkpoint, sha256_file, work_folder
from ..naming import check_relpath
from ..store import manifest as v1
from ..store.migrate import convert, kept
from ..store.records import HEAD_NAME, SIG_SUFFIX, BackupRecord, FileRecord, Note, record_name
from ..store.repository import Change, LocalMeta, MirroredMeta, Repository, TargetMeta
from ..store.retention import Plan, Policy, plan
from ..targets import Target, open_target, too_large
from .chain import Fetch
from .common import Reporter
from .repo import file_location, trust_for
from .ring import fetch_slot, ring_of

RECOVERY = """\
deltadump offsite copy: how to recover by hand, with standard tools only
========================================================================
If names end in .age, decrypt each file first:   age -d -i key.txt -o FILE FILE.age

heads/NNNNNNNNNN.json is the head: "live" lists the numbers of the live records as ranges:
"1-5,8,9-21:2" is 1 to 5, 8, and 9 to 21 in steps of 2 (9, 11, ..., 21).
records/NNNNNNNN-ID.json is backup ID: "objects" (the files here, with the sha256 of their plaintext),
"kind" (base, delta or full), "parent" (the backup a delta applies to), "dump_sha256" (the sha256 of
the uncompressed pg_dump archive it rebuilds). Every head and record is signed; check one with
    minisign -V -P PUBLIC_KEY -m records/NNNNNNNN-ID.json
using the public key printed by `deltadump key` on the backup host (keep it with these notes).

1. Pick a backup; follow "parent" back to its base: that is the chain, base first.
2. zstd -d chain/BASE.base.zst -o dump.0
3. For each delta in order:   zstd -d chain/ID.delta.zst -o ID.delta
                              rdiff patch dump.N ID.delta dump.N+1
   (sha256sum dump.N+1 must equal that backup's dump_sha256)
4. createdb NEWDB; pg_restore --dbname=NEWDB dump.LAST
Backups without delta are under full/ID/: restore them with pg_restore (or psql for plain dumps).
"""


@dataclass
class SyncStats:
    uploaded: int = 0
    objects: int = 0
    added: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # backup id -> why it could not be sent
    removed: dict[str, str] = field(default_factory=dict)  # backup id -> why retention let it go
    # after a backup, the total over every copy also holds each copy's own stats, and each failed
    # copy's error (a failed copy's bytes are not counted)
    copies: dict[str, SyncStats] = field(default_factory=dict)
    failed: dict[str, DeltadumpError] = field(default_factory=dict)


def _ours(key: str) -> bool:
    """A listed name deltadump could have written (anything else a store lists is left alone)."""
    try:
        check_relpath(key)
        return True
    except ValueError:
        return False


def full_objects(rec: BackupRecord) -> list[FileRecord]:
    """Offsite objects of a backup without delta: its files under full/<id>/."""
    return [FileRecord(path=check_relpath(f"full/{rec.id}/{f.path}"), size=f.size, sha256=f.sha256) for f in rec.files]


def offsite_objects(rec: BackupRecord) -> list[FileRecord]:
    return list(rec.objects) if rec.in_chain else full_objects(rec)


MIRROR = "deltadump-offsite"  # in the backup folder: this host's mirror of each copy's heads and records


def copy_label(name: str) -> str:
    """The copy's key in this host's rollback state: "offsite" for the copy named "default" (as before
    several copies existed, so that what was seen stays known), "offsite:NAME" for the others."""
    return "offsite" if name == DEFAULT_COPY else f"offsite:{name}"


def policy_of(cfg: Config, copy: OffsiteConfig) -> Policy:
    k = cfg.copy_keep(copy)
    return Policy(k.daily, k.weekly, k.monthly, k.keep_last)


class Offsite:
    """One offsite copy of a config (`copy`: its name; None: the only one): its (possibly encrypting)
    target, the copy's repository as the store holds it (`remote`: what restores read, checked against
    the trusted key), and this host's mirror of it (`mirror`, in deltadump-offsite/NAME/: what sync,
    prune and status work on, needing neither the network nor the age identity to know what was
    committed; every write goes to the mirror, then to the store)."""

    def __init__(
        self,
        cfg: Config,
        rep: Reporter,
        *,
        identity: Path | None = None,
        trust: str | None = None,
        allow_older: bool = False,
        write: bool = False,
        target: Target | None = None,
        expect: str | None = None,
        copy: str | None = None,
    ) -> None:
        if not cfg.offsite_enabled:
            raise ConfigError("no [offsite] url in the config")
        self.cfg = cfg
        self.conf = c = cfg.offsite_copy(copy)
        self.name = c.copy_name
        self.raw = target or open_target(c.url, c.endpoint_url, c.target_options())
        self.target: Target = self.raw
        if c.encrypt:
            from ..targets.age import AgeTarget

            self.target = AgeTarget(self.raw, c.recipients, identity)
        self.encrypted = c.encrypt
        self.identity = identity
        self.policy = policy_of(cfg, c)
        try:
            tr = trust_for(cfg, rep, write=write, trust=trust, allow_older=allow_older)
        except TrustError:
            if self.target.stat(v1.MANIFEST_NAME) is not None:  # no key yet: a format 1 user's first read
                raise self._format_1() from None
            raise
        label = copy_label(self.name)
        self.remote = Repository(TargetMeta(self.target), tr, label=label, expect=expect, copy=self.name)
        self.repo = self.remote  # what readers use
        self.meta = MirroredMeta(LocalMeta(cfg.dest / MIRROR / self.name, create=True), TargetMeta(self.target))
        self.mirror = Repository(self.meta, tr, label=label, expect=expect, copy=self.name)

    def describe(self) -> str:
        return self.target.describe()

    def title(self) -> str:
        """How messages name the copy: its url, and its name when the config has several."""
        return self.describe() if len(self.cfg.copies) == 1 else f"{self.name} ({self.describe()})"

    def load(self) -> Repository:
        """The offsite repository as the store holds it, checked; a copy still in format v1 is refused
        (a backup migrates it)."""
        if self.remote.load() is None and self.target.stat(v1.MANIFEST_NAME) is not None:
            raise self._format_1()
        return self.remote

    def _format_1(self) -> IntegrityError:
        return IntegrityError(
            f"the offsite copy at {self.describe()} is still in the unsigned format 1: run one backup with this "
            "version to migrate it",
            hint="the backup signs and migrates the copy, keeping every backup it holds (a new or empty backup "
            "folder adopts them from the copy)",
        )

    def _format_1_manifest(self) -> v1.Manifest | None:
        """The copy's format 1 manifest, checked like any input from the store, or None."""
        raw = self.remote.meta.read(v1.MANIFEST_NAME, v1.MAX_MANIFEST_BYTES)
        return v1.parse(raw, f"{self.describe()}/{v1.MANIFEST_NAME}") if raw is not None else None

    def migrate_format_1(self, rep: Reporter) -> None:
        """For a new backup folder (continue_repository): a copy still in format 1, and nothing newer,
        becomes a signed repository in the store (its manifest turned into records and a head, then
        removed), which the folder then continues, so that the copy's backups stay restorable; without
        this they were dropped from the copy and their objects deleted. The manifest was never signed:
        it is trusted once, here, as format 1 always trusted it, and every name and number in it is
        checked like any other input. (A folder that holds the same history was migrated from its own
        manifest, and its records are sent to the copy as usual.)"""
        if self.mirror.load() is not None or self.remote.load() is not None:
            return
        old = self._format_1_manifest()
        if old is None:
            return
        if seen := self.remote.trust.seen.of_label(self.remote.label):  # its signed heads were deleted
            raise TrustError(f"the offsite copy at {self.describe()} holds an unsigned format 1 manifest but no signed "
                             f"head, though this host has seen head {seen} there: not trusting it",
                             hint="someone replaced the copy; check the store")  # fmt: skip
        rid = secrets.token_hex(16)
        made, days, last = convert(old, rid, offsite=True)
        self.remote.import_history(made, rid, days, last)
        checkpoint("offsite format 1 migrated")
        self.target.delete(v1.MANIFEST_NAME)
        n = sum(isinstance(r, BackupRecord) for r in made)
        rep.info(f"offsite: migrated {self.describe()} from the unsigned format 1: its {n} backup(s) are now signed "
                 "records of the copy")  # fmt: skip

    def _keep_format_1(self, known: set[str]) -> None:
        """A copy that still holds a format 1 manifest keeping backups none of which this folder or the
        copy's records hold (a new folder that could not read the copy to take them over) is refused: the
        commit would drop them all and delete their objects."""
        manifest = self._format_1_manifest()
        old = {b.id for b in kept(manifest, offsite=True)} if manifest is not None else set()
        if old and old.isdisjoint(known):
            raise IntegrityError(
                f"the offsite copy at {self.describe()} still holds {len(old)} backup(s) in the unsigned format 1, "
                "none of which this backup folder holds: sending to it would drop them and delete their objects",
                hint="to keep them, back up into a new, empty backup folder (it takes them over from the copy); to "
                f"let them go, delete {v1.MANIFEST_NAME} from the copy",
            )

    def _prepare(self, rep: Reporter) -> tuple[dict[str, int], bool]:
        """The mirror, loaded and brought in line with the store: what the store missed of it is sent
        again; a store ahead of it (another writer, or a lost backup folder) is adopted when it can be
        read, refused otherwise. Returns the store's listing and whether it still holds a format 1
        manifest (removed once the copy's head is committed)."""
        have = self.target.list()
        remote_seqs = [int(m.group(1)) for k in have if k.endswith(SIG_SUFFIX)
                       and (m := HEAD_NAME.fullmatch(k.removesuffix(SIG_SUFFIX)))]  # fmt: skip
        head = self.mirror.load(fresh=True)  # a missing mirror (a new backup folder) is no attack: the store tells
        seq = head.seq if head is not None else 0
        if head is None and not remote_seqs:
            self.remote.load()  # a copy emptied by someone else is refused (when this host saw it before)
        if remote_seqs and max(remote_seqs) > seq:
            rep.info(f"offsite: the copy has head {max(remote_seqs)}, this host knew {seq}: adopting the copy's state")
            self._adopt()
            head = self.mirror.load()
            have = self.target.list()
        sent = self.meta.repair(set(have))
        if sent:
            rep.info(f"offsite: sent {len(sent)} record file(s) an interrupted run had not delivered")
            have = self.target.list()
        return have, v1.MANIFEST_NAME in have

    def _adopt(self) -> None:
        """Copy the store's newest head and its live records into the mirror, each checked first."""
        try:
            remote = self.load()
        except ConfigError as exc:
            raise ConfigError(
                f"the offsite copy at {self.describe()} is newer than this host's record of it, and it is "
                f"encrypted: {exc.message}",
                hint="run 'deltadump prune --offsite --identity KEYFILE' once to adopt it",
            ) from exc
        if remote.head is None:
            return
        for n in remote.live():
            remote.record(n)  # checked
        listing = remote.listing()
        names = [listing.main[n] for n in remote.live() if n in listing.main]
        names += [listing.tables[n] for n in remote.live() if n in listing.tables]
        names.append(remote.head.file_name)
        for name in names:
            for fname in (name, name + SIG_SUFFIX):
                data = remote.meta.read(fname, 64 << 20)
                if data is not None:
                    self.meta.mirror.write(fname, data)

    # -- sending -----------------------------------------------------------------------------------------
    def sync(self, local: Repository, dest: Path, rep: Reporter, policy: Policy) -> SyncStats:
        st = SyncStats()
        have, migrating = self._prepare(rep)
        head = self.mirror.head
        live = head.live_numbers() if head is not None else set()
        local_backups = local.backups()
        self.mirror.prime(local_backups)
        in_copy = [self.mirror.record(n) for n in sorted(live)]
        copy_backups = [r for r in in_copy if isinstance(r, BackupRecord)]
        ids = {b.id for b in copy_backups}
        if migrating:
            self._keep_format_1(ids | {b.id for b in local_backups})
        added: list[BackupRecord] = []
        for rec in reversed([b for b in local_backups if b.status == "ok" and b.id not in ids]):  # newest first
            why = self._send(rec, local, dest, have, st)
            if why:
                st.skipped[rec.id] = why
                rep.info(f"offsite: backup {rec.id} is skipped: {why}")
            else:
                added.append(rec)
                st.added.append(rec.id)
        backups = sorted(copy_backups + added, key=lambda b: b.number)
        retention = plan(backups, policy, local=False)
        drop = {d.number for d in retention.delete}
        gone = {d.id for d in retention.delete}
        drop |= {n.number for n in in_copy if isinstance(n, Note) and n.backup in gone}
        if added or drop or head is None:
            self.mirror.commit(Change(add={b.number for b in added}, drop=drop, repository=local.id))
            checkpoint("offsite head committed")
        for d in retention.delete:
            st.removed[d.id] = d.why
            rep.info(f"offsite retention: removed backup {d.id} ({d.why})")
        self.collect(rep)
        self._recovery_text()
        if migrating:
            self.target.delete(v1.MANIFEST_NAME)
            rep.info(f"offsite: migrated {self.describe()} to repository format 2 (signed)")
        return st

    def _recovery_text(self) -> None:
        """RECOVERY.txt, unsigned and read by a person: put again whenever the store holds anything else
        (a text planted or changed there could name another public key to check the records with)."""
        with tempfile.TemporaryDirectory(prefix="deltadump-up-") as tmp:
            p = Path(tmp) / "RECOVERY.txt"
            want = RECOVERY.encode()
            if self.raw.list("RECOVERY").get("RECOVERY.txt") == len(want):
                try:
                    self.raw.get("RECOVERY.txt", p, len(want))
                    if p.read_bytes() == want:
                        return
                except TargetError:
                    pass
            p.write_bytes(want)
            self.raw.put("RECOVERY.txt", p, sha256_file(p)[1])

    def _send(self, rec: BackupRecord, local: Repository, dest: Path, have: dict[str, int], st: SyncStats) -> str:
        """Send rec's objects the copy lacks, then its records; '' when done, else why not."""
        with contextlib.ExitStack() as stack:
            return self._send_in(rec, local, dest, have, st, stack)

    def _send_in(self, rec: BackupRecord, local: Repository, dest: Path, have: dict[str, int], st: SyncStats,
                 stack: contextlib.ExitStack) -> str:  # fmt: skip
        for obj in offsite_objects(rec):
            if obj.path in have and (self.encrypted or have[obj.path] == obj.size):
                continue
            if rec.in_chain:
                src = dest / obj.path
            else:
                f = next(f for f in rec.files if f"full/{rec.id}/{f.path}" == obj.path)
                src = file_location(local, dest, rec, f)
                if (ring := ring_of(self.cfg)) is not None and not os.path.lexists(src):  # its slot is on the share
                    fetched, why = fetch_slot(ring, local, dest, rec, stack.enter_context(work_folder(dest, "send")))
                    if fetched is None:
                        return f"its slot cannot be read: {why}"
                    src = fetched
            if not src.is_file() or src.is_symlink():
                return f"{obj.path} is no longer here (its slot was reused before it reached the offsite copy)"
            try:  # (read in place: a regular file no larger than recorded, never a FIFO or a sparse terabyte)
                digest = sha256_file(src, max_size=obj.size)[1]
            except IntegrityError as exc:
                return f"{exc.message} (not sent offsite)"
            if digest != obj.sha256:
                return f"{src} no longer matches its record (its slot was reused before it reached the offsite copy)"
            self.target.put(obj.path, src, obj.sha256)
            checkpoint(f"upload {obj.path}")
            size = self.target.stat(obj.path) or obj.size
            st.uploaded += size
            st.objects += 1
        names = [rec.file_name]
        if rec.tables is not None:
            names.append(record_name(rec.number, rec.id, "tables"))
        meta = LocalMeta(dest)
        for name in names:
            for n in (name, name + SIG_SUFFIX):
                data = meta.read(n, 64 << 20)
                if data is None:
                    return f"its record {n} is missing here"
                if n in have and self.meta.mirror.read(n, 64 << 20) == data:
                    continue
                self.meta.write(n, data)
                checkpoint(f"upload {n}")
                st.uploaded += len(data)
        return ""

    def collect(self, rep: Reporter) -> list[str]:
        """Delete what no live record of the copy names: objects of removed backups, objects of
        interrupted uploads, records of interrupted commits. References went first (the head)."""
        live_backups = self.mirror.backups() if self.mirror.head is not None else []
        named = {o.path for b in live_backups for o in offsite_objects(b)}
        gone = []
        for key in self.target.list():
            if key.startswith(("chain/", "full/")) and key not in named and _ours(key):
                checkpoint(f"delete {key}")
                self.target.delete(key)
                gone.append(key)
        gone += self.mirror.collect()
        clean = getattr(self.target, "clean_temporaries", None)  # what puts killed mid-way left
        if clean is not None:
            gone += clean()
        mine = set(self.meta.mirror.names("records/") + self.meta.mirror.names("heads/"))
        for key in self.target.list("records/") | self.target.list("heads/"):
            if key not in mine and _ours(key):
                self.target.delete(key)  # remote-only leftovers of an interrupted deletion
                gone.append(key)
        return gone

    # -- reading -----------------------------------------------------------------------------------------
    def fetch_to(self, key: str, dst: Path, size: int) -> None:
        """The object `key`, whose record gives its `size`: a larger one is refused before it fills the disk."""
        self.target.get(check_relpath(key, ("chain/", "full/")), dst, size)

    def fetch_full(self, rec: BackupRecord, work: Path) -> Path:
        """Bring a backup made without delta (a dump, or a physical backup's files) into `work`, every
        file checked against its sha256; returns its path there."""
        for obj in offsite_objects(rec):
            local = work / obj.path
            local.parent.mkdir(parents=True, exist_ok=True)
            self.fetch_to(obj.path, local, obj.size)
            size, digest = sha256_file(local)
            if size != obj.size or digest != obj.sha256:
                raise IntegrityError(f"{obj.path} is corrupt offsite: sha256 mismatch")
        return work / "full" / rec.id / rec.path

    def fetcher(self) -> Fetch:
        def fetch(obj: FileRecord, scratch: Path) -> Path:
            if not self.encrypted and (p := self.raw.local_path(obj.path)) is not None:
                if p.stat().st_size > obj.size:  # never hashed through to its end (a sparse terabyte, say)
                    raise too_large(f"{self.describe()}/{obj.path}", obj.size)
                return p  # a folder target: read in place
            self.fetch_to(obj.path, scratch, obj.size)
            return scratch

        return fetch

    def verify(self, rep: Reporter) -> tuple[list[BackupRecord], dict[str, list[str]]]:
        """Every object present and with the right sha256, every chain complete: {backup id: problems}."""
        from ..store.chain import chain_of

        repo = self.load()
        backups = repo.backups()
        have = self.target.list()
        problems: dict[str, list[str]] = {}
        bad: dict[str, str] = {}
        with tempfile.TemporaryDirectory(prefix="deltadump-verify-") as tmp:
            for rec in backups:
                for obj in offsite_objects(rec):
                    if obj.path not in have:
                        bad[obj.path] = "missing"
                        continue
                    scratch = Path(tmp) / "obj"
                    try:
                        p = self.fetcher()(obj, scratch)
                        size, digest = sha256_file(p, max_size=obj.size)
                        if size != obj.size or digest != obj.sha256:
                            bad[obj.path] = "sha256 mismatch"
                    except (IntegrityError, TargetError) as exc:
                        bad[obj.path] = str(exc)
                    except OSError as exc:
                        bad[obj.path] = f"cannot read it: {exc.strerror or exc}"
                    finally:
                        scratch.unlink(missing_ok=True)
        by_id = {b.id: b for b in backups}
        for rec in backups:
            try:
                needed = chain_of(by_id, rec) if rec.in_chain else [rec]
            except ValueError as exc:
                problems.setdefault(rec.id, []).append(f"chain incomplete: {exc}")
                continue
            for b in needed:
                for obj in offsite_objects(b):
                    if obj.path in bad:
                        problems.setdefault(rec.id, []).append(f"{obj.path}: {bad[obj.path]}")
        return backups, problems

    def prune(self, policy: Policy, rep: Reporter, *, dry_run: bool) -> tuple[Plan, list[BackupRecord]]:
        """The copy's retention, on this host's mirror (the store is brought in line first)."""
        self._prepare(rep)
        repo = self.mirror
        backups = repo.backups() if repo.head is not None else []
        p = plan(backups, policy, local=False)
        if dry_run or not p.delete:
            return p, backups
        gone = {d.id for d in p.delete}
        drop = {d.number for d in p.delete} | {n.number for n in repo.notes() if n.backup in gone}
        repo.commit(Change(drop=drop))
        self.collect(rep)
        return p, backups


def sync_after_backup(cfg: Config, local: Repository, rep: Reporter) -> tuple[SyncStats | None, DeltadumpError | None]:
    """The offsite step of a backup run: every copy in turn, each on its own (one that fails never
    stops the next; each failure is collected). Never raises (the backup is safe locally whatever
    happens). Returns the total (with each copy's stats and errors) and the error to report: None when
    every copy got the backup; with one copy, its own error; with several, one naming every failed copy."""
    if not cfg.offsite_enabled:
        return None, None
    total = SyncStats()
    for c in cfg.copies:
        name = c.copy_name
        try:
            st, where = _sync_one(cfg, local, rep, name)
        except DeltadumpError as exc:
            total.failed[name] = exc
            if len(cfg.copies) > 1:  # (one copy's error is the run's own, reported once at the end)
                rep.info(f"offsite copy {name}: failed: {exc.message}")
            continue
        except OSError as exc:  # reading what is to be sent
            from ..fsio import storage_error

            total.failed[name] = storage_error(exc, Path(exc.filename or cfg.dest), "sending from")
            continue
        total.copies[name] = st
        total.uploaded += st.uploaded
        total.objects += st.objects
        label = "offsite" if len(cfg.copies) == 1 else f"offsite copy {name}"
        rep.info(f"{label}: sent {st.objects} object(s), {st.uploaded / 1e6:.2f} MB to {where}")
    return total, combined_error(cfg, total.failed)


def _sync_one(cfg: Config, local: Repository, rep: Reporter, name: str) -> tuple[SyncStats, str]:
    off = Offsite(cfg, rep, write=True, expect=local.id, copy=name)
    return off.sync(local, cfg.dest, rep, off.policy), off.describe()


def combined_error(cfg: Config, failed: dict[str, DeltadumpError]) -> DeltadumpError | None:
    """What a backup reports when copies failed: with one copy configured, its own error (unchanged);
    with several, one error naming each failed copy and its cause."""
    if not failed:
        return None
    if len(cfg.copies) == 1:
        return next(iter(failed.values()))
    urls = {c.copy_name: c.url for c in cfg.copies}
    parts = [f"{name} ({urls.get(name, '')}): {exc.message}" for name, exc in failed.items()]
    ok = len(cfg.copies) - len(failed)
    return DeltadumpError(f"{len(failed)} of {len(cfg.copies)} offsite copies failed ({ok} got it): "
                          + "; ".join(parts), hint="the next backup sends each copy what it is missing")  # fmt: skip


def failure_text(cfg: Config, err: DeltadumpError) -> str:
    """The end of "backup ID is safe locally, but ...": which offsite copy failed, and why."""
    if len(cfg.copies) > 1:
        return err.message
    return f"the offsite copy failed: {err.message}"


def continue_repository(cfg: Config, rep: Reporter) -> tuple[str, int] | None:
    """A new (empty) backup folder whose offsite copies already hold a repository signed with this
    host's key (the old folder was lost or replaced): the repository to continue, from the first copy
    (in config order) that can be read and holds one, with a first number above every number any copy
    of that repository holds, so that every copy carries on. None when no copy holds one."""
    found: tuple[str, int] | None = None
    for c in cfg.copies:
        try:
            off = Offsite(cfg, rep, write=True, copy=c.copy_name)
            off.migrate_format_1(rep)
            head = off.mirror.load() or off.load().head
            if head is None:
                continue
            src = off.mirror if off.mirror.head is not None else off.remote
            top = max([head.seq, *src.live()])
        except DeltadumpError as exc:
            which = "the copy" if len(cfg.copies) == 1 else f"the copy {c.copy_name}"
            rep.info(f"offsite: could not read {which} to continue its repository ({exc.message})")
            continue
        if found is None:
            found = (head.repository, top)
        elif found[0] == head.repository:
            found = (found[0], max(found[1], top))
        else:
            rep.info(f"offsite: the copy {c.copy_name} holds another repository ({head.repository}); it will refuse "
                     "this backup folder's backups")  # fmt: skip
    return found
