"""Durable local writes: temp name in the same folder, write, fsync, rename, fsync the folder.

This is the one primitive every file deltadump stores goes through. A failed fsync is final.
Files are created readable by their owner only (0600); folders 0700.
"""

from __future__ import annotations

import errno
import os

from .errors import StorageError

TYPE_CHECKING = False  # typing and pathlib are imported only where needed: `deltadump rdiff` starts fast
if TYPE_CHECKING:
    import hashlib
    from pathlib import Path
    from typing import BinaryIO

TMP_PREFIX = ".tmp-"


def tmp_name(final: Path) -> Path:
    """A temporary name beside `final`, recognisable as ours so stale ones can be cleaned."""
    return final.with_name(_tmp_basename(final.name))


def _tmp_basename(name: str) -> str:
    return f"{TMP_PREFIX}{name}.{os.getpid()}.{os.urandom(4).hex()}"


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def storage_error(exc: OSError, path: Path, action: str) -> StorageError:
    """Translate an OSError into a StorageError that names the path and the cause."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        try:
            st = os.statvfs(path if path.is_dir() else path.parent)
            free = f"{st.f_bavail * st.f_frsize / 1e6:.1f} MB free"
        except OSError:
            free = "free space unknown"
        return StorageError(
            f"disk full while {action} {path} ({free})",
            hint="free some space or choose another dest; earlier backups are untouched",
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(
            f"permission denied while {action} {path}: {exc.strerror}",
            hint="check the folder's owner and mode, and that it is not mounted read-only",
        )
    return StorageError(f"I/O error while {action} {path}: {exc.strerror or exc}")


class AtomicFile:
    """A file written under a temporary name and renamed into place on commit()."""

    def __init__(
        self, final: str | os.PathLike[str], mode: int = 0o600, durable: bool = True, hashing: bool = True
    ) -> None:
        self._final = os.fspath(final)
        folder, name = os.path.split(self._final)
        self._tmp = os.path.join(folder, _tmp_basename(name))
        self.durable = durable
        self.hashing = hashing
        if hashing:  # (the sha256 of what is written; without hashing, hashlib need not even be imported)
            import hashlib

            self.sha256: hashlib._Hash = hashlib.sha256()
        self.size = 0
        try:
            fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except OSError as exc:
            raise storage_error(exc, self.final, "creating") from exc
        self.file: BinaryIO = os.fdopen(fd, "wb", buffering=1 << 20)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.commit()

    @property
    def final(self) -> Path:
        from pathlib import Path

        return Path(self._final)

    @property
    def tmp(self) -> Path:
        from pathlib import Path

        return Path(self._tmp)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        try:
            n = self.file.write(data)
        except OSError as exc:
            raise storage_error(exc, self.final, "writing") from exc
        if self.hashing:
            self.sha256.update(data)
        self.size += len(data)
        return n

    def commit(self) -> None:
        try:
            self.file.flush()
            if self.durable:
                os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self._tmp, self._final)
            if self.durable:
                fsync_dir(os.path.dirname(self._final) or ".")
        except OSError as exc:
            self.abort()
            raise storage_error(exc, self.final, "saving") from exc

    def abort(self) -> None:
        try:  # noqa: SIM105  (no contextlib here: `deltadump rdiff` starts fast)
            self.file.close()
        except OSError:
            pass
        try:  # noqa: SIM105
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass


def atomic_write(final: Path, mode: int = 0o600, durable: bool = True, hashing: bool = True) -> AtomicFile:
    """Write `final` all or nothing, never a half-written file under the final name; durably
    (fsync of the file and its folder) unless it is a scratch file: `with atomic_write(p) as f`
    commits on leaving, or removes the temporary file if the block raised."""
    return AtomicFile(final, mode, durable, hashing)


def write_bytes_atomic(final: Path, data: bytes, mode: int = 0o600) -> str:
    """Write `data` durably to `final`; returns its sha256 hex."""
    with atomic_write(final, mode) as f:
        f.write(data)
    return f.sha256.hexdigest()


def sha256_file(path: Path, bufsize: int = 4 << 20) -> tuple[int, str]:
    """(size, sha256 hex) of a file, streamed."""
    import hashlib

    h = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove temporary files left by a killed run (ours only: the TMP_PREFIX names)."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.rglob(f"{TMP_PREFIX}*"):
        try:
            if p.is_dir():
                import shutil

                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed
