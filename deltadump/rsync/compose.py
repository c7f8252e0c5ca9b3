"""Composition of a chain of rdiff deltas: base -> d1 -> d2 ... -> dn in one pass.

Each delta's COPY commands are resolved through the previous delta's output map, so the final file
is written once, from ranges of the base and literal bytes of the deltas, instead of materialising
every intermediate file. Interval arithmetic on command lists: no byte is touched until the end.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from ..errors import RsyncError
from .format import DELTA_MAGIC, decode_opcode

_FMT = {1: ">B", 2: ">H", 4: ">I", 8: ">Q"}
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


def _commands(path: Path) -> list[tuple[int, int, int]]:
    """(is_copy, length, offset): copy -> basis offset; literal -> offset of its bytes in the file."""
    data = path.read_bytes()
    if len(data) < 4:
        raise RsyncError(RsyncError.RS_INPUT_ENDED, message=f"{path.name} is not a delta (too short)")
    if struct.unpack(">I", data[:4])[0] != DELTA_MAGIC:
        raise RsyncError(RsyncError.RS_BAD_MAGIC, message=f"{path.name} is not an rdiff delta")
    out = []
    i = 4
    n = len(data)
    while True:
        if i >= n:
            raise RsyncError(RsyncError.RS_INPUT_ENDED, message=f"{path.name} is truncated")
        kind, a, b = decode_opcode(data[i])
        i += 1
        if kind == "end":
            return out
        if kind == "literal":
            if a:
                ln = a
            else:
                (ln,) = struct.unpack(_FMT[b], data[i : i + b])
                i += b
            if ln == 0 or i + ln > n:
                raise RsyncError(RsyncError.RS_CORRUPT, message=f"{path.name}: bad literal")
            out.append((0, ln, i))
            i += ln
        elif kind == "copy":
            if i + a + b > n:
                raise RsyncError(RsyncError.RS_INPUT_ENDED, message=f"{path.name} is truncated")
            (pos,) = struct.unpack(_FMT[a], data[i : i + a])
            (ln,) = struct.unpack(_FMT[b], data[i + a : i + a + b])
            i += a + b
            if ln == 0:
                raise RsyncError(RsyncError.RS_CORRUPT, message=f"{path.name}: zero-length copy")
            out.append((1, ln, pos))
        else:
            raise RsyncError(RsyncError.RS_CORRUPT, message=f"{path.name}: bogus command 0x{data[i - 1]:02x}")


def compose(base_size: int, deltas: list[Path]) -> Map:
    """The map of the output of applying deltas[0], deltas[1], ... in turn to a base of base_size bytes.
    Vectorised: every COPY of a delta is resolved through the previous map at once."""
    i64 = np.int64
    prev = Map(np.array([base_size], i64), np.array([BASE], i64), np.array([0], i64))
    for k, path in enumerate(deltas):
        cmds = np.array(_commands(path), dtype=i64).reshape(-1, 3)
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


def write(m: Map, base: Path, deltas: list[Path], out: Path) -> None:
    """Write the composed output: base ranges by kernel copy, literal bytes from the deltas."""
    fds = [os.open(p, os.O_RDONLY) for p in deltas]
    bfd = os.open(base, os.O_RDONLY)
    try:
        with open(out, "wb") as f:
            ofd = f.fileno()
            for ln, src, off in zip(m.lens.tolist(), m.srcs.tolist(), m.offs.tolist(), strict=True):
                if src == BASE:
                    done = 0
                    while done < ln:
                        got = os.copy_file_range(bfd, ofd, ln - done, off + done)
                        if got <= 0:
                            raise RsyncError(RsyncError.RS_INPUT_ENDED, message=f"{base.name} ended early")
                        done += got
                else:
                    view = memoryview(os.pread(fds[src], ln, off))
                    while view:
                        view = view[os.write(ofd, view) :]
    finally:
        for fd in [*fds, bfd]:
            os.close(fd)
