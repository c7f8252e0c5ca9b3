"""The repository format v1 (deltadump-manifest.json: one file listing every backup), read only to
migrate a backup folder or an offsite copy to format v2 (store/migrate.py). Nothing writes it any more.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import IntegrityError
from ..fsio import storage_error

MANIFEST_NAME = "deltadump-manifest.json"
MANIFEST_LOCK = "deltadump-manifest.lock"
MAX_MANIFEST_BYTES = 256 << 20  # read from a store: every backup ever made, with its tables
FORMAT_TAG = "deltadump-manifest"
VERSION = 1


class FileRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str  # relative to the backup folder, '/'-separated
    size: int
    sha256: str


class AfterRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command: str
    pid: int | None = None
    exit_code: int | None = None
    finished: datetime | None = None
    error: str = ""


class DrillRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    at: datetime
    ok: bool
    tables: int = 0
    differences: list[str] = []
    seconds: float = 0.0
    source: str = ""


class BackupRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    started: datetime
    finished: datetime | None = None
    status: Literal["ok", "failed"]
    path: str = ""  # the rotation slot, relative to the backup folder
    format: str = ""
    compress: int = 0
    size: int = 0
    files: list[FileRecord] = []
    database: str = ""
    server_version: str = ""
    pg_dump_version: str = ""
    duration: float = 0.0
    error: str = ""
    replaced_by: str | None = None  # a later backup wrote the same slot
    after: AfterRecord | None = None
    # delta backups: the chain objects that reconstruct this backup's (uncompressed) dump
    kind: Literal["full", "base", "delta"] = "full"
    parent: str | None = None  # the backup whose dump this delta applies to
    base: str | None = None  # the base of the chain
    dump_sha256: str = ""  # of the whole uncompressed dump, checked after every reconstruction
    dump_size: int = 0
    objects: list[FileRecord] = []  # chain/<id>.base.zst or chain/<id>.delta.zst (plaintext sha256)
    uploaded: int = 0  # bytes sent offsite for this backup
    # restore drills: per table [rows, content checksum or None], seen in the dump's own snapshot
    tables: dict[str, tuple[int, str | None]] = {}
    drill: DrillRecord | None = None
    pruned: bool = False  # retention removed its chain objects (here and offsite)
    offsite_pruned: bool = False  # retention removed its offsite copy (backups without delta)

    @property
    def in_chain(self) -> bool:
        return self.kind in ("base", "delta") and self.status == "ok"

    @property
    def current(self) -> bool:
        """Restorable from its slot file (the latest in its slot, not pruned)."""
        return self.status == "ok" and self.replaced_by is None and not self.pruned

    @property
    def restorable(self) -> bool:
        """Restorable from its slot file or by reconstruction from its chain."""
        return self.current or (self.in_chain and not self.pruned)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backups: list[BackupRecord] = []

    def find(self, ref: str) -> BackupRecord | None:
        """A current backup by id, 'latest', or path (relative to dest)."""
        cur = [b for b in self.backups if b.restorable]
        if ref == "latest":  # the last recorded, whatever the clock said (it may have gone back)
            return cur[-1] if cur else None
        for b in reversed(self.backups):
            if b.id == ref:
                return b
        for b in reversed(cur):
            if b.path == ref:
                return b
        return None

    def by_id(self, bid: str) -> BackupRecord | None:
        return next((b for b in self.backups if b.id == bid), None)

    def success_days(self) -> list[date]:
        return [b.started.date() for b in self.backups if b.status == "ok"]

    def add(self, rec: BackupRecord) -> None:
        if rec.status == "ok":
            for b in self.backups:
                if b.current and b.path == rec.path:
                    b.replaced_by = rec.id
        self.backups.append(rec)


def _content_digest(backups: list[dict[str, object]]) -> str:
    canon = json.dumps(backups, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canon.encode()).hexdigest()


def load(dest: Path) -> Manifest:
    p = dest / MANIFEST_NAME
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return Manifest()
    except OSError as exc:
        raise storage_error(exc, p, "reading") from exc
    return parse(raw, p)


def parse(raw: bytes, p: Path | str) -> Manifest:
    """A format 1 manifest from its bytes (`p`: where they come from, for messages), checked."""
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_TAG:
            raise ValueError("not a deltadump manifest")
        backups = doc["backups"]
        if _content_digest(backups) != doc.get("sha256"):
            raise IntegrityError(f"manifest {p} is corrupt: its checksum does not match its content")
        return Manifest.model_validate({"backups": backups})
    except IntegrityError:
        raise
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"]))
        raise IntegrityError(f"manifest {p} is corrupt or unreadable: {where}: {err['msg'][:200]}") from None
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise IntegrityError(f"manifest {p} is corrupt or unreadable: {str(exc)[:200]}") from exc
