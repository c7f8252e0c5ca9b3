"""Patch application: `rdiff patch` (spec section 5), with librsync's error codes.

When the basis, the delta and the output are regular files, two threads write batches of adjacent
output at their own offsets, each with one pwritev from read-only mappings of the basis and delta
windows it needs (populated at once): every byte is copied once, by the kernel, on both cores, in
bounded memory. Otherwise (pipes) commands are applied in order, COPY by copy_file_range where it can.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..errors import RsyncError
from ..fsio import sha256_file, storage_error
from .format import DELTA_MAGIC, decode_opcode, librsync_job
from .streams import IOV_MAX, PathOrFile, Sink, Source, map_range, open_error, open_input, open_output, pwritev_all

if TYPE_CHECKING:
    import mmap
    import queue

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
            f = open(delta, "rb", buffering=BUF)  # noqa: SIM115
        except OSError as exc:
            raise open_error(delta, exc, "read") from exc
        with f:
            yield f
    else:
        yield delta if isinstance(delta, io.BufferedIOBase) else io.BufferedReader(delta, BUF)  # type: ignore[type-var]


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


def _need(f: BinaryIO, n: int, what: str = "") -> bytes:
    data = f.read(n)
    if len(data) < n:
        if what:
            raise _literal_cut_short()
        raise RsyncError(RsyncError.RS_INPUT_ENDED, message="delta is truncated (no END command)")
    return data


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
                        remaining = n
                        while remaining:
                            chunk = _need(dr, min(remaining, 4 << 20), "literal")
                            o.write(chunk)
                            remaining -= len(chunk)
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


class _Commands:
    """The commands of a delta, in order, as (is_copy, position, length): a copy's position is in the
    basis, a literal's in the delta (its bytes follow; the consumer reads or skips them before asking
    for the next command). Raises librsync's errors for a malformed delta."""

    def __init__(self, dr: BinaryIO) -> None:
        self.dr = dr
        self.consumed = 4

    def __iter__(self) -> Iterator[tuple[bool, int, int]]:
        dr = self.dr
        while True:
            opb = dr.read(1)
            if not opb:
                raise RsyncError(RsyncError.RS_INPUT_ENDED, job="patch", message="delta is truncated (no END)")
            self.consumed += 1
            kind, a, b = decode_opcode(opb[0])
            if kind == "end":
                return
            if kind == "literal":
                if a:
                    n = a
                else:
                    (n,) = struct.unpack(_FMT[b], _need(dr, b))
                    self.consumed += b
                    if n == 0 or n >= 1 << 63:
                        raise RsyncError(
                            RsyncError.RS_CORRUPT,
                            f"(rs_patch_s_literal) invalid length={_signed(n)} on LITERAL command",
                            job="patch",
                        )
                at = self.consumed
                self.consumed += n
                yield False, at, n
            elif kind == "copy":
                raw = _need(dr, a + b)
                self.consumed += a + b
                (pos,) = struct.unpack(_FMT[a], raw[:a])
                (n,) = struct.unpack(_FMT[b], raw[a:])
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
                yield True, pos, n
            else:
                raise RsyncError(
                    RsyncError.RS_CORRUPT,
                    f"(rs_patch_s_run) bogus command 0x{opb[0]:02x}",
                    job="patch",
                    message=f"delta is corrupt (bogus command 0x{opb[0]:02x} at byte {self.consumed - 1})",
                )


class _Batch:
    """Consecutive commands whose output is one contiguous range, written with one pwritev from
    read-only mappings of the basis and the delta windows they read."""

    __slots__ = ("at", "bhi", "blo", "cmds", "dhi", "dlo", "size")

    def __init__(self, at: int) -> None:
        self.at, self.size = at, 0
        self.cmds: list[tuple[bool, int, int]] = []
        self.blo = self.dlo = 1 << 63
        self.bhi = self.dhi = 0

    def add(self, is_copy: bool, pos: int, n: int) -> None:
        self.cmds.append((is_copy, pos, n))
        self.size += n
        if is_copy:
            self.blo, self.bhi = min(self.blo, pos), max(self.bhi, pos + n)
        else:
            self.dlo, self.dhi = min(self.dlo, pos), max(self.dhi, pos + n)

    def fits(self, is_copy: bool, pos: int, n: int) -> bool:
        if len(self.cmds) >= _IOV_MAX or self.size + n > _BATCH:
            return False
        lo, hi = (self.blo, self.bhi) if is_copy else (self.dlo, self.dhi)
        return hi == 0 or max(hi, pos + n) - min(lo, pos) <= _WINDOW


_BATCH = 16 << 20  # output bytes per batch
_WINDOW = 32 << 20  # most bytes of the basis (or of the delta) one batch maps
_IOV_MAX = IOV_MAX  # commands per batch: one pwritev


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
        dsize = os.fstat(self.dfd).st_size
        at, batch = 0, _Batch(0)
        try:
            for is_copy, pos, n in cmds:
                if is_copy:
                    _check_copy(self.src, pos, n)
                    st.copy_cmds += 1
                    st.copy_bytes += n
                else:
                    if pos + n > dsize:
                        raise _literal_cut_short()
                    cmds.dr.seek(n, os.SEEK_CUR)
                    st.literal_cmds += 1
                    st.literal_bytes += n
                while n:  # long commands in pieces, so that windows stay small
                    k = min(n, _BATCH)
                    if not batch.fits(is_copy, pos, k):
                        q.put(batch)
                        batch = _Batch(at)
                    batch.add(is_copy, pos, k)
                    at, pos, n = at + k, pos + k, n - k
                if self.error is not None:
                    break
            q.put(batch)
        finally:
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
                bm, bstart = map_range(self.bfd, self.boff + b.blo, self.boff + b.bhi, populate=True)
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
                where = self.sink.atomic.final if self.sink.atomic is not None else Path("output")
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
    h = hashlib.sha256()
    off = 0
    while chunk := src.read_at(off, 4 << 20):
        h.update(chunk)
        off += len(chunk)
    return h.hexdigest()


def _signed(n: int) -> int:
    return n - (1 << 64) if n >= 1 << 63 else n
