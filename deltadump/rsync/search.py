"""The delta search for large inputs, with numpy: librsync's greedy rule (at each position, the first
window whose weak and strong sums are in the signature), never walking byte by byte in Python.

* After a match, the next windows are most likely the next basis blocks (most of a dump does not
  change), so a whole run of aligned windows is checked against the blocks that follow (`_chain`):
  by strong sums, a group of blocks per comparison, and by weak sums too where a strong sum alone
  proves nothing (`SigParams.strong_proves`: MD4 collides at will, a short sum by chance); when the
  caller also has the basis, by comparing bytes (equal bytes have equal sums).
* Otherwise the weak sums of every offset of a region are computed at once (prefix-sum form), a
  bitmap filter and the sorted weak sums pick the candidates, and only those get a strong sum.
* Large inputs are searched by forked workers in pieces whose boundaries are stitched by running
  the sequential search until it rejoins the piece's path: the result equals a sequential search.

The signature is held in compact arrays, `Signature.nbytes` in all (see `format.sig_memory`), read
from its file a slice at a time; the input is read in bounded windows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import RsyncError
from .format import SigParams, filter_bits, parse_sig_header
from .parallel import WorkerPool, want_workers, worker_state
from .small import strong_hasher
from .streams import Source
from .sums import U32, block_weak, key_base, rolling_weak, strong_run, suffix_weak

if TYPE_CHECKING:
    from .small import SmallSignature

SCAN_MIN = 256
SCAN_MAX = 1 << 20  # most windows searched at once: the sums of a region take about 16 bytes per window
CHAIN_MIN = 1 << 16  # bytes read for the first run after a break (doubling while runs continue)
CHAIN_MAX = 8 << 20
MIX = 0x9E3779B1
_MIX = U32(MIX)
_UNMIX = U32(pow(MIX, -1, 1 << 32))
_LOW5 = U32(31)
_ONE = U32(1)
EXTEND_MAX = 1 << 16  # how far a match may grow into each neighbouring literal
LOAD_RECORDS = 1 << 18  # signature records read at a time
PIECE = 4 << 20  # input bytes one worker searches per task: small, so that a stretch of dense changes
#                  (in a real dump, a piece can take 3-5x as long as its neighbours) never leaves the other
#                  workers idle for long (measured on consecutive dumps: 4 MiB beat 2 and 8 MiB, and a
#                  quarter of the input per worker was 10-20 % slower)


class Signature:
    """A loaded signature, in compact arrays: the strong sums (strong_len bytes a block, in block
    order), the block numbers sorted by key (uint32, lowest number first among equal keys) with those
    keys (uint32), and a bitmap filter of the keys: strong_len + 8 bytes a block and at most 16 MiB
    (format.sig_memory). No Python object per block.

    A block's key is (weak sum - key_base) * MIX mod 2**32, a one-to-one map of the weak sums (MIX is
    odd): the search computes keys of windows directly (one pass fewer than weak sums), and the
    multiplication spreads the sums' bits over the filter's index."""

    def __init__(self, params: SigParams, weak: list[np.ndarray], strong: np.ndarray) -> None:
        """From the weak sums (uint32, in block order, in a one-element list that is emptied: they are
        not kept, and go before the filter is made) and the strong sums (nb * strong_len bytes, kept).
        At most strong_len + 16 bytes a block are held meanwhile, so loading stays within
        sig_memory too (as long as the filter has its full size)."""
        w = weak.pop()
        self.params = params
        self.block_len = params.block_len
        self.strong_len = sl = params.strong_len
        self.nblocks = nb = len(w)
        if nb >= 1 << 32:
            raise RsyncError(RsyncError.RS_MEM_ERROR, message=f"signature has too many blocks ({nb})")
        assert len(strong) == nb * sl
        self.last_weak = int(w[-1]) if nb else 0
        self.strong = strong
        self.strong_mv = memoryview(strong.data)
        self.key_base = key_base(self.block_len, params.weak)
        w -= U32(self.key_base)  # (wraps: uint32)
        w *= _MIX
        # sorted by (key, block number) as one 64-bit key: the lowest number first among equal keys,
        # as a stable argsort would give, in a fifth of its time (a plain sort of integers)
        key = w.astype(np.uint64)
        del w
        key <<= np.uint64(32)
        key |= np.arange(nb, dtype=np.uint64)
        key.sort()
        self.order = key.astype(np.uint32)  # the low 32 bits: the block number
        key >>= np.uint64(32)
        self.sorted_keys = key.astype(np.uint32)
        del key
        self._weak: np.ndarray | None = None
        # a bitmap of the keys in 32-bit words: a key's top bits pick the word, its low 5 bits the bit
        # (2**filter_bits(nb) bytes: 128 to 256 bits a block up to a million blocks, so under 1 % of
        # them set): a window's test is one gather and few passes, and so few false candidates pass
        # that the binary search costs little
        bits = filter_bits(nb) - 2  # log2 of the words
        self.word_shift = U32(32 - bits)
        self.filter = np.zeros(1 << bits, dtype=U32)
        for i in range(0, nb, LOAD_RECORDS):  # in slices: the words and bits are temporary arrays
            k = self.sorted_keys[i : i + LOAD_RECORDS]
            bit = k & _LOW5
            np.left_shift(_ONE, bit, out=bit)  # (in place: one temporary array fewer)
            np.bitwise_or.at(self.filter, k >> self.word_shift, bit)
        self.hasher = strong_hasher(params.strong)

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (the signature's memory, beyond a few small objects)."""
        arrays = (self.strong, self.order, self.sorted_keys, self.filter)
        return sum(int(a.nbytes) for a in arrays)

    def strong_of(self, i: int) -> bytes:
        sl = self.strong_len
        return self.strong_mv[i * sl : (i + 1) * sl].tobytes()

    def key_of(self, weak: int) -> int:
        return (weak - self.key_base) * MIX & 0xFFFFFFFF

    def candidates(self, keys: np.ndarray) -> tuple[list[int], list[int]]:
        """Offsets into `keys` (the keys of windows, as rolling_weak(..., MIX, key_base) gives them)
        whose key is a block's (ascending), and for each the first place of that key among the sorted
        keys."""
        words = self.filter.take(keys >> self.word_shift)
        words >>= keys & _LOW5
        words &= _ONE
        cand = words.nonzero()[0]
        if not cand.size:
            return [], []
        hv = keys.take(cand)
        idx = self.sorted_keys.searchsorted(hv)
        ok = self.sorted_keys.take(idx, mode="clip") == hv  # (a key past the last: idx == nblocks)
        return cand[ok].tolist(), idx[ok].tolist()

    def lookup_at(self, j: int, window: bytes | memoryview, strong: bytes | None = None) -> int:
        """The lowest block number whose sums equal the window's (or its weak sum, the one whose key
        is at place j of the sorted keys, and the given strong sum), or -1."""
        sk, order, nb = self.sorted_keys, self.order, self.nblocks
        k = sk[j]
        s = strong if strong is not None else self.hasher(window)[: self.strong_len]
        while j < nb and sk[j] == k:
            i = int(order[j])
            if self.strong_of(i) == s:
                return i
            j += 1
        return -1

    def lookup(self, weak: int, window: bytes | memoryview, strong: bytes | None = None) -> int:
        """The lowest block number whose sums equal the window's (or the given strong sum), or -1."""
        k = self.key_of(weak)
        j = int(self.sorted_keys.searchsorted(U32(k), "left"))
        if j == self.nblocks or self.sorted_keys[j] != k:
            return -1
        return self.lookup_at(j, window, strong)

    def weak_in_order(self) -> np.ndarray:
        """The weak sums in block order (made on first use, by exact deltas and where strong sums do not
        prove equal blocks: 4 more bytes a block)."""
        if self._weak is None:
            self._weak = w = np.empty(self.nblocks, dtype=U32)
            w[self.order] = self.sorted_keys
            w *= _UNMIX
            w += U32(self.key_base)
        return self._weak

    def canon(self, k: int) -> int:
        """The lowest block number with the same sums as block k (librsync's choice among equal blocks)."""
        return self.lookup(int(self.weak_in_order()[k]), b"", self.strong_of(k))


def read_signature(src: Source) -> Signature:
    """Load a signature from `src`, a slice of records at a time into preallocated arrays."""
    if src.size is not None:  # a file: its size gives the number of records
        return _load_sized(src.read_at, src.size, src.release)
    params = parse_sig_header(src.read_at(0, 12))
    sl = params.strong_len
    rl = 4 + sl
    # a pipe: slices of records, joined at the end
    weaks, strongs, off, extra = [], [], 12, 0
    while True:
        data = src.read_at(off, LOAD_RECORDS * rl)
        k = len(data) // rl
        if k:
            w, s = np.empty(k, dtype=U32), np.empty(k * sl, dtype=np.uint8)
            _fill(data, rl, w, s)
            weaks.append(w)
            strongs.append(s)
        off += k * rl
        src.release(off)
        if len(data) < LOAD_RECORDS * rl:
            extra = len(data) - k * rl
            break
    weak = np.concatenate(weaks) if weaks else np.empty(0, dtype=U32)
    strong = np.concatenate(strongs) if strongs else np.empty(0, dtype=np.uint8)
    held = [weak]
    del weak  # (the Signature's own: it frees the array once sorted)
    return _signature(params, held, strong, extra)


def signature_from_bytes(data: bytes) -> Signature:
    """A signature held in memory (as its bytes were checked, say), loaded without another copy of them."""
    view = memoryview(data)
    return _load_sized(lambda off, n: view[off : off + n], len(view))


def _load_sized(read_at: Callable[[int, int], bytes | memoryview], size: int,
                release: Callable[[int], None] | None = None) -> Signature:  # fmt: skip
    params = parse_sig_header(bytes(read_at(0, 12)))
    sl = params.strong_len
    rl = 4 + sl
    nb, extra = divmod(size - 12, rl)
    weak = np.empty(nb, dtype=U32)
    strong = np.empty(nb * sl, dtype=np.uint8)
    done = 0
    while done < nb:
        k = min(LOAD_RECORDS, nb - done)
        _fill(read_at(12 + done * rl, k * rl), rl, weak[done : done + k], strong[done * sl : (done + k) * sl])
        if release is not None:
            release(12 + (done + k) * rl)
        done += k
    held = [weak]
    del weak  # (the Signature's own: it frees the array once sorted)
    return _signature(params, held, strong, extra)


def _signature(params: SigParams, held: list[np.ndarray], strong: np.ndarray, extra: int) -> Signature:
    if extra > 3:
        raise RsyncError(RsyncError.RS_INPUT_ENDED, job="loadsig")  # truncated inside a record
    return Signature(params, held, strong)


def widen(small: SmallSignature) -> Signature:
    """The numpy form of a signature loaded as a small one."""
    strong = np.frombuffer(b"".join(small.strong), dtype=np.uint8).copy()
    return Signature(small.params, [np.array(small.weak, dtype=U32)], strong)


def _fill(data: bytes | memoryview, rl: int, weak: np.ndarray, strong: np.ndarray) -> None:
    rec = np.frombuffer(data, dtype=np.uint8, count=len(weak) * rl).reshape(len(weak), rl)
    weak[:] = rec[:, :4].copy().view(">u4").ravel()
    strong.reshape(len(weak), rl - 4)[:] = rec[:, 4:]


class Matcher:
    """librsync's greedy search over one input, as a stream of events.

    An event (p, k, w): from the last event's end up to p is literal; then, when k >= 0, the w bytes
    at p equal basis blocks k, k+1, ... (w may span several blocks); k = -1 only marks progress.
    With `basis` (the signature's own basis), runs of blocks are confirmed by comparing bytes."""

    def __init__(self, sig: Signature, src: Source, basis: Source | None = None) -> None:
        self.sig = sig
        self.src = src
        self.basis = basis
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
                m, broken = self._chain(pos, nxt)
                if m:
                    yield pos, nxt, m * bl
                    pos += m * bl
                    nxt += m
                    if not broken:
                        continue
                    if stop is not None and pos >= stop:
                        return
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

    def _chain(self, pos: int, first: int) -> tuple[int, bool]:
        """How many aligned windows at pos equal blocks first, first+1, ... (only full blocks, the
        last one is left to _scan), and whether the run ends there (the next window differs from the
        next block: no need to ask again). Checked by strong sums (and weak ones unless strong_proves),
        a group at a time, one comparison per group, stopping at the first group with a difference;
        or, with the basis, by comparing bytes."""
        sig, bl = self.sig, self.bl
        m = min(self.chain_len, sig.nblocks - 1 - first)
        if m <= 0:
            return 0, True
        data = self.src.read_at(pos, m * bl)
        m = len(data) // bl
        if self.basis is not None:
            got = _mismatch(data[: m * bl], self.basis.read_at(first * bl, m * bl)) // bl
        else:
            got = _count_matching(sig, memoryview(data), first, m)
        self.chain_len = min(self.chain_len * 2, max(1, CHAIN_MAX // bl)) if got == m else self.chain_min
        return got, got < m

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
                keys = rolling_weak(np.frombuffer(data, dtype=np.uint8), bl, self.kind, MIX, sig.key_base)
                mv = memoryview(data)
                for c, j in zip(*sig.candidates(keys), strict=True):
                    k = sig.lookup_at(j, mv[c : c + bl])
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
        for c in np.flatnonzero(h == sig.last_weak).tolist():
            if sig.hasher(tail[c:])[:sl] == want:
                return c
        return -1


GROUP = 32  # most blocks checked per comparison while a run continues


def _count_matching(sig: Signature, data: memoryview, first: int, m: int) -> int:
    """How many of the m leading blocks of `data` have the sums of blocks first, first+1, ...
    Groups grow from 2 blocks: a run that ends at once (often, after a scan's match) costs little."""
    bl, sl, kind = sig.block_len, sig.strong_len, sig.params.strong
    done, group = 0, 2
    while done < m:
        n = min(group, m - done)
        group = min(group * 2, GROUP)
        chunk = data[done * bl : (done + n) * bl]
        ours = strong_run(chunk, bl, kind, sl)
        theirs = sig.strong_mv[(first + done) * sl : (first + done + n) * sl]
        good = n if ours == theirs else _common_records(ours, theirs, sl)
        if good and not sig.params.strong_proves:  # and the weak sums, as librsync compares both
            wrong = np.flatnonzero(
                block_weak(np.frombuffer(chunk[: good * bl], dtype=np.uint8), bl, sig.params.weak)
                != sig.weak_in_order()[first + done : first + done + good]
            )
            if wrong.size:
                good = int(wrong[0])
        if good < n:
            return done + good
        done += n
    return m


def _common_records(a: bytes, b: bytes | memoryview, size: int) -> int:
    """How many leading `size`-byte records of a and b are equal (a != b), by bisection."""
    lo, hi = 0, min(len(a), len(b)) // size  # records [0, lo) equal; the first difference is before hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[: mid * size] == b[: mid * size]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def to_bytes(events: Iterable[tuple[int, int, int]], bl: int) -> Iterator[tuple[int, int, int]]:
    """Events with basis byte positions instead of block numbers."""
    for p, k, w in events:
        yield (p, k * bl, w) if k >= 0 else (p, -1, 0)


def _mismatch(a: bytes, b: bytes, reverse: bool = False) -> int:
    """Length of the common prefix (or suffix) of a and b."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    if not reverse and a[:n] == b[:n]:
        return n
    x = np.frombuffer(a, dtype=np.uint8)
    y = np.frombuffer(b, dtype=np.uint8)
    x, y = (x[len(x) - n :][::-1], y[len(y) - n :][::-1]) if reverse else (x[:n], y[:n])
    neq = x != y
    return n if not neq.any() else int(np.argmax(neq))


def extend(
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


def _piece_events(task: tuple[int, int]) -> np.ndarray:
    """Worker: the events of the piece [start, stop) (the last may run past stop)."""
    fd, base, size, sig, basis = worker_state()
    start, stop = task
    src = Source.from_fd(fd, base, size)
    bsrc = Source.from_fd(*basis) if basis is not None else None
    ev = [e for e in Matcher(sig, src, bsrc).events(start, stop) if e[1] >= 0]
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


def _parallel_events(
    sig: Signature, src: Source, basis: Source | None, pool: WorkerPool
) -> Iterator[tuple[int, int, int]]:
    """All events of the input, matched in pieces by the workers, stitched to equal a sequential run."""
    assert src.size is not None
    bl = sig.block_len
    # pieces start on block boundaries: where the input repeats the basis in place (long runs of
    # equal blocks, zeros), the sequential path then stands on the piece's path at once
    step = max(1, PIECE // bl) * bl
    bounds = [(s, min(s + step, src.size)) for s in range(0, src.size, step)]
    pos = 0
    for (start, _stop), ev in zip(bounds, pool.imap(_piece_events, bounds), strict=True):
        if pos > start:
            # The previous piece ran past this piece's start: follow the sequential search from pos
            # until it stands where this piece's search stood.
            m = Matcher(sig, src, basis)
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


@contextlib.contextmanager
def events(
    sig: Signature, src: Source, *, exact: bool, parallel: bool | int, basis: Source | None
) -> Iterator[Iterable[tuple[int, int, int]]]:
    """The search's events for `src`: block numbers with `exact`, else basis byte positions (grown
    byte by byte into the literal around them when `basis` is given)."""
    with contextlib.ExitStack() as stack:
        workers = want_workers(src.size, parallel)
        ev: Iterable[tuple[int, int, int]]
        if workers and src.fd is not None:
            state: Any = (src.fd, src.base_off, src.size, sig, _fd_of(basis))
            pool = stack.enter_context(WorkerPool(state, workers))
            ev = _parallel_events(sig, src, basis, pool)
        else:
            ev = Matcher(sig, src, basis).events()
        if not exact:
            ev = to_bytes(ev, sig.block_len)
            if basis is not None:
                ev = extend(ev, src, basis)
        yield ev


def _fd_of(basis: Source | None) -> tuple[int, int, int] | None:
    if basis is None or basis.fd is None or basis.size is None:
        return None
    return basis.fd, basis.base_off, basis.size
