"""Kill it anywhere, lose nothing: the real `deltadump` is killed with SIGKILL at every step boundary of a
run (every durable write, rename, delete and upload, counted by fsio.checkpoint: DELTADUMP_KILL_AT=N
kills at the Nth), for N = 1, 2, ... until a run completes. After each kill: every backup `list` calls
good before the kill is still listed and verifies, the newest good one restores to exactly the data it
was taken from (tables checksummed), the next run succeeds, and after it no temporary file, orphan
object, record no head names, or work folder remains. Configurations: a single slot, a weekly ring,
the directory format, delta chains with an offsite folder, and an S3 server; then prune and restore."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import history, write_config

from deltadump.config import load
from deltadump.jobs import sample
from deltadump.jobs.common import SilentReporter
from deltadump.jobs.restore import restore
from deltadump.jobs.verify import verify
from deltadump.pg.conn import psql
from deltadump.pg.inspect import table_stats
from deltadump.pg.server import LocalServer

DAYS = [f"2026-{m:02d}-{d:02d}T02:00:00" for m in (1, 2, 3, 4, 5) for d in range(1, 29)]


def run(c: Path, day: int, kill_at: int = 0, *args: str, log: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DELTADUMP_NOW": DAYS[day]}
    if kill_at:
        env["DELTADUMP_KILL_AT"] = str(kill_at)
    if log is not None:
        env["DELTADUMP_STEP_LOG"] = str(log)
    return subprocess.run([sys.executable, "-m", "deltadump.cli.main", *(args or ("backup",)), "--config", str(c)],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip


def listed(c: Path) -> list[dict[str, object]]:
    """What `deltadump list --json` prints (in-process: the same rows, without an interpreter's start)."""
    from deltadump.cli.main import backup_rows

    h = history(c)
    return backup_rows(h.backups, h.notes, h.view)


def good_ids(c: Path) -> list[str]:
    return [str(b["id"]) for b in listed(c) if b["state"] == "ok"]


def lost(before: list[dict[str, object]], after: list[dict[str, object]]) -> list[str]:
    """Good backups gone without a newer good backup in their rotation slot (which is how a ring forgets
    its oldest: by design, not by loss)."""
    good_after = [b for b in after if b["state"] == "ok"]
    ids = {b["id"] for b in good_after}
    out = []
    for b in before:
        if b["state"] != "ok" or b["id"] in ids:
            continue
        if not any(a["path"] == b["path"] and str(a["started"]) >= str(b["started"]) for a in good_after):
            out.append(str(b["id"]))
    return out


def leftovers(dest: Path, remote: Path | None) -> list[str]:
    """Temporary files, work folders, objects and records that no live record names."""
    h = history(dest.parent / "c.toml")
    named = {o.path for b in h.backups for o in b.objects}
    named |= {b.signature.path for b in h.backups if b.signature is not None}
    out = [p.relative_to(dest).as_posix() for p in dest.rglob(".tmp-*")]
    for p in (dest / "chain").rglob("*") if (dest / "chain").is_dir() else []:
        rel = p.relative_to(dest).as_posix()
        if p.is_file() and rel not in named and not rel.endswith(".sig"):
            out.append(rel)
    live = set(h.repo.live())
    for p in (dest / "records").glob("*.json"):
        if int(p.name.split("-")[0]) not in live:
            out.append(p.relative_to(dest).as_posix())
    if remote is not None:
        out += [p.relative_to(remote).as_posix() for p in remote.rglob(".tmp-*")]
    return out


def kill_everywhere(
    pg: LocalServer, db: str, c: Path, dest: Path, remote: Path | None, first_day: int
) -> dict[str, int]:
    """The harness. Returns the figures: kill points tried, backups lost (must be 0)."""
    cfg = load(c)
    day = first_day
    n = 1
    n_lost = 0
    snaps: dict[str, dict[str, tuple[int, str]]] = {}
    for bid in good_ids(c):
        snaps[bid] = table_stats(pg.conn(), db)
    while True:
        sample.mail_day(pg.psql_bin(), pg.conn(), db, day, new=5, words=10)
        want = table_stats(pg.conn(), db)
        before = listed(c)
        r = run(c, day, n)
        day += 1
        if r.returncode != -signal.SIGKILL:
            assert r.returncode in (0, 1), r.stderr  # 1: the offsite copy failed, the backup is safe
            break
        after = good_ids(c)
        missing = lost(before, listed(c))
        n_lost += len(missing)
        assert not missing, f"kill at step {n} lost {missing}"
        for bid in after:
            snaps.setdefault(bid, want)  # a backup committed by the killed run holds today's data
        report = verify(cfg, reporter=SilentReporter())
        assert report.ok, f"kill at step {n}: {[r.problems for r in report.results]}"
        newest = after[0]
        target = f"k{n}_{os.getpid()}"
        restore(cfg, newest, target, reporter=SilentReporter())
        assert table_stats(pg.conn(), target) == snaps[newest], f"kill at step {n}"
        psql(pg.psql_bin(), pg.conn(), f"drop database {target}")
        # the next run completes whatever the killed one left, and leaves nothing behind
        sample.mail_day(pg.psql_bin(), pg.conn(), db, day, new=5, words=10)
        r = run(c, day)
        day += 1
        assert r.returncode == 0, f"the run after a kill at step {n} failed: {r.stderr}"
        snaps[good_ids(c)[0]] = table_stats(pg.conn(), db)
        assert leftovers(dest, remote) == [], f"after a kill at step {n}"
        n += 1
    return {"kill points": n - 1, "backups lost": n_lost}


def setup(
    pg: LocalServer, pwfile: Path, db: str, tmp: Path, offsite: str = "", **backup: object
) -> tuple[Path, Path, Path | None]:
    dest = tmp / "dest"
    dest.mkdir()
    c = write_config(tmp / "c.toml", pg, pwfile, db, dest, **backup)
    remote = None
    extra = ""
    if offsite == "file":
        remote = tmp / "remote"
        remote.mkdir()
        extra = f'\n[offsite]\nurl = "file://{remote}"\n'
    elif offsite:
        extra = offsite
    c.write_text(c.read_text() + extra)
    for day in (0, 1):  # something to lose
        assert run(c, day).returncode == 0
    return c, dest, remote


@pytest.mark.parametrize(
    ("name", "backup", "delta", "offsite"),
    [
        ("single slot", {"name": "DBBACK.DMP"}, False, ""),
        ("weekly ring", {"name": "DBBACK-%w.DMP"}, False, ""),
        ("directory format", {"name": "DIR.DMP", "format": "directory", "compress": 0}, False, ""),
        ("delta, offsite folder", {"name": "DBBACK.DMP"}, True, "file"),
        ("delta, offsite S3 server", {"name": "DBBACK-%w.DMP"}, True, "s3"),
    ],
)
def test_kill_a_backup_at_every_step(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path, name: str, backup: dict[str, object], delta: bool,
    offsite: str, request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    c, dest, remote = setup(pg, pwfile, maildb, tmp, **backup)
    if delta or offsite:
        text = c.read_text() + ("\n[delta]\nenabled = true\n" if delta else "")
        if offsite == "file":
            remote = tmp / "remote"
            remote.mkdir()
            text += f'\n[offsite]\nurl = "file://{remote}"\n'
        elif offsite == "s3":
            s3, bucket = request.getfixturevalue("s3_server"), request.getfixturevalue("bucket")
            text += f'\n[offsite]\nurl = "s3://{bucket}/p"\nendpoint_url = "{s3}"\n'
        c.write_text(text)
        assert run(c, 2).returncode == 0
    figures = kill_everywhere(pg, maildb, c, dest, remote, first_day=3)
    print(f"\nF04 {name}: {figures}")
    assert figures["kill points"] >= 8 and figures["backups lost"] == 0
    if offsite:
        v = subprocess.run([sys.executable, "-m", "deltadump.cli.main", "verify", "--offsite", "--config", str(c)],
                           capture_output=True, text=True)  # fmt: skip
        assert v.returncode == 0, v.stdout + v.stderr
        r = subprocess.run([sys.executable, "-m", "deltadump.cli.main", "restore", "--from", "offsite", "--to-db",
                            f"off_{offsite}", "--config", str(c)], capture_output=True, text=True)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert table_stats(pg.conn(), f"off_{offsite}") == table_stats(pg.conn(), maildb)


def test_kill_prune_and_restore_at_every_step(pg: LocalServer, pwfile: Path, maildb: str, tmp: Path) -> None:
    """prune (here and offsite) and restore, killed at each of their steps: nothing kept is lost, the
    next run leaves nothing behind."""
    c, dest, remote = setup(pg, pwfile, maildb, tmp, name="DBBACK.DMP")
    remote = tmp / "remote"
    remote.mkdir()
    c.write_text(c.read_text() + f'\n[delta]\nenabled = true\nmax_chain = 2\n[offsite]\nurl = "file://{remote}"\n')
    for day in range(2, 8):  # chains of three: the older ones are prune's to delete
        sample.mail_day(pg.psql_bin(), pg.conn(), maildb, day, new=5, words=10)
        assert run(c, day).returncode == 0
    want = table_stats(pg.conn(), maildb)
    c.write_text(c.read_text() + "\n[retention]\ndaily = 2\nweekly = 0\nmonthly = 0\n")
    figures = {"prune": 0, "restore": 0}
    for what, args in (("prune", ("prune",)), ("prune", ("prune", "--offsite")),
                       ("restore", ("restore", "latest", "--to-db", "KILLED"))):  # fmt: skip
        n = 1
        while True:
            before = [b for b in listed(c) if b["state"] == "ok"]
            argv = tuple(a.replace("KILLED", f"killed_{n}") for a in args)
            r = run(c, 8, n, *argv)
            if r.returncode != -signal.SIGKILL:
                assert r.returncode == 0, r.stderr
                break
            figures[what] += 1
            after = {b["id"] for b in listed(c) if b["state"] == "ok"}
            # prune may have dropped what it was deleting (its plan said so), never the newest backup
            assert before[0]["id"] in after, f"{args} killed at step {n}"
            report = verify(load(c), reporter=SilentReporter())
            assert report.ok, f"{args} killed at step {n}: {[x.problems for x in report.results]}"
            v = subprocess.run([sys.executable, "-m", "deltadump.cli.main", "verify", "--offsite", "--config", str(c)],
                               capture_output=True, text=True)  # fmt: skip
            assert v.returncode == 0, f"{args} killed at step {n}: {v.stdout}"
            n += 1
        assert run(c, 9, 0, *(a.replace("KILLED", "final") for a in args)).returncode in (0, 1)
    # the next backup completes what was interrupted and leaves nothing behind
    sample.mail_day(pg.psql_bin(), pg.conn(), maildb, 10, new=5, words=10)
    assert run(c, 10).returncode == 0
    assert leftovers(dest, remote) == []
    target = "after_kills"
    restore(load(c), "latest", target, reporter=SilentReporter())
    assert table_stats(pg.conn(), target) != want  # day 10's data, not the older one
    print(f"\nF06 prune and restore killed at every step: {figures}")
    assert figures["prune"] >= 4 and figures["restore"] >= 2
