"""Delta generation: `rdiff delta`, patch-compatible with librsync 2.3.2 (spec section 4).

The search follows librsync's greedy rule (at each position, the first window whose weak and strong
sums are in the signature), but never walks byte by byte in Python:

* After a match, the next windows are most likely the next basis blocks (most of a dump does not
  change), so a whole run of aligned windows is checked at once against the blocks that follow
  (`_chain`): by strong sums, a group of blocks per comparison, stopping at the first group with a
  difference (weak sums would only repeat what the strong ones prove), in worker processes when
  the input is large.
* Otherwise the weak sums of every offset of a region are computed at once (prefix-sum form), a
  bitmap filter and a sorted table pick the candidates, and only those get a strong sum (`_scan`).

With `exact=True` the output is byte-identical to rdiff's; by default a matched run extends the
current COPY even where an identical block sits earlier in the basis, which is never larger.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ..errors import RsyncError
from .format import (
    DELTA_MAGIC,
    MAX_LITERAL,
    OP_END,
    SigParams,
    encode_copy,
    encode_literal_header,
    librsync_job,
    parse_sig_header,
)
from .parallel import WorkerPool, want_workers, worker_state
from .streams import PathOrFile, Sink, Source, open_input, open_output
from .sums import U32, rolling_weak, strong_blocks, strong_hasher, suffix_weak

SCAN_MIN = 256
SCAN_MAX = 8 << 20
CHAIN_MIN = 1 << 16  # bytes read for the first run after a break (doubling while runs continue)
CHAIN_MAX = 16 << 20
_MIX = U32(0x9E3779B1)
EXTEND_MAX = 1 << 16  # how far a match may grow into each neighbouring literal


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

    def __init__(self, params: SigParams, body: bytes | memoryview) -> None:
        self.params = params
        self.block_len = params.block_len
        self.strong_len = sl = params.strong_len
        rl = 4 + sl
        nb = len(body) // rl
        if len(body) - nb * rl > 3:
            raise RsyncError(RsyncError.RS_INPUT_ENDED, job="loadsig")  # truncated inside a record
        self.nblocks = nb
        rec = np.frombuffer(body, dtype=np.uint8, count=nb * rl).reshape(nb, rl)
        self.weak = rec[:, :4].copy().view(">u4").ravel().astype(U32)
        self.strong = rec[:, 4:]  # a view into the file's bytes
        self.strong_bytes = np.ascontiguousarray(self.strong).tobytes()  # all of them, to compare runs at once
        self.order = np.argsort(self.weak, kind="stable")
        self.sorted_weak = self.weak[self.order]
        bits = min(24, max(10, int(nb).bit_length() + 4))
        self.filter_shift = U32(32 - bits)
        self.filter = np.zeros(1 << bits, dtype=bool)
        self.filter[self._mix(self.weak)] = True
        self.hasher = strong_hasher(params.strong)
        self._canon: np.ndarray | None = None

    def strong_of(self, i: int) -> bytes:
        return self.strong[i].tobytes()

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

    def lookup(self, weak: int | np.uint32, window: bytes | memoryview) -> int:
        """The lowest block index whose sums equal the window's, or -1."""
        sw = self.sorted_weak
        w = U32(weak)
        lo = int(sw.searchsorted(w, "left"))
        hi = int(sw.searchsorted(w, "right"))
        if lo == hi:
            return -1
        s = self.hasher(window)[: self.strong_len]
        for i in self.order[lo:hi].tolist():
            if self.strong_of(i) == s:
                return i
        return -1


def load_signature(sig: PathOrFile) -> Signature:
    with open_input(sig) as src:
        raw = src.f.read() if src.fd is not None else b"".join(src.chunks(16 << 20))
    params = parse_sig_header(raw[:12])
    return Signature(params, memoryview(raw)[12:])


class Encoder:
    """Writes delta commands: merges adjacent COPYs, splits literals at 32768 like librsync."""

    def __init__(self, sink: Sink, stats: DeltaStats) -> None:
        self.sink = sink
        self.stats = stats
        self.out = bytearray(struct.pack(">I", DELTA_MAGIC))
        self.lit = bytearray()
        self.cpos = -1
        self.clen = 0
        self.sig_canon: np.ndarray | None = None

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

    def finish(self) -> None:
        self._flush_literal()
        self._flush_copy()
        self.out.append(OP_END)
        self._flush_out(force=True)


def _count_matching(sig: Signature, data: bytes, first: int) -> int:
    """How many leading blocks of `data` equal signature blocks first, first+1, ... Checked by strong
    sum alone, GROUP blocks at a time (one bytes comparison per group), stopping at the first group
    with a difference: where a run continues, the weak sums would only repeat what the strong ones
    prove (a valid signature's weak sum is a function of the same bytes)."""
    bl, sl = sig.block_len, sig.strong_len
    m = len(data) // bl
    mv = memoryview(data)
    kind = sig.params.strong
    strong = sig.strong_bytes
    done, group = 0, 2  # groups grow: a run that ends at once (often, after a scan's match) costs little
    while done < m:
        n = min(group, m - done)
        group = min(group * 2, GROUP)
        ours = strong_blocks(mv[done * bl : (done + n) * bl], bl, kind, sl)
        theirs = strong[(first + done) * sl : (first + done + n) * sl]
        if ours != theirs:
            i = 0
            while ours[i * sl : (i + 1) * sl] == theirs[i * sl : (i + 1) * sl]:
                i += 1
            return done + i
        done += n
    return m


GROUP = 32  # most blocks checked per comparison while a run continues


class _Matcher:
    """librsync's greedy search over one input, as a stream of events.

    An event (p, k, w): from the last event's end up to p is literal; then, when k >= 0, the w bytes
    at p equal basis blocks k, k+1, ... (w may span several blocks); k = -1 only marks progress.
    """

    def __init__(self, sig: Signature, src: Source) -> None:
        self.sig = sig
        self.src = src
        self.bl = sig.block_len
        self.kind = sig.params.weak
        self.chain_min = max(2, CHAIN_MIN // self.bl)
        self.chain_len = self.chain_min

    def events(self, pos: int = 0, stop: int | None = None) -> Iterator[tuple[int, int, int]]:
        """Events from `pos` until the input ends or an event ends at or after `stop`."""
        bl = self.bl
        nxt = -1  # basis block expected next (after a match), or -1
        while stop is None or pos < stop:
            if nxt >= 0:
                m = self._chain(pos, nxt)
                if m:
                    yield pos, nxt, m * bl
                    pos += m * bl
                    nxt += m
                    continue
            ev = None
            for ev in self._scan(pos):
                if ev[1] < 0:
                    yield ev
            assert ev is not None
            p, k, w = ev
            if k < 0:
                return
            yield ev
            pos = p + w
            nxt = k + 1 if w == bl else -1

    def _chain(self, pos: int, first: int) -> int:
        """How many aligned windows at pos equal blocks first, first+1, ... (only full blocks)."""
        sig, bl = self.sig, self.bl
        m = min(self.chain_len, sig.nblocks - 1 - first)  # the last block may be short: left to _scan
        if m <= 0:
            return 0
        data = self.src.read_at(pos, m * bl)
        m = len(data) // bl
        got = _count_matching(sig, data, first)
        self.chain_len = min(self.chain_len * 2, max(1, CHAIN_MAX // bl)) if got == m else self.chain_min
        return got

    def _scan(self, pos: int) -> Iterator[tuple[int, int, int]]:
        """Progress events, then the first match at or after pos, or (end of input, -1, 0)."""
        sig, bl = self.sig, self.bl
        region = max(SCAN_MIN, 2 * bl)  # grows 4x per region without a match
        while True:
            need = region + bl - 1
            data = self.src.read_at(pos, need)
            at_eof = len(data) < need
            nwin = max(0, len(data) - bl + 1)
            if nwin:
                h = rolling_weak(np.frombuffer(data, dtype=np.uint8), bl, self.kind)
                mv = memoryview(data)
                for c in sig.candidates(h).tolist():
                    k = sig.lookup(h[c], mv[c : c + bl])
                    if k >= 0:
                        yield pos + c, k, bl
                        return
            if at_eof:
                c = self._tail(data[nwin:])
                if c >= 0:
                    yield pos + nwin + c, sig.nblocks - 1, len(data) - nwin - c
                else:
                    yield pos + len(data), -1, 0
                return
            pos += nwin
            yield pos, -1, 0
            region = min(region * 4, SCAN_MAX)

    def _tail(self, tail: bytes) -> int:
        """Offset of the first shrinking end-window equal to the basis's last block, or -1."""
        sig = self.sig
        if not tail or sig.nblocks == 0:
            return -1
        last = sig.nblocks - 1
        h = suffix_weak(np.frombuffer(tail, dtype=np.uint8), self.kind)
        sl = sig.strong_len
        want = sig.strong_of(last)
        for c in np.flatnonzero(h == sig.weak[last]).tolist():
            if sig.hasher(tail[c:])[:sl] == want:
                return c
        return -1


def _to_bytes(events: Iterable[tuple[int, int, int]], bl: int) -> Iterator[tuple[int, int, int]]:
    """Events with basis byte positions instead of block indices."""
    for p, k, w in events:
        yield (p, k * bl, w) if k >= 0 else (p, -1, 0)


def _mismatch(a: bytes, b: bytes, reverse: bool = False) -> int:
    """Length of the common prefix (or suffix) of a and b."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x = np.frombuffer(a, dtype=np.uint8)
    y = np.frombuffer(b, dtype=np.uint8)
    x, y = (x[len(x) - n :][::-1], y[len(y) - n :][::-1]) if reverse else (x[:n], y[:n])
    neq = x != y
    return n if not neq.any() else int(np.argmax(neq))


def _extend(
    events: Iterable[tuple[int, int, int]], src: Source, basis: Source, limit: int = EXTEND_MAX
) -> Iterator[tuple[int, int, int]]:
    """Grow every match byte by byte into the literal bytes around it, where they equal the basis
    bytes around the matched range (the edges of moved rows). Needs the basis itself."""
    prev: tuple[int, int, int] | None = None
    floor = 0  # no match may grow below this new-file offset
    for p, b, w in events:
        if b < 0:
            if prev is not None:
                yield prev
                prev = None
            floor = p
            yield p, b, w
            continue
        if prev is not None:
            pp, pb, pw = prev
            n = min(p - (pp + pw), limit)
            if n > 0:
                pw += _mismatch(src.read_at(pp + pw, n), basis.read_at(pb + pw, n))
            yield pp, pb, pw
            floor = pp + pw
        n = min(p - floor, b, limit)
        g = _mismatch(src.read_at(p - n, n), basis.read_at(b - n, n), reverse=True) if n > 0 else 0
        prev = (p - g, b - g, w + g)
    if prev is not None:
        pp, pb, pw = prev
        if src.size is not None:
            n = min(src.size - (pp + pw), limit)
            if n > 0:
                pw += _mismatch(src.read_at(pp + pw, n), basis.read_at(pb + pw, n))
        yield pp, pb, pw


def _encode(events: Iterable[tuple[int, int, int]], src: Source, enc: Encoder, exact: bool, bl: int) -> int:
    """Turn events into commands; literal bytes are read from src. Returns the input length.
    With exact, events carry block indices (for librsync's choice among equal blocks); otherwise
    basis byte positions."""
    cur = 0
    for p, k, w in events:
        if p > cur:
            enc.literal(src.read_at(cur, p - cur))
        cur = p
        if k >= 0:
            if exact:
                c = enc.sig_canon
                assert c is not None
                for j in range(0, w, bl):
                    enc.copy(int(c[k + j // bl]) * bl, min(bl, w - j))
            else:
                enc.copy(k, w)
            cur = p + w
        src.release(cur)
    return cur


def _piece_events(task: tuple[int, int]) -> np.ndarray:
    """Worker: the events of the piece [start, stop) (the last may run past stop)."""
    fd, base, size, sig = worker_state()
    start, stop = task
    src = Source.from_fd(fd, base, size)
    ev = [e for e in _Matcher(sig, src).events(start, stop) if e[1] >= 0]
    return np.array(ev, dtype=np.int64).reshape(-1, 3)


def _visited(ev: np.ndarray, bl: int, pos: int) -> int:
    """If the search path recorded in `ev` stands at `pos` (so the paths have joined), the index of the
    first event at or after pos, splitting a block run when pos falls on one of its block boundaries;
    else -1 (pos lies inside one of its matched blocks)."""
    i = int(np.searchsorted(ev[:, 0], pos, "right")) - 1  # last event starting at or before pos
    if i < 0:
        return 0
    p, _, w = (int(x) for x in ev[i])
    if pos >= p + w:
        return i + 1
    if (pos - p) % bl == 0 and w > bl:
        return i  # caller splits the run
    return i if pos == p else -1


def _parallel_events(sig: Signature, src: Source, pool: WorkerPool, pieces: int) -> Iterator[tuple[int, int, int]]:
    """All events of the input, matched in pieces by the workers, stitched to equal a sequential run."""
    assert src.size is not None
    bl = sig.block_len
    step = max(bl, -(-src.size // pieces))
    bounds = [(s, min(s + step, src.size)) for s in range(0, src.size, step)]
    results = pool.imap(_piece_events, bounds)
    pos = 0
    for (start, _stop), ev in zip(bounds, results, strict=True):
        if pos > start:
            # The previous piece ran past this piece's start: follow the sequential search from pos
            # until it stands where this piece's search stood.
            m = _Matcher(sig, src)
            while True:
                j = _visited(ev, bl, pos)
                if j >= 0:
                    break
                e = next(m.events(pos, pos + 1))
                yield e
                pos = e[0] + e[2] if e[1] >= 0 else e[0]
            if j < len(ev):
                p, k, w = (int(x) for x in ev[j])
                if p < pos:  # split a block run at pos
                    cut = pos - p
                    ev = ev[j:].copy()
                    ev[0] = (pos, k + cut // bl, w - cut)
                    j = 0
            ev = ev[j:]
        for p, k, w in ev.tolist():
            yield p, k, w
            pos = p + w
    if pos < src.size:
        yield src.size, -1, 0


def _slack(src: Source, enc: Encoder, chunk: int) -> int:
    """No basis blocks: one LITERAL per input buffer, as librsync does."""
    total = 0
    for data in src.chunks(chunk):
        enc._emit_literal(data)
        total += len(data)
    return total


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
    pass it as `basis`: matches then grow byte by byte past block edges, which makes deltas of
    database dumps (where changed rows move) several times smaller. The result is still a plain
    rdiff delta."""
    t0 = time.perf_counter()
    s = sig if isinstance(sig, Signature) else load_signature(sig)
    stats = DeltaStats(sig_blocks=s.nblocks, block_len=s.block_len)
    with open_input(new) as src, open_output(out, force, durable) as sink:
        enc = Encoder(sink, stats)
        enc.sig_canon = s.canon if exact else None
        if s.nblocks == 0:
            stats.in_bytes = _slack(src, enc, input_size or s.block_len)
        else:
            with contextlib.ExitStack() as stack:
                workers = want_workers(src.size, parallel)
                if workers and src.fd is not None:
                    pool = stack.enter_context(WorkerPool((src.fd, src.base_off, src.size, s), workers))
                    events: Iterable[tuple[int, int, int]] = _parallel_events(s, src, pool, pieces=4 * workers)
                else:
                    events = _Matcher(s, src).events()
                if not exact:
                    events = _to_bytes(events, s.block_len)
                    if basis is not None:
                        events = _extend(events, src, stack.enter_context(open_input(basis)))
                stats.in_bytes = _encode(events, src, enc, exact, s.block_len)
        enc.finish()
    stats.seconds = time.perf_counter() - t0
    return stats
