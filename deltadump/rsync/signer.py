"""Signature generation: `rdiff signature`, byte-identical with librsync 2.3.2 (spec section 1)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from .format import SigParams, librsync_job, sig_args, sig_magic
from .parallel import WorkerPool, want_workers, worker_state
from .streams import PathOrFile, open_input, open_output
from .sums import block_weak, strong_blocks

PIECE = 4 << 20


@dataclass
class SignatureStats:
    block_len: int
    strong_len: int
    magic: int
    blocks: int
    in_bytes: int
    out_bytes: int
    seconds: float
    warning: str = ""


def records(data: bytes, p: SigParams) -> bytes:
    """The signature records (weak u32 BE + truncated strong) of consecutive blocks of `data`."""
    if not data:
        return b""
    arr = np.frombuffer(data, dtype=np.uint8)
    weak = block_weak(arr, p.block_len, p.weak)
    strong = strong_blocks(data, p.block_len, p.strong, p.strong_len)
    nb = len(weak)
    rec = np.empty((nb, 4 + p.strong_len), dtype=np.uint8)
    rec[:, :4] = weak.astype(">u4").view(np.uint8).reshape(nb, 4)
    rec[:, 4:] = np.frombuffer(strong, dtype=np.uint8).reshape(nb, p.strong_len)
    return rec.tobytes()


def _piece_records(task: tuple[int, int]) -> bytes | int:
    """Worker: the records of one piece; written straight into the output when it is a file."""
    fd, base, p, out_fd = worker_state()
    off, n = task
    rec = records(os.pread(fd, n, base + off), p)
    if out_fd is None:
        return rec
    at = 12 + off // p.block_len * (4 + p.strong_len)
    view = memoryview(rec)
    while view:
        view = view[os.pwrite(out_fd, view, at + len(rec) - len(view)) :]
    return len(rec)


@librsync_job("signature")
def signature(
    basis: PathOrFile,
    out: PathOrFile,
    *,
    block_len: int = 0,
    strong_len: int = 0,
    weak: str = "rabinkarp",
    strong: str = "blake2",
    force: bool = True,
    durable: bool = True,
    parallel: bool | int = True,
) -> SignatureStats:
    """Write the librsync signature of `basis` to `out`; returns statistics."""
    t0 = time.perf_counter()
    magic = sig_magic(weak, strong)
    with open_input(basis) as src:
        p = sig_args(src.size, magic, block_len, strong_len)
        piece = max(p.block_len, PIECE // p.block_len * p.block_len)
        with open_output(out, force, durable) as sink:
            sink.write(p.header())
            in_bytes = 0
            workers = want_workers(src.size, parallel)
            if workers and src.fd is not None and src.size is not None:
                tasks = [(off, min(piece, src.size - off)) for off in range(0, src.size, piece)]
                sink.flush()
                out_fd = sink.fileno_for_copy()
                with WorkerPool((src.fd, src.base_off, p, out_fd), workers) as pool:
                    for rec in pool.imap(_piece_records, tasks):
                        if isinstance(rec, int):
                            sink.written += rec
                        else:
                            sink.write(rec)
                in_bytes = src.size
            else:
                for chunk in src.chunks(piece):
                    sink.write(records(chunk, p))
                    in_bytes += len(chunk)
    nblocks = -(-in_bytes // p.block_len)
    return SignatureStats(
        p.block_len, p.strong_len, magic, nblocks, in_bytes, sink.written, time.perf_counter() - t0, p.warning
    )
