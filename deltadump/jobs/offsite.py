"""Offsite copies: send what the offsite copy lacks (objects first, the manifest last: its upload is
the offsite commit point), fetch objects back for restores, check the remote copy, prune by the
retention policy (references before data: the new manifest goes up before objects are deleted).

Offsite layout (docs/offsite.md): deltadump-manifest.json, chain/<id>.base.zst, chain/<id>.delta.zst,
full/<id>/<file> for backups without delta; with encrypt = true every name gets ".age" and every
byte is age-encrypted to the configured recipients. RECOVERY.txt explains recovery by hand.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import ConfigError, IntegrityError, TargetError
from ..fsio import sha256_file
from ..store import manifest
from ..store.chain import chain_of, plan_retention
from ..store.manifest import BackupRecord, FileRecord, Manifest
from ..targets import Target, open_target
from .chain import Fetch
from .common import Reporter

RECOVERY = """\
deltadump offsite copy: how to recover by hand, with standard tools only
========================================================================
deltadump-manifest.json lists every backup: for each, "objects" (the files here, with the sha256 of
their plaintext), "kind" (base or delta), "parent" (the backup a delta applies to) and "dump_sha256"
(the sha256 of the uncompressed pg_dump archive it reconstructs).

If names end in .age, decrypt each first:   age -d -i key.txt -o FILE FILE.age
1. Pick a backup; follow "parent" back to its base: that is the chain, base first.
2. zstd -d chain/BASE.base.zst -o dump.0
3. For each delta in order:   zstd -d chain/ID.delta.zst -o ID.delta
                              rdiff patch dump.N ID.delta dump.N+1
   (sha256sum dump.N+1 must equal that backup's dump_sha256)
4. pg_restore --dbname=NEWDB dump.LAST      (createdb NEWDB first)
Backups without delta are under full/ID/: restore them with pg_restore (or psql for plain dumps).
"""

MANIFEST_KEY = manifest.MANIFEST_NAME


@dataclass
class SyncStats:
    uploaded: int = 0
    objects: int = 0
    per_backup: dict[str, int] = field(default_factory=dict)


def _age(cfg: Config, key: str) -> str:
    return key + ".age" if cfg.offsite.encrypt else key


def full_objects(rec: BackupRecord) -> list[FileRecord]:
    """Offsite objects of a backup without delta: its files under full/<id>/."""
    return [FileRecord(path=f"full/{rec.id}/{f.path}", size=f.size, sha256=f.sha256) for f in rec.files]


def offsite_objects(rec: BackupRecord) -> list[FileRecord]:
    return rec.objects if rec.in_chain else full_objects(rec)


def _local_source(dest: Path, rec: BackupRecord, obj: FileRecord) -> Path:
    return dest / (obj.path if rec.in_chain else obj.path.split("/", 2)[2])


class Offsite:
    def __init__(self, cfg: Config, identity: Path | None = None, target: Target | None = None) -> None:
        if not cfg.offsite_enabled:
            raise ConfigError("no [offsite] url in the config")
        self.cfg = cfg
        self.target = target or open_target(cfg.offsite.url, cfg.offsite.endpoint_url, cfg.offsite.target_options())
        self.identity = identity
        self._recipients: list[Any] | None = None
        self._identities: list[Any] | None = None

    # -- encryption ---------------------------------------------------------------------------------
    def _encrypt(self, src: Path, work: Path) -> Path:
        if not self.cfg.offsite.encrypt:
            return src
        import pyrage

        if self._recipients is None:
            try:
                self._recipients = [pyrage.x25519.Recipient.from_str(r) for r in self.cfg.offsite.recipients]
            except Exception as exc:
                raise ConfigError(f"invalid age recipient in [offsite] recipients: {exc}") from exc
        out = work / (src.name + ".age")
        pyrage.encrypt_file(str(src), str(out), self._recipients)
        return out

    def _decrypt(self, src: Path, dst: Path) -> None:
        import pyrage

        if self._identities is None:
            if self.identity is None:
                raise ConfigError("the offsite copy is encrypted: pass --identity KEYFILE (the age secret key)")
            try:
                lines = self.identity.read_text().splitlines()
                self._identities = [pyrage.x25519.Identity.from_str(ln.strip()) for ln in lines
                                    if ln.strip().startswith("AGE-SECRET-KEY-")]  # fmt: skip
            except (OSError, Exception) as exc:
                raise ConfigError(f"cannot read age identity {self.identity}: {exc}") from exc
            if not self._identities:
                raise ConfigError(f"no AGE-SECRET-KEY in {self.identity}")
        try:
            pyrage.decrypt_file(str(src), str(dst), self._identities)
        except Exception as exc:
            raise IntegrityError(f"cannot decrypt {src.name}: wrong age identity or damaged file ({exc})") from exc

    # -- sending ------------------------------------------------------------------------------------
    def sync(self, dest: Path, rep: Reporter) -> SyncStats:
        """Send every object the offsite copy lacks, then the manifest."""
        st = SyncStats()
        m = manifest.load(dest)
        have = self.target.list()
        with tempfile.TemporaryDirectory(prefix="deltadump-up-") as tmp:
            work = Path(tmp)
            for rec in m.backups:
                if rec.status != "ok" or rec.pruned or rec.offsite_pruned:
                    continue
                for obj in offsite_objects(rec):
                    key = _age(self.cfg, obj.path)
                    if key in have and (self.cfg.offsite.encrypt or have[key] == obj.size):
                        continue
                    src = _local_source(dest, rec, obj)
                    if not src.exists():
                        if rec.in_chain:
                            rep.info(f"{obj.path} is not offsite and no longer here: backup {rec.id} stays local-only")
                        continue
                    if sha256_file(src)[1] != obj.sha256:
                        raise IntegrityError(f"{src} does not match its recorded sha256; not uploading it")
                    send = self._encrypt(src, work)
                    self.target.put(key, send, sha256_file(send)[1])
                    size = send.stat().st_size
                    st.uploaded += size
                    st.objects += 1
                    st.per_backup[rec.id] = st.per_backup.get(rec.id, 0) + size
                    if send != src:
                        send.unlink()
            if st.per_backup:
                with manifest.updating(dest) as mm:
                    for b in mm.backups:
                        if b.id in st.per_backup:
                            b.uploaded += st.per_backup[b.id]
            st.uploaded += self._put_manifest(dest, work, have)
        return st

    def _put_manifest(self, dest: Path, work: Path, have: dict[str, int]) -> int:
        n = 0
        if "RECOVERY.txt" not in have:
            p = work / "RECOVERY.txt"
            p.write_text(RECOVERY)
            self.target.put("RECOVERY.txt", p, sha256_file(p)[1])
            n += p.stat().st_size
        src = dest / manifest.MANIFEST_NAME
        send = self._encrypt(src, work)
        self.target.put(_age(self.cfg, MANIFEST_KEY), send, sha256_file(send)[1])
        return n + send.stat().st_size

    # -- reading ------------------------------------------------------------------------------------
    def fetch_to(self, key: str, dst: Path) -> None:
        if self.cfg.offsite.encrypt:
            enc = dst.with_name(dst.name + ".age")
            self.target.get(key + ".age", enc)
            try:
                self._decrypt(enc, dst)
            finally:
                enc.unlink(missing_ok=True)
        else:
            self.target.get(key, dst)

    def manifest(self) -> Manifest:
        with tempfile.TemporaryDirectory(prefix="deltadump-get-") as tmp:
            p = Path(tmp) / MANIFEST_KEY
            try:
                self.fetch_to(MANIFEST_KEY, p)
            except TargetError as exc:
                raise TargetError(f"no deltadump manifest at {self.target.describe()}: {exc}") from exc
            return manifest.load(Path(tmp))

    def fetch_full(self, rec: BackupRecord, work: Path) -> Path:
        """Bring a backup made without delta (a dump, or a physical backup's files) into `work`, every
        file checked against its sha256; returns its path there."""
        for obj in offsite_objects(rec):
            local = work / obj.path
            local.parent.mkdir(parents=True, exist_ok=True)
            self.fetch_to(obj.path, local)
            if sha256_file(local)[1] != obj.sha256:
                raise IntegrityError(f"{obj.path} is corrupt offsite: sha256 mismatch")
        return work / "full" / rec.id / rec.path

    def fetcher(self) -> Fetch:
        def fetch(obj: FileRecord, scratch: Path) -> Path:
            if not self.cfg.offsite.encrypt and (p := self.target.local_path(obj.path)) is not None:
                return p  # a folder target: read in place
            self.fetch_to(obj.path, scratch)
            return scratch

        return fetch

    def verify(self, rep: Reporter) -> tuple[Manifest, dict[str, list[str]]]:
        """Every object present and with the right sha256, every chain complete: {backup id: problems}."""
        m = self.manifest()
        have = self.target.list()
        problems: dict[str, list[str]] = {}
        bad_objects: dict[str, str] = {}
        with tempfile.TemporaryDirectory(prefix="deltadump-verify-") as tmp:
            for rec in m.backups:
                if rec.status != "ok" or rec.pruned or rec.offsite_pruned:
                    continue
                for obj in offsite_objects(rec):
                    key = _age(self.cfg, obj.path)
                    if key not in have:
                        bad_objects[obj.path] = "missing"
                        continue
                    scratch = Path(tmp) / "obj"
                    try:
                        p = self.fetcher()(obj, scratch)  # a folder target's objects are hashed in place
                        if sha256_file(p)[1] != obj.sha256:
                            bad_objects[obj.path] = "sha256 mismatch"
                    except (IntegrityError, TargetError) as exc:
                        bad_objects[obj.path] = str(exc)
                    except OSError as exc:
                        bad_objects[obj.path] = f"cannot read it: {exc.strerror or exc}"
                    finally:
                        scratch.unlink(missing_ok=True)
        for rec in m.backups:
            if rec.status != "ok" or rec.pruned or rec.offsite_pruned:
                continue
            try:
                needed = chain_of(m, rec) if rec.in_chain else [rec]
            except ValueError as exc:
                problems.setdefault(rec.id, []).append(f"chain incomplete: {exc}")
                continue
            for b in needed:
                for obj in offsite_objects(b):
                    if obj.path in bad_objects:
                        problems.setdefault(rec.id, []).append(f"{obj.path}: {bad_objects[obj.path]}")
        return m, problems

    # -- retention ----------------------------------------------------------------------------------
    def publish_manifest(self, dest: Path) -> None:
        """Send the local manifest again (after retention changed it)."""
        with tempfile.TemporaryDirectory(prefix="deltadump-up-") as tmp:
            self._put_manifest(dest, Path(tmp), {"RECOVERY.txt": 0})

    def delete_objects(self, rec: BackupRecord) -> None:
        for obj in offsite_objects(rec):
            self.target.delete(_age(self.cfg, obj.path))


def apply_retention(cfg: Config, dest: Path, rep: Reporter, off: Offsite | None = None) -> dict[str, str]:
    """Carry out the retention plan, locally and (with `off`) offsite; references before data: the
    manifest (here, then offsite) marks what goes, then the objects are deleted. Without an offsite
    copy only chain objects are local work (rotation slots are the name template's business).
    Returns {backup id: why} of what was removed."""
    k = cfg.offsite.keep
    m = manifest.load(dest)
    plan = plan_retention(m, k.daily, k.weekly, k.monthly)
    doomed = [r for bid in plan.delete if (r := m.by_id(bid)) is not None and (off is not None or r.in_chain)]
    if not doomed:
        return {}
    ids = {r.id for r in doomed}
    with manifest.updating(dest) as mm:
        for b in mm.backups:
            if b.id in ids:
                if b.in_chain:
                    b.pruned = True
                else:
                    b.offsite_pruned = True
    if off is not None:
        off.publish_manifest(dest)
    for rec in doomed:
        if off is not None:
            off.delete_objects(rec)
        if rec.in_chain:
            for obj in rec.objects:
                with contextlib.suppress(FileNotFoundError):
                    (dest / obj.path).unlink()
        rep.info(f"retention: removed backup {rec.id} ({plan.delete[rec.id]})")
    return {r.id: plan.delete[r.id] for r in doomed}
