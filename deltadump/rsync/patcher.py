"""Patch application: `rdiff patch` (spec section 5), with librsync's error codes.

COPY commands are served by the kernel (copy_file_range) when both basis and output are regular
files, so unchanged data never passes through Python.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import struct
import time
from collections.abc import Iterator
from typing import BinaryIO

from ..errors import RsyncError
from ..fsio import sha256_file
from .format import DELTA_MAGIC, decode_opcode, librsync_job
from .streams import PathOrFile, Sink, Source, open_error, open_input, open_output

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
        yield delta if isinstance(delta, io.BufferedIOBase) else io.BufferedReader(delta, BUF)  # type: ignore[arg-type]


class _Out:
    """Output with a write buffer, and kernel copies from the basis where possible."""

    def __init__(self, sink: Sink, basis: Source) -> None:
        self.sink = sink
        self.basis = basis
        self.buf = bytearray()
        self.fd = sink.fileno_for_copy() if basis.fd is not None else None
        self.total = 0

    def sha256(self) -> str:
        """sha256 of what was written (re-read from the output file when kernel copies were used)."""
        self.sink.flush()
        if self.sink.atomic is None:
            raise RsyncError(RsyncError.RS_IO_ERROR, message="result check needs an output file")
        return sha256_file(self.sink.atomic.tmp)[1]

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
        assert b.size is not None
        if pos + n > b.size:
            raise RsyncError(
                RsyncError.RS_INPUT_ENDED,
                f"(rs_file_copy_cb) unexpected eof on fd{b.fd}",
                message=f"delta copies bytes {pos}..{pos + n} beyond the end of the basis ({b.size} bytes)",
            )
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


def _need(f: BinaryIO, n: int, what: str = "") -> bytes:
    data = f.read(n)
    if len(data) < n:
        if what:
            raise RsyncError(
                RsyncError.RS_INPUT_ENDED,
                "(rs_tube_catchup) reached end of file while copying data",
                message="delta is truncated (literal data cut short)",
            )
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
        consumed = 4
        with open_output(out, force, durable) as sink:
            o = _Out(sink, src)
            while True:
                opb = dr.read(1)
                if not opb:
                    raise RsyncError(RsyncError.RS_INPUT_ENDED, job="patch", message="delta is truncated (no END)")
                consumed += 1
                kind, a, b = decode_opcode(opb[0])
                if kind == "end":
                    break
                if kind == "literal":
                    if a:
                        n = a
                    else:
                        (n,) = struct.unpack(_FMT[b], _need(dr, b))
                        consumed += b
                        if n == 0 or n >= 1 << 63:
                            raise RsyncError(
                                RsyncError.RS_CORRUPT,
                                f"(rs_patch_s_literal) invalid length={_signed(n)} on LITERAL command",
                                job="patch",
                            )
                    remaining = n
                    while remaining:
                        chunk = _need(dr, min(remaining, 4 << 20), "literal")
                        o.write(chunk)
                        remaining -= len(chunk)
                    consumed += n
                    st.literal_cmds += 1
                    st.literal_bytes += n
                elif kind == "copy":
                    raw = _need(dr, a + b)
                    consumed += a + b
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
                    o.copy(pos, n)
                    st.copy_cmds += 1
                    st.copy_bytes += n
                else:
                    raise RsyncError(
                        RsyncError.RS_CORRUPT,
                        f"(rs_patch_s_run) bogus command 0x{opb[0]:02x}",
                        job="patch",
                        message=f"delta is corrupt (bogus command 0x{opb[0]:02x} at byte {consumed - 1})",
                    )
            o.flush()
            st.out_bytes = o.total
            if result_sha256 is not None:
                got = o.sha256()
                if got != result_sha256:
                    raise RsyncError(
                        RsyncError.RS_CORRUPT,
                        message=f"patched result has sha256 {got[:12]}..., expected {result_sha256[:12]}...",
                        job="patch",
                    )
    st.in_bytes = consumed
    st.seconds = time.perf_counter() - t0
    return st


def _sha256_source(src: Source) -> str:
    h = hashlib.sha256()
    off = 0
    while chunk := src.read_at(off, 4 << 20):
        h.update(chunk)
        off += len(chunk)
    return h.hexdigest()


def _signed(n: int) -> int:
    return n - (1 << 64) if n >= 1 << 63 else n
