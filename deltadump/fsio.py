"""Durable local writes: temp name in the same folder, write, fsync, rename, fsync the folder.

This is the one primitive every file deltadump stores goes through. A failed fsync is final.
Files are created readable by their owner only (0600); folders 0700.
"""

from __future__ import annotations

import errno
import os

from .errors import StorageError

TYPE_CHECKING = False  # typing, pathlib, hashlib, contextlib: imported where needed (`rdiff` starts fast)
if TYPE_CHECKING:
    import hashlib
    from collections.abc import Iterator
    from contextlib import AbstractContextManager
    from pathlib import Path
    from typing import Any, BinaryIO

TMP_PREFIX = ".tmp-"
WORK_LOCK = ".lock"  # held (flock) inside a work folder while its owner lives

# Fault injection for the crash tests (tests/test_crash.py): DELTADUMP_KILL_AT=N makes the process that
# imported this module kill itself with SIGKILL at its Nth step boundary (a write made durable, a
# rename, a delete, an upload); DELTADUMP_STEP_LOG=FILE appends one line per boundary. Inert otherwise.
_KILL_AT = int(os.environ.get("DELTADUMP_KILL_AT") or 0)
_STEP_LOG = os.environ.get("DELTADUMP_STEP_LOG") or ""
_OWNER = os.getpid()
_steps = 0


def checkpoint(what: str) -> None:
    """A step boundary: where a kill must leave a state the next run understands."""
    global _steps
    if not (_KILL_AT or _STEP_LOG) or os.getpid() != _OWNER:
        return
    _steps += 1
    if _STEP_LOG:
        with open(_STEP_LOG, "a") as f:
            f.write(f"{_steps} {what}\n")
    if _steps == _KILL_AT:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process of ours: without the fault-injection settings."""
    out = dict(os.environ if env is None else env)
    out.pop("DELTADUMP_KILL_AT", None)
    out.pop("DELTADUMP_STEP_LOG", None)
    return out


def tmp_name(final: Path) -> Path:
    """A temporary name beside `final`, recognisable as ours so stale ones can be cleaned."""
    return final.with_name(_tmp_basename(final.name))


def _tmp_basename(name: str) -> str:
    return f"{TMP_PREFIX}{name}.{os.getpid()}.{os.urandom(4).hex()}"


def unlock_close(fd: int) -> None:
    """Release an flock and close its descriptor. The explicit unlock matters: a child forked meanwhile
    (a subprocess between fork and exec, a worker pool) shares the open file, and closing our
    descriptor alone would leave the lock held until the child lets go."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path, mode: int = 0o700) -> None:
    """Create `path` and any missing parents durably: each new folder is fsynced in its parent, so a
    power cut cannot lose a folder whose files were made durable."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=mode)
        except FileExistsError:
            continue
        fsync_dir(d.parent)


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
    """A file written under a temporary name and renamed into place on commit(). With `dir_fd`, every
    name is taken in that open folder and never through a link (its temporary file, the rename, the
    folder's fsync), so that a folder swapped for a link meanwhile cannot lead the write elsewhere;
    `final` then only names the file in messages."""

    def __init__(
        self, final: str | os.PathLike[str], mode: int = 0o600, durable: bool = True, hashing: bool = True,
        dir_fd: int | None = None,
    ) -> None:  # fmt: skip
        self._final = os.fspath(final)
        folder, name = os.path.split(self._final)
        self._dir_fd = dir_fd
        self._tmp = os.path.join(folder, _tmp_basename(name))
        self._at = self._tmp if dir_fd is None else os.path.basename(self._tmp)  # (relative to dir_fd)
        self.durable = durable
        self.hashing = hashing
        if hashing:  # (the sha256 of what is written; without hashing, hashlib need not even be imported)
            import hashlib

            self.sha256: hashlib._Hash = hashlib.sha256()
        self.size = 0
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | (0 if dir_fd is None else os.O_NOFOLLOW)
        try:
            fd = os.open(self._at, flags, mode, dir_fd=dir_fd)
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
            name = os.path.basename(self._final)
            if self.durable:
                checkpoint(f"write {name}")
            if self._dir_fd is None:
                os.replace(self._tmp, self._final)
            else:
                os.replace(self._at, name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
            if self.durable:
                if self._dir_fd is None:
                    fsync_dir(os.path.dirname(self._final) or ".")
                else:
                    os.fsync(self._dir_fd)
                checkpoint(f"rename {name}")
        except OSError as exc:
            self.abort()
            raise storage_error(exc, self.final, "saving") from exc

    def abort(self) -> None:
        try:  # noqa: SIM105  (no contextlib here: `deltadump rdiff` starts fast)
            self.file.close()
        except OSError:
            pass
        try:  # noqa: SIM105
            os.unlink(self._at, dir_fd=self._dir_fd)
        except FileNotFoundError:
            pass


def atomic_write(
    final: Path, mode: int = 0o600, durable: bool = True, hashing: bool = True, dir_fd: int | None = None
) -> AtomicFile:
    """Write `final` all or nothing, never a half-written file under the final name; durably
    (fsync of the file and its folder) unless it is a scratch file: `with atomic_write(p) as f`
    commits on leaving, or removes the temporary file if the block raised. `dir_fd`: see AtomicFile."""
    return AtomicFile(final, mode, durable, hashing, dir_fd)


def write_bytes_atomic(final: Path, data: bytes, mode: int = 0o600) -> str:
    """Write `data` durably to `final`; returns its sha256 hex."""
    with atomic_write(final, mode) as f:
        f.write(data)
    return f.sha256.hexdigest()


def sha256_file(path: Path, bufsize: int = 4 << 20, *, max_size: int | None = None) -> tuple[int, str]:
    """(size, sha256 hex) of a file, streamed. With `max_size`, the file is an object read in place from a
    store (open_regular): a regular file of at most max_size bytes, else IntegrityError."""
    import hashlib

    h = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) if max_size is None else open_regular(path, max_size) as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
            size += len(chunk)  # (with max_size, open_regular's file refuses to read past it)
    return size, h.hexdigest()


def _irregular(fd: int, max_size: int | None) -> tuple[str, str] | None:
    """Why the file `fd`, opened non-blocking, may not be read in place, and how it came to be so (not a
    regular file; larger than max_size: grown), or None: it is then made blocking for its reader. The one
    check of open_regular and open_regular_under."""
    import stat

    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file", "deltadump never writes anything else"
    if max_size is not None and st.st_size > max_size:
        return f"larger than the {max_size} bytes it may have ({st.st_size} bytes)", "grown"
    os.set_blocking(fd, True)
    return None


def open_regular(path: Path, max_size: int | None = None) -> BinaryIO:
    """Open (unbuffered) an object that is read in place from a store that is not trusted (a folder
    offsite copy, a backup folder): never through a link at its last name, and only a regular file, so
    that a FIFO or a device swapped in after a check can neither block a read nor make it endless; with
    `max_size`, none larger than its record either. A swap can then give another regular file at most,
    which its reader's sha256 check refuses. IntegrityError otherwise."""

    from .errors import IntegrityError

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise IntegrityError(f"{path} is a symbolic link; refused") from None
        raise
    try:
        if (problem := _irregular(fd, max_size)) is not None:
            raise IntegrityError(f"{path} is {problem[0]}; refused")
        if max_size is None:
            return os.fdopen(fd, "rb", buffering=0)
        return _bounded_file(fd, path, max_size)
    except BaseException:
        os.close(fd)
        raise


def _bounded_file(fd: int, path: Path, max_size: int) -> BinaryIO:
    """The open file `fd`, unbuffered, whose every read raises IntegrityError once it would go past
    `max_size` bytes from the start: the file may grow after open_regular's check (a store writer
    appending to the very file, or extending it into a sparse terabyte), and a reader that reads it
    again from the start (hash, then decompress) must stop there too."""
    import io

    from .errors import IntegrityError

    class Bounded(io.FileIO):
        def _check(self, got: int) -> None:
            if got and self.tell() > max_size:
                raise IntegrityError(f"{path} is larger than the {max_size} bytes it may have; refused")

        def read(self, size: int | None = -1) -> bytes:
            if size is None or size < 0:
                return self.readall()
            data = super().read(min(size, max(1, max_size + 1 - self.tell()))) or b""
            self._check(len(data))
            return data

        def readinto(self, buf: Any) -> int:
            n = super().readinto(memoryview(buf)[: max(1, max_size + 1 - self.tell())])
            self._check(n or 0)
            return n or 0

        def readall(self) -> bytes:
            out = bytearray()
            while chunk := self.read(1 << 20):
                out += chunk
            return bytes(out)

    return Bounded(fd, "rb", closefd=True)


def remove_stale_temps(folder: Path, keep: set[Path] | frozenset[Path] = frozenset()) -> list[Path]:
    """Remove temporary files and folders left by killed runs (ours only: the TMP_PREFIX names), except
    those in `keep` (a slot switch not yet carried out) and work folders whose owner still lives (it
    holds the flock on their WORK_LOCK file)."""
    import contextlib
    import shutil

    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in sorted(folder.rglob(f"{TMP_PREFIX}*"), key=lambda q: len(q.parts)):
        if p in keep or any(k in p.parents for k in keep) or not p.exists():
            continue
        if any(q in removed for q in p.parents):
            continue
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                if _in_use(p):
                    continue
                checkpoint(f"delete {p.name}")
                shutil.rmtree(p)
            else:
                checkpoint(f"delete {p.name}")
                p.unlink()
            removed.append(p)
    return removed


def _in_use(d: Path) -> bool:
    import fcntl

    try:
        fd = os.open(d / WORK_LOCK, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def work_folder(parent: Path, label: str) -> AbstractContextManager[Path]:
    """A private scratch folder (0700) in `parent`, named as ours (removed by the next run if we die),
    held by a lock while we live (so that no other run removes it), and removed when done."""
    import contextlib

    return contextlib.contextmanager(_work_folder)(parent, label)


def _work_folder(parent: Path, label: str) -> Iterator[Path]:
    import fcntl
    import shutil

    dfd = -1
    try:
        parent.mkdir(parents=True, exist_ok=True)
        d = parent / _tmp_basename(label)
        d.mkdir(mode=0o700)
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)  # (the folder made: Pinned)
        fd = os.open(WORK_LOCK, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dfd)
    except OSError as exc:
        if dfd >= 0:
            os.close(dfd)
        raise storage_error(exc, parent, "creating a work folder in") from exc
    _work_fds[d] = dfd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield d
    finally:
        del _work_fds[d]
        shutil.rmtree(d, ignore_errors=True)
        unlock_close(fd)
        os.close(dfd)


_work_fds: dict[Path, int] = {}  # this process's live work folders: the descriptor each was opened by


class Pinned:
    """A folder of this run (a work folder, or a folder in one) held open. `path(p)` names p inside it
    through the descriptor (/proc/self/fd/N/...): that leads into this very folder whatever a writer of
    its parent (the backup folder) does to its name meanwhile, renaming it aside and putting a folder
    of its own in its place, say; a child process reading such a path needs `fds` (pass_fds). The folder
    is the one work_folder made, opened by it as it made it (its descriptor, not its name: no check of
    owner or mode, which a share's mount may show as another's), and for a folder in it, each step below
    it opened without following a link; StorageError if it cannot be opened so."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        base = next((q for q in (folder, *folder.parents) if q in _work_fds), None)
        try:
            if base is None:
                raise FileNotFoundError(errno.ENOENT, "not a work folder of this run")
            fd = os.dup(_work_fds[base])
            for part in folder.relative_to(base).parts:
                try:
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                finally:
                    os.close(fd)
                fd = nxt
        except OSError as exc:
            raise storage_error(exc, folder, "opening the work folder") from exc
        self.fd = fd
        self.fds = (fd,)

    def path(self, p: Path) -> Path:
        """p, under the folder, through the descriptor (p as it is when it lies elsewhere)."""
        from pathlib import Path

        try:
            rel = p.relative_to(self.folder)
        except ValueError:
            return p
        return Path(f"/proc/self/fd/{self.fd}") / rel

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Pinned:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_under(root: Path, rel: str, flags: int = os.O_RDONLY) -> int:
    """Open root/rel without following a symbolic link anywhere below root (each folder is opened with
    O_NOFOLLOW relative to the one above): a planted link cannot lead outside the backup folder.
    `rel` must have passed naming.check_relpath. Returns a file descriptor; OSError as os.open."""
    parts = rel.split("/")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return os.open(parts[-1], flags | os.O_NOFOLLOW, 0o600, dir_fd=fd)
    finally:
        os.close(fd)


def open_regular_under(root: Path, rel: str, max_size: int) -> int:
    """open_under for a file of the backup folder read in place (a slot's file, an object): opened
    non-blocking (a FIFO planted there never makes the open wait for a writer), a regular file only and
    no larger than its record's `max_size` (a sparse terabyte is not hashed to its end): IntegrityError
    otherwise, OSError as open_under. Returns a blocking descriptor; its reader reads at most
    max_size + 1 bytes (it may grow since)."""

    from .errors import IntegrityError

    fd = open_under(root, rel, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if (problem := _irregular(fd, max_size)) is not None:
            raise IntegrityError(f"{problem[0]} ({problem[1]})")
        return fd
    except BaseException:
        os.close(fd)
        raise
