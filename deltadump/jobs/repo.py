"""Opening a config's repositories (the backup folder, the offsite copy) with the right keys, and what
the backup folder needs beside its records: finding a backup's files (a slot switch may be pending),
completing interrupted switches, removing what killed runs left behind.

The signing key lives in the config's folder (`deltadump-signing.key`, 0600; its public half in
`deltadump-signing.key.pub`; or where `[backup] signing_key` says), never in the backup folder or the
offsite store, which we do not trust. The highest head sequence seen of each copy (rollback
protection) is kept beside it (`deltadump-signing.key.seen`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..clock import now
from ..config import Config
from ..errors import ConfigError, IntegrityError, StorageError, TrustError
from ..fsio import checkpoint, fsync_dir, remove_stale_temps, storage_error, unlock_close
from ..store import manifest as v1
from ..store.keys import PublicKey, SecretKey, create_secret, load_public, load_secret, pub_path
from ..store.lock import RunLock
from ..store.migrate import convert
from ..store.records import BackupRecord, FileRecord
from ..store.repository import Change, LocalMeta, Repository, SeenState, Trust, current_slots
from ..targets import Target
from .common import Reporter

MIGRATED_SUFFIX = ".v1-migrated"


def key_path(cfg: Config) -> Path:
    p = cfg.signing_key_path
    if p is None:
        raise ConfigError("no signing key: set [backup] signing_key (the config has no file to sit beside)")
    return p


def _seen(cfg: Config) -> SeenState:
    p = cfg.signing_key_path
    return SeenState(p.with_name(p.name + ".seen") if p is not None else None)


def secret_key(cfg: Config, rep: Reporter, *, create: bool) -> SecretKey:
    p = key_path(cfg)
    if not p.exists() and create:
        key = create_secret(p)
        rep.info(
            f"created the signing key {p} (0600); public key {key.public.encode()} in {pub_path(p)}. Note the "
            "public key with your recovery papers: it is what proves an offsite copy is yours"
        )
        return key
    return load_secret(p)


def public_key(cfg: Config, trust: str | None = None) -> PublicKey | None:
    """--trust KEY, else the .pub beside the signing key, else the signing key's own public half."""
    if trust:
        return load_public(trust)
    p = cfg.signing_key_path
    if p is None:
        return None
    if pub_path(p).is_file():
        try:
            return PublicKey.parse(pub_path(p).read_text())
        except OSError:
            pass
    if p.exists():
        return load_secret(p).public
    return None


def trust_for(cfg: Config, rep: Reporter, *, write: bool, trust: str | None = None, allow_older: bool = False) -> Trust:
    secret = secret_key(cfg, rep, create=True) if write else None
    public = secret.public if secret is not None and not trust else public_key(cfg, trust)
    if public is None:
        raise TrustError(
            "no public key to check the backups with: the signing key "
            f"{cfg.signing_key_path or '([backup] signing_key)'} is missing",
            hint="pass --trust with the public key noted at init (deltadump key prints it)",
        )
    if secret is not None and public != secret.public:
        raise TrustError("--trust names another key than the signing key; a backup signs with its own key")
    return Trust(public, secret, _seen(cfg), allow_older)


def open_local(
    cfg: Config, rep: Reporter, *, write: bool = False, trust: str | None = None, allow_older: bool = False
) -> Repository:
    """The backup folder's repository, loaded (migrated from format v1 on first use)."""
    dest = cfg.dest
    if not dest.is_dir():
        raise StorageError(f"backup folder {dest} does not exist", hint="is the disk or share mounted?")
    if (dest / v1.MANIFEST_NAME).exists() and not (dest / "heads").exists():
        write = True  # a v1 folder: migrate it now
    if not write and not trust and public_key(cfg) is None and not (dest / "heads").exists():
        # nothing was ever committed here and there is no key yet: an empty repository, nothing to check
        tr = Trust(SecretKey.generate().public, None, _seen(cfg), allow_older)
    else:
        tr = trust_for(cfg, rep, write=write, trust=trust, allow_older=allow_older)
    repo = Repository(LocalMeta(dest), tr, label="local")
    head = repo.load()
    if head is None and (dest / v1.MANIFEST_NAME).exists():
        with RunLock(dest, wait=True, name="deltadump-migrate.lock"):
            head = repo.load()
            if head is None and (dest / v1.MANIFEST_NAME).exists():
                migrate_local(repo, dest, rep)
    return repo


DAMAGED = "deltadump-damaged"


def open_for_backup(cfg: Config, rep: Reporter) -> tuple[Repository, list[str]]:
    """The backup folder's repository for a backup, which must run whatever state it finds: a damaged
    or refused head (or old manifest) is set aside and a new head is built from the records that
    check; a damaged record is set aside and dropped. Returns the repository and what was set aside
    (the caller reports it as a failure once the new backup is safe)."""
    dest = cfg.dest
    stamp = now().strftime("%Y%m%dT%H%M%S")
    damaged: list[str] = []

    def aside(name: str) -> None:
        src = dest / name
        dst = dest / DAMAGED / stamp / name
        dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.replace(src, dst)
            damaged.append(name)

    try:
        repo = open_local(cfg, rep, write=True)
    except (IntegrityError, TrustError) as exc:
        rep.info(
            f"the backup folder's records cannot be trusted as they are ({exc.message}); setting the damaged "
            f"files aside in {DAMAGED}/{stamp} and rebuilding the head from the records that check"
        )
        if (dest / v1.MANIFEST_NAME).exists() and not (dest / "heads").exists():
            aside(v1.MANIFEST_NAME)
        tr = trust_for(cfg, rep, write=True)
        repo = Repository(LocalMeta(dest), tr, label="local")
        repo.rebuild(aside)
    bad = []
    for n in repo.live():
        try:
            repo.record(n)
        except (IntegrityError, TrustError) as exc:
            rep.info(f"record {n} cannot be trusted ({exc.message}); setting it aside")
            name = repo.listing().main.get(n)
            if name is not None:
                aside(name)
                aside(name + ".minisig")
            bad.append(n)
    if bad:
        repo.commit(Change(drop=set(bad)))
    return repo, damaged


def migrate_local(repo: Repository, dest: Path, rep: Reporter) -> None:
    import secrets

    from ..fsio import sha256_file
    from ..store.records import ObjectRecord

    old = v1.load(dest)
    rid = secrets.token_hex(16)
    made, days, last = convert(old, rid)
    for i, obj in enumerate(made):  # the signature the next delta is made against, as format 1 left it
        sig = dest / "chain" / f"{getattr(obj, 'id', '')}.sig"
        if isinstance(obj, BackupRecord) and obj.in_chain and sig.is_file() and not sig.is_symlink():
            size, digest = sha256_file(sig)
            made[i] = obj.model_copy(update={"signature": ObjectRecord(path=f"chain/{sig.name}", size=size,
                                                                       sha256=digest)})  # fmt: skip
    repo.import_history(made, rid, days, last)
    checkpoint("migrated")
    os.replace(dest / v1.MANIFEST_NAME, dest / (v1.MANIFEST_NAME + MIGRATED_SUFFIX))
    fsync_dir(dest)
    with contextlib.suppress(FileNotFoundError):
        (dest / v1.MANIFEST_LOCK).unlink()
    rep.info(f"migrated {dest} to repository format 2: {len(repo.backups())} backup(s), signed; the old manifest is "
             f"kept as {v1.MANIFEST_NAME + MIGRATED_SUFFIX}")  # fmt: skip


# -- a backup's files in the backup folder --------------------------------------------------------------


def slot_location(repo: Repository, dest: Path, rec: BackupRecord) -> Path:
    """Where rec's slot is now: its temporary name while its committed switch is not yet carried out;
    for the backup a folder switch replaces, the name its folder was moved aside to, in the moment
    between the two renames."""
    p = repo.pending_of(rec.number)
    if p is not None and os.path.lexists(dest / p.tmp):
        return dest / p.tmp
    for q in repo.head.pending if repo.head is not None else []:
        moved_aside = q.old is not None and os.path.lexists(dest / q.old) and not os.path.lexists(dest / q.slot)
        if q.slot == rec.path and q.number != rec.number and moved_aside and q.old is not None:
            return dest / q.old
    return dest / rec.path


@dataclass
class LocalView:
    """What the backup folder holds now: which backup each rotation slot's file is, and which backups
    can be read from their slot (or the temporary name of a switch not yet carried out)."""

    backups: list[BackupRecord]
    unswitched: set[int]
    owners: dict[str, BackupRecord]

    def in_slot(self, rec: BackupRecord) -> bool:
        return rec.status == "ok" and (rec.number in self.unswitched or self.owners.get(rec.path) is rec)

    def restorable(self, rec: BackupRecord) -> bool:
        return rec.status == "ok" and (self.in_slot(rec) or rec.in_chain)


def local_view(repo: Repository, dest: Path, ring: bool = False) -> LocalView:
    """`ring`: the slots are on a share (an smb:// dest). There a committed backup owns its slot from its
    commit on (read at its local temporary name until the put to the share is done), since the put
    replaces the share's file while the temporary name still exists here."""
    backups = repo.backups()
    pending = repo.head.pending if repo.head is not None and not ring else []
    uns = {p.number for p in pending if os.path.lexists(dest / p.tmp)}
    return LocalView(backups, uns, current_slots(backups, uns))


def file_location(repo: Repository, dest: Path, rec: BackupRecord, f: FileRecord) -> Path:
    slot = slot_location(repo, dest, rec)
    if f.path == rec.path:
        return slot
    if not f.path.startswith(rec.path + "/"):
        raise IntegrityError(f"record {rec.id} names a file {f.path!r} outside its slot {rec.path!r}")
    return slot / f.path[len(rec.path) + 1 :]


def carry_out_switches(repo: Repository, dest: Path, rep: Reporter, ring: Target | None) -> None:
    """Complete every committed slot switch (the new dump at its temporary name becomes the slot; with
    `ring`, the share of an smb:// dest, it is put there), then commit that none is pending.
    Idempotent: a kill anywhere in here is completed by the next call."""
    if repo.head is None or not repo.head.pending:
        return
    with reading(dest, exclusive=True):
        _switch(repo, dest, ring)
    checkpoint("switch committed")


def _switch(repo: Repository, dest: Path, ring: Target | None = None) -> None:
    assert repo.head is not None
    done = set()
    for p in repo.head.pending:
        if ring is not None:
            from .ring import switch

            switch(ring, repo, dest, p)
            done.add(p.number)
            continue
        tmp, slot = dest / p.tmp, dest / p.slot
        old = dest / p.old if p.old else None
        try:
            if os.path.lexists(tmp):
                if tmp.is_dir() and not tmp.is_symlink():
                    if old is not None and os.path.lexists(slot) and not os.path.lexists(old):
                        checkpoint(f"rename {p.slot} aside")
                        os.replace(slot, old)
                    checkpoint(f"rename {p.tmp}")
                    os.replace(tmp, slot)
                else:
                    checkpoint(f"rename {p.tmp}")
                    os.replace(tmp, slot)
                fsync_dir(slot.parent)
            if old is not None and os.path.lexists(old):
                checkpoint(f"delete {p.old}")
                shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
        except OSError as exc:
            raise storage_error(exc, slot, "switching the rotation slot") from exc
        done.add(p.number)
    repo.commit(Change(clear_pending=done))


def tidy(repo: Repository, dest: Path, rep: Reporter, ring: Target | None) -> None:
    """What a killed run may have left: switches to complete, temporary files, records no head names.
    Run under the backup folder's run lock, before anything new is written."""
    carry_out_switches(repo, dest, rep, ring)
    keep = set()
    if repo.head is not None:
        for sw in repo.head.pending:
            keep.add(dest / sw.tmp)
            if sw.old:
                keep.add(dest / sw.old)
    for p in remove_stale_temps(dest, keep):
        rep.info(f"removed a temporary file left by an interrupted run: {p.relative_to(dest)}")
    if ring is not None:  # the share of an smb:// dest: what a put killed mid-way left there
        from .ring import clean

        for name in clean(ring):
            rep.info(f"removed an unfinished upload left by an interrupted run: {ring.describe()}/{name}")
    for name in repo.collect():
        if not name.startswith(("heads/", "records/")) or ".tmp-" in name:
            continue
        rep.info(f"removed {name}, which no head names (an interrupted commit or deletion)")


@contextlib.contextmanager
def reading(dest: Path, *, exclusive: bool = False) -> Iterator[None]:
    """The read lock: restores, drills and verify hold it shared for as long as they read a backup's
    files; a slot switch and the deletions of prune take it exclusively, so that they never remove or
    replace what a reader is reading."""
    import fcntl

    p = dest / "deltadump-read.lock"
    try:
        fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise storage_error(exc, p, "locking") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        unlock_close(fd)
