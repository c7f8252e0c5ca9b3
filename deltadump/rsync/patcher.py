"""Patch application: `rdiff patch` (spec section 5), with librsync's error codes.

When the basis, the delta and the output are regular files, two threads write batches of adjacent
output at their own offsets, each with one pwritev from read-only mappings of the basis and delta
windows it needs (populated at once): every byte is copied once, by the kernel, on both cores, in
bounded memory. Otherwise (pipes) commands are applied in order, COPY by copy_file_range where it can.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
import time
from collections.abc import Iterator

from ..errors import RsyncError
from ..fsio import sha256_file, storage_error
from .format import DELTA_MAGIC, decode_opcode, librsync_job
from .streams import (
    IOV_MAX,
    PathOrFile,
    Sink,
    Source,
    as_path,
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


@contextlib.contextmanager
def _reader(delta: PathOrFile) -> Iterator[BinaryIO]:
    if isinstance(delta, str | os.PathLike):
        try:
            f = open(delta, "rb", buffering=0)  # noqa: SIM115  (_Commands reads in chunks of its own)
        except OSError as exc:
            raise open_error(delta, exc, "read") from exc
        with f:
            yield f
    else:
        yield delta


class _Out:
    """Output with a write buffer, and kernel copies from the basis where possible."""

    def __init__(self, sink: Sink, basis: Source) -> None:
        self.sink = sink
        self.basis = basis
        self.buf = bytearray()
        self.fd = sink.fileno_for_copy() if basis.fd is not None else None
        self.total = 0

    def write(self, data: bytes) -> None:
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
            while done < n:
                got = os.copy_file_range(b.fd, self.fd, n - done, b.base_off + pos + done)
                if got <= 0:
                    raise RsyncError(RsyncError.RS_INPUT_ENDED, f"(rs_file_copy_cb) unexpected eof on fd{b.fd}")
                done += got
            self.sink.written += n
            return
        while n:
            chunk = b.read_at(pos, min(n, 4 << 20))
            self.buf += chunk
            pos += len(chunk)
            n -= len(chunk)
            if len(self.buf) >= BUF:
                self.flush()


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
        cmds = _Commands(dr)
        with open_output(out, force, durable) as sink:
            fast = _Parallel.ready(src, delta, sink)
            if fast is not None:
                fast.run(cmds, st)
                total = st.literal_bytes + st.copy_bytes
            else:
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


class _Commands:
    """The commands of a delta, in order, as (is_copy, position, length): a copy's position is in the
    basis, a literal's in the delta (its bytes follow: the consumer takes or skips them before asking
    for the next command). Reads the delta a chunk at a time into a buffer of its own and decodes
    from there. Raises librsync's errors for a malformed delta."""

    def __init__(self, dr: BinaryIO) -> None:
        self.dr = dr
        self.buf = b""
        self.i = 0  # next byte to decode in buf
        self.base = 4  # delta offset of buf[0] (the magic is read already)

    @property
    def consumed(self) -> int:
        return self.base + self.i

    def _fill(self, need: int) -> None:
        """Keep the undecoded rest and read on, until `need` bytes are buffered or the delta ends."""
        rest = self.buf[self.i :]
        self.base += self.i
        self.i = 0
        more = self.dr.read(max(_CHUNK, need))
        buf = rest + more if rest else more
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

    def skip(self, n: int) -> None:
        """Pass over n literal bytes (a seekable delta whose size the caller has checked)."""
        avail = len(self.buf) - self.i
        if n <= avail:
            self.i += n
            return
        self.dr.seek(n - avail, os.SEEK_CUR)
        self.base += len(self.buf) + n - avail
        self.buf, self.i = b"", 0

    def take(self, n: int) -> Iterator[bytes]:
        """The next n literal bytes, in pieces of at most 4 MiB."""
        while n:
            if self.i >= len(self.buf):
                self._fill(min(n, 4 << 20))
                if not self.buf:
                    raise _literal_cut_short()
            k = min(n, len(self.buf) - self.i, 4 << 20)
            yield self.buf[self.i : self.i + k]
            self.i += k
            n -= k


class _Batch:
    """Consecutive commands whose output is one contiguous range starting at `at`, written with one
    pwritev from read-only mappings of the basis and delta windows they read: blo..bhi of the basis
    (of which `used` bytes are copied) and dlo..dhi of the delta."""

    __slots__ = ("at", "bhi", "blo", "cmds", "dhi", "dlo", "used")

    def __init__(
        self, at: int, cmds: list[tuple[bool, int, int]], blo: int, bhi: int, dlo: int, dhi: int, used: int
    ) -> None:
        self.at, self.cmds, self.blo, self.bhi, self.dlo, self.dhi, self.used = at, cmds, blo, bhi, dlo, dhi, used


PARALLEL_MIN = 8 << 20  # basis and delta bytes below which the sequential path is used (no threads)
_BATCH = 16 << 20  # output bytes per batch
_WINDOW = 32 << 20  # most bytes of the basis (or of the delta) one batch maps
_IOV_MAX = IOV_MAX  # commands per batch: one pwritev
_SPARSE = 1 << 20  # a basis window larger than twice the bytes copied from it plus this is faulted in
#                    page by page as the copies touch it, not populated whole


class _Parallel:
    """Patch with both cores when the basis, the delta and the output are regular files: the delta's
    commands are read in order and cut into batches of adjacent output; two threads write batches
    at their own offsets (pwritev from mappings of the basis and delta windows, populated at once,
    so a byte is copied once, by the kernel). Memory stays bounded: a few windows at a time."""

    def __init__(self, src: Source, dfd: int, ofd: int, sink: Sink) -> None:
        assert src.fd is not None
        self.src, self.bfd, self.boff, self.dfd, self.ofd, self.sink = src, src.fd, src.base_off, dfd, ofd, sink
        self.error: BaseException | None = None

    @classmethod
    def ready(cls, src: Source, delta: PathOrFile, sink: Sink) -> _Parallel | None:
        if src.fd is None or sink.atomic is None or not isinstance(delta, str | os.PathLike):
            return None
        with contextlib.suppress(OSError):  # small inputs: the sequential path, without threads
            if (src.size or 0) + os.stat(delta).st_size < PARALLEL_MIN:
                return None
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

        q: queue.Queue[_Batch | None] = queue.Queue(maxsize=4)
        workers = [threading.Thread(target=self._work, args=(q,), daemon=True) for _ in range(2)]
        for w in workers:
            w.start()
        dsize, bsize = os.fstat(self.dfd).st_size, self.src.size
        assert bsize is not None
        batch_max, window, iov_max, top = _BATCH, _WINDOW, _IOV_MAX, 1 << 63
        # the batch being filled: commands, output start and size, basis and delta windows, bytes copied
        cl: list[tuple[bool, int, int]] = []
        at = start = size = used = bhi = dhi = 0
        blo = dlo = top
        ncopy = copied = nlit = literal = 0
        try:
            for is_copy, pos, n in cmds:
                if is_copy:
                    if pos + n > bsize:
                        _check_copy(self.src, pos, n)
                    ncopy += 1
                    copied += n
                else:
                    if pos + n > dsize:
                        raise _literal_cut_short()
                    cmds.skip(n)
                    nlit += 1
                    literal += n
                while n:  # long commands in pieces, so that windows stay small
                    k = n if n <= batch_max else batch_max
                    if is_copy:
                        lo = pos if pos < blo else blo
                        hi = pos + k if pos + k > bhi else bhi
                    else:
                        lo = pos if pos < dlo else dlo
                        hi = pos + k if pos + k > dhi else dhi
                    if len(cl) >= iov_max or size + k > batch_max or hi - lo > window:
                        q.put(_Batch(start, cl, blo, bhi, dlo, dhi, used))
                        if self.error is not None:
                            break
                        cl, start, size, used, bhi, dhi, blo, dlo = [], at, 0, 0, 0, 0, top, top
                        lo, hi = pos, pos + k
                    if is_copy:
                        blo, bhi = lo, hi
                        used += k
                    else:
                        dlo, dhi = lo, hi
                    cl.append((is_copy, pos, k))
                    size += k
                    at, pos, n = at + k, pos + k, n - k
                if self.error is not None:
                    break
            q.put(_Batch(start, cl, blo, bhi, dlo, dhi, used))
        finally:
            st.copy_cmds, st.copy_bytes, st.literal_cmds, st.literal_bytes = ncopy, copied, nlit, literal
            for _ in workers:
                q.put(None)
            for w in workers:
                w.join()
            os.close(self.dfd)
        if self.error is not None:
            raise self.error

    def _work(self, q: queue.Queue[_Batch | None]) -> None:
        while (b := q.get()) is not None:
            if self.error is None:
                try:
                    self._write(b)
                except BaseException as exc:  # handed to run()
                    self.error = exc

    def _write(self, b: _Batch) -> None:
        maps: list[mmap.mmap] = []
        views: list[memoryview] = []
        bufs: list[memoryview] = []
        bv = dv = memoryview(b"")
        bstart = dstart = 0
        try:
            if b.bhi:
                dense = b.bhi - b.blo <= 2 * b.used + _SPARSE
                bm, bstart = map_range(self.bfd, self.boff + b.blo, self.boff + b.bhi, populate=dense)
                maps.append(bm)
                bv = memoryview(bm)
                views.append(bv)
                bstart -= self.boff
            if b.dhi:
                dm, dstart = map_range(self.dfd, b.dlo, b.dhi, populate=True)
                maps.append(dm)
                dv = memoryview(dm)
                views.append(dv)
            bufs = [bv[p - bstart : p - bstart + n] if c else dv[p - dstart : p - dstart + n] for c, p, n in b.cmds]
            try:
                pwritev_all(self.ofd, bufs, b.at)
            except OSError as exc:
                where = self.sink.atomic.final if self.sink.atomic is not None else as_path("output")
                clear = storage_error(exc, where, "writing").message
                raise RsyncError(RsyncError.RS_IO_ERROR, f"write failed: {exc.strerror or exc}", message=clear) from exc
        finally:
            bufs.clear()
            for v in views:
                v.release()
            for m in maps:
                m.close()


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
