"""Repository format v2: the immutable records and the head, as typed models with their file names.

Every name, size and number in them comes from a folder or a store we do not control: the models
validate it where it enters (paths through naming.check_relpath, ids, sizes, hashes), and a record is
only believed once its minisign signature checked (store/repository.py).

Files, relative to the repository's root (the backup folder, or the offsite prefix):
- `heads/NNNNNNNNNN.json` (+ `.minisig`): the head, the commit point. `seq` grows by one at every
  commit and never goes back; `live` lists the numbers of the live records as ranges ("1-5,8,9-21:2").
- `records/NNNNNNNN-ID.json` (+ `.minisig`): one backup (or failed run), written once, never rewritten.
  NNNNNNNN is its number: the seq of the head that committed it.
- `records/NNNNNNNN-ID.tables.json` (+ `.minisig`): its per-table drill record (read by drills only).
- `records/NNNNNNNN-ID.drill.json`, `.after.json` (+ `.minisig`): notes written later about backup ID
  (a drill result, the after-command's result); NNNNNNNN is the note's own number.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from ..errors import IntegrityError
from ..naming import check_relpath

FORMAT_VERSION: Literal[2] = 2
MAX_RECORD_BYTES = 64 << 20  # a tables attachment of a very large schema is well below this
MAX_HEAD_BYTES = 4 << 20
ID_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,63}")
REPO_RE = re.compile(r"[0-9a-f]{32}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
HEAD_NAME = re.compile(r"heads/(\d{10})\.json")
RECORD_NAME = re.compile(r"records/(\d{8,10})-([0-9A-Za-z][0-9A-Za-z_-]{0,63})(?:\.(tables|drill|after))?\.json")
NOTE_KINDS = ("drill", "after")
SIG_SUFFIX = ".minisig"
MAX_SIZE = 1 << 62
# the objects a record may name, by kind of backup: chain objects, and the offsite copies of backups
# made without delta; the slot files (rotation slots) are checked by naming.check_relpath alone
OBJECT_PREFIXES = ("chain/", "full/")
RESERVED_TOP = ("chain", "full", "heads", "records")


def _relpath(v: str) -> str:
    try:
        return check_relpath(v)
    except ValueError as exc:
        raise ValueError(str(exc)) from None


def _object_path(v: str) -> str:
    try:
        return check_relpath(v, OBJECT_PREFIXES)
    except ValueError as exc:
        raise ValueError(str(exc)) from None


def _id(v: str) -> str:
    if not ID_RE.fullmatch(v):
        raise ValueError(f"invalid backup id {v[:80]!r}")
    return v


def _dbname(v: str) -> str:
    """A database name as PostgreSQL has them (naming.dbname_problem): given to libpq and to the server as
    a value, never as a connection string."""
    from ..naming import dbname_problem

    why = dbname_problem(v)
    if why is not None:
        raise ValueError(f"invalid database name {v[:80]!r}: {why}")
    return v


def _sha(v: str) -> str:
    if not SHA256_RE.fullmatch(v):
        raise ValueError("invalid sha256")
    return v


def _repo(v: str) -> str:
    if not REPO_RE.fullmatch(v):
        raise ValueError("invalid repository id")
    return v


RelPath = Annotated[str, AfterValidator(_relpath)]
ObjectPath = Annotated[str, AfterValidator(_object_path)]
BackupId = Annotated[str, AfterValidator(_id)]
DbName = Annotated[str, AfterValidator(_dbname)]
Sha256 = Annotated[str, AfterValidator(_sha)]
RepoId = Annotated[str, AfterValidator(_repo)]
Size = Annotated[int, Field(ge=0, le=MAX_SIZE)]
Number = Annotated[int, Field(ge=1, le=9_999_999_999)]
Text = Annotated[str, Field(max_length=4000)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileRecord(_Model):
    """A stored file: a slot's file (path relative to the backup folder) or a chain/full object."""

    path: RelPath
    size: Size
    sha256: Sha256
    raw_size: Size | None = None  # objects: the decompressed size, the hard limit of decompression


class ObjectRecord(FileRecord):
    path: ObjectPath


class DirFile(_Model):
    """One file of a directory-format delta backup, kept as a chain of its own: `how` says what this
    backup stores of it. whole: `object` is the file, zstd; delta: `object` is an rdiff delta (zstd)
    from the file with the same `key` in the parent backup; same: identical to it (nothing stored)."""

    name: RelPath  # its name in the dump's folder (3345.dat, toc.dat, ...)
    key: Annotated[str, Field(min_length=1, max_length=300)]  # one table across days: "oid:16390", or "file:NAME"
    size: Size  # of the uncompressed file
    sha256: Sha256
    how: Literal["whole", "delta", "same"]
    object: ObjectRecord | None = None
    signature: ObjectRecord | None = None  # local only: the rdiff signature the next delta of this file needs


class BackupRecord(_Model):
    """One backup (status ok) or failed run (status failed), immutable once committed."""

    deltadump: Literal["record"] = "record"
    version: Literal[2] = FORMAT_VERSION
    repository: RepoId
    number: Number
    id: BackupId
    started: datetime
    finished: datetime | None = None
    status: Literal["ok", "failed"]
    path: RelPath | Literal[""] = ""  # the rotation slot, relative to the backup folder
    # "globals": pg_dumpall --globals-only (roles, memberships, tablespaces), a whole-server config's
    format: Literal["custom", "directory", "plain", "tar", "physical", "globals", ""] = ""
    compress: Annotated[int, Field(ge=0, le=9)] = 0
    size: Size = 0
    files: Annotated[list[FileRecord], Field(max_length=100_000)] = []
    database: Text = ""
    server_version: Annotated[str, Field(max_length=100)] = ""
    pg_dump_version: Annotated[str, Field(max_length=100)] = ""
    duration: Annotated[float, Field(ge=0)] = 0.0
    error: Text = ""
    # delta backups: the chain objects that reconstruct this backup's (uncompressed) dump
    kind: Literal["full", "base", "delta"] = "full"
    parent: BackupId | None = None  # the backup whose dump this delta applies to
    base: BackupId | None = None  # the base of the chain
    dump_sha256: Sha256 | Literal[""] = ""  # of the whole uncompressed dump, checked after every rebuild
    dump_size: Size = 0
    objects: Annotated[list[ObjectRecord], Field(max_length=100_000)] = []
    signature: ObjectRecord | None = None  # chain/ID.sig: rdiff signature of its dump (local only)
    dir_files: Annotated[list[DirFile], Field(max_length=1_000_000)] = []  # directory format: per-file chains
    tables: FileRecord | None = None  # the attachment records/N-ID.tables.json, when rows were counted
    after: bool = False  # an after-command was started for it; its result is an "after" note
    # whole-server configs ([database] databases): the database this backup is of (None: a single-database
    # config's backup, the dsn's database, as every record before whole-server backups); a globals backup
    # lists the databases its run backs up (the server as it was: what restore --server restores)
    db: DbName | None = None
    databases: Annotated[list[DbName], Field(max_length=100_000)] = []

    @property
    def in_chain(self) -> bool:
        return self.kind in ("base", "delta") and self.status == "ok"

    @property
    def series(self) -> str:
        """What delta chains and retention are per: one database's backups ("db:NAME"), the globals
        ("globals"), or a single-database config's ("")."""
        if self.format == "globals":
            return "globals"
        return "" if self.db is None else f"db:{self.db}"

    @property
    def file_name(self) -> str:
        return record_name(self.number, self.id)


class TablesRecord(_Model):
    """Per table: [rows, content checksum or None], seen in the dump's own snapshot."""

    deltadump: Literal["tables"] = "tables"
    version: Literal[2] = FORMAT_VERSION
    repository: RepoId
    number: Number
    id: BackupId
    tables: dict[Annotated[str, Field(max_length=1000)], tuple[Size, Annotated[str, Field(max_length=100)] | None]]


class Note(_Model):
    """A later fact about a backup: a drill result, or the after-command's result."""

    deltadump: Literal["note"] = "note"
    version: Literal[2] = FORMAT_VERSION
    repository: RepoId
    number: Number
    backup: BackupId
    kind: Literal["drill", "after"]
    at: datetime
    ok: bool
    # drill
    tables: Size = 0
    differences: Annotated[list[Text], Field(max_length=100_000)] = []
    seconds: Annotated[float, Field(ge=0)] = 0.0
    source: Annotated[str, Field(max_length=20)] = ""
    # after-command
    exit_code: int | None = None
    error: Text = ""

    @property
    def file_name(self) -> str:
        return record_name(self.number, self.backup, self.kind)


class Pending(_Model):
    """A slot switch committed but maybe not yet carried out: `tmp` becomes `slot` (for a folder, the
    old slot is first moved to `old`); the next writer completes it (roll forward)."""

    number: Number
    slot: RelPath
    tmp: RelPath
    old: RelPath | None = None


class Head(_Model):
    deltadump: Literal["head"] = "head"
    version: Literal[2] = FORMAT_VERSION
    repository: RepoId
    seq: Number
    time: datetime
    live: Annotated[str, Field(max_length=1 << 20)] = ""
    pending: Annotated[list[Pending], Field(max_length=1000)] = []
    # the %2..%9 rotation counter: distinct calendar days with a good backup, and the last of them
    success_days: Size = 0
    last_success_day: date | None = None
    # the newest commit time seen: a clock that goes back is reported, and never orders anything
    newest_time: datetime | None = None
    # the offsite copy (its name) whose head this is; absent in the backup folder's: the copies of a
    # repository share its id and records, so without it one copy's head (an old one) passed for another's
    offsite: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")] | None = None

    @property
    def file_name(self) -> str:
        return head_name(self.seq)

    def live_numbers(self) -> set[int]:
        return parse_ranges(self.live)


def head_name(seq: int) -> str:
    return f"heads/{seq:010d}.json"


def record_name(number: int, backup_id: str, kind: str | None = None) -> str:
    return f"records/{number:08d}-{backup_id}" + (f".{kind}" if kind else "") + ".json"


def format_ranges(numbers: set[int] | list[int]) -> str:
    """{1,2,3,5,7,9,12} -> "1-3,5-9:2,12": runs of a constant step (every backup commits twice, so its
    records' numbers are every other one) as start-end:step, so the live set stays small however long
    the history."""
    ns = sorted(set(numbers))
    out: list[str] = []
    i = 0
    while i < len(ns):
        j = i
        if i + 2 < len(ns):
            step = ns[i + 1] - ns[i]
            while j + 1 < len(ns) and ns[j + 1] - ns[j] == step:
                j += 1
            if j - i < 2:  # fewer than three in the run: not worth a range
                j = i
        if j == i:
            out.append(str(ns[i]))
        else:
            step = ns[i + 1] - ns[i]
            out.append(f"{ns[i]}-{ns[j]}" + (f":{step}" if step != 1 else ""))
        i = j + 1
    return ",".join(out)


def parse_ranges(text: str, limit: int = 10_000_000) -> set[int]:
    out: set[int] = set()
    if not text:
        return out
    for part in text.split(","):
        m = re.fullmatch(r"(\d{1,10})(?:-(\d{1,10})(?::(\d{1,10}))?)?", part)
        if not m:
            raise IntegrityError(f"head: invalid live range {part[:40]!r}")
        a = int(m.group(1))
        b = int(m.group(2) or a)
        step = int(m.group(3) or 1)
        if a < 1 or b < a or step < 1 or len(out) + (b - a) // step + 1 > limit:
            raise IntegrityError(f"head: invalid live range {part[:40]!r}")
        out.update(range(a, b + 1, step))
    return out


# fields added after format 2's first release, left out while they hold their default: a single-database
# config's records stay exactly as before (readable by the deltadump that wrote the folder)
OMITTED_WHEN_DEFAULT: dict[str, object] = {"db": None, "databases": []}
HEAD_OMITTED: dict[str, object] = {"offsite": None}  # the backup folder's heads stay as they were


def encode(model: BaseModel) -> bytes:
    """Canonical bytes of a record or head: what is signed and stored."""
    data = model.model_dump(mode="json")
    omitted = {BackupRecord: OMITTED_WHEN_DEFAULT, Head: HEAD_OMITTED}.get(type(model), {})
    for key, default in omitted.items():
        if data.get(key) == default:
            del data[key]
    return json.dumps(data, sort_keys=True, indent=1, ensure_ascii=False).encode() + b"\n"


def decode(data: bytes, cls: type[Any], what: str) -> Any:
    limit = MAX_HEAD_BYTES if cls is Head else MAX_RECORD_BYTES
    if len(data) > limit:
        raise IntegrityError(f"{what} is larger than any record deltadump writes ({len(data)} bytes)")
    try:
        return cls.model_validate_json(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise IntegrityError(f"{what} is invalid: {loc}: {err['msg'][:200]}") from None
