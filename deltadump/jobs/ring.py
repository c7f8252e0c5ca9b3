"""The rotation ring on a share: `[backup] dest = "smb://..."` (docs/design.md, "A rotation ring on a
share"). The share holds the rotation slots only, as a Target; everything else of the backup folder
(heads, records, locks, chain objects, work folders) stays in the local state folder, which is what
`Config.dest` names, so that every other rule is unchanged.

Writing: a dump is made, validated, fsynced and hashed at its temporary name in the state folder and
committed with its pending switch (as for a local folder); the switch is a put to the share (temporary
name there, hashed while written, then a replace), then the local temporary file goes, then the commit
that clears the switch. A kill before the put completed leaves the committed dump at its local name:
the next run puts it again. Reading: a slot whose size on the share is its record's is fetched into a
private work folder and hashed against its record before anything uses it; a switch not yet carried
out is read at its local name.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from ..config import Config
from ..errors import DeltadumpError, IntegrityError, StorageError, TargetError
from ..fsio import checkpoint, sha256_file, storage_error
from ..store.records import BackupRecord, Pending
from ..store.repository import Repository
from ..targets import Target, TargetOptions, open_target


def ring_of(cfg: Config) -> Target | None:
    """The share holding the rotation slots (None: dest is a local folder). One target (one connection,
    opened when first used, opened again after a drop) per process and share."""
    if not cfg.backup.remote:
        return None
    return _open(cfg.backup.dest, cfg.backup.target_options())


@functools.lru_cache(maxsize=8)
def _open(url: str, options: TargetOptions) -> Target:
    return open_target(url, options=options)


def ensure_state(cfg: Config) -> None:
    """The state folder of an smb:// dest exists (created 0700: it is ours, unlike a dest folder, which
    deltadump never creates). Nothing to do for a local dest."""
    if not cfg.backup.remote:
        return
    state = cfg.dest
    if state.is_symlink():
        raise StorageError(f"state folder {state} is a symbolic link; give its real path")
    try:
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(exc, state, "creating the state folder") from exc


def prepare(cfg: Config, ring: Target) -> None:
    """Before a backup writes anything: the state folder exists, and the share answers with our login (a
    wrong password, a missing share or a server down fails here, at once)."""
    ensure_state(cfg)
    try:
        ring.stat("deltadump-probe")  # a name deltadump never writes: answers None when all is well
    except TargetError as exc:
        raise TargetError(f"dest {ring.describe()} cannot be reached: {exc.message}", hint=exc.hint) from exc


def clean(ring: Target) -> list[str]:
    """Remove what puts killed mid-way left on the share (the caller holds the run lock)."""
    remove = getattr(ring, "clean_temporaries", None)
    return [str(n) for n in remove()] if remove is not None else []


def switch(ring: Target, repo: Repository, dest: Path, p: Pending) -> None:
    """Carry out one committed switch: the dump at its local temporary name goes to its slot on the
    share, then the local file goes. Idempotent (a repeated put writes the same bytes)."""
    tmp = dest / p.tmp
    if not os.path.lexists(tmp):
        return  # already on the share (a kill after the put, before the commit that says so)
    rec = repo.record(p.number)
    if not isinstance(rec, BackupRecord) or len(rec.files) != 1:
        raise IntegrityError(f"the pending switch of record {p.number} names no single-file dump")
    if tmp.is_symlink() or not tmp.is_file():
        raise IntegrityError(f"{tmp} is not the dump deltadump wrote")
    checkpoint(f"put {p.slot}")
    ring.put(p.slot, tmp, rec.files[0].sha256)
    checkpoint(f"delete {p.tmp}")
    tmp.unlink()


def fetch_slot(ring: Target, repo: Repository, dest: Path, rec: BackupRecord, work: Path) -> tuple[Path | None, str]:
    """The dump of `rec` as a local file checked against its record: at its local temporary name while
    its switch is pending, else fetched from the share into `work`. (path, '') or (None, the problem)."""
    f = rec.files[0]
    p = repo.pending_of(rec.number)
    if p is not None and os.path.lexists(dest / p.tmp):
        local = dest / p.tmp
    else:
        local = work / "slot"
        try:  # the size first: a slot grown on the share (by whoever may write there) is never downloaded
            size = ring.stat(rec.path)
            if size is not None and size != f.size:
                return None, f"{ring.describe()}/{rec.path}: size {size} bytes, recorded {f.size} (short or grown)"
            ring.get(rec.path, local, f.size)
        except TargetError as exc:
            return None, f"{ring.describe()}/{rec.path}: {exc.message}"
    try:
        size, digest = sha256_file(local)
    except OSError as exc:
        return None, f"{local}: cannot be read ({exc.strerror})"
    where = f"{ring.describe()}/{rec.path}"
    if size != f.size:
        return None, f"{where}: size {size} bytes, recorded {f.size} (short or grown)"
    if digest != f.sha256:
        return None, f"{where}: sha256 mismatch (content changed or corrupt)"
    return local, ""


def check_slot(cfg: Config, ring: Target, repo: Repository, rec: BackupRecord) -> list[str]:
    """verify's check of a slot on the share: fetched, size and sha256, then its structure."""
    from ..fsio import work_folder
    from ..pg.dump import validate
    from ..pg.tools import find
    from .common import major_of

    with work_folder(cfg.dest, "verify") as work:
        local, problem = fetch_slot(ring, repo, cfg.dest, rec, work)
        if local is None:
            return [problem]
        try:
            pg_restore = find("pg_restore", cfg.database.pg_bin, min_major=major_of(rec.pg_dump_version)).path
            validate(pg_restore, local, rec.format)
        except DeltadumpError as exc:
            return [str(exc)]
    return []
