#!/usr/bin/env python3
"""Benchmark: 14 days of delta backups with offsite copies, against the alternatives, on a real server.

Builds a mail-like database of at least --size-mb on a private PostgreSQL server, then for each of
--days days applies a day of mail traffic (new messages; some read, flagged, moved, deleted; a setting
changes) and runs `deltadump backup` (delta enabled, offsite to a folder or --url). It prints per day: bytes
uploaded, bytes stored offsite, backup time; beside them a compressed full `pg_dump -Fc` (size and
time), the by-hand recipe with rdiff's defaults (differential against day 1, default block length),
and `zstd -3 --long=30 --patch-from=YESTERDAY TODAY`. Then it deletes the local backup folder,
restores the last day from the offsite copy alone into a new database, compares it table by table
with the source, and times `pg_restore` of that day's uncompressed dump for comparison (interleaved,
best of --restores runs each).

    python bench/offsite_days.py [--size-mb 400] [--days 14] [--workdir DIR] [--restores 3]
    python bench/offsite_days.py --workdir DIR --restore-only      # the restore measurement again
    python bench/offsite_days.py --smbd                            # the offsite copy on a private smbd
    python bench/offsite_days.py --url smb://user@nas/share/bench --password-file F [--store-dir DIR]

The offsite copy goes to a folder by default; `--url` sends it to any target deltadump takes (with
`--password-file` for smb://, `--identity` and `--known-hosts` for sftp://, `--endpoint-url` for s3://);
`--smbd` starts a private Samba server on loopback (tests/servers.py, as the tests do; needs root
and the samba package) and sends the copy to its share. What was uploaded each day is measured on the
store's files when they lie on this machine (a folder, the private smbd's share, or `--store-dir`),
else as deltadump reports it (its metrics file: objects and records).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from procmem import sample_peak

from deltadump.jobs import sample
from deltadump.pg.conn import psql
from deltadump.pg.inspect import table_stats
from deltadump.pg.server import LocalServer


def sh(*argv: object, env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    subprocess.run([str(a) for a in argv], check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def remote_files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (st.st_size, st.st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and (st := p.stat())}  # fmt: skip


def newest_backup(cfgp: Path):  # type: ignore[no-untyped-def]
    from deltadump.config import load
    from deltadump.jobs.common import SilentReporter
    from deltadump.jobs.repo import open_local

    return open_local(load(cfgp), SilentReporter()).backups()[-1]


def folder_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def stored_size(cfgp: Path) -> int:
    """What the offsite copy holds, as its target lists it."""
    from deltadump.config import load
    from deltadump.targets import open_target

    c = load(cfgp).offsite_copy()
    return sum(open_target(c.url, c.endpoint_url, c.target_options()).list().values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=400)
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--restores", type=int, default=3, help="restore measurements (best counts)")
    ap.add_argument("--restore-only", action="store_true",
                    help="only measure the restore, in the --workdir of an earlier run")  # fmt: skip
    ap.add_argument("--url", help="the offsite copy's url (default: a folder in the workdir)")
    ap.add_argument("--password-file", help="smb:// urls: the file whose first line is the password")
    ap.add_argument("--identity", help="sftp:// urls: the private key")
    ap.add_argument("--known-hosts", help="sftp:// urls: the known_hosts file")
    ap.add_argument("--endpoint-url", help="s3:// urls: the store's endpoint")
    ap.add_argument("--store-dir", type=Path, help="where the target's files lie on this machine, if they do")
    ap.add_argument("--smbd", action="store_true", help="start a private smbd and send the copy to its share")
    args = ap.parse_args()
    if args.restore_only:
        if args.workdir is None:
            raise SystemExit("--restore-only needs the --workdir of an earlier run")
        restore_again(args.workdir, args.days, args.restores)
        return
    for tool in ("rdiff", "zstd"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ddoffsite-"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o711)
    smbd = start_smbd(args) if args.smbd else None
    server = LocalServer(work / "server")
    server.start()
    try:
        run(server, work, args)
    finally:
        if smbd is not None:
            smbd.remove()
        if args.workdir is None:
            server.remove()
            shutil.rmtree(work, ignore_errors=True)
        else:
            server.stop()


def start_smbd(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """A private Samba server (tests/servers.py) whose share takes the offsite copy."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from servers import SambaServer

    smbd = SambaServer()
    smbd.start()
    args.url = smbd.url("share", "offsite")
    args.password_file = str(smbd.password_file)
    args.store_dir = smbd.share / "offsite"
    print(f"private smbd on 127.0.0.1:{smbd.port}, copy to {args.url}", file=sys.stderr)
    return smbd


def offsite_section(args: argparse.Namespace, remote: Path) -> str:
    if not args.url:
        return f'[offsite]\nurl = "file://{remote}"\n'
    keys = {"url": args.url, "password_file": args.password_file, "identity": args.identity,
            "known_hosts": args.known_hosts, "endpoint_url": args.endpoint_url}  # fmt: skip
    return "[offsite]\n" + "".join(f'{k} = "{v}"\n' for k, v in keys.items() if v)


def last_upload(metrics: Path) -> int:
    """What the last run sent offsite, as deltadump's metrics file says."""
    for line in metrics.read_text().splitlines():
        if line.startswith("deltadump_last_upload_bytes{"):
            return int(float(line.rsplit(" ", 1)[1]))
    raise SystemExit("the metrics file has no deltadump_last_upload_bytes")


def restore_again(work: Path, day: int, times: int) -> None:
    """The restore measurement alone, on the server and offsite copy an earlier run left in `work`."""
    import re

    cfgp = work / "deltadump.toml"
    server = LocalServer(work / "server")
    server.port = int(re.search(r":(\d+)/", cfgp.read_text()).group(1))  # type: ignore[union-attr]
    server.password = (work / "pw").read_text().strip()
    server.start()
    try:
        measure_restore(server, cfgp, work / "scratch" / f"day{day}.dump", day, times)
    finally:
        server.stop()


def run(server: LocalServer, work: Path, args: argparse.Namespace) -> None:
    pb, conn = server.psql_bin(), server.conn()
    psql(pb, conn, "create database mail")
    messages = int(args.size_mb * 1e6 / 1450)
    print(f"loading {messages} messages ...", file=sys.stderr)
    sample.load(pb, conn, "mail", users=500, messages=messages, words=40)
    dbsize = int(psql(pb, conn, "select pg_database_size('mail')")[0][0])
    dest, remote, scratch = work / "dest", work / "remote", work / "scratch"
    for d in (dest, remote, scratch):
        d.mkdir(exist_ok=True)
    store = remote if not args.url else args.store_dir  # where the copy's bytes can be measured, if anywhere
    metrics = work / "metrics.prom"
    pw = work / "pw"
    pw.write_text(server.password + "\n")
    cfgp = work / "deltadump.toml"
    cfgp.write_text(
        f'[database]\ndsn = "{server.dsn("mail")}"\npassword_file = "{pw}"\npg_bin = "{server.bin}"\n'
        f'[backup]\ndest = "{dest}"\nname = "DBBACK.DMP"\n'
        f'[delta]\nenabled = true\n{offsite_section(args, remote)}[notify]\nmetrics_file = "{metrics}"\n'
    )
    how = f"on its files in {store}" if store else "as deltadump reports it (objects and records)"
    print(f"offsite copy: {args.url or f'file://{remote}'}; upload measured {how}")
    env = {**os.environ}
    pgenv = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(server.port), "PGUSER": server.superuser,
             "PGPASSWORD": server.password, "PGDATABASE": "mail"}  # fmt: skip
    new_per_day = max(100, messages // 200)
    print(f"database {dbsize / 1e6:.0f} MB, {args.days} days, ~{new_per_day} new messages a day\n")
    print(f"{'day':>3} {'kind':>5} {'upload MB':>10} {'offsite MB':>11} {'backup s':>9} {'peak MB':>8} | "
          f"{'pg_dump -Fc MB':>14} {'-Fc s':>6} | {'rdiff diff MB':>13} | {'zstd patch MB':>13}")  # fmt: skip
    rows = []
    prev_dump: Path | None = None
    base_sig = work / "base.sig"
    for day in range(1, args.days + 1):
        if day > 1:
            sample.mail_day(pb, conn, "mail", day, new=new_per_day, words=40)
        env["DELTADUMP_NOW"] = f"2026-12-{day:02d}T02:00:00"
        before = remote_files(store) if store else {}
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "deltadump.cli.main", "backup", "--config", str(cfgp), "-q"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        peak_kb = sample_pss(proc)
        bt = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(proc.stderr.read() if proc.stderr else "backup failed")
        if store:
            after = remote_files(store)
            changed = [k for k, v in after.items() if before.get(k) != v]  # objects, records, head
            upload = sum(after[k][0] for k in changed)
        else:
            upload = last_upload(metrics)
        rec = newest_backup(cfgp)
        today = scratch / f"day{day}.dump"
        shutil.copyfile(dest / rec.path, today)
        fc = scratch / "fc.dump"
        fct = sh(server.bin / "pg_dump", "-Fc", "-f", fc, env=pgenv)
        fcs = fc.stat().st_size
        if day == 1:
            sh("rdiff", "-f", "signature", today, base_sig)
            rd = zs = None
        else:
            sh("rdiff", "-f", "delta", base_sig, today, scratch / "rd.delta")
            rd = (scratch / "rd.delta").stat().st_size
            assert prev_dump is not None
            sh("zstd", "-q", "-f", "-3", "--long=30", f"--patch-from={prev_dump}", today, "-o", scratch / "zs.zst")
            zs = (scratch / "zs.zst").stat().st_size
            prev_dump.unlink()
        prev_dump = today
        off = folder_size(store) if store else stored_size(cfgp)
        rows.append(dict(day=day, kind=rec.kind, upload=upload, offsite=off, bt=bt, fcs=fcs, fct=fct, rd=rd, zs=zs,
                         peak=peak_kb))  # fmt: skip
        print(f"{day:>3} {rec.kind:>5} {upload / 1e6:10.2f} {off / 1e6:11.1f} {bt:9.1f} {rows[-1]['peak'] / 1024:8.0f} | "
              f"{fcs / 1e6:14.1f} {fct:6.1f} | {'' if rd is None else f'{rd / 1e6:13.2f}':>13} | "
              f"{'' if zs is None else f'{zs / 1e6:13.2f}':>13}", flush=True)  # fmt: skip
    later = rows[1:]
    avg_up = sum(r["upload"] for r in later) / len(later)
    avg_fc = sum(r["fcs"] for r in later) / len(later)
    avg_zs = sum(r["zs"] for r in later) / len(later)
    avg_rd = sum(r["rd"] for r in later) / len(later)
    delta_days = [r for r in later if r["kind"] == "delta"]
    print(f"\naverage upload, days 2-{args.days}: {avg_up / 1e6:.2f} MB = {avg_up / avg_fc:.2%} of a compressed full dump "
          f"({avg_fc / 1e6:.1f} MB); zstd --patch-from {avg_zs / 1e6:.2f} MB (ours {avg_up / avg_zs:.2f}x); "
          f"rdiff by hand {avg_rd / 1e6:.2f} MB")  # fmt: skip
    print(
        f"peak memory of deltadump backup (PSS of its processes, pg_dump excluded): {max(r['peak'] for r in rows) / 1024:.0f} MB"
    )
    if delta_days:
        ratio = max(r["bt"] / r["fct"] for r in delta_days)
        print(f"backup time on delta days / pg_dump -Fc time: worst {ratio:.2f}")
    # restore the last day from the offsite copy alone
    assert prev_dump is not None
    shutil.rmtree(dest)
    dest.mkdir()
    measure_restore(server, cfgp, prev_dump, args.days, args.restores)


def measure_restore(server: LocalServer, cfgp: Path, last_dump: Path, day: int, times: int) -> None:
    """Restore from the offsite copy alone (the local folder is gone) and pg_restore of that day's
    dump, interleaved, `times` times each; best of each (the machine is shared and noisy)."""
    pb, conn = server.psql_bin(), server.conn()
    pgenv = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(server.port), "PGUSER": server.superuser,
             "PGPASSWORD": server.password}  # fmt: skip
    ours, serial, jobs2, same = [], [], [], True
    for _ in range(times):
        for db in ("from_offsite", "plain_restore", "plain_restore_j2"):
            psql(pb, conn, f"drop database if exists {db}")
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "deltadump.cli.main", "restore", "--from", "offsite", "--to-db",
                            "from_offsite", "--config", str(cfgp), "-q"], capture_output=True, text=True)  # fmt: skip
        ours.append(time.perf_counter() - t)
        if r.returncode != 0:
            raise SystemExit(r.stderr)
        same = same and table_stats(conn, "from_offsite") == table_stats(conn, "mail")
        psql(pb, conn, "create database plain_restore")
        serial.append(sh(server.bin / "pg_restore", "--dbname=plain_restore", last_dump, env=pgenv))
        psql(pb, conn, "create database plain_restore_j2")
        jobs2.append(sh(server.bin / "pg_restore", "--jobs=2", "--dbname=plain_restore_j2", last_dump, env=pgenv))
    rt, prt, prt2 = min(ours), min(serial), min(jobs2)
    jobs = max(1, min(4, len(os.sched_getaffinity(0)) // 2))
    print(f"restore of day {day} from offsite alone, best of {times} (deltadump's default here: pg_restore --jobs={jobs}): "
          f"{rt:.2f} s; pg_restore of that day's dump: {prt:.2f} s serial (ratio {rt / prt:.2f}), {prt2:.2f} s with "
          f"--jobs=2 (ratio {rt / prt2:.2f}); restored database identical to the source: {same}")  # fmt: skip
    # one more restore, not timed, for its peak memory (sampling would slow a timed run)
    psql(pb, conn, "drop database if exists from_offsite")
    proc = subprocess.Popen([sys.executable, "-m", "deltadump.cli.main", "restore", "--from", "offsite", "--to-db",
                             "from_offsite", "--config", str(cfgp), "-q"], stdout=subprocess.DEVNULL)  # fmt: skip
    peak = sample_peak(proc, every=0.02, skip=lambda comm: comm == "pg_restore")
    print(f"  peak memory of deltadump restore (PSS of its processes, pg_restore excluded): {peak / 1024:.0f} MB")
    print("  every run: ours " + ", ".join(f"{x:.2f}" for x in ours) + "; pg_restore " +
          ", ".join(f"{x:.2f}" for x in serial) + "; with --jobs=2 " + ", ".join(f"{x:.2f}" for x in jobs2))  # fmt: skip


def sample_pss(proc: subprocess.Popen[str]) -> int:
    """Peak PSS of deltadump's process tree, pg_dump excluded (it is PostgreSQL's), every 50 ms."""
    return sample_peak(proc, every=0.05, skip=lambda comm: comm == "pg_dump")


if __name__ == "__main__":
    main()
