"""Composition of a chain of rdiff deltas: base -> d1 -> d2 ... -> dn in one pass.

Each delta's COPY commands are resolved through the previous delta's output map, so the final file
is written once, from ranges of the base and literal bytes of the deltas, instead of materialising
every intermediate file. Interval arithmetic on command lists: no byte is touched until the end;
then write() takes the base as a stream of pieces (it need never exist as a file) and hashes the
result as it completes.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import queue
import struct
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import RsyncError
from .format import DELTA_MAGIC, decode_opcode
from .streams import map_range, pwritev_all

BASE = -1  # source id of the base file


class Map:
    """An output described as segments (numpy int64 arrays): output start, length, source (BASE or
    a delta's index) and offset in that source. Contiguous segments are always merged."""

    def __init__(self, lens: np.ndarray, srcs: np.ndarray, offs: np.ndarray) -> None:
        keep = lens > 0
        lens, srcs, offs = lens[keep], srcs[keep], offs[keep]
        if len(lens) > 1:  # merge a segment into the previous one when it continues it
            cont = (srcs[1:] == srcs[:-1]) & (offs[1:] == offs[:-1] + lens[:-1])
            first = np.flatnonzero(np.concatenate(([True], ~cont)))
            lens = np.add.reduceat(lens, first)
            srcs, offs = srcs[first], offs[first]
        self.lens, self.srcs, self.offs = lens, srcs, offs
        self.starts = np.concatenate(([0], np.cumsum(lens)[:-1])).astype(np.int64) if len(lens) else lens

    @property
    def size(self) -> int:
        return int(self.lens.sum())


_KIND = {"end": 0, "literal": 1, "copy": 3, "bogus": 4}
# opcode -> (0 end | 1 literal of immediate length a | 2 literal with a length of b bytes | 3 copy | 4 bogus, a, b)
_OPS = [(_KIND[kind] + (kind == "literal" and a == 0), a, b) for kind, a, b in map(decode_opcode, range(256))]


def _commands(path: Path) -> np.ndarray:
    """An (n, 3) int64 array of (is_copy, length, offset): copy -> basis offset; literal -> offset of
    its bytes in the file. One tight pass over the opcodes; literal bytes are skipped, not read."""
    data = path.read_bytes()
    if len(data) < 4:
        raise RsyncError(RsyncError.RS_INPUT_ENDED, message=f"{path.name} is not a delta (too short)")
    if struct.unpack(">I", data[:4])[0] != DELTA_MAGIC:
        raise RsyncError(RsyncError.RS_BAD_MAGIC, message=f"{path.name} is not an rdiff delta")
    flat: list[int] = []
    add = flat.extend
    ops, from_bytes = _OPS, int.from_bytes
    i, n = 4, len(data)
    while i < n:
        code, a, b = ops[data[i]]
        i += 1
        if code == 1:
            if i + a > n:
                break
            add((0, a, i))
            i += a
        elif code == 3:
            if i + a + b > n:
                break
            ln = from_bytes(data[i + a : i + a + b], "big")
            pos = from_bytes(data[i : i + a], "big")
            if ln == 0 or pos + ln >= 1 << 63:  # rdiff: a corrupt stream; here also: no int64 overflow
                raise _bad_copy(path, pos, ln)
            add((1, ln, pos))
            i += a + b
        elif code == 2:
            ln = from_bytes(data[i : i + b], "big")
            i += b
            if ln == 0 or ln >= 1 << 63:
                raise RsyncError(
                    RsyncError.RS_CORRUPT,
                    f"(rs_patch_s_literal) invalid length={ln - (1 << 64) if ln >> 63 else ln} on LITERAL command",
                    message=f"{path.name}: literal of invalid length {ln}",
                )
            if i + ln > n:
                break
            add((0, ln, i))
            i += ln
        elif code == 0:
            return np.array(flat, dtype=np.int64).reshape(-1, 3)
        else:
            raise RsyncError(RsyncError.RS_CORRUPT, message=f"{path.name}: bogus command 0x{data[i - 1]:02x}")
    raise RsyncError(RsyncError.RS_INPUT_ENDED, message=f"{path.name} is truncated")


def _bad_copy(path: Path, pos: int, ln: int) -> RsyncError:
    """rdiff's corrupt-stream error for a COPY whose length is 0 or negative as a signed 64-bit number,
    whose position is negative, or whose end does not fit in 63 bits (no basis is that large)."""
    if ln == 0 or ln >= 1 << 63:
        what = f"length={ln - (1 << 64) if ln >> 63 else ln}"
    elif pos >= 1 << 63:
        what = f"position={pos - (1 << 64)}"
    else:
        what = f"position={pos} and length={ln} (their sum overflows)"
    return RsyncError(RsyncError.RS_CORRUPT, f"(rs_patch_s_copy) invalid {what} on COPY command",
                      message=f"{path.name}: COPY with invalid {what}")  # fmt: skip


def compose(base_size: int, deltas: Iterable[Path]) -> Map:
    """The map of the output of applying deltas[0], deltas[1], ... in turn to a base of base_size bytes.
    Vectorised: every COPY of a delta is resolved through the previous map at once."""
    i64 = np.int64
    prev = Map(np.array([base_size], i64), np.array([BASE], i64), np.array([0], i64))
    for k, path in enumerate(deltas):
        cmds = _commands(path)
        is_copy, ln, off = cmds[:, 0].astype(bool), cmds[:, 1], cmds[:, 2]
        size = prev.size
        bad = np.flatnonzero(is_copy & (off + ln > size))
        if bad.size:
            j = int(bad[0])
            raise RsyncError(
                RsyncError.RS_INPUT_ENDED,
                message=f"{path.name} copies bytes {off[j]}..{off[j] + ln[j]} beyond its basis ({size} bytes)",
            )
        a, b = off, off + ln  # for copies: the range of the previous output
        j0 = np.searchsorted(prev.starts, a, "right") - 1
        j1 = np.searchsorted(prev.starts, b, "left")  # one past the last segment touched
        n = np.where(is_copy, j1 - j0, 1)  # pieces per command
        total = int(n.sum())
        cmd = np.repeat(np.arange(len(cmds)), n)
        first = np.repeat(np.cumsum(n) - n, n)
        seg = np.repeat(j0, n) + (np.arange(total) - first)
        cp = is_copy[cmd]
        seg = np.where(cp, seg, 0)

        def take(arr: np.ndarray, seg: np.ndarray = seg, total: int = total) -> np.ndarray:
            return arr[seg] if len(arr) else np.zeros(total, i64)  # an empty basis: only literals

        s0 = take(prev.starts)
        lo = np.maximum(a[cmd], s0)
        hi = np.minimum(b[cmd], s0 + take(prev.lens))
        lens = np.where(cp, hi - lo, ln[cmd])
        srcs = np.where(cp, take(prev.srcs), k)
        offs = np.where(cp, take(prev.offs) + (lo - s0), off[cmd])
        prev = Map(lens, srcs, offs)
    return prev


CHUNK = 4 << 20  # base bytes handled per step by write()


def read_chunks(path: Path, chunk: int = CHUNK) -> Iterator[memoryview]:
    """A file as consecutive pieces of `chunk` bytes (the last may be shorter), for write()."""
    buf = bytearray(chunk)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = 0
            while n < chunk and (got := f.readinto(memoryview(buf)[n:])):
                n += got
            yield memoryview(buf)[:n]
            if n < chunk:
                return


class Written(NamedTuple):
    base_bytes: int  # the base's length (every piece is read)
    sha256: str  # of the output


class _Schedule(NamedTuple):
    """What write() does for each piece of the base, in order: items (source, range, output offset)
    grouped by the piece they wait for, cut into runs adjacent in the output."""

    srcs: list[int]
    lo: list[int]
    hi: list[int]
    at: list[int]
    run_starts: list[int]  # item index where each run starts, then the number of items
    groups: list[int]  # run index where each group (base piece) starts, then the number of runs
    complete: list[int]  # after group g: the output is final up to this offset
    need: int  # bytes of the base the plan copies


def _schedule(m: Map, chunk: int) -> _Schedule:
    is_base = m.srcs == BASE
    # cut base segments at piece boundaries; a literal goes with the base range it follows
    k0 = np.where(is_base, m.offs // chunk, 0)
    n = np.where(is_base, (m.offs + m.lens - 1) // chunk - k0 + 1, 1)
    seg = np.repeat(np.arange(len(n)), n)
    k = k0[seg] + (np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n))
    base_item = is_base[seg]
    off, ln = m.offs[seg], m.lens[seg]
    lo = np.where(base_item, np.maximum(off, k * chunk), off)
    hi = np.where(base_item, np.minimum(off + ln, (k + 1) * chunk), off + ln)
    at = m.starts[seg] + (lo - off)
    src = m.srcs[seg]
    need = int(hi[base_item].max()) if base_item.any() else 0  # bytes of the base the plan copies
    last_base = np.maximum.accumulate(np.where(base_item, np.arange(len(k)), 0))
    key = np.where(base_item, k, np.where(base_item[last_base], k[last_base], 0))
    order = np.argsort(key, kind="stable")
    key, src, lo, hi, at = key[order], src[order], lo[order], hi[order], at[order]
    # runs: items adjacent in the output, within one group
    brk = np.ones(len(key), bool)
    brk[1:] = (key[1:] != key[:-1]) | (at[1:] != at[:-1] + (hi[:-1] - lo[:-1]))
    run_starts = [*np.flatnonzero(brk).tolist(), len(key)]
    run_key = key[np.asarray(run_starts[:-1], np.int64)]
    groups = np.searchsorted(run_key, np.arange(int(key.max(initial=0)) + 2)).tolist()  # group g: its runs
    # after group g is written, the output is complete up to the lowest start of any later item
    n_groups = len(groups) - 1
    item_groups = np.searchsorted(key, np.arange(n_groups + 1))
    gmin = np.full(n_groups + 1, m.size, np.int64)
    filled = item_groups[:-1] < item_groups[1:]
    gmin[:-1][filled] = np.minimum.reduceat(at, item_groups[:-1][filled]) if filled.any() else []
    complete = np.minimum.accumulate(gmin[::-1])[::-1][1:].tolist()  # complete[g]: prefix done after g
    return _Schedule(src.tolist(), lo.tolist(), hi.tolist(), at.tolist(), run_starts, groups, complete, need)


def write(m: Map, base: Iterable[memoryview], deltas: list[Path], out: Path, chunk: int = CHUNK) -> Written:
    """Write the composed output. The base arrives as consecutive pieces of exactly `chunk` bytes (the
    last shorter, possibly empty), e.g. straight from a decompressor, so it need never exist as a file:
    as each piece arrives, every range of the output that copies from it is written, together with the
    literal bytes (from the deltas, mapped) that follow those ranges, in runs of adjacent ranges, one
    pwritev per run. The output's sha256 is computed on another core, following the writes: every
    prefix of the output is hashed as soon as it is complete. Raises RsyncError if the base ends before
    the bytes the plan copies."""
    sc = _schedule(m, chunk)
    srcs_l, lo_l, hi_l, at_l = sc.srcs, sc.lo, sc.hi, sc.at
    run_starts, groups, complete, need = sc.run_starts, sc.groups, sc.complete, sc.need
    n_groups = len(groups) - 1
    maps = [_map(p) for p in deltas]
    views = [memoryview(mm) if mm is not None else memoryview(b"") for mm in maps]
    pos = 0
    try:
        with open(out, "w+b") as f:
            ofd = f.fileno()
            os.ftruncate(ofd, m.size)
            hasher = _FollowingHash(ofd)
            try:

                def emit(g: int, piece: memoryview) -> None:
                    c0 = g * chunk
                    for r in range(groups[g], groups[g + 1]):
                        a, b = run_starts[r], run_starts[r + 1]
                        bufs = [
                            piece[lo_l[j] - c0 : hi_l[j] - c0]
                            if srcs_l[j] == BASE
                            else views[srcs_l[j]][lo_l[j] : hi_l[j]]
                            for j in range(a, b)
                        ]
                        try:
                            pwritev_all(ofd, bufs, at_l[a])
                        finally:
                            bufs.clear()  # no view of a mapping may outlive this (even in a traceback)
                    hasher.advance(complete[g])

                i = -1
                for i, piece in enumerate(base):
                    if pos != i * chunk:
                        raise ValueError("only the last piece of the base may be shorter than `chunk`")
                    pos += len(piece)
                    if pos < need and len(piece) < chunk:
                        break
                    if i < n_groups:
                        emit(i, piece)
                if pos < need:
                    raise RsyncError(RsyncError.RS_INPUT_ENDED, message=f"the base ended at {pos} bytes, {need} needed")
                for g in range(i + 1, n_groups):  # groups of literals only, past a short or empty base
                    emit(g, memoryview(b""))
            except BaseException:
                hasher.abort()
                raise
            digest = hasher.finish(m.size)
    finally:
        for v in views:
            v.release()
        for mm in maps:
            if mm is not None:
                mm.close()
    return Written(pos, digest)


class _FollowingHash:
    """sha256 of a file written out of order, on another core (hashlib releases the GIL): each
    advance(n) says the first n bytes are final; they are hashed where they lie in the page cache,
    through read-only mappings of a window at a time (no copy, and memory stays bounded)."""

    def __init__(self, fd: int, step: int = 16 << 20) -> None:
        self.fd, self.h, self.done, self.step = fd, hashlib.sha256(), 0, step
        self.q: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.t = threading.Thread(target=self._run, name="sha256", daemon=True)
        self.t.start()

    def advance(self, upto: int) -> None:
        self.q.put(upto)

    def abort(self) -> None:
        self.q.put(None)
        self.t.join()

    def finish(self, size: int) -> str:
        self.q.put(size)
        self.q.put(None)
        self.t.join()
        if self.error is not None:
            raise self.error
        return self.h.hexdigest()

    def _run(self) -> None:
        try:
            while (upto := self.q.get()) is not None:
                while self.done < upto:
                    end = min(upto, self.done + self.step)
                    mm, start = map_range(self.fd, self.done, end)
                    with mm, memoryview(mm) as view:
                        self.h.update(view[self.done - start :])
                    self.done = end
        except BaseException as exc:  # raised again by finish()
            self.error = exc
            while self.q.get() is not None:  # drain, so finish() never waits on a dead thread
                pass


def _map(p: Path) -> mmap.mmap | None:
    with open(p, "rb") as f:
        return mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) if os.fstat(f.fileno()).st_size else None
