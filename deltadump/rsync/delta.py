"""Delta generation: `rdiff delta`, patch-compatible with librsync 2.3.2 (spec section 4).

The search follows librsync's greedy rule (at each position, the first window whose weak and strong
sums are in the signature), but never walks byte by byte in Python:

* After a match, the next windows are most likely the next basis blocks (most of a dump does not
  change), so a whole run of aligned windows is checked at once against the blocks that follow
  (`_chain`): weak sums vectorised, strong sums only where the weak ones agree, and in worker
  processes when the run is large.
* Otherwise the weak sums of every offset of a region are computed at once (prefix-sum form), a
  bitmap filter and a sorted table pick the candidates, and only those get a strong sum (`_scan`).

With `exact=True` the output is byte-identical to rdiff's; by default a matched run extends the
current COPY even where an identical block sits earlier in the basis, which is never larger.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from ..errors import RsyncError
from .format import DELTA_MAGIC, MAX_LITERAL, OP_END, SigParams, encode_copy, encode_literal_header, parse_sig_header
from .parallel import WorkerPool, want_workers, worker_state
from .streams import PathOrFile, Sink, Source, open_input, open_output
from .sums import U32, block_weak, rolling_weak, strong_blocks, strong_hasher, suffix_weak

SCAN_MIN = 256
SCAN_MAX = 8 << 20
CHAIN_MIN = 8  # blocks
CHAIN_MAX = 16 << 20
PARALLEL_RUN = 1 << 20
_MIX = U32(0x9E3779B1)


@dataclass
class DeltaStats:
    literal_cmds: int = 0
    literal_bytes: int = 0
    literal_cmdbytes: int = 0
    copy_cmds: int = 0
    copy_bytes: int = 0
    copy_cmdbytes: int = 0
    in_bytes: int = 0
    out_bytes: int = 0
    seconds: float = 0.0
    sig_blocks: int = 0
    block_len: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class Signature:
    """A loaded signature with the lookup structures the search needs."""

    def __init__(self, params: SigParams, body: bytes) -> None:
        self.params = params
        self.block_len = bl = params.block_len
        self.strong_len = sl = params.strong_len
        rl = 4 + sl
        nb = len(body) // rl
        if len(body) - nb * rl > 3:
            raise RsyncError(RsyncError.RS_INPUT_ENDED, job="loadsig")  # truncated inside a record
        self.nblocks = nb
        rec = np.frombuffer(body, dtype=np.uint8, count=nb * rl).reshape(nb, rl)
        self.weak = rec[:, :4].copy().view(">u4").ravel().astype(U32)
        self.strong = np.ascontiguousarray(rec[:, 4:])
        self.strong_bytes = self.strong.tobytes()
        self.order = np.argsort(self.weak, kind="stable")
        self.sorted_weak = self.weak[self.order]
        bits = min(24, max(10, int(nb).bit_length() + 4))
        self.filter_shift = U32(32 - bits)
        self.filter = np.zeros(1 << bits, dtype=bool)
        self.filter[self._mix(self.weak)] = True
        self.hasher = strong_hasher(params.strong)
        self._canon: np.ndarray | None = None
        _ = bl

    def _mix(self, h: np.ndarray) -> np.ndarray:
        return (h * _MIX) >> self.filter_shift

    @property
    def canon(self) -> np.ndarray:
        """For each block, the lowest index with the same weak and strong sums (librsync's choice)."""
        if self._canon is None:
            if self.nblocks == 0:
                self._canon = np.empty(0, dtype=np.int64)
            else:
                rl = 4 + self.strong_len
                rows = np.ascontiguousarray(
                    np.concatenate([self.weak.view(np.uint8).reshape(-1, 4), self.strong], axis=1)
                ).view(np.dtype((np.void, rl)))
                _, first, inverse = np.unique(rows.ravel(), return_index=True, return_inverse=True)
                self._canon = first[inverse.ravel()]
        return self._canon

    def candidates(self, h: np.ndarray) -> np.ndarray:
        """Offsets into h whose weak sum is in the signature (ascending)."""
        cand = np.flatnonzero(self.filter[self._mix(h)])
        if cand.size:
            hv = h[cand]
            idx = np.searchsorted(self.sorted_weak, hv)
            idx[idx >= self.nblocks] = self.nblocks - 1
            cand = cand[self.sorted_weak[idx] == hv]
        return cand

    def lookup(self, weak: int, window: bytes | memoryview) -> int:
        """The lowest block index whose sums equal the window's, or -1."""
        sw = self.sorted_weak
        lo = int(np.searchsorted(sw, weak, "left"))
        hi = int(np.searchsorted(sw, weak, "right"))
        if lo == hi:
            return -1
        sl = self.strong_len
        s = self.hasher(window)[:sl]
        sb = self.strong_bytes
        for i in self.order[lo:hi]:
            i = int(i)
            if sb[i * sl : i * sl + sl] == s:
                return i
        return -1


def load_signature(sig: PathOrFile) -> Signature:
    with open_input(sig) as src:
        chunks = []
        while True:
            data = src.read_at(sum(map(len, chunks)), 16 << 20)
            if not data:
                break
            chunks.append(data)
            src.release(sum(map(len, chunks)))
        raw = b"".join(chunks)
    params = parse_sig_header(raw[:12])
    return Signature(params, raw[12:])


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

    def _emit_literal(self, data: bytes | bytearray | memoryview) -> None:
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
                self._emit_literal(mv[i : i + MAX_LITERAL])
            mv.release()
            del self.lit[:n]

    def _flush_literal(self) -> None:
        if self.lit:
            self._emit_literal(self.lit)
            self.lit = bytearray()

    def copy(self, pos: int, n: int) -> None:
        self._flush_literal()
        if self.cpos >= 0 and self.cpos + self.clen == pos:
            self.clen += n
        else:
            self._flush_copy()
            self.cpos, self.clen = pos, n

    @property
    def copy_end(self) -> int:
        """Offset in the basis right after the pending COPY, or -1."""
        return self.cpos + self.clen if self.cpos >= 0 else -1

    def finish(self) -> None:
        self._flush_literal()
        self._flush_copy()
        self.out.append(OP_END)
        self._flush_out(force=True)


def _count_matching(sig: Signature, data: bytes, first: int) -> int:
    """How many leading blocks of `data` equal signature blocks first, first+1, ... (weak and strong)."""
    bl = sig.block_len
    m = len(data) // bl
    if m == 0:
        return 0
    arr = np.frombuffer(data, dtype=np.uint8, count=m * bl)
    eq = block_weak(arr, bl, sig.params.weak) == sig.weak[first : first + m]
    j = m if eq.all() else int(np.argmin(eq))
    if j == 0:
        return 0
    sl = sig.strong_len
    ours = np.frombuffer(strong_blocks(memoryview(data)[: j * bl], bl, sig.params.strong, sl), dtype=np.uint8)
    neq = (ours.reshape(j, sl) != sig.strong[first : first + j]).any(axis=1)
    return j if not neq.any() else int(np.argmax(neq))


def _worker_count(task: tuple[int, int, int]) -> int:
    fd, base, sig = worker_state()
    off, first, m = task
    return _count_matching(sig, os.pread(fd, m * sig.block_len, base + off), first)


class _Matcher:
    def __init__(self, sig: Signature, src: Source, enc: Encoder, exact: bool, pool: WorkerPool | None) -> None:
        self.sig = sig
        self.src = src
        self.enc = enc
        self.exact = exact
        self.pool = pool
        self.bl = sig.block_len
        self.kind = sig.params.weak
        self.chain_len = CHAIN_MIN

    def run(self) -> int:
        pos = 0
        sig, bl = self.sig, self.bl
        while True:
            end = self.enc.copy_end
            if end >= 0 and end % bl == 0:
                e = end // bl
                m = self._chain(pos, e)
                if m:
                    if self.exact:
                        canon = sig.canon
                        for j in range(m):
                            self.enc.copy(int(canon[e + j]) * bl, bl)
                    else:
                        self.enc.copy(e * bl, m * bl)
                    pos += m * bl
                    self.src.release(pos)
                    continue
            p, k, w = self._scan(pos)
            if k < 0:
                return p
            self.enc.copy(k * bl, w)
            pos = p + w
            self.src.release(pos)

    def _chain(self, pos: int, first: int) -> int:
        """Match consecutive aligned windows at pos against blocks first, first+1, ... (all full)."""
        sig, bl = self.sig, self.bl
        avail = sig.nblocks - 1 - first  # the last block may be short: left to _scan
        m = min(self.chain_len, avail)
        if m <= 0:
            return 0
        if self.pool is not None and m * bl >= PARALLEL_RUN and self.src.size is not None:
            m = min(m, (self.src.size - pos) // bl)
            if m <= 0:
                return 0
            half = (m + 1) // 2
            tasks = [(pos, first, half), (pos + half * bl, first + half, m - half)]
            c0, c1 = self.pool.map(_worker_count, tasks)
            got = c0 if c0 < half else half + c1
        else:
            data = self.src.read_at(pos, m * bl)
            m = len(data) // bl
            got = _count_matching(sig, data, first)
        if got == m:
            self.chain_len = min(self.chain_len * 2, max(1, CHAIN_MAX // bl))
        else:
            self.chain_len = CHAIN_MIN
        return got

    def _scan(self, pos: int) -> tuple[int, int, int]:
        """Find the first matching window at or after pos; literal bytes before it are emitted.

        Returns (position, block, window length), or (end of input, -1, 0)."""
        sig, bl, enc = self.sig, self.bl, self.enc
        region = max(SCAN_MIN, 2 * bl)  # grows 4x per empty region
        while True:
            need = region + bl - 1
            data = self.src.read_at(pos, need)
            at_eof = len(data) < need
            nwin = len(data) - bl + 1
            if nwin > 0:
                arr = np.frombuffer(data, dtype=np.uint8)
                h = rolling_weak(arr, bl, self.kind)
                mv = memoryview(data)
                for c in sig.candidates(h):
                    c = int(c)
                    k = sig.lookup(int(h[c]), mv[c : c + bl])
                    if k >= 0:
                        enc.literal(mv[:c])
                        return pos + c, k, bl
            else:
                nwin = 0
            if at_eof:
                tail = data[nwin:]
                k = self._tail(tail)
                if k >= 0:
                    c = nwin + k
                    enc.literal(memoryview(data)[:c])
                    return pos + c, sig.nblocks - 1, len(data) - c
                enc.literal(data)
                return pos + len(data), -1, 0
            enc.literal(memoryview(data)[:nwin])
            pos += nwin
            self.src.release(pos)
            region = min(region * 4, SCAN_MAX)

    def _tail(self, tail: bytes) -> int:
        """Offset of the first shrinking end-window that equals the basis's (short) last block, or -1."""
        sig = self.sig
        if not tail or sig.nblocks == 0:
            return -1
        last = sig.nblocks - 1
        h = suffix_weak(np.frombuffer(tail, dtype=np.uint8), self.kind)
        sl = sig.strong_len
        want = sig.strong_bytes[last * sl : last * sl + sl]
        for c in np.flatnonzero(h == sig.weak[last]):
            c = int(c)
            if sig.lookup(int(h[c]), tail[c:]) == last or sig.hasher(tail[c:])[:sl] == want:
                return c
        return -1


def _slack(src: Source, enc: Encoder, chunk: int) -> int:
    """No basis blocks: one LITERAL per input buffer, as librsync does."""
    total = 0
    for data in src.chunks(chunk):
        enc._emit_literal(data)
        total += len(data)
    return total


def delta(
    sig: PathOrFile | Signature,
    new: PathOrFile,
    out: PathOrFile,
    *,
    exact: bool = False,
    force: bool = True,
    parallel: bool | int = True,
    input_size: int = 0,
) -> DeltaStats:
    """Write to `out` a delta that turns the signature's basis into `new`; returns statistics."""
    t0 = time.perf_counter()
    s = sig if isinstance(sig, Signature) else load_signature(sig)
    stats = DeltaStats(sig_blocks=s.nblocks, block_len=s.block_len)
    with open_input(new) as src, open_output(out, force) as sink:
        enc = Encoder(sink, stats)
        if s.nblocks == 0:
            stats.in_bytes = _slack(src, enc, input_size or s.block_len)
        else:
            workers = want_workers(src.size, parallel)
            if workers and src.fd is not None:
                with WorkerPool((src.fd, src.base_off, s), workers) as pool:
                    stats.in_bytes = _Matcher(s, src, enc, exact, pool).run()
            else:
                stats.in_bytes = _Matcher(s, src, enc, exact, None).run()
        enc.finish()
    stats.seconds = time.perf_counter() - t0
    return stats


def _unused(_: BinaryIO) -> None:  # pragma: no cover
    pass
