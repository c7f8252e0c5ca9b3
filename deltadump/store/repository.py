"""A repository: signed, immutable records and a head that commits them, over any storage (the local
backup folder, or an offsite Target). Opened once per command; every job works through it.

Ordering (see docs/design.md): the files a commit adds (records, their attachments) are written first,
each with its signature; then the head `heads/SEQ.json`, then its signature: the signature's arrival is
the commit point (a head without one is an interrupted commit and is ignored). Deleting goes the other
way: a head without the records goes first, the files after (gc). Readers believe nothing unsigned:
every head and record is checked against the trusted public key, the head's repository id, its
sequence number (never below one already seen: rollback), and every name it leads to.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import tempfile
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Protocol

from ..clock import now
from ..errors import IntegrityError, StorageError, TargetError, TrustError
from ..fsio import TMP_PREFIX, fsync_dir, make_dirs, storage_error, unlock_close, write_bytes_atomic
from ..naming import check_relpath
from ..targets import ObjectTooLarge, Target
from .keys import PublicKey, SecretKey
from .records import (
    HEAD_NAME,
    MAX_HEAD_BYTES,
    MAX_RECORD_BYTES,
    RECORD_NAME,
    SIG_SUFFIX,
    BackupRecord,
    FileRecord,
    Head,
    Note,
    Pending,
    TablesRecord,
    decode,
    encode,
    format_ranges,
    head_name,
    record_name,
)

HEAD_LOCK = "deltadump-head.lock"


# -- where the files live --------------------------------------------------------------------------


class MetaStore(Protocol):
    """Small whole files of a repository under relative names (`heads/...`, `records/...`)."""

    def read(self, name: str, limit: int) -> bytes | None:
        """The file's bytes, None when missing; IntegrityError when larger than `limit`."""

    def write(self, name: str, data: bytes) -> None:
        """All or nothing, durable."""

    def names(self, prefix: str) -> list[str]:
        """Every file name under `prefix` (a folder name ending in '/')."""

    def delete(self, name: str) -> None: ...

    def commit_lock(self) -> contextlib.AbstractContextManager[None]:
        """Serialises commits (a short lock)."""

    def describe(self) -> str: ...


class LocalMeta:
    """The backup folder. Never follows a symlink: the folder may be a share others can write to."""

    def __init__(self, root: Path, *, create: bool = False) -> None:
        self.root = root
        self.create = create  # a folder of ours inside the backup folder (the offsite mirror), made when needed

    def describe(self) -> str:
        return str(self.root)

    def _dir(self, name: str) -> Path:
        parent = (self.root / name).parent
        if parent != self.root and parent.is_symlink():
            raise IntegrityError(f"{parent} is a symbolic link; deltadump's own folders never are")
        return parent

    def read(self, name: str, limit: int) -> bytes | None:
        check_relpath(name)
        p = self.root / name
        self._dir(name)
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == 40:  # ELOOP: a symlink
                raise IntegrityError(f"{p} is a symbolic link; deltadump never writes one") from None
            raise storage_error(exc, p, "reading") from exc
        with os.fdopen(fd, "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise IntegrityError(f"{p} is larger than any file of its kind deltadump writes")
        return data

    def write(self, name: str, data: bytes) -> None:
        check_relpath(name)
        parent = self._dir(name)
        if self.create and not self.root.exists():
            try:
                make_dirs(self.root)
            except OSError as exc:
                raise storage_error(exc, self.root, "creating") from exc
        if not parent.exists():
            try:
                parent.mkdir(mode=0o700)
            except FileExistsError:
                pass
            except OSError as exc:
                raise storage_error(exc, parent, "creating") from exc
            fsync_dir(parent.parent)
        write_bytes_atomic(self.root / name, data)

    def names(self, prefix: str) -> list[str]:
        d = self.root / prefix.rstrip("/")
        if d.is_symlink():
            raise IntegrityError(f"{d} is a symbolic link; deltadump's own folders never are")
        try:
            entries = list(os.scandir(d))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise storage_error(exc, d, "listing") from exc
        return [f"{prefix}{e.name}" for e in entries if e.is_file(follow_symlinks=False)]

    def delete(self, name: str) -> None:
        check_relpath(name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.root / name)

    @contextlib.contextmanager
    def commit_lock(self) -> Iterator[None]:
        p = self.root / HEAD_LOCK
        if self.create:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise storage_error(exc, p, "locking") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            unlock_close(fd)


class TargetMeta:
    """An offsite copy: the same files, through a Target (which may encrypt). The caller holds the local
    run lock, so commits to it never overlap."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def describe(self) -> str:
        return self.target.describe()

    def read(self, name: str, limit: int) -> bytes | None:
        check_relpath(name)
        with tempfile.TemporaryDirectory(prefix="deltadump-meta-") as tmp:
            dst = Path(tmp) / "f"
            try:
                self.target.get(name, dst, limit)
            except ObjectTooLarge:
                raise IntegrityError(f"{name} at {self.describe()} is larger than any file of its kind") from None
            except TargetError as exc:
                if self.target.stat(name) is None:
                    return None
                raise exc
            return dst.read_bytes()

    def write(self, name: str, data: bytes) -> None:
        import hashlib

        check_relpath(name)
        with tempfile.TemporaryDirectory(prefix="deltadump-meta-") as tmp:
            src = Path(tmp) / "f"
            src.write_bytes(data)
            self.target.put(name, src, hashlib.sha256(data).hexdigest())

    def names(self, prefix: str) -> list[str]:
        return sorted(self.target.list(prefix))

    def delete(self, name: str) -> None:
        check_relpath(name)
        self.target.delete(name)

    @contextlib.contextmanager
    def commit_lock(self) -> Iterator[None]:
        yield


class MirroredMeta:
    """A remote copy written through a local mirror of its metadata: reads and listings come from the
    mirror (so that the backup host needs neither the network nor the age identity to know what it
    committed to the copy); every write goes to the mirror first, then to the remote. A write the
    remote missed (a kill, an outage) is sent again by `repair` before anything new is committed."""

    def __init__(self, mirror: LocalMeta, remote: MetaStore) -> None:
        self.mirror = mirror
        self.remote = remote

    def describe(self) -> str:
        return self.remote.describe()

    def read(self, name: str, limit: int) -> bytes | None:
        return self.mirror.read(name, limit)

    def write(self, name: str, data: bytes) -> None:
        self.mirror.write(name, data)
        self.remote.write(name, data)

    def names(self, prefix: str) -> list[str]:
        return self.mirror.names(prefix)

    def delete(self, name: str) -> None:
        self.remote.delete(name)
        self.mirror.delete(name)

    def commit_lock(self) -> contextlib.AbstractContextManager[None]:
        return self.mirror.commit_lock()

    def repair(self, remote_names: set[str]) -> list[str]:
        """Send what the remote lacks of the mirror's records and newest head (records before the head).
        Returns what was sent."""
        sent = []
        heads = sorted(n for n in self.mirror.names("heads/") if HEAD_NAME.fullmatch(n.removesuffix(SIG_SUFFIX)))
        for name in sorted(self.mirror.names("records/")) + heads:
            if name not in remote_names and not Path(name).name.startswith(TMP_PREFIX):
                data = self.mirror.read(name, MAX_RECORD_BYTES)
                if data is not None:
                    self.remote.write(name, data)
                    sent.append(name)
        return sent


# -- trust ---------------------------------------------------------------------------------------------


class SeenState:
    """The highest head sequence seen per repository and copy (rollback protection). Kept beside the
    signing key, outside the backup folder and the offsite store, which we do not trust."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def _load(self) -> dict[str, int]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text())
            return {str(k): int(v) for k, v in data.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, AttributeError):
            return {}

    def get(self, key: str) -> int:
        return self._load().get(key, 0)

    @staticmethod
    def key(repo: str, label: str) -> str:
        """Where the state of repository `repo` seen as `label` (local, a copy) is kept (repository ids
        are hex: the first ':' ends them)."""
        return f"{repo}:{label}"

    def of_label(self, label: str) -> int:
        """The highest head seen of any repository under `label` (0: this host never saw one)."""
        return max((v for k, v in self._load().items() if k.partition(":")[2] == label), default=0)

    def update(self, key: str, seq: int) -> None:
        if self.path is None:
            return
        data = self._load()
        if data.get(key, 0) >= seq:
            return
        data[key] = seq
        with contextlib.suppress(OSError, StorageError):  # a reader without write access still reads
            write_bytes_atomic(self.path, json.dumps(data, sort_keys=True).encode())


@dataclass
class Trust:
    public: PublicKey
    secret: SecretKey | None = None  # needed to commit
    seen: SeenState = field(default_factory=lambda: SeenState(None))
    allow_older: bool = False


# -- the repository ------------------------------------------------------------------------------------


@dataclass
class Change:
    """What one commit does. `make(number)` builds the files it adds (the number is the new head's seq,
    known only under the commit lock); `drop` removes live numbers; the rest adjusts the head."""

    make: Callable[[int], list[BackupRecord | TablesRecord | Note]] = lambda n: []
    add: set[int] = field(default_factory=set)  # records already stored (copied from another repository)
    drop: set[int] = field(default_factory=set)
    pending: Callable[[int], Pending] | None = None
    clear_pending: set[int] = field(default_factory=set)
    success_day: date | None = None
    repository: str | None = None  # a new repository's id (first commit, migration)
    after: int = 0  # a new repository's first number is above this (one that continues an offsite copy)


@dataclass
class Listing:
    """The record files present, by number: the main one (backup or note) and attachments."""

    main: dict[int, str] = field(default_factory=dict)
    tables: dict[int, str] = field(default_factory=dict)
    stray: list[str] = field(default_factory=list)  # names that are not ours

    @classmethod
    def of(cls, names: list[str]) -> Listing:
        out = cls()
        for name in names:
            base = name.removesuffix(SIG_SUFFIX)
            m = RECORD_NAME.fullmatch(base)
            if m is None:
                out.stray.append(name)
                continue
            if name.endswith(SIG_SUFFIX):
                continue
            n = int(m.group(1))
            if m.group(3) == "tables":
                out.tables[n] = base
            elif n in out.main and out.main[n] != base:
                out.stray.append(name)  # two records claim one number: neither is believed blindly
            else:
                out.main[n] = base
        return out


class Repository:
    def __init__(
        self, meta: MetaStore, trust: Trust, *, label: str, expect: str | None = None, copy: str | None = None
    ) -> None:
        self.meta = meta
        self.trust = trust
        self.label = label  # "local", "offsite", "offsite:NAME": the key of the rollback state
        self.expect = expect  # the repository id it must have, when known
        self.copy = copy  # the offsite copy's name (its heads say it); None: the backup folder
        self.head: Head | None = None
        self._cache: dict[int, BackupRecord | Note] = {}
        self._listing: Listing | None = None

    def describe(self) -> str:
        return self.meta.describe()

    # -- reading ---------------------------------------------------------------------------------------
    def load(self, *, fresh: bool = False) -> Head | None:
        """Read and check the newest committed head (None: an empty repository)."""
        self.head = self._read_head(fresh=fresh)
        self._keep_cached()
        self._listing = None
        return self.head

    def _keep_cached(self) -> None:
        """After a new head: keep the checked records it still lists. A record is immutable once
        committed and its number is never given to another record of the repository, so a live number
        read before is the same record now; anything else (another repository, a dropped number) goes."""
        live = self.head.live_numbers() if self.head is not None else set()
        repo = self.head.repository if self.head is not None else None
        self._cache = {n: r for n, r in self._cache.items() if n in live and r.repository == repo}

    refresh = load

    @property
    def id(self) -> str | None:
        return self.head.repository if self.head is not None else self.expect

    def _seen_key(self, repo: str) -> str:
        return SeenState.key(repo, self.label)

    def _read_head(self, *, fresh: bool = False) -> Head | None:
        """`fresh`: an empty repository is expected even if this one was seen before (a lost backup
        folder that a new one continues)."""
        names = set(self.meta.names("heads/"))
        committed = []
        for n in names:
            m = HEAD_NAME.fullmatch(n)
            if m and n + SIG_SUFFIX in names:
                committed.append(int(m.group(1)))
        where = self.describe()
        if not committed:
            if self.expect is not None and not self.trust.allow_older and not fresh:
                seen = self.trust.seen.get(self._seen_key(self.expect))
                if seen:
                    raise TrustError(f"{where} has no head, but head {seen} of this repository was seen before "
                                     "(deleted or rolled back)")  # fmt: skip
            return None
        seq = max(committed)
        name = head_name(seq)
        what = f"head {seq} of {where}"
        data = self.meta.read(name, MAX_HEAD_BYTES)
        sig = self.meta.read(name + SIG_SUFFIX, 8192)
        if data is None or sig is None:
            raise IntegrityError(f"{what} vanished while it was read")
        self.trust.public.verify(data, sig, what)
        head: Head = decode(data, Head, what)
        if head.seq != seq:
            raise TrustError(f"{what} says it is head {head.seq}")
        if self.expect is not None and head.repository != self.expect:
            raise TrustError(f"{what} belongs to another repository ({head.repository}, not {self.expect})")
        seen = self.trust.seen.get(self._seen_key(head.repository))
        if seq < seen and not self.trust.allow_older:
            raise TrustError(
                f"{what} is older than head {seen}, seen before: the copy was rolled back",
                hint="if you restored this copy on purpose, pass --allow-older",
            )
        self._check_copy(head, what)
        self.trust.seen.update(self._seen_key(head.repository), seq)
        return head

    def _named_key(self, repo: str) -> str:
        """Where this host notes that it has seen this copy's heads name it (a head of another name, or
        of none, is then another copy's or the backup folder's)."""
        return self._seen_key(repo) + "/named"

    def _check_copy(self, head: Head, what: str) -> None:
        """The head is this store's own: the copies of a repository (and the backup folder) share its id
        and its records, so another copy's head, an old one kept, was taken for this copy's newest and
        `latest` was an older backup. A head names its copy; the backup folder's names none. Heads
        without a name (written before heads named their copy) or of another name (a renamed copy) are
        believed only while this host has never seen this copy's heads carry its name."""
        if head.offsite == self.copy:
            if self.copy is not None:
                self.trust.seen.update(self._named_key(head.repository), 1)
            return
        whose = f"the offsite copy {head.offsite}'s" if head.offsite is not None else "the backup folder's"
        if self.copy is None:
            raise TrustError(f"{what} is {whose} head, not this backup folder's")
        if self.trust.seen.get(self._named_key(head.repository)) and not self.trust.allow_older:
            old = " or of an earlier version" if head.offsite is None else ""
            raise TrustError(f"{what} is {whose} head{old}, not this copy's ({self.copy}): put there from elsewhere",
                             hint="someone copied another store's head into this one; check the store")  # fmt: skip

    def listing(self) -> Listing:
        if self._listing is None:
            self._listing = Listing.of(self.meta.names("records/"))
        return self._listing

    def live(self) -> list[int]:
        return sorted(self.head.live_numbers()) if self.head is not None else []

    def _read_signed(self, name: str, cls: type[Any], number: int) -> Any:
        what = f"record {name} of {self.describe()}"
        data = self.meta.read(name, MAX_RECORD_BYTES)
        sig = self.meta.read(name + SIG_SUFFIX, 8192)
        if data is None:
            raise IntegrityError(f"{what} is missing (live in head {self.head.seq if self.head else 0})")
        if sig is None:
            raise TrustError(f"{what} has no signature")
        self.trust.public.verify(data, sig, what)
        obj = decode(data, cls, what)
        if obj.repository != self.id:
            raise TrustError(f"{what} belongs to another repository ({obj.repository})")
        if obj.number != number:
            raise TrustError(f"{what} says it is record {obj.number}")
        return obj

    def record(self, number: int) -> BackupRecord | Note:
        """A live record, checked."""
        if number in self._cache:
            return self._cache[number]
        name = self.listing().main.get(number)
        if name is None:
            raise IntegrityError(
                f"record {number} of {self.describe()} is missing (live in head {self.head.seq if self.head else 0})"
            )
        cls = Note if name.endswith((".drill.json", ".after.json")) else BackupRecord
        obj: BackupRecord | Note = self._read_signed(name, cls, number)
        if obj.file_name != name:
            raise TrustError(f"record {name} of {self.describe()} is stored under another record's name")
        self._cache[number] = obj
        return obj

    def prime(self, records: Sequence[BackupRecord | Note]) -> None:
        """Use already checked records of the same repository instead of reading them again (a record's
        number and repository name it once and for all: two signed records never share them)."""
        for r in records:
            if r.repository == self.id:
                self._cache.setdefault(r.number, r)

    def backups(self) -> list[BackupRecord]:
        """Every live backup record (ok and failed), in commit order."""
        return [r for n in self.live() if isinstance(r := self.record(n), BackupRecord)]

    def notes(self) -> list[Note]:
        return [r for n in self.live() if isinstance(r := self.record(n), Note)]

    def tables(self, rec: BackupRecord) -> dict[str, tuple[int, str | None]]:
        """The drill record of a backup (its attachment), checked against the hash the record names."""
        if rec.tables is None:
            return {}
        import hashlib

        name = record_name(rec.number, rec.id, "tables")
        what = f"record {name} of {self.describe()}"
        data = self.meta.read(name, MAX_RECORD_BYTES)
        if data is None:
            raise IntegrityError(f"{what} is missing")
        if len(data) != rec.tables.size or hashlib.sha256(data).hexdigest() != rec.tables.sha256:
            raise IntegrityError(f"{what} does not match the hash its backup record names")
        sig = self.meta.read(name + SIG_SUFFIX, 8192)
        if sig is None:
            raise TrustError(f"{what} has no signature")
        self.trust.public.verify(data, sig, what)  # as an admin's minisign -V would
        t: TablesRecord = decode(data, TablesRecord, what)
        if t.id != rec.id or t.number != rec.number or t.repository != rec.repository:
            raise TrustError(f"{what} belongs to another backup")
        return dict(t.tables)

    def by_id(self, backup_id: str) -> BackupRecord | None:
        return next((b for b in self.backups() if b.id == backup_id), None)

    # -- writing ---------------------------------------------------------------------------------------
    def _write_signed(self, name: str, data: bytes, comment: str) -> None:
        if self.trust.secret is None:
            raise TrustError("this repository cannot be written without its signing key")
        self.meta.write(name, data)
        self.meta.write(name + SIG_SUFFIX, self.trust.secret.sign(data, comment))

    def _write_records(self, made: list[BackupRecord | TablesRecord | Note]) -> None:
        """Attachments first (a backup record names their hash), then the records, each signed."""
        import hashlib

        attached: dict[tuple[int, str], FileRecord] = {}
        for obj in made:
            if isinstance(obj, TablesRecord):
                name = record_name(obj.number, obj.id, "tables")
                data = encode(obj)
                self._write_signed(name, data, f"deltadump {name} repository={obj.repository}")
                attached[(obj.number, obj.id)] = FileRecord(path=name, size=len(data),
                                                            sha256=hashlib.sha256(data).hexdigest())  # fmt: skip
        for obj in made:
            if isinstance(obj, TablesRecord):
                continue
            if isinstance(obj, BackupRecord):
                obj = obj.model_copy(update={"tables": attached.get((obj.number, obj.id), obj.tables)})
            self._write_signed(obj.file_name, encode(obj), f"deltadump {obj.file_name} repository={obj.repository}")

    def _commit_head(self, head: Head) -> Head:
        """Write a head and its signature (the commit point), and remember its sequence as seen."""
        name = head_name(head.seq)
        head = head.model_copy(update={"offsite": self.copy})
        self._write_signed(name, encode(head), f"deltadump {name} repository={head.repository} seq={head.seq}")
        self.trust.seen.update(self._seen_key(head.repository), head.seq)
        if self.copy is not None:
            self.trust.seen.update(self._named_key(head.repository), 1)
        self.head = head
        self._keep_cached()
        self._listing = None
        return head

    def import_history(
        self, made: list[BackupRecord | TablesRecord | Note], repository: str, success_days: int, last_day: date | None
    ) -> Head:
        """The first commit of a migrated repository: records already numbered 1..n, one head n."""
        with self.meta.commit_lock():
            if self._read_head() is not None:
                raise IntegrityError(f"{self.describe()} already has a head; not migrating over it")
            self.expect = repository
            self._write_records(made)
            live = {o.number for o in made if not isinstance(o, TablesRecord)}
            seq = max(live, default=0) + 1
            t = now()
            head = Head(repository=repository, seq=seq, time=t, live=format_ranges(live), success_days=success_days,
                        last_success_day=last_day, newest_time=t)  # fmt: skip
            return self._commit_head(head)

    def rebuild(self, aside: Callable[[str], None]) -> tuple[Head, list[str]]:
        """A new head from the records present, when the head itself is damaged or refused: every record
        whose signature and content check is live again; the others are set aside (`aside(name)`). Its
        sequence is above every head this host has seen. Returns the head and what was set aside."""
        with self.meta.commit_lock():
            names = self.meta.names("records/")
            good: dict[int, BackupRecord | Note] = {}
            bad: list[str] = []
            listing = Listing.of(names)
            for n, name in sorted(listing.main.items()):
                cls = Note if name.endswith((".drill.json", ".after.json")) else BackupRecord
                try:
                    self.expect = None
                    data = self.meta.read(name, MAX_RECORD_BYTES)
                    sig = self.meta.read(name + SIG_SUFFIX, 8192)
                    if data is None or sig is None:
                        raise IntegrityError(f"{name} is incomplete")
                    self.trust.public.verify(data, sig, name)
                    obj: BackupRecord | Note = decode(data, cls, name)
                    if obj.number != n or obj.file_name != name:
                        raise TrustError(f"{name} is stored under another record's name")
                    good[n] = obj
                except (IntegrityError, TrustError):
                    bad.append(name)
            repos = [r.repository for r in good.values()]
            repo = max(set(repos), key=repos.count) if repos else secrets.token_hex(16)
            for n, obj in list(good.items()):
                if obj.repository != repo:
                    bad.append(listing.main[n])
                    del good[n]
            for name in bad:
                aside(name)
                if self.meta.read(name + SIG_SUFFIX, 8192) is not None:
                    aside(name + SIG_SUFFIX)
            heads = [
                int(m.group(1))
                for x in self.meta.names("heads/")
                if (m := HEAD_NAME.fullmatch(x.removesuffix(SIG_SUFFIX)))
            ]
            for x in self.meta.names("heads/"):
                aside(x)
            seq = max([*heads, *good, self.trust.seen.get(self._seen_key(repo)), 0]) + 1
            t = now()
            good_backups = [g for g in good.values() if isinstance(g, BackupRecord) and g.status == "ok"]
            days = sorted({g.started.date() for g in good_backups})
            self.expect = repo
            head = self._commit_head(Head(repository=repo, seq=seq, time=t, live=format_ranges(set(good)),
                                          success_days=len(days), last_success_day=days[-1] if days else None,
                                          newest_time=t))  # fmt: skip
            return head, bad

    def commit(self, change: Change) -> Head:
        """Carry out `change` as one commit; returns the new head."""
        with self.meta.commit_lock():
            cur = self._read_head(fresh=change.after > 0)
            repo = cur.repository if cur is not None else (change.repository or self.expect or secrets.token_hex(16))
            seq = (cur.seq if cur is not None else max(change.after, self.trust.seen.get(self._seen_key(repo)))) + 1
            live = cur.live_numbers() if cur is not None else set()
            self.head = cur
            self.expect = repo
            made = change.make(seq)
            for obj in made:
                if obj.repository != repo or obj.number != seq:
                    raise ValueError("a commit's records must carry its repository and number")
            if made and seq not in live | change.add:  # (a copy's records keep the numbers they had in the folder)
                self._drop_number(seq)
            self._write_records(made)
            if any(not isinstance(o, TablesRecord) for o in made):
                live.add(seq)
            live |= change.add
            live -= change.drop
            pending = [p for p in (cur.pending if cur else []) if p.number not in change.clear_pending]
            pending = [p for p in pending if p.number in live]
            if change.pending is not None:
                pending.append(change.pending(seq))
            days = cur.success_days if cur else 0
            last_day = cur.last_success_day if cur else None
            if change.success_day is not None and (last_day is None or change.success_day != last_day):
                days += 1
                last_day = change.success_day
            t = now()
            newest = max(t, cur.newest_time) if cur is not None and cur.newest_time is not None else t
            head = Head(repository=repo, seq=seq, time=t, live=format_ranges(live), pending=pending, success_days=days,
                        last_success_day=last_day, newest_time=newest)  # fmt: skip
            self._commit_head(head)
            for n in self.meta.names("heads/"):  # older heads: no longer needed (json after its signature)
                m = HEAD_NAME.fullmatch(n.removesuffix(SIG_SUFFIX))
                if m and int(m.group(1)) < seq:
                    with contextlib.suppress(OSError, StorageError, TargetError):
                        self.meta.delete(n)
            return head

    def _drop_number(self, seq: int) -> None:
        """Delete the record files of number `seq`, neither live nor added: a commit killed before its head
        left them; the listing must never find two records of a number, the dead one read as the new one."""
        for name in self.meta.names("records/"):
            m = RECORD_NAME.fullmatch(name.removesuffix(SIG_SUFFIX))
            if m is not None and int(m.group(1)) == seq:
                self.meta.delete(name)
        self._listing = None

    def collect(self) -> list[str]:
        """Delete record files no live number names (dropped records, interrupted commits) and stray
        temporary files of ours under heads/ and records/. Returns what was deleted."""
        gone: list[str] = []
        with self.meta.commit_lock():
            self.head = self._read_head()
            live = self.head.live_numbers() if self.head is not None else set()
            seq = self.head.seq if self.head is not None else 0
            for name in self.meta.names("records/") + self.meta.names("heads/"):
                base = name.removesuffix(SIG_SUFFIX)
                m = RECORD_NAME.fullmatch(base)
                h = HEAD_NAME.fullmatch(base)
                doomed = (
                    (m is not None and int(m.group(1)) not in live)
                    or (h is not None and int(h.group(1)) != seq)
                    or Path(name).name.startswith(TMP_PREFIX)
                )
                if doomed:
                    self.meta.delete(name)
                    gone.append(name)
            self._listing = None
        return gone

    # -- facts derived from the records ----------------------------------------------------------------
    def success_days(self) -> tuple[int, date | None]:
        return (self.head.success_days, self.head.last_success_day) if self.head else (0, None)

    def pending_of(self, number: int) -> Pending | None:
        if self.head is None:
            return None
        return next((p for p in self.head.pending if p.number == number), None)


def newest_good(backups: list[BackupRecord]) -> BackupRecord | None:
    """The newest good backup by commit order (never by clock)."""
    return next((b for b in reversed(backups) if b.status == "ok"), None)


def current_slots(backups: list[BackupRecord], unswitched: Collection[int] = ()) -> dict[str, BackupRecord]:
    """Which good backup's dump each rotation slot's file holds: the newest by commit order to write
    it, except one whose slot switch is not carried out yet (`unswitched`: its dump is still at its
    temporary name, and the slot still holds the one before)."""
    out: dict[str, BackupRecord] = {}
    for b in backups:
        if b.status == "ok" and b.path and b.number not in unswitched:
            out[b.path] = b
    return out


def clock_went_back(head: Head | None, t: datetime) -> bool:
    return head is not None and head.newest_time is not None and t < head.newest_time
