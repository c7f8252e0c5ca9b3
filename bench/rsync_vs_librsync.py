#!/usr/bin/env python3
"""Benchmark: deltadump's rsync engine against the real `rdiff` (librsync 2.3.2), in the same run.

Two pairs of files (a basis and its next version), each timed for signature, delta and patch at
rdiff's default options and at `-b 512` (the block length of delta backups):

* synthetic: a dump-like file of COPY-style rows and a new version with scattered row inserts,
  deletes and small edits plus a run of moved rows (--size-mb);
* real: two consecutive dumps (custom format, uncompressed, `-Z 0`) of the sample mail database a
  day apart: a private PostgreSQL server is started, filled to about --real-mb of database, dumped,
  given one day of mail traffic (`sample.mail_day`) and dumped again. The pair is kept in --workdir,
  so that later runs skip this.

`rdiff` and `deltadump-rdiff` run as whole commands (interpreter start-up included), interleaved
--repeat times (a slow spell of this shared machine hits both; dirty pages are written out before
each, untimed); the table gives the median and the best of each and their ratios (ours / rdiff), and
the ratio of their CPU time. `deltadump-rdiff` is this tree as a user installs it:
built as a wheel and installed (bytecode compiled) into a private venv in the workdir whose other
packages are the running interpreter's; the editable install of `./run` would add its import hook
(about 15 ms) to every start. "engine" is the library call alone in an interpreter already started.
MB is the peak PSS of a command's processes, measured in a run of its own.

Then --small-n invocations of each step on 10 KB files (as scripts calling rdiff on many small files
do), interleaved with rdiff and with `python -c pass` (the same interpreter doing nothing).

    python bench/rsync_vs_librsync.py [--size-mb 400] [--real-mb 430] [--repeat 7] [--small-n 1000]
                                      [--workdir DIR] [--cases synthetic,real,small]
"""

from __future__ import annotations

import argparse
import filecmp
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
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


def make_real_pair(base: Path, new: Path, db_mb: int) -> None:
    """Two consecutive uncompressed custom-format dumps of the sample mail database, a day apart."""
    from deltadump.jobs import sample
    from deltadump.pg.conn import psql
    from deltadump.pg.server import LocalServer

    work = Path(tempfile.mkdtemp(prefix="ddbench-pg-", dir=base.parent))
    work.chmod(0o711)  # the server runs as an unprivileged user when we are root
    server = LocalServer(work / "server")
    server.start()
    try:
        pb, conn = server.psql_bin(), server.conn()
        psql(pb, conn, "create database mail")
        messages = int(db_mb * 1e6 / 1740)  # about 1.74 KB of database per sample message
        sample.load(pb, conn, "mail", users=500, messages=messages, words=40)
        size = int(psql(pb, conn, "select pg_database_size('mail')")[0][0])
        print(f"  database {size / 1e6:.0f} MB ({messages} messages)", file=sys.stderr)

        def dump(to: Path) -> None:
            tmp = to.with_name(to.name + ".part")
            with conn.with_db("mail").env() as env:
                subprocess.run(
                    [str(server.bin / "pg_dump"), "-Fc", "-Z", "0", "-f", str(tmp)],
                    env=env,
                    pass_fds=env.fds,
                    check=True,
                )
            tmp.rename(to)

        dump(base)
        sample.mail_day(pb, conn, "mail", 2, new=messages // 200, words=40)
        dump(new)
    finally:
        server.remove()
        shutil.rmtree(work, ignore_errors=True)


def run_timed(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of its processes) of one command. Dirty pages are written out
    first (os.sync, not timed), so that no command pays for the writeback of another's output."""
    os.sync()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    res = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(argv)}\n{res.stderr.decode()}")
    return wall, r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime


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


PYTHON = Path(sys.executable)  # the interpreter of the installed copy (install())


def install(work: Path) -> Path:
    """This tree installed as a user installs it: a wheel, installed (bytecode compiled) into a private
    venv in `work` whose other packages are the running interpreter's. Returns its python."""
    repo = Path(__file__).resolve().parent.parent
    venv, wheels = work / "venv", work / "wheel"
    for d in (venv, wheels):
        shutil.rmtree(d, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(wheels), str(repo)], check=True, capture_output=True)
    whl = [str(w) for w in wheels.glob("*.whl")]
    subprocess.run([*pip, "--python", str(venv / "bin" / "python"), "install", "--no-deps", *whl], check=True)
    shutil.rmtree(wheels)
    return venv / "bin" / "python"


def engine_seconds(argv: list[str]) -> float:
    """Seconds of the library call alone, in an interpreter already started (imports not timed)."""
    opts = argv[: argv.index(next(a for a in argv if a in ("signature", "delta", "patch")))]
    rest = argv[len(opts) :]
    res = subprocess.run([str(PYTHON), "-c", ENGINE, rest[0], *opts, *rest[1:]], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(res.stderr)
    return float(res.stdout.strip())


def peak_pss(argv: list[str]) -> int:
    """Peak of the summed PSS (KiB) of a command's process tree (shared pages counted once), sampled
    every 10 ms in a run of its own, so that sampling never slows a timed run."""
    return sample_peak(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))


def ours_command() -> list[str]:
    ours = PYTHON.parent / "deltadump-rdiff"
    return [str(ours)] if ours.exists() else [str(PYTHON), "-m", "deltadump.cli.rdiff"]


def med_best(xs: list[float]) -> tuple[float, float]:
    return statistics.median(xs), min(xs)


def bench_pair(case: str, base: Path, new: Path, work: Path, repeat: int, rdiff: str) -> None:
    ours_cmd = ours_command()
    print(f"\n{case}: basis {base.stat().st_size / 1e6:.0f} MB, new {new.stat().st_size / 1e6:.0f} MB; {repeat} "
          "interleaved runs each, median / best; ratio = ours / rdiff")  # fmt: skip
    print(
        f"{'options':<8} {'step':<9} {'rdiff s':>11} {'ours s':>11} {'ratio':>11} {'engine s':>11} {'ratio':>11}"
        f" {'cpu ratio':>9} {'rdiff MB':>8} {'ours MB':>7}  output"
    )
    for opts in ([], ["-b", "512"]):
        label = " ".join(opts) or "default"
        steps = [
            ("signature", [*opts, "signature", str(base), "{sig}"]),
            ("delta", ["delta", "{sig}", str(new), "{delta}"]),
            ("patch", ["patch", str(base), "{delta}", "{out}"]),
        ]
        for step, tmpl in steps:
            cmds = {}
            for who in ("rdiff", "ours"):
                names = {k: str(work / f"{who}.{k}") for k in ("sig", "delta", "out")}
                argv = [a.format(**names) for a in tmpl]
                cmds[who] = ([rdiff] if who == "rdiff" else ours_cmd) + argv
            times: dict[str, list[float]] = {"rdiff": [], "ours": [], "engine": []}
            cpu: dict[str, list[float]] = {"rdiff": [], "ours": []}
            for _ in range(repeat):  # interleaved, so that a slow spell of the machine hits both
                for who, cmd in cmds.items():
                    Path(cmd[-1]).unlink(missing_ok=True)
                    wall, used = run_timed(cmd)
                    times[who].append(wall)
                    cpu[who].append(used)
                Path(cmds["ours"][-1]).unlink(missing_ok=True)
                os.sync()
                times["engine"].append(engine_seconds(cmds["ours"][len(ours_cmd) :]))
            mem = {}
            for who, cmd in cmds.items():
                Path(cmd[-1]).unlink(missing_ok=True)
                mem[who] = peak_pss(cmd)
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
            (rm, rb), (om, ob), (em, eb) = (med_best(times[w]) for w in ("rdiff", "ours", "engine"))
            cr = statistics.median(cpu["ours"]) / statistics.median(cpu["rdiff"])
            print(
                f"{label:<8} {step:<9} {rm:5.2f}/{rb:5.2f} {om:5.2f}/{ob:5.2f} {om / rm:5.2f}/{ob / rb:5.2f}"
                f" {em:5.2f}/{eb:5.2f} {em / rm:5.2f}/{eb / rb:5.2f} {cr:9.2f}"
                f" {mem['rdiff'] / 1024:8.1f} {mem['ours'] / 1024:7.1f}"
                f"  {sizes}",
                flush=True,
            )
    for f in work.glob("*.out"):
        f.unlink()


def bench_small(work: Path, n: int, rdiff: str) -> None:
    """n invocations of each step on 10 KB files: rdiff, ours and `python -c pass`, interleaved."""
    rng = random.Random(7)
    base = bytearray(rng.randbytes(10_000))
    new = bytes(base[:3000]) + b"an edit" + bytes(base[3100:7000]) + rng.randbytes(200) + bytes(base[7000:])
    (work / "small.base").write_bytes(base)
    (work / "small.new").write_bytes(new)
    ours_cmd = ours_command()
    idle = [str(PYTHON), "-c", "pass"]
    print(f"\nsmall files: {n} invocations of each step on a 10 KB basis and its new version (-f), interleaved")
    print(f"{'step':<10} {'rdiff s':>8} {'ours s':>8} {'python -c pass s':>17} {'ours/rdiff':>11} {'ours/pass':>10}")
    for step in ("signature", "delta", "patch"):
        args = {
            "signature": ["signature", "small.base", "{w}.sig"],
            "delta": ["delta", "{w}.sig", "small.new", "{w}.delta"],
            "patch": ["patch", "small.base", "{w}.delta", "{w}.out"],
        }[step]
        cmds = {
            "rdiff": [rdiff, "-f", *(a.format(w="rdiff") for a in args)],
            "ours": [*ours_cmd, "-f", *(a.format(w="ours") for a in args)],
            "pass": idle,
        }
        total = dict.fromkeys(cmds, 0.0)
        for _ in range(n):
            for who, cmd in cmds.items():
                t = time.perf_counter()
                r = subprocess.run(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                total[who] += time.perf_counter() - t
                if r.returncode:
                    raise SystemExit(f"failed: {cmd}")
        key = {"signature": "sig", "delta": "delta", "patch": "out"}[step]
        same = (work / f"rdiff.{key}").read_bytes() == (work / f"ours.{key}").read_bytes()
        print(
            f"{step:<10} {total['rdiff']:8.2f} {total['ours']:8.2f} {total['pass']:17.2f}"
            f" {total['ours'] / total['rdiff']:11.1f} {total['ours'] / total['pass']:10.2f}"
            f"  {'outputs identical' if same else 'outputs differ'}",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=400, help="synthetic basis size")
    ap.add_argument("--real-mb", type=int, default=430, help="database size for the real pair")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--small-n", type=int, default=1000)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--cases", default="synthetic,real,small")
    args = ap.parse_args()
    cases = set(args.cases.split(","))
    rdiff = shutil.which("rdiff")
    if not rdiff:
        raise SystemExit("rdiff is not installed (apt-get install rdiff)")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ddbench-"))
    work.mkdir(parents=True, exist_ok=True)
    global PYTHON
    try:
        PYTHON = install(work)
        print(f"deltadump-rdiff: {ours_command()[0]} (this tree, installed from a wheel)")
        if "synthetic" in cases:
            base, new = work / "base.dump", work / "new.dump"
            if not (base.exists() and new.exists() and base.stat().st_size >= args.size_mb * 10**6):
                print(f"generating {args.size_mb} MB base and new version in {work} ...", file=sys.stderr)
                # in a child process, so that its memory never counts in the children measured below
                subprocess.run([sys.executable, __file__, "--generate", base, new, str(args.size_mb)], check=True)
            bench_pair("synthetic", base, new, work, args.repeat, rdiff)
        if "real" in cases:
            base, new = work / "mail-day1.dump", work / "mail-day2.dump"
            if not (base.exists() and new.exists()):
                print(f"dumping a {args.real_mb} MB sample mail database twice, a day apart ...", file=sys.stderr)
                subprocess.run([sys.executable, __file__, "--generate-real", base, new, str(args.real_mb)], check=True)
            bench_pair("real", base, new, work, args.repeat, rdiff)
        if "small" in cases:
            bench_small(work, args.small_n, rdiff)
    finally:
        if args.workdir is None:
            shutil.rmtree(work)
    print(
        "\n(ours s: the whole deltadump-rdiff command, as installed from a wheel, like rdiff s; engine s: the library"
        " call alone, in an interpreter already started. cpu ratio: median CPU seconds (user + system, all of a"
        " command's processes) of ours over rdiff's: on a machine whose cores are all busy, the wall ratio tends to"
        " it. MB: peak PSS of each command's processes, shared pages counted once)"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--generate":
        make_files(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]) * 10**6)
    elif len(sys.argv) > 1 and sys.argv[1] == "--generate-real":
        make_real_pair(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
