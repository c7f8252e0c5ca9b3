#!/usr/bin/env python3
"""Benchmark: deltadump's rsync engine against the real `rdiff` (librsync 2.3.2), in the same run.

Generates a dump-like base file (COPY-style rows) and a new version with scattered row inserts,
deletes and small edits plus a run of moved rows, then times `rdiff` and `deltadump-rdiff` (as whole
commands, interpreter start-up included) for signature, delta and patch, at the default options and
at `-b 512`. Prints ratios (ours / rdiff), delta sizes and peak memory. Each timing is the best of
--repeat runs, because this machine is shared and noisy.

    python bench/rsync_vs_librsync.py [--size-mb 400] [--repeat 5] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import filecmp
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from procmem import sample_peak


def make_files(base: Path, new: Path, size: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 11))) for _ in range(4000)]
    rows: list[bytes] = []
    n = 0
    i = 0
    while n < size:
        line = b"%d\t%d\t" % (i, rng.randrange(10**6)) + b" ".join(rng.choices(words, k=rng.randint(5, 30))) + b"\n"
        rows.append(line)
        n += len(line)
        i += 1
    base.write_bytes(b"".join(rows))
    # a day of changes: updated rows move to the end of their table, some are deleted, new ones
    # arrive, a few are edited in place, and a run of rows moves elsewhere
    nrows = len(rows)
    for _ in range(nrows // 2000):  # 0.05% of rows deleted
        del rows[rng.randrange(len(rows))]
    for _ in range(nrows // 4000):  # updated rows: removed here, appended later
        j = rng.randrange(len(rows))
        row = rows.pop(j)
        rows.append(row.replace(b"\t", b"\t1", 1))
    for _ in range(nrows // 2000):  # in-place edits
        j = rng.randrange(len(rows))
        rows[j] = rows[j][:-5] + b"xyzw\n"
    for _ in range(nrows // 2000):  # inserts
        rows.insert(rng.randrange(len(rows)), b"%d\tnew\t%s\n" % (i, b" ".join(rng.choices(words, k=12))))
        i += 1
    a = rng.randrange(len(rows) // 2)
    moved = rows[a : a + len(rows) // 200]
    del rows[a : a + len(moved)]
    b = rng.randrange(len(rows))
    rows[b:b] = moved
    new.write_bytes(b"".join(rows))


def run_timed(argv: list[str]) -> float:
    """Wall seconds of one command."""
    t = time.perf_counter()
    res = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(argv)}\n{res.stderr.decode()}")
    return wall


ENGINE = """
import sys, time
from deltadump.rsync import delta, patch, signature
args = sys.argv[1:]
step, files = args[0], args[1:]
kw = {"durable": False}
if step == "signature" and files[0] == "-b":
    kw["block_len"] = int(files[1]); files = files[2:]
fn = {"signature": signature, "delta": delta, "patch": patch}[step]
t = time.perf_counter()
fn(*files, **kw)
print(time.perf_counter() - t)
"""


def engine_seconds(argv: list[str]) -> float:
    """Seconds of the library call alone, in an interpreter already started (imports not timed)."""
    opts = argv[: argv.index(next(a for a in argv if a in ("signature", "delta", "patch")))]
    rest = argv[len(opts) :]
    res = subprocess.run([sys.executable, "-c", ENGINE, rest[0], *opts, *rest[1:]], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(res.stderr)
    return float(res.stdout.strip())


def peak_pss(argv: list[str]) -> int:
    """Peak of the summed PSS (KiB) of a command's process tree (shared pages counted once), sampled
    every 10 ms in a run of its own, so that sampling never slows a timed run."""
    return sample_peak(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    rdiff = shutil.which("rdiff")
    if not rdiff:
        raise SystemExit("rdiff is not installed (apt-get install rdiff)")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ddbench-"))
    work.mkdir(parents=True, exist_ok=True)
    base, new = work / "base.dump", work / "new.dump"
    if not (base.exists() and new.exists() and base.stat().st_size >= args.size_mb * 10**6):
        print(f"generating {args.size_mb} MB base and new version in {work} ...", file=sys.stderr)
        # in a child process, so that its memory never counts in the children measured below
        subprocess.run([sys.executable, __file__, "--generate", str(base), str(new), str(args.size_mb)], check=True)
    ours_cmd = [str(Path(sys.executable).parent / "deltadump-rdiff")]
    if not Path(ours_cmd[0]).exists():
        ours_cmd = [sys.executable, "-m", "deltadump.cli.rdiff"]
    print(f"base {base.stat().st_size / 1e6:.0f} MB, new {new.stat().st_size / 1e6:.0f} MB; best of {args.repeat}")
    print(
        f"{'options':<9} {'step':<10} {'rdiff s':>8} {'ours s':>8} {'ratio':>6} {'engine s':>9} {'ratio':>6}"
        f" {'rdiff MB':>9} {'ours MB':>8}  output sizes"
    )
    for opts in ([], ["-b", "512"]):
        label = " ".join(opts) or "default"
        steps = [
            ("signature", [*opts, "signature", str(base), "{sig}"]),
            ("delta", ["delta", "{sig}", str(new), "{delta}"]),
            ("patch", ["patch", str(base), "{delta}", "{out}"]),
        ]
        for step, tmpl in steps:
            res: dict[str, tuple[float, int]] = {}
            cmds = {}
            for who in ("rdiff", "ours"):
                names = {k: str(work / f"{who}.{k}") for k in ("sig", "delta", "out")}
                argv = [a.format(**names) for a in tmpl]
                cmds[who] = ([rdiff] if who == "rdiff" else ours_cmd) + argv
            best = {"rdiff": float("inf"), "ours": float("inf"), "engine": float("inf")}
            for _ in range(args.repeat):  # interleaved, so that a slow spell of the machine hits both
                for who, cmd in cmds.items():
                    Path(cmd[-1]).unlink(missing_ok=True)
                    best[who] = min(best[who], run_timed(cmd))
                Path(cmds["ours"][-1]).unlink(missing_ok=True)
                best["engine"] = min(best["engine"], engine_seconds(cmds["ours"][1:]))
            for who, cmd in cmds.items():
                Path(cmd[-1]).unlink(missing_ok=True)
                res[who] = (best[who], peak_pss(cmd))
            sizes = ""
            if step in ("signature", "delta"):
                key = "sig" if step == "signature" else "delta"
                a, b = (work / f"rdiff.{key}").stat().st_size, (work / f"ours.{key}").stat().st_size
                same = filecmp.cmp(work / f"rdiff.{key}", work / f"ours.{key}", shallow=False)
                sizes = f"rdiff {a:,} / ours {b:,}" + (" (identical)" if same else f" ({b / a:.4f}x)")
            else:
                ok = filecmp.cmp(work / "ours.out", new, shallow=False) and filecmp.cmp(
                    work / "rdiff.out", new, shallow=False
                )
                sizes = "both outputs equal the new file" if ok else "OUTPUT MISMATCH"
            (rw, rm), (ow, om) = res["rdiff"], res["ours"]
            ew = best["engine"]
            print(
                f"{label:<9} {step:<10} {rw:8.2f} {ow:8.2f} {ow / rw:6.2f} {ew:9.2f} {ew / rw:6.2f}"
                f" {rm / 1024:9.1f} {om / 1024:8.1f}  {sizes}"
            )
    sig_mb = (work / "ours.sig").stat().st_size / 1e6
    print(
        f"(-b 512 signature is {sig_mb:.1f} MB. ours s: the whole deltadump-rdiff command, like rdiff s; engine s: the"
        " library call alone, in an interpreter already started. MB: peak PSS of each command's processes, shared"
        " pages counted once)"
    )
    if args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--generate":
        make_files(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]) * 10**6)
    else:
        main()
