"""Signature generation: `rdiff signature`, byte-identical with librsync 2.3.2 (spec section 1).

Small inputs are signed in pure Python (`small.records`); large ones with numpy, in worker
processes that write their records straight into the output file.
"""

from __future__ import annotations

import os
import time

from .format import SigParams, librsync_job, sig_args, sig_magic
from .small import SIGNATURE_MAX
from .small import records as small_records
from .streams import PathOrFile, open_input, open_output

PIECE = 4 << 20


class SignatureStats:
    """What a signature did (a plain class: this module stays free of heavy imports, for start-up)."""

    def __init__(self, block_len: int, strong_len: int, magic: int, blocks: int, in_bytes: int, out_bytes: int,
                 seconds: float, warning: str = "") -> None:  # fmt: skip
        self.block_len, self.strong_len, self.magic, self.blocks = block_len, strong_len, magic, blocks
        self.in_bytes, self.out_bytes, self.seconds, self.warning = in_bytes, out_bytes, seconds, warning


def records(data: bytes, p: SigParams) -> bytes:
    """The signature records (weak u32 BE + truncated strong) of consecutive blocks of `data`."""
    from .sums import sig_records

    return sig_records(data, p.block_len, p.weak, p.strong, p.strong_len)


def _piece_records(task: tuple[int, int]) -> bytes | int:
    """Worker: the records of one piece; written straight into the output when it is a file."""
    from .parallel import worker_state

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
            small = src.read_at(0, SIGNATURE_MAX + 1) if src.size is None else b""
            if (src.size if src.size is not None else len(small)) <= SIGNATURE_MAX:
                data = small or src.read_at(0, SIGNATURE_MAX)
                sink.write(small_records(data, p))
                in_bytes = len(data)
            else:
                from .parallel import WorkerPool, want_workers

                workers = want_workers(src.size, parallel) if src.fd is not None else 0
                if workers and src.size is not None:
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
