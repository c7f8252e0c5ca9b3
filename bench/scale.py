#!/usr/bin/env python3
"""Benchmark: a big mail database (default 5 GB), three days of delta backups in the custom and the
directory format, each with an offsite copy in a folder, against the tools a user would otherwise use.

Per day and format it prints: the backup's wall time against `pg_dump -Fc` of the same day (both
timed in the same run), what was sent offsite against a compressed full dump and against
`zstd -3 --long=31 --patch-from=YESTERDAY TODAY` (zstd refuses dumps over 2 GiB: then against
`rdiff` with its defaults and `zstd -3` of its delta), and the peak memory of deltadump's processes (PSS;
pg_dump and the server excluded). Then it deletes each backup folder and restores the last day from
the offsite copy alone into a new database (`--jobs` as pg_restore gets), against `pg_restore` of that
day's `pg_dump -Fc` dump, and checks the restored tables against the source.

    python bench/scale.py [--size-gb 5] [--days 3] [--jobs 2] [--workdir DIR]
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
    with_server(ap.parse_args(), "ddscale-", run)


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
    head = (f"{'day':>3} {'format':>9} {'backup s':>9} {'-Fc s':>7} {'ratio':>6} {'sent MB':>9} {'-Fc MB':>8} "
            f"{'zstd patch MB':>14} {'sent/patch':>10} {'peak MB':>8}")  # fmt: skip
    print(head, flush=True)
    rows = []
    refs: list[str] = []
    yesterday: Path | None = None
    for day in range(1, args.days + 1):
        if day > 1:
            sample.mail_day(pb, conn, "mail", day, new=max(1000, messages // 200), words=40)
        env = {**os.environ, "DELTADUMP_NOW": f"2026-12-{day:02d}T02:00:00"}
        fc = scratch / "today.fc"
        fct = timed([server.bin / "pg_dump", "-Fc", "-f", fc], env=pgenv)
        fcs = fc.stat().st_size
        raw = scratch / f"raw{day}.dump"  # the uncompressed dump zstd --patch-from compares
        timed([server.bin / "pg_dump", "-Fc", "-Z0", "-f", raw], env=pgenv)
        zs = None
        if yesterday is not None:
            zs, ref_name = reference_patch(yesterday, raw, scratch)
            if ref_name not in refs:
                refs.append(ref_name)
            yesterday.unlink()
        yesterday = raw
        for fmt, (cfg, _dest, remote) in cfgs.items():
            before = files_of(remote)
            secs, peak = ours(["backup", "--config", cfg], env, logs / f"backup-day{day}-{fmt}.log")
            after = files_of(remote)
            sent = sum(s for k, (s, m) in after.items() if before.get(k) != (s, m))
            rows.append({"day": day, "fmt": fmt, "secs": secs, "fct": fct, "sent": sent, "fcs": fcs, "zs": zs,
                         "peak": peak})  # fmt: skip
            z = f"{zs / 1e6:14.2f}" if zs else f"{'':>14}"
            zr = f"{sent / zs:10.2f}" if zs else f"{'':>10}"
            print(f"{day:>3} {fmt:>9} {secs:9.1f} {fct:7.1f} {secs / fct:6.2f} {sent / 1e6:9.2f} {fcs / 1e6:8.1f} "
                  f"{z} {zr} {peak / 1024:8.0f}", flush=True)  # fmt: skip
    # restore the last day from each offsite copy alone, against pg_restore of that day's -Fc dump
    want = table_stats(conn, "mail")
    print(flush=True)
    psql(pb, conn, "create database ref")
    ref = timed([server.bin / "pg_restore", f"--jobs={args.jobs}", "--exit-on-error", "--dbname=ref", fc], env=pgenv)
    print(f"pg_restore --jobs {args.jobs} of the last day's pg_dump -Fc: {ref:.1f} s", flush=True)
    for fmt, (cfg, dest, _remote) in cfgs.items():
        shutil.rmtree(dest)
        dest.mkdir()
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
