"""The verify job: everything that can be restored is checked. Every rotation slot that holds a backup
(each file's size and sha256, and the archive's structure: pg_restore --list, the plain dump's trailer,
pg_verifybackup), every object of every delta chain (size and sha256, each object hashed once however
many backups need it), every chain's completeness, the signature the next delta will be made against,
and (loading them) every record's signature. With `deep`, every chained backup's dump is rebuilt and
compared with its recorded sha256. A damaged file is named with every backup that depends on it."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config
from ..errors import DeltadumpError, IntegrityError, UsageError
from ..fsio import open_regular_under, storage_error, work_folder
from ..pg.dump import validate
from ..pg.tools import find
from ..store.chain import by_series, chain_of
from ..store.records import BackupRecord, FileRecord
from ..store.repository import Repository
from ..store.resolve import resolve
from . import chain
from .common import Reporter, SilentReporter, major_of, record_files
from .repo import file_location, local_view, open_local, reading, slot_location
from .ring import check_slot as check_ring_slot
from .ring import ring_of


@dataclass
class VerifyResult:
    backup: BackupRecord
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)  # what was checked: "slot", "chain", "rebuilt"

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Report:
    results: list[VerifyResult]
    damaged: dict[str, list[str]] = field(default_factory=dict)  # file -> ids of the backups that need it

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)


def hash_fd(fd: int, limit: int | None = None, sink: Callable[[bytes], None] | None = None) -> tuple[int, str]:
    """(size, sha256) of the open file; with `limit`, reading stops past limit bytes (a file grown since
    it was checked: its size then says it). `sink` is given every byte read within the limit."""
    import hashlib

    h = hashlib.sha256()
    size = 0
    with os.fdopen(fd, "rb", closefd=False) as f:
        while chunk := f.read(4 << 20 if limit is None else min(4 << 20, limit + 1 - size)):
            h.update(chunk)
            size += len(chunk)
            if limit is not None and size > limit:
                break
            if sink is not None:
                sink(chunk)
    return size, h.hexdigest()


COPYING = "copying the backup to restore to"


def _hash_copying(fd: int, limit: int, to: Path) -> tuple[int, str]:
    """hash_fd, every byte also written to the new file `to` (its folders made); a write that fails is a
    StorageError (a full disk there, say), never taken for a problem of the file read."""
    try:
        to.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        out = open(to, "xb")  # noqa: SIM115 (closed below, its errors the copy's)
    except OSError as exc:
        raise storage_error(exc, to, COPYING) from exc

    def write(chunk: bytes) -> None:
        try:
            out.write(chunk)
            out.flush()  # (nothing is left for the close to write: a small dump too fails here)
        except OSError as exc:
            raise storage_error(exc, to, COPYING) from exc

    try:
        return hash_fd(fd, limit, write)
    finally:
        try:
            out.close()
        except OSError as exc:
            raise storage_error(exc, to, COPYING) from exc


def check_file(
    dest: Path, rel: str, want: FileRecord, *, located: Path | None = None, copy_to: Path | None = None
) -> str:
    """'' when the file under the backup folder has its recorded size and sha256, else the problem.
    With `copy_to`, the bytes checked are also copied there as they are read (a restore reads that copy,
    which only it can change)."""
    p = located or dest / rel
    try:
        fd = open_regular_under(dest, p.relative_to(dest).as_posix(), want.size)
    except FileNotFoundError:
        return f"{p}: missing"
    except IntegrityError as exc:
        return f"{p}: {exc.message}"
    except OSError as exc:
        if exc.errno == 40:
            return f"{p}: a symbolic link (deltadump never writes one)"
        return f"{p}: cannot be read ({exc.strerror})"
    try:
        size, digest = hash_fd(fd, want.size) if copy_to is None else _hash_copying(fd, want.size, copy_to)
    except OSError as exc:  # (reading it: the copy's own errors are StorageError)
        return f"{p}: cannot be read ({exc.strerror})"
    finally:
        os.close(fd)
    if size != want.size:
        return f"{p}: size {size} bytes, recorded {want.size} (short or grown)"
    if digest != want.sha256:
        return f"{p}: sha256 mismatch (content changed or corrupt)"
    return ""


def check_slot(repo: Repository, dest: Path, rec: BackupRecord, pg_bin: str = "", structure: bool = True) -> list[str]:
    """Problems of a backup's slot files (its size, sha256 and structure)."""
    problems = []
    for f in rec.files:
        problem = check_file(dest, f.path, f, located=file_location(repo, dest, rec, f))
        if problem:
            problems.append(problem)
    slot = slot_location(repo, dest, rec)
    if rec.format in ("directory", "physical") and slot.is_dir():
        recorded = {file_location(repo, dest, rec, f) for f in rec.files}
        for extra in sorted(p for p in slot.rglob("*") if p.is_file() or p.is_symlink()):
            if extra not in recorded:
                problems.append(f"{extra}: not part of the backup")
    if structure and not problems:
        try:
            if rec.format == "physical":
                from ..pg import physical

                verifier = find("pg_verifybackup", pg_bin, min_major=major_of(rec.pg_dump_version)).path
                with work_folder(dest, "verify") as scratch:
                    physical.verify(verifier, slot, record_files(rec), scratch / "v")
            else:
                pg_restore = find("pg_restore", pg_bin, min_major=major_of(rec.pg_dump_version)).path
                validate(pg_restore, slot, rec.format)
        except DeltadumpError as exc:
            problems.append(str(exc))
    return problems


def verify(
    cfg: Config, ref: str | None = None, *, deep: bool = False, reporter: Reporter | None = None,
    of_db: str | None = None,
) -> Report:  # fmt: skip
    """`of_db`: one database's backups only (a whole-server config's)."""
    rep = reporter or SilentReporter()
    dest = cfg.dest
    repo = open_local(cfg, rep)
    view = local_view(repo, dest, cfg.backup.remote)
    backups = view.backups
    repo.notes()  # every live record is read, so its signature is checked too
    by_id = {b.id: b for b in backups}
    restorable = view.restorable

    if ref is None:
        selected = [b for b in backups if restorable(b) and (of_db is None or b.series == f"db:{of_db}")]
        if of_db is not None and not any(b.series == f"db:{of_db}" for b in backups):
            raise UsageError(f"no backup of database {of_db!r} is recorded in {dest}")
    else:
        one = resolve(backups, ref, restorable=restorable, dest=dest, db=of_db)
        if one is None:
            raise IntegrityError(f"no backup {ref!r} is recorded in {dest}")
        selected = [one]
    report = Report([])
    object_problem: dict[str, str] = {}  # each object hashed once

    def obj(o: FileRecord) -> str:
        if o.path not in object_problem:
            object_problem[o.path] = check_file(dest, o.path, o)
        return object_problem[o.path]

    with reading(dest):
        for rec in selected:
            res = VerifyResult(rec)
            if rec.status != "ok":
                res.problems.append(f"run failed: {rec.error}")
                report.results.append(res)
                continue
            if rec.tables is not None:
                try:
                    repo.tables(rec)  # the drill record: its hash, as the backup's record names it
                except DeltadumpError as exc:
                    res.problems.append(str(exc))
            if view.in_slot(rec):
                res.checked.append("slot")
                if (ring := ring_of(cfg)) is not None:  # the slot is on the share
                    res.problems += check_ring_slot(cfg, ring, repo, rec)
                else:
                    res.problems += check_slot(repo, dest, rec, cfg.database.pg_bin)
            if rec.in_chain:
                res.checked.append("chain")
                try:
                    needed = chain_of(by_id, rec)
                except ValueError as exc:
                    res.problems.append(f"chain incomplete: {exc}")
                    needed = []
                for b in needed:
                    for o in b.objects:
                        if problem := obj(o):
                            res.problems.append(problem)
                            report.damaged.setdefault(o.path, []).append(rec.id)
                if deep and needed and not res.problems:
                    res.checked.append("rebuilt")
                    try:
                        with work_folder(dest, "verify") as work:
                            chain.reconstruct(backups, rec, chain.local_fetch(dest), work, rep)
                    except DeltadumpError as exc:
                        res.problems.append(f"rebuilding the dump failed: {exc}")
            if not res.checked:
                res.problems.append(f"not restorable here: its slot {rec.path} was reused and it is in no chain")
            report.results.append(res)
        if ref is None and cfg.delta.enabled:  # the signatures each chain's next delta will be made against
            for group in by_series(backups).values():
                for path, (sig, of) in chain.needed_signatures(group, cfg.delta.mode).items():
                    if problem := check_file(dest, path, sig):
                        report.damaged[path] = []
                        res = VerifyResult(by_id[of], [f"{problem} (the next delta will start anew)"], ["signature"])
                        report.results.append(res)
    for r in report.results:
        for p in r.problems:
            for path in list(report.damaged):
                if path in p and r.backup.id not in report.damaged[path]:
                    report.damaged[path].append(r.backup.id)
    return report
