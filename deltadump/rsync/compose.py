"""Composition of a chain of rdiff deltas: base -> d1 -> d2 ... -> dn in one pass.

Each delta's COPY commands are resolved through the previous delta's output map, so the final file
is written once, from ranges of the base and literal bytes of the deltas, instead of materialising
every intermediate file. Interval arithmetic on command lists: no byte is touched until the end.
"""

from __future__ import annotations

import bisect
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import RsyncError
from .format import DELTA_MAGIC, decode_opcode

_FMT = {1: ">B", 2: ">H", 4: ">I", 8: ">Q"}
BASE = -1  # source id of the base file


@dataclass
class Map:
    """An output described as segments: out offset, length, source (BASE or a delta's index), source offset."""

    starts: list[int]
    lens: list[int]
    srcs: list[int]
    offs: list[int]

    @property
    def size(self) -> int:
        return self.starts[-1] + self.lens[-1] if self.starts else 0

    def add(self, length: int, src: int, off: int) -> None:
        if self.lens and self.srcs[-1] == src and self.offs[-1] + self.lens[-1] == off:
            self.lens[-1] += length  # merge with the previous segment when contiguous
            return
        self.starts.append(self.size)
        self.lens.append(length)
        self.srcs.append(src)
        self.offs.append(off)


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
    """The map of the output of applying deltas[0], deltas[1], ... in turn to a base of base_size bytes."""
    prev = Map([0], [base_size], [BASE], [0]) if base_size else Map([], [], [], [])
    for k, path in enumerate(deltas):
        cur = Map([], [], [], [])
        size = prev.size
        for is_copy, ln, off in _commands(path):
            if not is_copy:
                cur.add(ln, k, off)
                continue
            if off + ln > size:
                raise RsyncError(
                    RsyncError.RS_INPUT_ENDED,
                    message=f"{path.name} copies bytes {off}..{off + ln} beyond its basis ({size} bytes)",
                )
            j = bisect.bisect_right(prev.starts, off) - 1
            pos, left = off, ln
            while left:
                s0, l0 = prev.starts[j], prev.lens[j]
                skip = pos - s0
                take = min(l0 - skip, left)
                cur.add(take, prev.srcs[j], prev.offs[j] + skip)
                pos += take
                left -= take
                j += 1
        prev = cur
    return prev


def write(m: Map, base: Path, deltas: list[Path], out: Path) -> None:
    """Write the composed output: base ranges by kernel copy, literal bytes from the deltas."""
    fds = [os.open(p, os.O_RDONLY) for p in deltas]
    bfd = os.open(base, os.O_RDONLY)
    try:
        with open(out, "wb") as f:
            ofd = f.fileno()
            for ln, src, off in zip(m.lens, m.srcs, m.offs, strict=True):
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
