"""Weak (RabinKarp, rollsum) and strong (BLAKE2b-256, MD4) checksums of many blocks at once, with numpy.

Weak sums come in two shapes: `block_weak` for consecutive blocks (signatures, aligned runs) and
`rolling_weak` for every window offset of a region (the delta's search), both from the wrapping
prefix-sum forms of spec section 2, so no Python loop touches a byte.
"""

from __future__ import annotations

from hashlib import blake2b

import numpy as np

from .small import strong_hasher

RK_MULT = 0x08104225
RK_INV = 0x98F009AD
ROLL_OFFSET = 31
U32 = np.uint32

_pow_cache: dict[int, np.ndarray] = {}


def _powers(base: int, n: int) -> np.ndarray:
    """base**i mod 2^32 for i in range(n), uint32 (cached, grown on demand)."""
    have = _pow_cache.get(base)
    if have is None or len(have) < n:
        m = max(n, 1 << 16, 0 if have is None else min(2 * len(have), POWERS_MAX))
        arr = np.full(m, base, dtype=np.uint32)
        arr[0] = 1
        np.cumprod(arr, dtype=np.uint32, out=arr)  # uint32 products wrap: mod 2**32, as wanted
        have = _pow_cache[base] = arr
    return have[:n]


POWERS_MAX = (1 << 20) + (1 << 16)  # powers kept ahead of need: a scan's region and a block or so

_scaled_cache: dict[int, np.ndarray] = {}


def _scaled_powers(mult: int, n: int) -> np.ndarray:
    """RK_MULT**i * mult mod 2^32 for i in range(n), uint32 (cached, grown with _powers)."""
    if mult == 1:
        return _powers(RK_MULT, n)
    have = _scaled_cache.get(mult)
    if have is None or len(have) < n:
        _powers(RK_MULT, n)  # grows the cache of powers, which is then scaled whole
        have = _scaled_cache[mult] = _pow_cache[RK_MULT] * U32(mult)
    return have[:n]


_rk_pows: dict[int, int] = {}


def rk_pow(n: int) -> int:
    """RK_MULT**n mod 2^32 (cached: the search asks for it at every region)."""
    p = _rk_pows.get(n)
    if p is None:
        p = pow(RK_MULT, n, 1 << 32)
        if len(_rk_pows) < 64:  # block lengths (tails have other lengths, once each)
            _rk_pows[n] = p
    return p


_block_consts: dict[tuple[int, str], tuple[np.ndarray, np.uint32, np.uint32]] = {}


def _consts(block_len: int, kind: str) -> tuple[np.ndarray, np.uint32, np.uint32]:
    """Per block length: the weights of each byte in a block and the constant terms."""
    key = (block_len, kind)
    c = _block_consts.get(key)
    if c is None:
        if kind == "rabinkarp":
            c = (_powers(RK_MULT, block_len)[::-1].copy(), U32(rk_pow(block_len)), U32(0))
        else:
            c = (np.arange(block_len, 0, -1, dtype=U32), U32(ROLL_OFFSET * block_len),
                 U32(ROLL_OFFSET * block_len * (block_len + 1) // 2 & 0xFFFFFFFF))  # fmt: skip
        _block_consts[key] = c
    return c


def block_weak(data: np.ndarray, block_len: int, kind: str) -> np.ndarray:
    """Weak sums of consecutive blocks of `data` (uint8); the last block may be short."""
    n = len(data)
    nfull = n // block_len
    rem = n - nfull * block_len
    out = np.empty(nfull + (1 if rem else 0), dtype=U32)
    if nfull:
        full = data[: nfull * block_len].reshape(nfull, block_len)
        # einsum's sum of products runs in uint32 (wrapping, as the sums are defined) without the
        # uint32 copy of every byte that `full * weights` would make
        if kind == "rabinkarp":
            pw, top, _ = _consts(block_len, kind)
            np.add(_dot(full, pw), top, out=out[:nfull])
        else:
            wts, c1, c2 = _consts(block_len, kind)
            s1 = full.sum(axis=1, dtype=U32) + c1
            s2 = _dot(full, wts) + c2
            out[:nfull] = ((s2 & 0xFFFF) << 16) | (s1 & 0xFFFF)
    if rem:
        out[-1] = weak_one(data[nfull * block_len :], kind)
    return out


def _dot(rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each row (uint8) times the weights (uint32), summed modulo 2**32."""
    out: np.ndarray = np.einsum("ij,j->i", rows, weights, dtype=U32, casting="unsafe")
    return out


def weak_one(data: np.ndarray | bytes, kind: str) -> int:
    """Weak sum of one window."""
    arr = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes | bytearray | memoryview) else data
    n = len(arr)
    if kind == "rabinkarp":
        pw = _powers(RK_MULT, n)[::-1]
        return (int((arr * pw).sum(dtype=U32)) + rk_pow(n)) & 0xFFFFFFFF
    s1 = int(arr.sum(dtype=np.uint64)) + ROLL_OFFSET * n
    s2 = int((arr * np.arange(n, 0, -1, dtype=np.uint64)).sum(dtype=np.uint64)) + ROLL_OFFSET * n * (n + 1) // 2
    return ((s2 & 0xFFFF) << 16) | (s1 & 0xFFFF)


def rolling_weak(data: np.ndarray, n: int, kind: str, mult: int = 1, minus: int = 0) -> np.ndarray:
    """Weak sums of every window data[p:p+n], p = 0 .. len(data)-n (uint32), less `minus` and times
    `mult` (mod 2**32: the search's keys, `(weak - key_base(n, kind)) * MIX`, come out at no extra pass)."""
    L = len(data)
    count = L - n + 1
    if count <= 0:
        return np.empty(0, dtype=U32)
    if kind == "rabinkarp":
        # h(p) = M^n + M^(p+n-1) * (Q[p+n] - Q[p]),  Q[k] = sum_{i<k} x_i * Minv^i = c[k-1] (few passes
        # and calls: the search of new data is made of them, and after each change numpy's cost per
        # call is what counts; add.accumulate in uint32 is the cheapest running sum)
        c: np.ndarray = np.multiply(data, _powers(RK_INV, L), dtype=U32)
        np.add.accumulate(c, out=c)
        out = np.empty(count, dtype=U32)
        out[0] = c[n - 1]
        np.subtract(c[n:], c[: count - 1], out=out[1:])
        out *= _scaled_powers(mult, L)[n - 1 : n - 1 + count]
        rest = (rk_pow(n) - minus) * mult & 0xFFFFFFFF
        if rest:
            out += U32(rest)
        return out
    # rollsum: s1 = (A_e - A_p) + 31n ; s2 = e*(A_e - A_p) - (W_e - W_p) + 31 n(n+1)/2  (mod 2^16)
    a = np.empty(L + 1, dtype=U32)
    a[0] = 0
    np.cumsum(data, dtype=U32, out=a[1:])
    w = np.empty(L + 1, dtype=U32)
    w[0] = 0
    np.cumsum(data * np.arange(L, dtype=U32), dtype=U32, out=w[1:])
    da = a[n:] - a[:count]
    e = np.arange(n, n + count, dtype=U32)
    s2 = e * da - (w[n:] - w[:count]) + U32(ROLL_OFFSET * n * (n + 1) // 2 & 0xFFFFFFFF)
    s1 = da + U32(ROLL_OFFSET * n)
    sums: np.ndarray = ((s2 & 0xFFFF) << 16) | (s1 & 0xFFFF)
    if minus:
        sums -= U32(minus)
    if mult != 1:
        sums *= U32(mult)
    return sums


def key_base(n: int, kind: str) -> int:
    """The constant term of a weak sum of n bytes that the search's keys leave out (M^n for RabinKarp:
    one pass fewer over every window; 0 for rollsum)."""
    return rk_pow(n) if kind == "rabinkarp" else 0


def suffix_weak(data: np.ndarray, kind: str) -> np.ndarray:
    """Weak sums of the suffixes data[p:], p = 0 .. len(data)-1 (the shrinking tail windows)."""
    L = len(data)
    if L == 0:
        return np.empty(0, dtype=U32)
    if kind == "rabinkarp":
        q = np.empty(L + 1, dtype=U32)
        q[0] = 0
        np.cumsum(data * _powers(RK_INV, L), dtype=U32, out=q[1:])
        lens = np.arange(L, 0, -1)
        sums: np.ndarray = (q[L] - q[:L]) * _powers(RK_MULT, L)[L - 1] + _powers(RK_MULT, L + 1)[lens]
        return sums
    a = np.empty(L + 1, dtype=U32)
    a[0] = 0
    np.cumsum(data, dtype=U32, out=a[1:])
    w = np.empty(L + 1, dtype=U32)
    w[0] = 0
    np.cumsum(data * np.arange(L, dtype=U32), dtype=U32, out=w[1:])
    n = np.arange(L, 0, -1, dtype=U32)
    da = a[L] - a[:L]
    s1 = da + n * U32(ROLL_OFFSET)
    s2 = U32(L) * da - (w[L] - w[:L]) + (n * (n + U32(1)) // U32(2)) * U32(ROLL_OFFSET)
    result: np.ndarray = ((s2 & 0xFFFF) << 16) | (s1 & 0xFFFF)
    return result


def strong_run(buf: bytes | memoryview, block_len: int, kind: str, strong_len: int) -> bytes:
    """Concatenated truncated strong sums of the consecutive blocks of `buf` (the last may be short)."""
    mv = memoryview(buf)
    n = len(mv)
    if kind == "blake2":
        # copying a fresh hasher is cheaper than constructing one (no parameter parsing): beside the
        # hashing itself, this loop's cost is its per-block Python work (measured faster than a
        # chain of C-level map() calls, which pay for the keyword argument on every block)
        fresh = blake2b(digest_size=32).copy
        out: list[bytes] = []
        add = out.append
        for i in range(0, n, block_len):
            h = fresh()
            h.update(mv[i : i + block_len])
            add(h.digest())
    else:
        out = list(map(strong_hasher(kind), (mv[i : i + block_len] for i in range(0, n, block_len))))
    if strong_len < STRONG_FULL[kind]:
        return b"".join([d[:strong_len] for d in out])
    return b"".join(out)


STRONG_FULL = {"blake2": 32, "md4": 16}


def sig_records(data: bytes, block_len: int, weak: str, strong: str, strong_len: int) -> bytes:
    """The signature records (weak u32 BE + truncated strong) of consecutive blocks of `data`."""
    if not data:
        return b""
    w = block_weak(np.frombuffer(data, dtype=np.uint8), block_len, weak)
    s = strong_run(data, block_len, strong, strong_len)
    nb = len(w)
    rec = np.empty((nb, 4 + strong_len), dtype=np.uint8)
    rec[:, :4] = w.astype(">u4").view(np.uint8).reshape(nb, 4)
    rec[:, 4:] = np.frombuffer(s, dtype=np.uint8).reshape(nb, strong_len)
    return rec.tobytes()
