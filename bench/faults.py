#!/usr/bin/env python3
"""Fault figures for the reliability matrix: bit flips at rest and lock races, on a real server.

Bit flips (F12): a backup folder with a delta chain (a base, deltas, the slot, the signature the next
delta needs, signed records with their tables attachments, the head) is damaged --flips times by one
random bit in one random stored file; each time `verify` (the job, in-process) must report it, and after
the file is put back it must report nothing (false alarms). Lock races (F23): two `deltadump backup`
processes started at the same instant on one folder, --races times: exactly one may run, the other must
say who holds the lock.

    python bench/faults.py [--flips 1000] [--races 50] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deltadump.config import load
from deltadump.errors import DeltadumpError
from deltadump.jobs import sample
from deltadump.jobs.common import SilentReporter
from deltadump.jobs.verify import verify
from deltadump.pg.conn import psql
from deltadump.pg.server import LocalServer


def backup(cfgp: Path, day: int) -> None:
    env = {"DELTADUMP_NOW": f"2026-11-{day:02d}T02:00:00"}
    import os

    r = subprocess.run([sys.executable, "-m", "deltadump.cli.main", "backup", "-q", "--config", str(cfgp)],
                       capture_output=True, text=True, env={**os.environ, **env})  # fmt: skip
    if r.returncode != 0:
        raise SystemExit(r.stderr)


def detected(cfgp: Path) -> bool:
    """True when verify finds something wrong (a failed backup, or a refused record or head)."""
    try:
        return not verify(load(cfgp), reporter=SilentReporter()).ok
    except DeltadumpError:
        return True


def flips(dest: Path, cfgp: Path, n: int, rng: random.Random) -> tuple[int, int, dict[str, int]]:
    files = [p for p in dest.rglob("*") if p.is_file() and not p.name.endswith(".lock")
             and "deltadump-offsite" not in p.parts and not p.name.startswith(".")]  # fmt: skip
    files = [p for p in files if not (p.suffix == ".sig" and not detected_sig_needed(p, cfgp))]
    found = alarms = 0
    kinds: dict[str, int] = {}
    for _ in range(n):
        p = rng.choice(files)
        data = bytearray(p.read_bytes())
        if not data:
            continue
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
        saved = p.read_bytes()
        p.write_bytes(bytes(data))
        kind = p.parent.name if p.parent != dest else "slot"
        kinds[kind] = kinds.get(kind, 0) + 1
        if detected(cfgp):
            found += 1
        else:
            print(f"NOT DETECTED: bit flip at byte {i} of {p.relative_to(dest)}")
        p.write_bytes(saved)
        if detected(cfgp):
            alarms += 1
    return found, alarms, kinds


def detected_sig_needed(p: Path, cfgp: Path) -> bool:
    """Only the signature the next delta needs is kept and checked (older ones are deleted)."""
    from deltadump.jobs.chain import needed_signature
    from deltadump.jobs.repo import open_local

    cfg = load(cfgp)
    return needed_signature(open_local(cfg, SilentReporter()).backups(), cfg.delta.mode) == p.stem


def races(cfgp: Path, n: int, day0: int) -> tuple[int, int, int]:
    """Two backups at the same instant, n times. Each race must end with exactly one winner and the
    other refused naming the holder, or (when the first was done before the second reached the lock)
    both good and one after the other: never two at once."""
    import os

    from deltadump.jobs.repo import open_local

    refused = serialized = 0
    for k in range(n):
        env = {k: v for k, v in os.environ.items() if k != "DELTADUMP_NOW"}  # real times: they tell overlaps
        argv = [sys.executable, "-m", "deltadump.cli.main", "backup", "-q", "--config", str(cfgp)]
        a = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        b = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        ea, eb = a.communicate()[1], b.communicate()[1]
        codes = sorted([a.returncode, b.returncode])
        loser = ea if a.returncode else eb
        if codes == [0, 1] and "already running" in loser and "pid " in loser:
            refused += 1
        elif codes == [0, 0]:
            good = [r for r in open_local(load(cfgp), SilentReporter()).backups() if r.status == "ok"][-2:]
            first, second = sorted(good, key=lambda r: r.number)
            if first.finished is not None and first.finished <= second.started:
                serialized += 1
            else:
                print(f"race {k}: two backups ran at once: {first.id}, {second.id}")
        else:
            print(f"race {k}: exit codes {codes}: {loser.strip()[:200]}")
    return refused, serialized, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flips", type=int, default=1000)  # 0: the lock races only
    ap.add_argument("--races", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ddfaults-"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o711)
    server = LocalServer(work / "server")
    server.start()
    try:
        pb, conn = server.psql_bin(), server.conn()
        psql(pb, conn, "create database mail")
        sample.load(pb, conn, "mail", users=10, messages=1500, words=20)
        dest = work / "dest"
        dest.mkdir(exist_ok=True)
        pw = work / "pw"
        pw.write_text(server.password + "\n")
        cfgp = work / "deltadump.toml"
        cfgp.write_text(f'[database]\ndsn = "{server.dsn("mail")}"\npassword_file = "{pw}"\npg_bin = "{server.bin}"\n'
                        f'[backup]\ndest = "{dest}"\nname = "DBBACK.DMP"\n[delta]\nenabled = true\n'
                        '[drill]\nchecksums = true\n')  # fmt: skip
        for day in range(1, 5):
            if day > 1:
                sample.mail_day(pb, conn, "mail", day, new=30, words=20)
            backup(cfgp, day)
        t = time.perf_counter()
        found, alarms, kinds = flips(dest, cfgp, args.flips, random.Random(args.seed))
        print(f"F12 bit flips at rest: {found} of {args.flips} detected, {alarms} false alarms "
              f"({time.perf_counter() - t:.0f} s; flips per folder: {kinds})")  # fmt: skip
        refused, serialized, total = races(cfgp, args.races, 5)
        print(f"F23 lock races: {refused + serialized} of {total} with one backup at a time ({refused} with one "
              f"refused, naming the holder; {serialized} where the first had finished when the second took the "
              "lock)")  # fmt: skip
    finally:
        server.remove()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
