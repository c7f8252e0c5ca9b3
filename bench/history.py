#!/usr/bin/env python3
"""Benchmark: a year of daily backups of a small database with many tables (repository format 2).

A private PostgreSQL server holds a database of --tables small tables. For --days simulated days (a
synthetic clock, DELTADUMP_NOW) it runs the real `deltadump backup` (delta backups, an offsite copy in
a folder, the default retention) with no change to the data, and prints per day what reached the
offsite copy in records and heads (what grows with the history in format 1, which re-sent its whole
manifest every day), the head's size, the number of live records, the backup's wall time and the peak
memory of its processes (PSS, pg_dump and the server excluded). Then the time to open and load the
repository (head, every live record and its signature checked) on day 10 and on the last day, as
medians of --repeat runs, and the next day's no-change backup from the saved state of day 10 against
from that of the last day, run alternately so that both see the same load (medians of seven each).

    python bench/history.py [--tables 1000] [--days 365] [--repeat 21] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

from procmem import sample_peak
from server_run import with_server

from deltadump.config import load
from deltadump.jobs.common import SilentReporter
from deltadump.jobs.repo import open_local
from deltadump.pg.conn import psql
from deltadump.pg.server import LocalServer


def meta_files(remote: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for sub in ("heads", "records"):
        for p in (remote / sub).glob("*"):
            st = p.stat()
            out[f"{sub}/{p.name}"] = (st.st_size, st.st_mtime_ns)
    return out


def load_time(cfgp: Path, repeat: int) -> tuple[float, float]:
    """Median seconds to open the backup folder's repository (its head, checked: what every command
    does first), and to read every live record too (signatures checked; what list and retention do)."""
    cfg = load(cfgp)
    heads, alls = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        repo = open_local(cfg, SilentReporter())
        heads.append(time.perf_counter() - t)
        repo.backups()
        repo.notes()
        alls.append(time.perf_counter() - t)
    return statistics.median(heads), statistics.median(alls)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", type=int, default=1000)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--repeat", type=int, default=21)
    ap.add_argument("--workdir", type=Path)
    with_server(ap.parse_args(), "ddhistory-", run)


def run(server: LocalServer, work: Path, args: argparse.Namespace) -> None:
    pb, conn = server.psql_bin(), server.conn()
    psql(pb, conn, "create database many")
    ddl = "".join(f"create table t{i:04d} (id int primary key, v text); insert into t{i:04d} "
                  f"select g, md5(g::text) from generate_series(1, 5) g;" for i in range(args.tables))  # fmt: skip
    psql(pb, conn, ddl, db="many", timeout=3600)
    state = work / "state"  # the config, its key and seen state, the backup folder, the offsite copy
    dest, remote = state / "dest", state / "remote"
    for d in (dest, remote):
        d.mkdir(parents=True, exist_ok=True)
    pw = work / "pw"
    pw.write_text(server.password + "\n")
    cfgp = state / "deltadump.toml"
    cfgp.write_text(
        f'[database]\ndsn = "{server.dsn("many")}"\npassword_file = "{pw}"\npg_bin = "{server.bin}"\n'
        f'[backup]\ndest = "{dest}"\n[delta]\nenabled = true\n[offsite]\nurl = "file://{remote}"\n'
    )
    print(f"{args.tables} tables, {args.days} days of no-change backups (delta, offsite folder, default retention)\n")
    print(f"{'day':>4} {'records+head sent':>18} {'head bytes':>11} {'live':>5} {'backup s':>9} {'peak MB':>8}")
    rows = []
    start = datetime(2026, 1, 1, 2, 0)
    loads: dict[int, tuple[float, float]] = {}
    for day in range(1, args.days + 1):
        env = {**os.environ, "DELTADUMP_NOW": (start + timedelta(days=day - 1)).isoformat()}
        before = meta_files(remote)
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "deltadump.cli.main", "backup", "--config", str(cfgp), "-q"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        peak = sample_peak(proc, skip=lambda c: c in ("pg_dump", "postgres"))
        secs = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(proc.stderr.read() if proc.stderr else "backup failed")
        after = meta_files(remote)
        sent = sum(size for k, (size, mt) in after.items() if before.get(k) != (size, mt))
        heads = sorted(k for k in after if k.startswith("heads/") and k.endswith(".json"))
        head = after[heads[-1]][0]
        repo = open_local(load(cfgp), SilentReporter())
        live = len(repo.live())
        rows.append({"day": day, "sent": sent, "head": head, "live": live, "secs": secs, "peak": peak})
        if day in (10, args.days):
            loads[day] = load_time(cfgp, args.repeat)
            shutil.copytree(state, work / f"day{day}", symlinks=True)  # for the side-by-side backups below
        if day <= 12 or day % 30 == 0 or day > args.days - 3:
            print(f"{day:>4} {sent:>18,} {head:>11,} {live:>5} {secs:>9.2f} {peak / 1024:>8.0f}", flush=True)
    last = args.days
    near10, near_last = side_by_side(work, state, start, last, 7)
    d10 = rows[9]
    print(f"\nrecords+head sent: day 10 {d10['sent']:,} B, day {last} {rows[-1]['sent']:,} B "
          f"(day {last} - day 10 = {rows[-1]['sent'] - d10['sent']:+,} B; the bound is +1 KB); "
          f"largest day after 10: {max(r['sent'] for r in rows[10:]):,} B")  # fmt: skip
    print(f"head: day 10 {d10['head']:,} B, day {last} {rows[-1]['head']:,} B; live records {d10['live']} -> "
          f"{rows[-1]['live']}")  # fmt: skip
    (h10, a10), (hl, al) = loads[10], loads[last]
    print(f"load the repository (its head, checked), median of {args.repeat}: day 10 {h10 * 1000:.2f} ms, day {last} "
          f"{hl * 1000:.2f} ms ({hl / h10:.2f}x)")  # fmt: skip
    print(f"... and read every live record (signatures checked): day 10 {a10 * 1000:.1f} ms, day {last} "
          f"{al * 1000:.1f} ms ({al / a10:.2f}x; {d10['live']} and {rows[-1]['live']} live records)")  # fmt: skip
    print(f"no-change backup of the next day, from the state of day 10 and of day {last}, interleaved (median of 7 "
          f"each): {near10:.2f} s and {near_last:.2f} s ({near_last / near10:.2f}x)")  # fmt: skip
    print(f"peak memory of a backup (PSS, pg_dump and server excluded): {max(r['peak'] for r in rows) / 1024:.0f} MB")


def side_by_side(work: Path, state: Path, start: datetime, last: int, n: int) -> tuple[float, float]:
    """The next day's no-change backup from the saved state of day 10 and of the last day, alternately
    (each from a fresh copy of its state), so that both see the same load on a shared machine: medians."""
    times: dict[int, list[float]] = {10: [], last: []}
    scratch = work / "side-by-side"
    for _ in range(n):
        for day in (10, last):
            shutil.rmtree(scratch, ignore_errors=True)
            shutil.copytree(work / f"day{day}", scratch, symlinks=True)
            cfg = scratch / "deltadump.toml"
            cfg.write_text(cfg.read_text().replace(str(state), str(scratch)))
            env = {**os.environ, "DELTADUMP_NOW": (start + timedelta(days=day)).isoformat()}
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "deltadump.cli.main", "backup", "--config", str(cfg), "-q"], env=env,
                           check=True, stdout=subprocess.DEVNULL)  # fmt: skip
            times[day].append(time.perf_counter() - t)
    shutil.rmtree(scratch, ignore_errors=True)
    return statistics.median(times[10]), statistics.median(times[last])


if __name__ == "__main__":
    main()
