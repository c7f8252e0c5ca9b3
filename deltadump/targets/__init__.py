"""deltadump.targets: offsite storage behind one small protocol (put, get, stat, list, delete).

Targets move opaque bytes under keys and know nothing of backups. Every implementation passes the
shared conformance suite in tests/test_targets.py. Errors are TargetError, transient or permanent,
decided where they are born; `retry.RetryTarget` retries the transient ones. Every key is checked by
`naming.check_relpath` (through `check_key`) before any method touches the store.

URLs: file:///path, s3://bucket/prefix, smb://[user@]host[:port]/share/path, sftp://user@host[:port]/path.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import SplitResult, unquote, urlsplit

from ..errors import TargetError
from ..fsio import tmp_name
from ..naming import check_relpath

SCHEMES = ("file", "s3", "smb", "sftp")
TMP_PREFIX = ".tmp-"  # temporary names of unfinished puts: never listed, never taken for an object


class Target(Protocol):
    def put(self, key: str, src: Path, sha256: str) -> None:
        """Store src under key; the key becomes visible only once complete and checked."""

    def get(self, key: str, dst: Path, limit: int | None = None) -> None:
        """Write the object to dst (a complete file or an error). With `limit`, an object larger than
        `limit` bytes is refused (too_large) before more than `limit` bytes of it are written."""

    def local_path(self, key: str) -> Path | None:
        """A local file that is the object, to read in place instead of copying it, or None (then get)."""

    def stat(self, key: str) -> int | None:
        """The object's size, or None when missing."""

    def list(self, prefix: str = "") -> dict[str, int]:
        """Keys under prefix with their sizes."""

    def delete(self, key: str) -> None:
        """Remove the object (no error when already gone)."""

    def describe(self) -> str: ...


class MissingObject(TargetError):
    """The key names no object (a target's get raises it; stat answers None instead)."""


@dataclass(frozen=True)
class TargetOptions:
    """What a network target needs besides its URL ([offsite] keys of the config). The SMB password is
    read from `password_file` (first line) when the target connects, never taken from anywhere else."""

    username: str = ""
    password_file: str = ""
    domain: str = ""
    require_encryption: bool = True
    dialect: str = ""
    identity: str = ""
    known_hosts: str = ""


class HashedSource:
    """A file read in chunks for an upload, sha256 computed while the chunks are sent: each chunk is
    hashed on a second thread (hashlib releases the GIL) while the caller sends it."""

    def __init__(self, path: Path, chunk: int = 4 << 20) -> None:
        self.path = path
        self.chunk = chunk
        self.size = 0
        self._h = hashlib.sha256()

    def __iter__(self) -> Iterator[bytes]:
        try:
            f = open(self.path, "rb")  # noqa: SIM115 (closed below; a local error is told apart from the store's)
        except OSError as exc:
            raise TargetError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        with f, ThreadPoolExecutor(1, thread_name_prefix="put-hash") as pool:
            pending: Future[None] | None = None
            while True:
                try:
                    data = f.read(self.chunk)
                except OSError as exc:
                    raise TargetError(f"cannot read {self.path}: {exc.strerror or exc}") from None
                if not data:
                    break
                if pending is not None:
                    pending.result()
                pending = pool.submit(self._h.update, data)
                self.size += len(data)
                yield data
            if pending is not None:
                pending.result()

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def fetch_into(dst: Path, fetch: Callable[[Path], None]) -> None:
    """A remote target's get: `fetch(tmp)` writes the object to a temporary name beside `dst` (retries
    are its own), which then becomes `dst`; whatever fails, no temporary file is left behind. The
    temporary file is made here, new and readable by its owner only, before `fetch` writes into it
    (an object may hold a database's data: decrypted, it is never readable by others for a moment)."""
    tmp = tmp_name(dst)
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        fetch(tmp)
        os.replace(tmp, dst)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise TargetError(f"cannot write {dst}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class ObjectTooLarge(TargetError):
    """An object is larger than its reader allows (a damaged or hostile store): permanent."""


def too_large(what: str, limit: int) -> ObjectTooLarge:
    return ObjectTooLarge(
        f"{what} is larger than the {limit} bytes it may have; refused",
        hint="the offsite copy is damaged or was written by someone else; run `deltadump verify --offsite`",
    )


def copy_limited(read: Callable[[int], bytes], out: BinaryIO, path: Path, limit: int | None, what: str) -> None:
    """A download's loop: chunks from `read` written to `out` (the local file `path`), refused with
    too_large as soon as they pass `limit` bytes."""
    got = 0
    while data := read(4 << 20):
        got += len(data)
        if limit is not None and got > limit:
            raise too_large(what, limit)
        write_local(out, data, path)


def write_local(out: BinaryIO, data: bytes, path: Path) -> None:
    """Write a fetched chunk to the local file: a local failure (a full disk here) is a permanent
    TargetError naming the local path, never taken for the store's."""
    try:
        out.write(data)
    except OSError as exc:
        raise TargetError(f"cannot write {path}: {exc.strerror or exc}") from None


def check_key(key: object) -> str:
    """A key as every target method accepts it: naming.check_relpath's relative name, and never one
    of our temporary names. Raises a permanent TargetError."""
    try:
        name = check_relpath(key)
    except ValueError as exc:
        raise TargetError(f"refused offsite key: {exc}") from None
    if any(part.startswith(TMP_PREFIX) for part in name.split("/")):
        raise TargetError(f"refused offsite key {name!r}: {TMP_PREFIX} names are reserved for unfinished uploads")
    return name


def check_prefix(prefix: str) -> str:
    """A listing's prefix: empty, or a key (or the start of one) that check_key accepts."""
    if prefix:
        check_key(prefix.removesuffix("/"))
    return prefix


def listed_key(name: str) -> str | None:
    """A name found in a listing, as a key, or None when it is not one of ours (a temporary name, or
    a name check_relpath refuses: a listing is hostile input)."""
    try:
        return check_key(name)
    except TargetError:
        return None


def split_url(url: str) -> SplitResult:
    """The URL split and checked: a known scheme, and never a password in it. ValueError otherwise."""
    u = urlsplit(url)
    if u.scheme not in SCHEMES:
        what = f"scheme {u.scheme}://" if u.scheme else "without a scheme"  # never the url: it may hold a password
        raise ValueError(f"unsupported offsite url {what} (use {', '.join(s + '://' for s in SCHEMES)})")
    if u.password is not None or (u.scheme in ("smb", "sftp") and ":" in u.netloc.rpartition("@")[0]):
        raise ValueError("a password does not belong in the url: use password_file (smb) or a key (sftp)")
    if u.query or u.fragment:
        raise ValueError("the url takes no ?query or #fragment")
    if u.scheme in ("smb", "sftp"):
        if not u.hostname:
            raise ValueError(f"{u.scheme}:// url without a host")
        try:
            u.port  # noqa: B018 (validates it)
        except ValueError:
            raise ValueError(f"{u.scheme}:// url with an invalid port") from None
    if u.scheme == "smb" and not unquote(u.path).strip("/"):
        raise ValueError("smb:// url without a share: smb://[user@]host[:port]/share/path")
    if u.scheme == "sftp" and not u.username:
        raise ValueError("sftp:// url without a user: sftp://user@host[:port]/path")
    if u.scheme == "sftp" and not unquote(u.path).startswith("/"):
        raise ValueError("sftp:// url without a path: sftp://user@host[:port]/path")
    for part in unquote(u.path).split("/"):
        if part == "..":
            raise ValueError("the url's path must not contain '..'")
    return u


def open_target(url: str, endpoint_url: str = "", options: TargetOptions | None = None) -> Target:
    """The target for url. SMB and SFTP come wrapped in retry.RetryTarget (their errors say whether a
    retry may help); S3 keeps botocore's own retries (never retried twice over)."""
    try:
        u = split_url(url)
    except ValueError as exc:
        raise TargetError(f"invalid offsite url: {exc}") from None
    opts = options or TargetOptions()
    if u.scheme == "file":
        from .folder import FolderTarget

        return FolderTarget(Path(unquote(u.path)))
    if u.scheme == "s3":
        from .s3 import S3Target

        return S3Target(u.netloc, u.path.strip("/"), endpoint_url or None)
    from .retry import RetryTarget

    if u.scheme == "smb":
        from .smb import SMBTarget

        return RetryTarget(SMBTarget.from_url(u, opts))
    from .sftp import SFTPTarget

    return RetryTarget(SFTPTarget.from_url(u, opts))
