#!/usr/bin/env python3
"""Benchmark: the delta of a backup when yesterday's dump (the basis) is no longer in memory, as on a
machine whose dumps are larger than its page cache or a day old on a USB disk.

A delta may confirm its matches by the basis's bytes only once the basis proves to be the file its
signature was made of (its sha256). Before, the basis was hashed first and then read again by the
delta; now it is hashed on another thread while the delta reads it (`jobs.chain.delta_with_basis`).
This times both, interleaved, on a pair of dumps (by default the real pair that
`bench/rsync_vs_librsync.py --cases real` leaves in its workdir), each run after the page cache is
dropped and the new dump read back in (it was just written), with the disk's reads limited to
--read-mbps by a blkio cgroup (v1) when this runs as root and one can be mounted (else: unlimited,
which on a machine whose disk is cached by its host shows little).

    python bench/cold_basis.py --workdir DIR [--basis F --new F] [--repeat 3] [--read-mbps 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from deltadump.config import DUMP_BLOCK_LEN
from deltadump.fsio import sha256_file
from deltadump.jobs.chain import delta_with_basis
from deltadump.rsync import bounded_sig_params
from deltadump.rsync import delta as rs_delta
from deltadump.rsync import signature as rs_signature

CGROUP = Path("/mnt/deltadump-blkio")


def limit_reads(path: Path, mbps: int) -> bool:
    """Put this process (and what it forks) in a blkio cgroup reading `path`'s disk at most mbps MB/s."""
    dev = os.stat(path).st_dev
    try:
        CGROUP.mkdir(exist_ok=True)
        if not os.path.ismount(CGROUP):
            subprocess.run(["mount", "-t", "cgroup", "-o", "blkio", "none", str(CGROUP)], check=True,
                           capture_output=True)  # fmt: skip
        group = CGROUP / "cold-basis"
        group.mkdir(exist_ok=True)
        disk = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
        if (disk / "partition").exists():  # the limit applies to the whole disk
            disk = disk.resolve().parent
        major_minor = (disk / "dev").read_text().strip()
        (group / "blkio.throttle.read_bps_device").write_text(f"{major_minor} {mbps * 1_000_000}")
        (group / "cgroup.procs").write_text(str(os.getpid()))
        return True
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"reads not limited ({exc}); the page cache is still dropped", file=sys.stderr)
        return False


def cold(new: Path, sig: Path) -> None:
    subprocess.run("sync; echo 1 > /proc/sys/vm/drop_caches", shell=True, check=True)
    for p in (new, sig):  # just written by the backup: in memory
        with open(p, "rb") as f:
            while f.read(8 << 20):
                pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--basis", type=Path)
    ap.add_argument("--new", type=Path)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--read-mbps", type=int, default=100)
    args = ap.parse_args()
    basis = args.basis or args.workdir / "mail-day1.dump"
    new = args.new or args.workdir / "mail-day2.dump"
    sig, raw = args.workdir / "cold-basis.sig", args.workdir / "cold-basis.delta"
    bl, sl = bounded_sig_params(basis.stat().st_size, DUMP_BLOCK_LEN)  # as a backup makes it
    rs_signature(basis, sig, block_len=bl, strong_len=sl)
    want = sha256_file(basis)
    limited = limit_reads(basis, args.read_mbps)
    times: dict[str, list[float]] = {"hash, then delta": [], "hash while the delta reads": []}
    for _ in range(args.repeat):
        for how in times:
            cold(new, sig)
            raw.unlink(missing_ok=True)
            t = time.perf_counter()
            if how == "hash, then delta":
                rs_delta(sig, new, raw, basis=basis if sha256_file(basis) == want else None)
            else:
                delta_with_basis(sig.read_bytes(), new, raw, basis, want)
            times[how].append(time.perf_counter() - t)
    print(f"basis {basis.stat().st_size / 1e6:.0f} MB, new {new.stat().st_size / 1e6:.0f} MB; reads "
          f"{f'limited to {args.read_mbps} MB/s' if limited else 'not limited'}; {args.repeat} runs each")  # fmt: skip
    before = statistics.median(times["hash, then delta"])
    for how, ts in times.items():
        m = statistics.median(ts)
        print(f"{how:<28} median {m:6.2f} s  best {min(ts):6.2f} s  ratio {m / before:5.2f}")
    raw.unlink(missing_ok=True)
    sig.unlink()


if __name__ == "__main__":
    main()
