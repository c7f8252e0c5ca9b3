"""Patch application: `rdiff patch` (spec section 5), with librsync's error codes.

When the basis, the delta and the output are regular files (and not small), the delta is mapped a
window at a time and decoded in one loop that cuts the commands into batches of adjacent output; a
second thread writes each batch with one pwritev from a read-only mapping of the basis window it
copies from (populated at once where its copies fill it, faulted in page by page where they are
scattered, as edits spread over a large file make them) and from the mapped literal bytes: every byte is
copied once, by the kernel, while the next batch is decoded, in bounded memory. Otherwise (pipes,
small files) commands are applied in order, COPY by copy_file_range where it can.
"""

from __future__ import annotations

import errno
import gc
import os
import stat
import struct
import time

from ..errors import RsyncError
from ..fsio import sha256_file
from .format import DELTA_MAGIC, decode_opcode, librsync_job
from .streams import (
    IOV_MAX,
    PathOrFile,
    Sink,
    Source,
    map_range,
    open_error,
    open_input,
    open_output,
    pwritev_all,
)

TYPE_CHECKING = False  # typing and pathlib are not imported at run time: `deltadump rdiff` starts fast
if TYPE_CHECKING:
    import mmap
    import queue
    from collections.abc import Callable, Iterator
    from typing import BinaryIO

_FMT = {1: ">B", 2: ">H", 4: ">I", 8: ">Q"}
BUF = 1 << 20


class PatchStats:
    """What a patch did (a plain class: this module stays free of heavy imports, for start-up)."""

    def __init__(self) -> None:
        self.literal_cmds = 0
        self.literal_bytes = 0
        self.copy_cmds = 0
        self.copy_bytes = 0
        self.in_bytes = 0
        self.out_bytes = 0
        self.seconds = 0.0


class _reader:
    """The delta as a binary file (unbuffered: _Commands reads in chunks of its own)."""

    def __init__(self, delta: PathOrFile) -> None:
        self.opened = None
        if isinstance(delta, str | os.PathLike):
            try:
                self.opened = open(delta, "rb", buffering=0)  # noqa: SIM115
            except OSError as exc:
                raise open_error(delta, exc, "read") from exc
        self.f: BinaryIO = self.opened or delta  # type: ignore[assignment]

    def __enter__(self) -> BinaryIO:
        return self.f

    def __exit__(self, *exc: object) -> None:
        if self.opened is not None:
            self.opened.close()


class _Out:
    """Output with a write buffer, and kernel copies from the basis where possible."""

    def __init__(self, sink: Sink, basis: Source) -> None:
        self.sink = sink
        self.basis = basis
        self.buf = bytearray()
        self.fd = sink.fileno_for_copy() if basis.fd is not None else None
        self.total = 0

    def write(self, data: bytes | memoryview) -> None:
        self.buf += data
        self.total += len(data)
        if len(self.buf) >= BUF:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            self.sink.write(self.buf)
            self.buf = bytearray()

    def copy(self, pos: int, n: int) -> None:
        b = self.basis
        if b.fd is None:
            raise RsyncError(
                RsyncError.RS_IO_ERROR,
                "(rs_file_copy_cb) seek failed: Illegal seek",
                message="the basis must be a seekable file",
            )
        _check_copy(b, pos, n)
        self.total += n
        if self.fd is not None and n >= 1 << 16:
            self.flush()
            self.sink.flush()
            done = 0
            try:
                while done < n:
                    got = os.copy_file_range(b.fd, self.fd, n - done, b.base_off + pos + done)
                    if got <= 0:
                        raise RsyncError(RsyncError.RS_INPUT_ENDED, f"(rs_file_copy_cb) unexpected eof on fd{b.fd}")
                    done += got
            except OSError as exc:
                if exc.errno not in _NO_KERNEL_COPY:
                    raise self.sink.write_error(exc) from exc
                self.fd = None  # e.g. the basis on another file system: bytes are read and written from now on
            self.sink.written += done
            pos, n = pos + done, n - done
        while n:
            chunk = b.read_at(pos, min(n, 4 << 20))
            self.buf += chunk
            pos += len(chunk)
            n -= len(chunk)
            if len(self.buf) >= BUF:
                self.flush()


# copy_file_range's answers that mean "not between these two files" (another file system, kernel or
# file type), not a failure of the storage: the copy is then made by reading and writing
_NO_KERNEL_COPY = {getattr(errno, n) for n in ("EXDEV", "EINVAL", "ENOSYS", "EOPNOTSUPP", "ENOTSUP", "EBADF")}


def _check_copy(b: Source, pos: int, n: int) -> None:
    assert b.size is not None
    if pos + n > b.size:
        raise RsyncError(
            RsyncError.RS_INPUT_ENDED,
            f"(rs_file_copy_cb) unexpected eof on fd{b.fd}",
            message=f"delta copies bytes {pos}..{pos + n} beyond the end of the basis ({b.size} bytes)",
        )


def _literal_cut_short() -> RsyncError:
    return RsyncError(
        RsyncError.RS_INPUT_ENDED,
        "(rs_tube_catchup) reached end of file while copying data",
        message="delta is truncated (literal data cut short)",
    )


@librsync_job("patch")
def patch(
    basis: PathOrFile,
    delta: PathOrFile,
    out: PathOrFile,
    *,
    force: bool = True,
    durable: bool = True,
    basis_sha256: str | None = None,
    result_sha256: str | None = None,
) -> PatchStats:
    """Apply `delta` to `basis`, writing the result to `out`.

    An rdiff delta records neither its basis nor its result. When the caller knows them, it passes
    their sha256: the basis is checked before a byte is written, the result before it is kept."""
    t0 = time.perf_counter()
    st = PatchStats()
    with open_input(basis) as src, _reader(delta) as dr:
        if basis_sha256 is not None:
            got = _sha256_source(src)
            if got != basis_sha256:
                raise RsyncError(
                    RsyncError.RS_CORRUPT,
                    message=f"the basis {src.name} has changed since its signature was made "
                    f"(sha256 {got[:12]}..., expected {basis_sha256[:12]}...)",
                    job="patch",
                )
        magic = dr.read(4)
        while 0 < len(magic) < 4 and (more := dr.read(4 - len(magic))):  # a pipe may give less
            magic += more
        if len(magic) < 4:
            raise RsyncError(RsyncError.RS_INPUT_ENDED, job="patch", message="delta is empty or truncated")
        (m,) = struct.unpack(">I", magic)
        if m != DELTA_MAGIC:
            raise RsyncError(
                RsyncError.RS_BAD_MAGIC,
                f"(rs_patch_s_header) got magic number 0x{m:x} rather than expected value 0x{DELTA_MAGIC:x}",
                job="patch",
                message=f"not an rdiff delta (magic 0x{m:08x})",
            )
        with open_output(out, force, durable) as sink:
            fast = _Parallel.ready(src, delta, sink)
            if fast is not None:
                cmds = _Commands(dr, (fast.dfd, os.fstat(fast.dfd).st_size))
                fast.run(cmds, st)
                total = st.literal_bytes + st.copy_bytes
            else:
                cmds = _Commands(dr)
                o = _Out(sink, src)
                for is_copy, pos, n in cmds:
                    if is_copy:
                        o.copy(pos, n)
                        st.copy_cmds += 1
                        st.copy_bytes += n
                    else:
                        for chunk in cmds.take(n):
                            o.write(chunk)
                        st.literal_cmds += 1
                        st.literal_bytes += n
                o.flush()
                total = o.total
            st.out_bytes = total
            if result_sha256 is not None:
                sink.flush()
                got = _result_sha256(sink)
                if got != result_sha256:
                    raise RsyncError(
                        RsyncError.RS_CORRUPT,
                        message=f"patched result has sha256 {got[:12]}..., expected {result_sha256[:12]}...",
                        job="patch",
                    )
    st.in_bytes = cmds.consumed
    st.seconds = time.perf_counter() - t0
    return st


# opcode -> (0 end | 1 literal of immediate length a | 2 literal with a length of b bytes | 3 copy with a
# position of a bytes and a length of b bytes | 4 bogus, a, b)
_OPS = [
    (0, 0, 0) if kind == "end" else (1, a, 0) if kind == "literal" and a else (2, 0, b) if kind == "literal"
    else (3, a, b) if kind == "copy" else (4, 0, 0)
    for kind, a, b in map(decode_opcode, range(256))
]  # fmt: skip
_CHUNK = 1 << 20  # delta bytes read at a time
_MAP_WINDOW = 8 << 20  # delta bytes mapped at a time


def _struct(fmt: str) -> Callable[[bytes | memoryview, int], tuple[int, ...]]:
    return struct.Struct(fmt).unpack_from


_WFMT = {1: "B", 2: "H", 4: "I", 8: "Q"}
# opcode -> the unpacker of its parameters (COPY: position and length; LITERAL_N: length)
_UNPACK = {
    op: _struct(">" + (_WFMT[a] + _WFMT[b] if kind == 3 else _WFMT[b]))
    for op, (kind, a, b) in enumerate(_OPS)
    if kind in (2, 3)
}


def _bad_copy(pos: int, n: int) -> None:
    """The error of a COPY with a zero or huge length or a huge position (librsync's order)."""
    if n == 0 or n >= 1 << 63:
        raise RsyncError(
            RsyncError.RS_CORRUPT, f"(rs_patch_s_copy) invalid length={_signed(n)} on COPY command", job="patch"
        )
    raise RsyncError(
        RsyncError.RS_CORRUPT, f"(rs_patch_s_copy) invalid position={_signed(pos)} on COPY command", job="patch"
    )


class _Commands:
    """The commands of a delta, in order, as (is_copy, position, length): a copy's position is in the
    basis, a literal's in the delta (its bytes follow: the consumer takes or skips them before asking
    for the next command). Reads the delta a chunk at a time into a buffer of its own, or, given the
    descriptor and size of a regular file, maps it a window at a time (the literal bytes are then
    handed on as views of the mapping: never copied), and decodes from there. Raises librsync's
    errors for a malformed delta."""

    def __init__(self, dr: BinaryIO, mapped: tuple[int, int] | None = None) -> None:
        self.dr = dr
        self.fd, self.size = mapped if mapped is not None else (-1, 0)
        self.buf: bytes | memoryview = b""
        self.i = 0  # next byte to decode in buf
        self.base = 4  # delta offset of buf[0] (the magic is read already)

    @property
    def consumed(self) -> int:
        return self.base + self.i

    def _fill(self, need: int) -> None:
        """Keep the undecoded rest and read on, until `need` bytes are buffered or the delta ends."""
        if self.fd >= 0:  # map the next window (views of the last one keep it until they go)
            self.base += self.i
            self.i = 0
            lo, hi = self.base, min(self.size, self.base + max(_MAP_WINDOW, need))
            if hi <= lo:
                self.buf = b""
                return
            m, start = map_range(self.fd, lo, hi, populate=True)
            self.buf = memoryview(m)[lo - start :]
            return
        rest = self.buf[self.i :]
        self.base += self.i
        self.i = 0
        more = self.dr.read(max(_CHUNK, need))
        buf = bytes(rest) + more if rest else more
        while more and len(buf) < need:  # a pipe gives what it has
            more = self.dr.read(need - len(buf))
            buf += more
        self.buf = buf

    def __iter__(self) -> Iterator[tuple[bool, int, int]]:
        ops, from_bytes = _OPS, int.from_bytes
        while True:
            buf, i = self.buf, self.i
            if len(buf) - i < 17:  # the longest command head: opcode, 8-byte position, 8-byte length
                self._fill(17)
                buf, i = self.buf, 0
                if not buf:
                    raise RsyncError(RsyncError.RS_INPUT_ENDED, job="patch", message="delta is truncated (no END)")
            kind, a, b = ops[buf[i]]
            i += 1
            if kind == 1:
                self.i = i
                yield False, self.base + i, a
            elif kind == 3:
                if i + a + b > len(buf):
                    raise RsyncError(RsyncError.RS_INPUT_ENDED, message="delta is truncated (no END command)")
                pos = from_bytes(buf[i : i + a], "big")
                n = from_bytes(buf[i + a : i + a + b], "big")
                if n == 0 or n >= 1 << 63:
                    raise RsyncError(
                        RsyncError.RS_CORRUPT,
                        f"(rs_patch_s_copy) invalid length={_signed(n)} on COPY command",
                        job="patch",
                    )
                if pos >= 1 << 63:
                    raise RsyncError(
                        RsyncError.RS_CORRUPT,
                        f"(rs_patch_s_copy) invalid position={_signed(pos)} on COPY command",
                        job="patch",
                    )
                self.i = i + a + b
                yield True, pos, n
            elif kind == 2:
                if i + b > len(buf):
                    raise RsyncError(RsyncError.RS_INPUT_ENDED, message="delta is truncated (no END command)")
                n = from_bytes(buf[i : i + b], "big")
                if n == 0 or n >= 1 << 63:
                    raise RsyncError(
                        RsyncError.RS_CORRUPT,
                        f"(rs_patch_s_literal) invalid length={_signed(n)} on LITERAL command",
                        job="patch",
                    )
                self.i = i + b
                yield False, self.base + i + b, n
            elif kind == 0:
                self.i = i
                return
            else:
                raise RsyncError(
                    RsyncError.RS_CORRUPT,
                    f"(rs_patch_s_run) bogus command 0x{buf[i - 1]:02x}",
                    job="patch",
                    message=f"delta is corrupt (bogus command 0x{buf[i - 1]:02x} at byte {self.base + i - 1})",
                )

    def take(self, n: int) -> Iterator[memoryview]:
        """The next n literal bytes, in pieces of at most 4 MiB (views of the buffer: no copy)."""
        while n:
            if self.i >= len(self.buf):
                self._fill(min(n, 4 << 20))
                if not self.buf:
                    raise _literal_cut_short()
            k = min(n, len(self.buf) - self.i, 4 << 20)
            mv = self.buf if isinstance(self.buf, memoryview) else memoryview(self.buf)
            yield mv[self.i : self.i + k]
            self.i += k
            n -= k


class _Batch:
    """Consecutive commands whose output is one contiguous range starting at `at`, written with one
    pwritev: copies, as (position, length), from a read-only mapping of the basis window blo..bhi
    (of which `used` bytes are copied); literals as the delta's bytes themselves, read once by the
    command parser."""

    __slots__ = ("at", "bhi", "blo", "parts", "used")

    def __init__(self, at: int, parts: list[tuple[int, int] | memoryview], blo: int, bhi: int, used: int) -> None:
        self.at, self.parts, self.blo, self.bhi, self.used = at, parts, blo, bhi, used


PARALLEL_MIN = 8 << 20  # basis and delta bytes below which the sequential path is used (no threads)
_BATCH = 2 << 20  # output bytes per batch: one pwritev (larger writes were, in about a quarter of runs, 2-3x
#                   slower in the kernel's copy on Linux 6.18 ext4, measured with bench/rsync_vs_librsync.py)
_NTHREADS = 1  # writer threads (a second measured slower on many small copies: it contends for the locks of the
#                 output inode and of the address space more than it overlaps)
_WINDOW = 32 << 20  # most bytes of the basis one batch maps
_IOV_MAX = IOV_MAX  # commands per batch: one pwritev
_SPARSE = 1 << 20  # a basis window larger than twice the bytes copied from it plus this is faulted in
#                    page by page as the copies touch it, not populated whole


class _Parallel:
    """Patch on two threads when the basis, the delta and the output are regular files: this one
    decodes the commands and cuts them into batches of adjacent output; a writer writes each batch
    at its offset (pwritev from a mapping of the basis window the batch copies from, populated at
    once where the copies fill it, and from views of the mapped delta for its literals: a byte is
    copied into the output once, by the kernel). Memory stays bounded: a few batches at a time."""

    def __init__(self, src: Source, dfd: int, ofd: int, sink: Sink) -> None:
        assert src.fd is not None
        self.src, self.bfd, self.boff, self.dfd, self.ofd, self.sink = src, src.fd, src.base_off, dfd, ofd, sink
        self.error: BaseException | None = None

    @classmethod
    def ready(cls, src: Source, delta: PathOrFile, sink: Sink) -> _Parallel | None:
        if src.fd is None or sink.atomic is None or not isinstance(delta, str | os.PathLike):
            return None
        try:  # small inputs: the sequential path, without threads
            if (src.size or 0) + os.stat(delta).st_size < PARALLEL_MIN:
                return None
        except OSError:
            pass
        ofd = sink.fileno_for_copy()
        try:
            dfd = os.open(delta, os.O_RDONLY)
        except OSError:
            return None
        if ofd is None or not stat.S_ISREG(os.fstat(dfd).st_mode):
            os.close(dfd)
            return None
        return cls(src, dfd, ofd, sink)

    def run(self, cmds: _Commands, st: PatchStats) -> None:
        import queue
        import threading

        q: queue.Queue[_Batch | None] = queue.Queue(maxsize=2)
        workers = [threading.Thread(target=self._work, args=(q,), daemon=True) for _ in range(_NTHREADS)]
        for w in workers:
            w.start()
        gc_was = gc.isenabled()
        gc.disable()  # (tens of thousands of small tuples, none of them in a cycle)
        try:
            self._plan(cmds, st, q)
        finally:
            for _ in workers:
                q.put(None)
            for w in workers:
                w.join()
            os.close(self.dfd)
            if gc_was:
                gc.enable()
        if self.error is not None:
            raise self.error

    def _plan(self, cmds: _Commands, st: PatchStats, q: queue.Queue[_Batch | None]) -> None:
        """Decode the commands (the same checks and errors as _Commands, in one loop over the mapped
        delta: tens of thousands of commands on edited large files) and hand out batches of them."""
        dsize, bsize = cmds.size, self.src.size
        assert bsize is not None and cmds.fd >= 0
        ops, unpack, batch_max, window, iov_max, top = _OPS, _UNPACK, _BATCH, _WINDOW, _IOV_MAX, 1 << 63
        # the batch being filled: its parts, output start and size, basis window and bytes copied
        parts: list[tuple[int, int] | memoryview] = []
        add = parts.append
        at = start = size = used = bhi = 0
        blo = top
        ncopy = copied = nlit = literal = 0
        buf, i = cmds.buf, cmds.i  # (a view of the mapped delta: its slices are views too, never copies)
        try:
            while self.error is None:
                if len(buf) - i < 17:  # the longest command head: opcode, 8-byte position, 8-byte length
                    cmds.i = i
                    cmds._fill(17)
                    buf, i = cmds.buf, 0
                    if not buf:
                        raise RsyncError(RsyncError.RS_INPUT_ENDED, job="patch", message="delta is truncated (no END)")
                op = buf[i]
                kind, a, b = ops[op]
                i += 1
                if kind == 3:  # COPY
                    if i + a + b > len(buf):
                        raise RsyncError(RsyncError.RS_INPUT_ENDED, message="delta is truncated (no END command)")
                    pos, n = unpack[op](buf, i)
                    i += a + b
                    if n == 0 or n >= top or pos >= top:
                        cmds.i = i
                        _bad_copy(pos, n)
                    if pos + n > bsize:
                        _check_copy(self.src, pos, n)
                    ncopy += 1
                    copied += n
                    while n:  # long copies in pieces, so that windows stay small
                        k = n if n <= batch_max else batch_max
                        lo = pos if pos < blo else blo
                        hi = pos + k if pos + k > bhi else bhi
                        if len(parts) >= iov_max or size + k > batch_max or hi - lo > window:
                            q.put(_Batch(start, parts, blo, bhi, used))
                            parts, start, size, used, lo, hi = [], at, 0, 0, pos, pos + k
                            add = parts.append
                        blo, bhi = lo, hi
                        add((pos, k))
                        used += k
                        size += k
                        at, pos, n = at + k, pos + k, n - k
                elif kind == 1 or kind == 2:  # LITERAL
                    if kind == 1:
                        n = a
                    else:
                        if i + b > len(buf):
                            raise RsyncError(RsyncError.RS_INPUT_ENDED, message="delta is truncated (no END command)")
                        (n,) = unpack[op](buf, i)
                        i += b
                        if n == 0 or n >= top:
                            raise RsyncError(
                                RsyncError.RS_CORRUPT,
                                f"(rs_patch_s_literal) invalid length={_signed(n)} on LITERAL command",
                                job="patch",
                            )
                    if cmds.base + i + n > dsize:
                        raise _literal_cut_short()
                    nlit += 1
                    literal += n
                    if i + n <= len(buf) and size + n <= batch_max and len(parts) < iov_max:
                        add(buf[i : i + n])  # type: ignore[arg-type]
                        i += n
                        size += n
                        at += n
                        continue
                    cmds.i = i
                    for piece in cmds.take(n):
                        k = len(piece)
                        if len(parts) >= iov_max or size + k > batch_max:
                            q.put(_Batch(start, parts, blo, bhi, used))
                            parts, start, size, used, bhi, blo = [], at, 0, 0, 0, top
                            add = parts.append
                        add(piece)
                        size += k
                        at += k
                    buf, i = cmds.buf, cmds.i
                elif kind == 0:  # END
                    break
                else:
                    cmds.i = i
                    raise RsyncError(
                        RsyncError.RS_CORRUPT,
                        f"(rs_patch_s_run) bogus command 0x{op:02x}",
                        job="patch",
                        message=f"delta is corrupt (bogus command 0x{op:02x} at byte {cmds.base + i - 1})",
                    )
            q.put(_Batch(start, parts, blo, bhi, used))
        finally:
            cmds.i = i
            st.copy_cmds, st.copy_bytes, st.literal_cmds, st.literal_bytes = ncopy, copied, nlit, literal

    def _work(self, q: queue.Queue[_Batch | None]) -> None:
        while (b := q.get()) is not None:
            if self.error is None:
                try:
                    self._write(b)
                except BaseException as exc:  # handed to run()
                    self.error = exc

    def _write(self, b: _Batch) -> None:
        bm: mmap.mmap | None = None
        bv = memoryview(b"")
        bufs: list[memoryview] = []
        try:
            if b.bhi:
                dense = b.bhi - b.blo <= 2 * b.used + _SPARSE
                bm, bstart = map_range(self.bfd, self.boff + b.blo, self.boff + b.bhi, populate=dense)
                bv = memoryview(bm)[self.boff + b.blo - bstart :]
            blo = b.blo
            bufs = [e if isinstance(e, memoryview) else bv[e[0] - blo : e[0] - blo + e[1]] for e in b.parts]
            try:
                pwritev_all(self.ofd, bufs, b.at)
            except OSError as exc:
                raise self.sink.write_error(exc) from exc
        finally:
            bufs.clear()
            b.parts.clear()
            bv.release()
            if bm is not None:
                bm.close()


def _result_sha256(sink: Sink) -> str:
    """sha256 of the output, re-read from its file."""
    if sink.atomic is None:
        raise RsyncError(RsyncError.RS_IO_ERROR, message="result check needs an output file")
    return sha256_file(sink.atomic.tmp)[1]


def _sha256_source(src: Source) -> str:
    import hashlib

    h = hashlib.sha256()
    off = 0
    while chunk := src.read_at(off, 4 << 20):
        h.update(chunk)
        off += len(chunk)
    return h.hexdigest()


def _signed(n: int) -> int:
    return n - (1 << 64) if n >= 1 << 63 else n
