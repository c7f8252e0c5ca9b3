#!/usr/bin/env python3
"""Benchmark: peak memory of the rsync engine's commands on large files, at the signature parameters
deltadump chooses for their size (`rsync.bounded_sig_params`: the loaded signature stays under a
budget of 64 MiB at any size).

For each --sizes (GB, 10**9 bytes): a basis of that size is made sparse (random 1 MiB islands every
16 MiB, holes between them, so that it costs about 1/16 of its size on disk), and a new version is
made from it with scattered in-place edits and some appended bytes. Then `deltadump-rdiff signature
-b B -S S`, `delta` and `patch` run as whole commands, each sampled for the peak PSS of its processes
(bench/procmem.py: shared pages counted once); the patched result is checked against the new version
and every file is deleted before the next size. The patch writes the whole output (its size in disk
space, for a moment).

    python bench/rsync_memory.py [--sizes 4,12] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from procmem import sample_peak

from deltadump.rsync import bounded_sig_params, sig_memory

ISLAND = 1 << 20
STRIDE = 16 << 20


def make_pair(basis: Path, new: Path, size: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    with open(basis, "wb") as f:
        f.truncate(size)
        for off in range(0, size, STRIDE):
            f.seek(off)
            f.write(rng.randbytes(min(ISLAND, size - off)))
    subprocess.run(["cp", "--sparse=always", str(basis), str(new)], check=True)
    with open(new, "r+b") as f:
        for _ in range(size // STRIDE // 4):  # an edit in one island of four
            f.seek(rng.randrange(0, size, STRIDE) + rng.randrange(ISLAND - 64))
            f.write(rng.randbytes(rng.randint(1, 64)))
        f.seek(0, os.SEEK_END)
        f.write(rng.randbytes(3 << 20))


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(16 << 20):
            h.update(chunk)
    return h.hexdigest()


def run(argv: list[str]) -> tuple[float, int]:
    """(wall seconds, peak PSS in KiB) of one command."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = sample_peak(proc)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"command failed: {' '.join(argv)}\n{err}")
    return wall, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="4,12", help="basis sizes in GB (10**9 bytes), comma-separated")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    ours = Path(sys.executable).parent / "deltadump-rdiff"
    cmd = [str(ours)] if ours.exists() else [sys.executable, "-m", "deltadump.cli.rdiff"]
    work = Path(tempfile.mkdtemp(prefix="ddmem-", dir=args.workdir))
    print(
        "size GB  block  strong  sig MiB (model)  | peak PSS MiB: signature  delta  patch | seconds: sig  delta  patch"
    )
    try:
        for gb in (float(x) for x in args.sizes.split(",")):
            size = int(gb * 10**9)
            basis, new, sig, delta, out = (work / n for n in ("basis", "new", "sig", "delta", "out"))
            make_pair(basis, new, size)
            block, strong = bounded_sig_params(size)
            nblocks = -(-size // block)
            ts, ps = run([*cmd, "-f", "-b", str(block), "-S", str(strong), "signature", str(basis), str(sig)])
            td, pd = run([*cmd, "-f", "delta", str(sig), str(new), str(delta)])
            tp, pp = run([*cmd, "-f", "patch", str(basis), str(delta), str(out)])
            same = sha256_of(out) == sha256_of(new)
            print(
                f"{gb:7.1f} {block:6d} {strong:7d} {sig_memory(nblocks, strong) / 2**20:16.1f}  |"
                f" {ps / 1024:22.1f} {pd / 1024:6.1f} {pp / 1024:6.1f} | {ts:13.1f} {td:6.1f} {tp:6.1f}"
                f"  {'patched = new' if same else 'PATCHED OUTPUT DIFFERS'}"
                f"  (delta {delta.stat().st_size / 1e6:.1f} MB)",
                flush=True,
            )
            for p in (basis, new, sig, delta, out):
                p.unlink(missing_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
