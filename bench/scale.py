#!/usr/bin/env python3
"""Benchmark: a big mail database (default 5 GB), three days of delta backups in the custom and the
directory format, each with an offsite copy in a folder, against the tools a user would otherwise use.

Per day and format it prints: the backup's wall time against `pg_dump -Fc` of the same day (both
timed in the same run), what each read from and wrote to the disk, what was sent offsite against a
compressed full dump and against `zstd -3 --long=31 --patch-from=YESTERDAY TODAY` (zstd refuses dumps
over 2 GiB: then against `rdiff` with its defaults and `zstd -3` of its delta), and the peak memory of
deltadump's processes (PSS; pg_dump and the server excluded). Then it deletes each backup folder and
restores the last day from the offsite copy alone into a new database (`--jobs` as pg_restore gets),
against `pg_restore` of that day's `pg_dump -Fc` dump, and checks the restored tables against the source.

Every timed command starts from the same state of the page cache: with `--cache cold` (the default
when run as root) the cache is dropped before each, so that each reads the database, and a delta
backup yesterday's dump, from the disk, as a nightly run on a busy server does; with `--cache as-is`
each finds what the one before left (an earlier version of this bench timed `pg_dump -Fc` right after
the day's changes, with the database in the cache, and deltadump after the reference tools had read
8 GB of dumps, which put the database out of it). The uncompressed dump `zstd` compares is the custom
backup's own slot (a `pg_dump -Fc -Z0` of the day), and the reference tools run after the timed commands.
Disk figures are the whole machine's (/sys/block), so run it on a quiet machine.

    python bench/scale.py [--size-gb 5] [--days 3] [--jobs 2] [--workdir DIR] [--cache cold|as-is]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from procmem import sample_peak
from server_run import with_server

from deltadump.jobs import sample
from deltadump.pg.conn import psql
from deltadump.pg.inspect import table_stats
from deltadump.pg.server import LocalServer

OURS_SKIP = ("pg_dump", "postgres", "pg_restore", "psql")


def timed(argv: list[object], env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    subprocess.run([str(a) for a in argv], check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def disk_bytes() -> tuple[int, int]:
    """Bytes read from and written to this machine's disks so far (whole devices, /sys/block)."""
    r = w = 0
    for d in Path("/sys/block").iterdir():
        if d.name.startswith(("loop", "ram", "zram", "dm-", "md")):
            continue
        f = (d / "stat").read_text().split()
        r, w = r + int(f[2]) * 512, w + int(f[6]) * 512
    return r, w


class Disk:
    """The cache policy before each timed command, and the disk traffic during it (after a sync)."""

    def __init__(self, cold: bool) -> None:
        self.cold = cold
        self.start = (0, 0)

    def begin(self) -> None:
        os.sync()
        if self.cold:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        self.start = disk_bytes()

    def end(self) -> tuple[float, float]:
        """GB read and written since begin(), once what was written is on the disk."""
        os.sync()
        r, w = disk_bytes()
        return (r - self.start[0]) / 1e9, (w - self.start[1]) / 1e9


def files_of(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (st.st_size, st.st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and (st := p.stat())}  # fmt: skip


ZSTD_PATCH_MAX = 2 << 30  # zstd --patch-from refuses a dictionary (yesterday's dump) over 2 GiB (its error 42)


def reference_patch(yesterday: Path, today: Path, scratch: Path) -> tuple[int, str]:
    """What a user's own tools would send for today: `zstd -3 --long=31 --patch-from=YESTERDAY TODAY`, or,
    for dumps larger than zstd allows, librsync's `rdiff` (its default options) and `zstd -3` of the delta."""
    out = scratch / "p.zst"
    if max(yesterday.stat().st_size, today.stat().st_size) < ZSTD_PATCH_MAX:
        timed(["zstd", "-q", "-f", "-3", "--long=31", f"--patch-from={yesterday}", today, "-o", out])
        return out.stat().st_size, "zstd -3 --long=31 --patch-from"
    sig, delta = scratch / "y.sig", scratch / "t.delta"
    timed(["rdiff", "signature", yesterday, sig])
    timed(["rdiff", "delta", sig, today, delta])
    timed(["zstd", "-q", "-f", "-3", delta, "-o", out])
    sig.unlink()
    delta.unlink()
    return out.stat().st_size, ("rdiff signature + rdiff delta (librsync's defaults) + zstd -3 of the delta: zstd "
                                "--patch-from refuses dumps over 2 GiB")  # fmt: skip


def ours(argv: list[object], env: dict[str, str], log: Path) -> tuple[float, int]:
    """Wall time and peak PSS (KiB) of a deltadump command's processes; what it reports (-v, each line
    with the seconds since its start) goes to `log`."""
    t = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "deltadump.cli.main", *map(str, argv), "-v"], env=env,
                                stdout=out, stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert proc.stderr is not None
        lines: list[str] = []

        def copy() -> None:
            for line in proc.stderr:  # type: ignore[union-attr]
                lines.append(line)
                out.write(f"{time.perf_counter() - t:8.1f} s  {line}")

        reader = threading.Thread(target=copy)
        reader.start()
        peak = sample_peak(proc, every=0.05, skip=lambda c: c in OURS_SKIP)
        reader.join()
    secs = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {''.join(lines[-20:])}")
    return secs, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=5.0)
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--cache", choices=("cold", "as-is"), default="cold" if os.geteuid() == 0 else "as-is",
                    help="drop the page cache before each timed command (needs root; the default as root)")  # fmt: skip
    args = ap.parse_args()
    if args.cache == "cold" and os.geteuid() != 0:
        raise SystemExit("--cache cold drops the page cache, which needs root")
    with_server(args, "ddscale-", run)


def run(server: LocalServer, work: Path, args: argparse.Namespace) -> None:
    pb, conn = server.psql_bin(), server.conn()
    psql(pb, conn, "create database mail")
    messages = int(args.size_gb * 1e9 / 1650)  # about 1.65 kB a message row with 40 words, indexes included
    t = time.perf_counter()
    for start in range(0, messages, 500_000):  # in slices: one statement per half million rows
        n = min(500_000, messages - start)
        if start == 0:
            sample.load(pb, conn, "mail", users=2000, messages=n, words=40)
        else:
            sample.mail_day(pb, conn, "mail", 1000 + start // 500_000, new=n, words=40)
    psql(pb, conn, "vacuum analyze", db="mail", timeout=7200)
    size = int(psql(pb, conn, "select pg_database_size('mail')", db="mail")[0][0])
    print(f"database: {size / 1e9:.2f} GB ({messages:,} messages, built in {time.perf_counter() - t:.0f} s); "
          f"{args.days} days, --jobs {args.jobs}\n", flush=True)  # fmt: skip
    pw = work / "pw"
    pw.write_text(server.password + "\n")
    pgenv = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(server.port), "PGUSER": server.superuser,
             "PGPASSWORD": server.password, "PGDATABASE": "mail"}  # fmt: skip
    cfgs = {}
    for fmt in ("custom", "directory"):
        dest, remote = work / f"dest-{fmt}", work / f"remote-{fmt}"
        for d in (dest, remote):
            d.mkdir(exist_ok=True)
        cfg = work / f"{fmt}.toml"
        cfg.write_text(
            f'[database]\ndsn = "{server.dsn("mail")}"\npassword_file = "{pw}"\npg_bin = "{server.bin}"\n'
            f'[backup]\ndest = "{dest}"\nname = "DUMP"\nformat = "{fmt}"\njobs = {args.jobs}\n'
            f'[delta]\nenabled = true\n[offsite]\nurl = "file://{remote}"\n'
        )
        cfgs[fmt] = (cfg, dest, remote)
    scratch = work / "scratch"
    scratch.mkdir(exist_ok=True)
    logs = work / "logs"  # what each deltadump command reported, with the time of each line
    logs.mkdir(exist_ok=True)
    disk = Disk(args.cache == "cold")
    print(f"page cache before each timed command: {args.cache}", flush=True)
    head = (f"{'day':>3} {'format':>9} {'backup s':>9} {'-Fc s':>7} {'ratio':>6} {'read GB':>8} {'wrote GB':>8} "
            f"{'-Fc read':>8} {'-Fc wrote':>9} {'sent MB':>9} {'-Fc MB':>8} {'zstd patch MB':>14} {'sent/patch':>10} "
            f"{'peak MB':>8}")  # fmt: skip
    print(head, flush=True)
    rows = []
    refs: list[str] = []
    yesterday: Path | None = None
    for day in range(1, args.days + 1):
        if day > 1:
            sample.mail_day(pb, conn, "mail", day, new=max(1000, messages // 200), words=40)
        env = {**os.environ, "DELTADUMP_NOW": f"2026-12-{day:02d}T02:00:00"}
        fc = scratch / "today.fc"
        disk.begin()
        fct = timed([server.bin / "pg_dump", "-Fc", "-f", fc], env=pgenv)
        fcio = disk.end()
        fcs = fc.stat().st_size
        today = []
        for fmt, (cfg, _dest, remote) in cfgs.items():
            before = files_of(remote)
            disk.begin()
            secs, peak = ours(["backup", "--config", cfg], env, logs / f"backup-day{day}-{fmt}.log")
            io = disk.end()
            after = files_of(remote)
            sent = sum(s for k, (s, m) in after.items() if before.get(k) != (s, m))
            today.append({"day": day, "fmt": fmt, "secs": secs, "fct": fct, "sent": sent, "fcs": fcs,
                          "peak": peak, "io": io, "fcio": fcio})  # fmt: skip
        # the reference tools, after the timed commands: on the custom backup's slot, this day's
        # uncompressed custom dump (linked: the next backup puts a new file in its place)
        raw = scratch / f"raw{day}.dump"
        os.link(cfgs["custom"][1] / "DUMP", raw)
        zs = None
        if yesterday is not None:
            zs, ref_name = reference_patch(yesterday, raw, scratch)
            if ref_name not in refs:
                refs.append(ref_name)
            yesterday.unlink()
        yesterday = raw
        for r in today:
            r["zs"] = zs
            z = f"{zs / 1e6:14.2f}" if zs else f"{'':>14}"
            zr = f"{r['sent'] / zs:10.2f}" if zs else f"{'':>10}"
            print(f"{day:>3} {r['fmt']:>9} {r['secs']:9.1f} {fct:7.1f} {r['secs'] / fct:6.2f} {r['io'][0]:8.2f} "
                  f"{r['io'][1]:8.2f} {fcio[0]:8.2f} {fcio[1]:9.2f} {r['sent'] / 1e6:9.2f} {fcs / 1e6:8.1f} {z} {zr} "
                  f"{r['peak'] / 1024:8.0f}", flush=True)  # fmt: skip
        rows += today
    # restore the last day from each offsite copy alone, against pg_restore of that day's -Fc dump
    want = table_stats(conn, "mail")
    print(flush=True)
    psql(pb, conn, "create database ref")
    disk.begin()
    ref = timed([server.bin / "pg_restore", f"--jobs={args.jobs}", "--exit-on-error", "--dbname=ref", fc], env=pgenv)
    disk.end()
    print(f"pg_restore --jobs {args.jobs} of the last day's pg_dump -Fc: {ref:.1f} s", flush=True)
    for fmt, (cfg, dest, _remote) in cfgs.items():
        shutil.rmtree(dest)
        dest.mkdir()
        disk.begin()
        secs, peak = ours(["restore", "--from", "offsite", "--to-db", f"back_{fmt}", "--jobs", args.jobs,
                           "--config", cfg], {**os.environ}, logs / f"restore-{fmt}.log")  # fmt: skip
        same = table_stats(conn, f"back_{fmt}") == want
        print(f"restore from the offsite copy alone ({fmt}): {secs:.1f} s = {secs / ref:.2f}x pg_restore; peak "
              f"{peak / 1024:.0f} MB; identical to the source: {same}", flush=True)  # fmt: skip
    if refs:
        print(f"\nzstd patch MB: {'; '.join(refs)}", flush=True)
    worst = max(rows, key=lambda r: r["secs"] / r["fct"])
    print(f"\nworst backup time / pg_dump -Fc: {worst['secs'] / worst['fct']:.2f} ({worst['fmt']}, day {worst['day']}); "
          f"peak memory of any backup: {max(r['peak'] for r in rows) / 1024:.0f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
