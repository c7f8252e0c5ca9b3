"""Pure-Python forms of the signature and of the delta search, for small inputs.

Scripts call `rdiff` on many small files; for those, importing numpy and starting worker processes
would cost far more than the work. These forms need only BLAKE2: weak sums by C-level iteration
(`sum(map(...))`) per block, and the search rolls the weak sum byte by byte. They give exactly what
the numpy forms give (the tests compare both, and rdiff, for many sizes around the thresholds), and
are used when the input is at most SIGNATURE_MAX (signature) or DELTA_MAX bytes with a signature of
at most SIG_MAX bytes (delta), where they are faster than importing numpy.
"""

from __future__ import annotations

import struct
from operator import mul

from ..errors import RsyncError
from .format import SigParams

TYPE_CHECKING = False  # no typing or collections import at run time: `deltadump rdiff` starts fast
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

try:  # hashlib's own BLAKE2, without loading OpenSSL as importing hashlib does (a few ms per command)
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - an interpreter without it
    from hashlib import blake2b

SIGNATURE_MAX = 2 << 20  # bytes of input signed here
DELTA_MAX = 256 << 10  # bytes of new input searched here (all literal, about 0.3 us a byte)
SIG_MAX = 256 << 10  # bytes of signature loaded here

RK_MULT = 0x08104225
MASK = 0xFFFFFFFF
ROLL_OFFSET = 31


def strong_hasher(kind: str) -> Callable[[bytes | memoryview], bytes]:
    """A function returning the full strong digest of one block."""
    if kind == "blake2":
        b2 = blake2b

        def blake2(data: bytes | memoryview) -> bytes:
            return b2(data, digest_size=32).digest()

        return blake2
    if kind == "md4":
        import hashlib

        try:
            hashlib.new("md4", b"")

            def md4_hashlib(data: bytes | memoryview) -> bytes:
                return hashlib.new("md4", data).digest()

            return md4_hashlib
        except ValueError:
            from Crypto.Hash import MD4

            def md4(data: bytes | memoryview) -> bytes:
                return bytes(MD4.new(bytes(data)).digest())

            return md4
    raise ValueError(f"unknown strong sum {kind!r}")


class WeakSum:
    """Weak sums of windows of one length (the block length), and of shorter ones."""

    def __init__(self, kind: str, n: int, longest: int) -> None:
        """`longest`: the longest window ever summed (the input's size): the block length comes from a
        signature file, and a hostile one (2**31 - 1) must not cost a weight per byte of a block."""
        self.kind, self.n = kind, n
        # RabinKarp: byte i of an n-byte window weighs M**(n-1-i); the last k weights only (M**(k-1)..1)
        k = min(n, longest) if kind == "rabinkarp" else 0
        self.powers = [0] * k
        x = 1
        for i in range(k - 1, -1, -1):
            self.powers[i] = x
            x = x * RK_MULT & MASK
        x = pow(RK_MULT, n, 1 << 32)
        self.top = x  # M**n
        # rolling: h' = h*M + new - M**n * (old + M - 1)  (RabinKarp, spec section 2.2)
        self.drop = [x * (o + RK_MULT - 1) & MASK for o in range(256)]

    def of(self, w: bytes | memoryview) -> int:
        n = len(w)
        if self.kind == "rabinkarp":
            if n == self.n:
                total: int = sum(map(mul, w, self.powers))
                return (self.top + total) & MASK
            total = sum(map(mul, w, self.powers[len(self.powers) - n :]))
            return (pow(RK_MULT, n, 1 << 32) + total) & MASK
        s1: int = sum(w) + ROLL_OFFSET * n
        s2: int = sum(map(mul, w, range(n, 0, -1))) + ROLL_OFFSET * n * (n + 1) // 2
        return ((s2 & 0xFFFF) << 16) | (s1 & 0xFFFF)


def records(data: bytes | memoryview, p: SigParams) -> bytes:
    """The signature records (weak u32 BE + truncated strong) of consecutive blocks of `data`."""
    bl, sl = p.block_len, p.strong_len
    weak = WeakSum(p.weak, bl, len(data)).of
    strong = strong_hasher(p.strong)
    pack = struct.Struct(">I").pack
    mv = memoryview(data)
    out = []
    for i in range(0, len(mv), bl):
        blk = mv[i : i + bl]
        out.append(pack(weak(blk)))
        out.append(strong(blk)[:sl])
    return b"".join(out)


class SmallSignature:
    """A small signature as Python lists and a dict from weak sum to block numbers (ascending)."""

    def __init__(self, params: SigParams, body: bytes | memoryview) -> None:
        self.params = params
        self.block_len = params.block_len
        self.strong_len = sl = params.strong_len
        rl = 4 + sl
        nb, extra = divmod(len(body), rl)
        if extra > 3:
            raise RsyncError(RsyncError.RS_INPUT_ENDED, job="loadsig")  # truncated inside a record
        self.nblocks = nb
        pairs = list(struct.iter_unpack(f">I{sl}s", body[: nb * rl]))
        self.weak: list[int] = [w for w, _ in pairs]
        self.strong: list[bytes] = [s for _, s in pairs]
        self.table: dict[int, list[int]] = {}
        for i, w in enumerate(self.weak):
            self.table.setdefault(w, []).append(i)
        self.hasher = strong_hasher(params.strong)

    def lookup(self, weak: int, window: bytes | memoryview) -> int:
        """The lowest block number whose sums equal the window's, or -1."""
        blocks = self.table.get(weak)
        if blocks is None:
            return -1
        s = self.hasher(window)[: self.strong_len]
        for i in blocks:
            if self.strong[i] == s:
                return i
        return -1


def events(sig: SmallSignature, data: bytes) -> Iterator[tuple[int, int, int]]:
    """The matches of the greedy search over `data`, as (position, block number, length): the same
    path as the numpy search (search.Matcher): after a match the following aligned windows are
    checked against the following blocks (by strong sums, and weak ones unless strong_proves; not the
    last block), otherwise the first window at or after the position whose sums are in the signature, and at the end the
    shrinking windows against the last block."""
    bl, nb, n = sig.block_len, sig.nblocks, len(data)
    if nb == 0:
        return
    ws = WeakSum(sig.params.weak, bl, n)
    strong, sl, hasher = sig.strong, sig.strong_len, sig.hasher
    weak = None if sig.params.strong_proves else sig.weak  # else a strong sum alone can collide
    mv = memoryview(data)
    pos, nxt = 0, -1
    while True:
        if nxt >= 0:  # a run of the blocks that follow
            m = 0
            while nxt + m < nb - 1 and pos + (m + 1) * bl <= n:
                w = mv[pos + m * bl : pos + (m + 1) * bl]
                if hasher(w)[:sl] != strong[nxt + m] or (weak is not None and ws.of(w) != weak[nxt + m]):
                    break
                m += 1
            if m:
                yield pos, nxt, m * bl
                pos += m * bl
                nxt += m
                continue
        q, k = _scan(sig, ws, mv, pos)
        if q >= 0:
            yield q, k, bl
            pos, nxt = q + bl, k + 1
            continue
        t = _tail(sig, ws, mv, max(pos, n - bl + 1))
        if t >= 0:
            yield t, nb - 1, n - t
        return


def _scan(sig: SmallSignature, ws: WeakSum, mv: memoryview, pos: int) -> tuple[int, int]:
    """The first offset q >= pos of a full window whose sums are in the signature and the lowest
    block number with those sums, or (-1, -1)."""
    bl, n = ws.n, len(mv)
    if pos + bl > n:
        return -1, -1
    table, lookup = sig.table, sig.lookup
    q = pos
    if ws.kind == "rabinkarp":
        h = ws.of(mv[q : q + bl])
        drop, mult = ws.drop, RK_MULT
        while True:
            if h in table and (k := lookup(h, mv[q : q + bl])) >= 0:
                return q, k
            if q + bl >= n:
                return -1, -1
            h = (h * mult + mv[q + bl] - drop[mv[q]]) & MASK
            q += 1
    w = mv[q : q + bl]
    s1 = (sum(w) + ROLL_OFFSET * bl) & 0xFFFF
    s2 = (sum(map(mul, w, range(bl, 0, -1))) + ROLL_OFFSET * bl * (bl + 1) // 2) & 0xFFFF
    while True:
        h = (s2 << 16) | s1
        if h in table and (k := lookup(h, mv[q : q + bl])) >= 0:
            return q, k
        if q + bl >= n:
            return -1, -1
        o = mv[q]
        s1 = (s1 + mv[q + bl] - o) & 0xFFFF
        s2 = (s2 + s1 - bl * (o + ROLL_OFFSET)) & 0xFFFF
        q += 1


def _tail(sig: SmallSignature, ws: WeakSum, mv: memoryview, start: int) -> int:
    """The first offset t >= start whose window up to the end equals the last block, or -1."""
    n = len(mv)
    if start >= n:
        return -1
    last = sig.nblocks - 1
    want_weak, want = sig.weak[last], sig.strong[last]
    sl, hasher = sig.strong_len, sig.hasher
    h = ws.of(mv[start:])
    if ws.kind == "rabinkarp":
        for t in range(start, n):
            if h == want_weak and hasher(mv[t:])[:sl] == want:
                return t
            k = n - t  # drop byte t from a k-byte window
            h = (h - pow(RK_MULT, k - 1, 1 << 32) * (mv[t] + RK_MULT - 1)) & MASK
        return -1
    s1, s2 = h & 0xFFFF, h >> 16
    for t in range(start, n):
        if ((s2 << 16) | s1) == want_weak and hasher(mv[t:])[:sl] == want:
            return t
        k = n - t
        o = mv[t] + ROLL_OFFSET
        s1 = (s1 - o) & 0xFFFF
        s2 = (s2 - k * o) & 0xFFFF
    return -1
