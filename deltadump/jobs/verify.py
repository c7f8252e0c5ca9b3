"""The verify job: every file of a backup has its recorded size and sha256, and the archive is
structurally readable (pg_restore --list, or the plain dump's trailer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config
from ..errors import DeltadumpError, IntegrityError
from ..fsio import sha256_file
from ..pg.dump import validate
from ..pg.tools import find
from ..store import manifest
from ..store.manifest import BackupRecord
from .common import major_of, record_files


@dataclass
class VerifyResult:
    backup: BackupRecord
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_record(dest: Path, rec: BackupRecord, pg_bin: str = "", structure: bool = True) -> VerifyResult:
    res = VerifyResult(rec)
    for f in rec.files:
        p = dest / f.path
        if not p.exists():
            res.problems.append(f"{p}: missing")
            continue
        size, digest = sha256_file(p)
        if size != f.size:
            res.problems.append(f"{p}: size {size} bytes, recorded {f.size} (short or grown)")
        elif digest != f.sha256:
            res.problems.append(f"{p}: sha256 mismatch (content changed or corrupt)")
    slot = dest / rec.path
    if rec.format == "directory" and slot.is_dir():
        recorded = {f.path for f in rec.files}
        for extra in sorted(p for p in slot.rglob("*") if p.is_file()):
            if extra.relative_to(dest).as_posix() not in recorded:
                res.problems.append(f"{extra}: not part of the backup")
    if structure and not res.problems:
        try:
            if rec.format == "physical":
                from ..fsio import tmp_name
                from ..pg import physical

                verifier = find("pg_verifybackup", pg_bin, min_major=major_of(rec.pg_dump_version)).path
                physical.verify(verifier, slot, record_files(rec), tmp_name(dest / "verify"))
                return res
            pg_restore = find("pg_restore", pg_bin, min_major=major_of(rec.pg_dump_version)).path
            validate(pg_restore, slot, rec.format)
        except DeltadumpError as exc:
            res.problems.append(str(exc))
    return res


def resolve(m: manifest.Manifest, dest: Path | None, ref: str) -> BackupRecord | None:
    """A backup by id, 'latest', or path (relative to dest, or absolute and inside it)."""
    rec = m.find(ref)
    if rec is None and dest is not None:
        p = Path(ref)
        if p.is_absolute() and _inside(p, dest):
            rec = m.find(p.resolve().relative_to(dest.resolve()).as_posix())
    return rec


def select(m: manifest.Manifest, dest: Path, ref: str | None) -> list[BackupRecord]:
    if ref is None:
        return [b for b in m.backups if b.current]
    rec = resolve(m, dest, ref)
    if rec is None:
        raise IntegrityError(f"no backup {ref!r} is recorded in {dest / manifest.MANIFEST_NAME}")
    return [rec]


def _inside(p: Path, root: Path) -> bool:
    try:
        p.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def verify(cfg: Config, ref: str | None = None) -> list[VerifyResult]:
    dest = cfg.dest
    m = manifest.load(dest)
    return [check_record(dest, rec, cfg.database.pg_bin) for rec in select(m, dest, ref)]
