"""Delta generation: `rdiff delta`, patch-compatible with librsync 2.3.2 (spec section 4).

This module writes the commands; the search that finds the matches is `search` (numpy, worker
processes, for large inputs) or `small` (pure Python, for small ones: no heavy import), both
following librsync's greedy rule to the same result. With `exact=True` the output is byte-identical
to rdiff's; by default a matched run extends the current COPY even where an identical block sits
earlier in the basis, which is never larger.
"""

from __future__ import annotations

import itertools
import os
import struct
import time

from ..errors import RsyncError
from .format import DELTA_MAGIC, MAX_LITERAL, OP_END, encode_copy, encode_literal_header, librsync_job, parse_sig_header
from .small import DELTA_MAX, SIG_MAX, SmallSignature
from .small import events as small_events
from .streams import PathOrFile, Sink, Source, open_input, open_output

TYPE_CHECKING = False  # no typing or collections import at run time: `deltadump rdiff` starts fast
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .search import Signature


LITERAL_READ = 4 << 20  # literal bytes read at a time


class DeltaStats:
    """What a delta did (a plain class: this module stays free of heavy imports, for start-up)."""

    def __init__(self, sig_blocks: int = 0, block_len: int = 0) -> None:
        self.literal_cmds = self.literal_bytes = self.literal_cmdbytes = 0
        self.copy_cmds = self.copy_bytes = self.copy_cmdbytes = 0
        self.in_bytes = self.out_bytes = 0
        self.seconds = 0.0
        self.sig_blocks, self.block_len = sig_blocks, block_len


class Encoder:
    """Writes delta commands: merges adjacent COPYs, splits literals at 32768 like librsync."""

    def __init__(self, sink: Sink, stats: DeltaStats) -> None:
        self.sink = sink
        self.stats = stats
        self.out = bytearray(struct.pack(">I", DELTA_MAGIC))
        self.lit = bytearray()
        self.cpos = -1
        self.clen = 0

    def _flush_out(self, force: bool = False) -> None:
        if force or len(self.out) >= 1 << 20:
            self.sink.write(self.out)
            self.stats.out_bytes += len(self.out)
            self.out = bytearray()

    def emit_literal(self, data: bytes | bytearray | memoryview) -> None:
        hdr = encode_literal_header(len(data))
        self.out += hdr
        self.out += data
        st = self.stats
        st.literal_cmds += 1
        st.literal_bytes += len(data)
        st.literal_cmdbytes += len(hdr)
        self._flush_out()

    def _flush_copy(self) -> None:
        if self.cpos >= 0:
            cmd = encode_copy(self.cpos, self.clen)
            self.out += cmd
            st = self.stats
            st.copy_cmds += 1
            st.copy_bytes += self.clen
            st.copy_cmdbytes += len(cmd)
            self.cpos = -1
            self._flush_out()

    def literal(self, data: bytes | memoryview) -> None:
        if not len(data):
            return
        self._flush_copy()
        self.lit += data
        if len(self.lit) > MAX_LITERAL:
            n = (len(self.lit) - 1) // MAX_LITERAL * MAX_LITERAL
            mv = memoryview(self.lit)
            for i in range(0, n, MAX_LITERAL):
                self.emit_literal(mv[i : i + MAX_LITERAL])
            mv.release()
            del self.lit[:n]

    def _flush_literal(self) -> None:
        if self.lit:
            self.emit_literal(self.lit)
            self.lit = bytearray()

    def copy(self, pos: int, n: int) -> None:
        self._flush_literal()
        if self.cpos >= 0 and self.cpos + self.clen == pos:
            self.clen += n
        else:
            self._flush_copy()
            self.cpos, self.clen = pos, n

    def finish(self) -> None:
        self._flush_literal()
        self._flush_copy()
        self.out.append(OP_END)
        self._flush_out(force=True)


def load_signature(sig: PathOrFile | bytes) -> Signature:
    """A signature loaded for the numpy search (compact arrays, read a slice at a time): a file, or
    its bytes (used where they lie, not copied)."""
    from .search import read_signature, signature_from_bytes

    if isinstance(sig, bytes):
        return signature_from_bytes(sig)
    with open_input(sig) as src:
        return read_signature(src)


def _encode(
    events: Iterable[tuple[int, int, int]], src: Source, enc: Encoder, bl: int, canon: Callable[[int], int] | None
) -> int:
    """Turn events into commands; literal bytes are read from src. Returns the input length. With
    `canon` (exact), events carry block numbers, each copied block is librsync's choice among equal
    blocks; otherwise events carry basis byte positions."""
    cur = 0
    for p, k, w in events:
        while cur < p:  # a slice at a time: a literal run may be as long as the input
            data = src.read_at(cur, min(p - cur, LITERAL_READ))
            if not data:
                raise RsyncError(RsyncError.RS_INPUT_ENDED, message="the new file ended while it was read")
            enc.literal(data)
            cur += len(data)
            src.release(cur)
        cur = p
        if k >= 0:
            if canon is not None:
                for j in range(0, w, bl):
                    enc.copy(canon(k + j // bl) * bl, min(bl, w - j))
            else:
                enc.copy(k, w)
            cur = p + w
        src.release(cur)
    return cur


def _slack(src: Source, enc: Encoder, chunk: int) -> int:
    """No basis blocks: one LITERAL per input buffer, as librsync does."""
    total = 0
    for data in src.chunks(chunk):
        enc.emit_literal(data)
        total += len(data)
    return total


def _is_small(src: Source, limit: int) -> bool:
    """Whether the input has at most `limit` bytes (a pipe's first bytes are read and kept to tell)."""
    if src.size is not None:
        return src.size <= limit
    return len(src.read_at(0, limit + 1)) <= limit


@librsync_job("delta")
def delta(
    sig: PathOrFile | Signature,
    new: PathOrFile,
    out: PathOrFile,
    *,
    exact: bool = False,
    force: bool = True,
    durable: bool = True,
    parallel: bool | int = True,
    input_size: int = 0,
    basis: PathOrFile | None = None,
) -> DeltaStats:
    """Write to `out` a delta that turns the signature's basis into `new`; returns statistics.

    When the caller also has the basis itself (and vouches that the signature was made from it),
    pass it as `basis`: runs of blocks are then confirmed by comparing bytes instead of hashing, and
    matches grow byte by byte past block edges, which makes deltas of database dumps (where changed
    rows move) several times smaller. The result is still a plain rdiff delta."""
    t0 = time.perf_counter()
    s: Signature | SmallSignature
    if isinstance(sig, str | os.PathLike) or hasattr(sig, "read"):
        with open_input(sig) as ssrc:  # type: ignore[arg-type]
            if _is_small(ssrc, SIG_MAX) and not exact and basis is None:
                raw = ssrc.read_at(0, SIG_MAX + 1)
                s = SmallSignature(parse_sig_header(raw[:12]), memoryview(raw)[12:])
            else:
                from .search import read_signature

                s = read_signature(ssrc)
    else:
        s = sig
    stats = DeltaStats(sig_blocks=s.nblocks, block_len=s.block_len)
    with open_input(new) as src, open_output(out, force, durable) as sink:
        enc = Encoder(sink, stats)
        if s.nblocks == 0:
            stats.in_bytes = _slack(src, enc, input_size or s.block_len)
        elif isinstance(s, SmallSignature) and _is_small(src, DELTA_MAX):
            data = src.read_at(0, DELTA_MAX + 1)
            bl = s.block_len
            matches = ((p, k * bl, w) for p, k, w in small_events(s, data))
            stats.in_bytes = _encode(itertools.chain(matches, [(len(data), -1, 0)]), src, enc, bl, None)
        else:
            import contextlib

            from .search import events as search_events
            from .search import widen

            big = widen(s) if isinstance(s, SmallSignature) else s
            with contextlib.ExitStack() as stack:
                bsrc = stack.enter_context(open_input(basis)) if basis is not None else None
                ev = stack.enter_context(search_events(big, src, exact=exact, parallel=parallel, basis=bsrc))
                stats.in_bytes = _encode(ev, src, enc, big.block_len, big.canon if exact else None)
        enc.finish()
    stats.seconds = time.perf_counter() - t0
    return stats
