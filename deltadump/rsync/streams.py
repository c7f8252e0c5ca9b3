"""Byte sources and sinks for the engine: paths or binary file objects, seekable or not.

`Source.read_at` gives random access to an input at or after the point last released: regular files
are read with pread (no copy of the file is kept), pipes through a bounded sliding buffer.
"""

from __future__ import annotations

import os
import stat

from ..errors import RsyncError, StorageError
from ..fsio import AtomicFile, storage_error

TYPE_CHECKING = False  # typing and pathlib are not imported at run time: `deltadump rdiff` starts fast
if TYPE_CHECKING:
    import mmap
    from collections.abc import Iterator
    from pathlib import Path
    from typing import BinaryIO, TypeAlias

    PathOrFile: TypeAlias = str | os.PathLike[str] | BinaryIO
else:
    PathOrFile = object  # for annotations only

READ_SIZE = 4 << 20


def open_error(name: object, exc: OSError, how: str) -> RsyncError:
    return RsyncError(
        RsyncError.RS_IO_ERROR,
        f'(rs_file_open) Error opening "{name}" for {how}: {exc.strerror}',
        message=f"cannot open {name} for {how}: {exc.strerror}",
        tail=False,
    )


class Source:
    """Random access (forward-moving) to an input stream."""

    def __init__(self, f: BinaryIO, name: str = "input") -> None:
        self.f = f
        self.name = name
        self.fd: int | None = None
        self.size: int | None = None
        try:
            fd = f.fileno()
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode):
                self.fd = fd
                self.base_off = f.tell()
                self.size = st.st_size - self.base_off
        except (OSError, AttributeError, ValueError):
            pass
        self._buf = bytearray()
        self._buf_start = 0
        self._eof = False

    @classmethod
    def from_fd(cls, fd: int, base_off: int, size: int) -> Source:
        """A Source over an already open regular file (used in forked workers)."""
        src = cls.__new__(cls)
        src.f, src.name, src.fd, src.base_off, src.size = None, "input", fd, base_off, size  # type: ignore[assignment]
        src._buf, src._buf_start, src._eof = bytearray(), 0, True
        return src

    def read_at(self, off: int, n: int) -> bytes:
        """Up to n bytes at offset off (fewer only at end of input)."""
        if self.fd is not None:
            assert self.size is not None
            n = max(0, min(n, self.size - off))
            if n == 0:
                return b""
            data = os.pread(self.fd, n, self.base_off + off)
            while len(data) < n:  # pread may return short on some filesystems
                more = os.pread(self.fd, n - len(data), self.base_off + off + len(data))
                if not more:
                    break
                data += more
            return data
        if off < self._buf_start:
            raise RuntimeError("read_at before released offset")
        want_end = off + n
        while self._buf_start + len(self._buf) < want_end and not self._eof:
            chunk = self.f.read(max(READ_SIZE, want_end - self._buf_start - len(self._buf)))
            if not chunk:
                self._eof = True
                self.size = self._buf_start + len(self._buf)
                break
            self._buf += chunk
        lo = off - self._buf_start
        return bytes(self._buf[lo : lo + n])

    def release(self, off: int) -> None:
        """No byte before `off` will be read again."""
        if self.fd is None and off - self._buf_start > (8 << 20):
            drop = min(off - self._buf_start, len(self._buf))
            del self._buf[:drop]
            self._buf_start += drop

    def chunks(self, size: int) -> Iterator[bytes]:
        """Sequential reads of `size` bytes (the last may be shorter)."""
        off = 0
        while True:
            data = self.read_at(off, size)
            if not data:
                return
            yield data
            off += len(data)
            self.release(off)
            if len(data) < size:
                return


class open_input:
    """An input as a Source; a path is opened here and closed on leaving."""

    def __init__(self, src: PathOrFile) -> None:
        self.opened: BinaryIO | None = None
        if isinstance(src, str | os.PathLike):
            try:
                self.opened = open(src, "rb", buffering=0)  # noqa: SIM115
            except OSError as exc:
                raise open_error(src, exc, "read") from exc
            self.source = Source(self.opened, str(src))
        else:
            self.source = Source(src, getattr(src, "name", "input"))

    def __enter__(self) -> Source:
        return self.source

    def __exit__(self, *exc: object) -> None:
        if self.opened is not None:
            self.opened.close()


class Sink:
    """Output: a path written atomically (temp name, fsync, rename) or a file object."""

    def __init__(self, dst: PathOrFile, force: bool = True, durable: bool = True) -> None:
        self.atomic: AtomicFile | None = None
        if isinstance(dst, str | os.PathLike):
            if not force and os.path.exists(dst):
                raise RsyncError(
                    RsyncError.RS_IO_ERROR,
                    f'(rs_file_open) File exists "{dst}", aborting!',
                    message=f"{dst} exists (use --force to overwrite)",
                    tail=False,
                )
            try:
                self.atomic = AtomicFile(dst, 0o644 & ~_umask(), durable=durable, hashing=False)
            except Exception as exc:
                raise RsyncError(
                    RsyncError.RS_IO_ERROR,
                    f'(rs_file_open) Error opening "{dst}" for write: {exc}',
                    message=f"cannot open {dst} for write: {exc}",
                    tail=False,
                ) from exc
            self.f: BinaryIO = self.atomic.file
        else:
            self.f = dst
        self.written = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self.f.write(data)
        except OSError as exc:
            raise self.write_error(exc) from exc
        self.written += len(data)

    def write_error(self, exc: OSError) -> RsyncError:
        """librsync's error for a failed write into this output, with a clear message (e.g. "disk full
        while writing X (N MB free)")."""
        where = self.atomic.final if self.atomic is not None else as_path("output")
        clear = storage_error(exc, where, "writing").message
        return RsyncError(RsyncError.RS_IO_ERROR, f"write failed: {exc.strerror or exc}", message=clear)

    def fileno_for_copy(self) -> int | None:
        """A raw fd usable with copy_file_range after flush(), or None."""
        try:
            fd = self.f.fileno()
            if stat.S_ISREG(os.fstat(fd).st_mode):
                return fd
        except (OSError, AttributeError, ValueError):
            pass
        return None

    def flush(self) -> None:
        self.f.flush()

    def commit(self) -> None:
        if self.atomic is not None:
            try:
                self.atomic.commit()
            except StorageError as exc:  # e.g. the disk filled up on the last flush
                raise RsyncError(RsyncError.RS_IO_ERROR, f"write failed: {exc.message}", message=exc.message) from exc
        else:
            try:  # noqa: SIM105  (no contextlib here: `deltadump rdiff` starts fast)
                self.f.flush()
            except (OSError, ValueError):
                pass

    def abort(self) -> None:
        if self.atomic is not None:
            self.atomic.abort()


def as_path(name: str) -> Path:
    from pathlib import Path

    return Path(name)


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


class open_output:
    """Output to a path (temp name, renamed into place when complete; fsynced first if durable)."""

    def __init__(self, dst: PathOrFile, force: bool = True, durable: bool = True) -> None:
        self.sink = Sink(dst, force, durable)

    def __enter__(self) -> Sink:
        return self.sink

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None:
            self.sink.abort()
        else:
            self.sink.commit()


IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


def pwritev_all(fd: int, bufs: list[memoryview], at: int) -> None:
    """Write bufs one after another at offset `at`, in as few system calls as the kernel allows."""
    i = 0
    while i < len(bufs):
        got = os.pwritev(fd, bufs[i : i + IOV_MAX], at)
        if got <= 0:
            raise OSError(f"no progress writing at byte {at}")
        at += got
        while i < len(bufs) and got >= len(bufs[i]):
            got -= len(bufs[i])
            i += 1
        if got:  # stopped inside a buffer
            bufs[i] = bufs[i][got:]


def map_range(fd: int, lo: int, hi: int, populate: bool = False) -> tuple[mmap.mmap, int]:
    """A read-only mapping of fd's bytes lo..hi (from the page boundary at or below lo), and the offset
    it starts at; with populate, its pages are mapped at once instead of one fault at a time."""
    import mmap  # only here: most commands never map a file

    start = lo - lo % mmap.ALLOCATIONGRANULARITY
    flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
    return mmap.mmap(fd, hi - start, flags=flags, prot=mmap.PROT_READ, offset=start), start
