"""The backup foundation against a real PostgreSQL server with the real pg_dump/pg_restore/psql."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import cli, history, write_config

from deltadump.config import load
from deltadump.jobs import sample
from deltadump.jobs.backup import backup
from deltadump.pg.conn import psql
from deltadump.pg.inspect import table_stats
from deltadump.pg.server import LocalServer
from deltadump.store.lock import RunLock


def temps(dest: Path) -> list[Path]:
    return [p for p in dest.rglob(".tmp-*")]


@pytest.fixture
def dest(tmp: Path) -> Path:
    d = tmp / "usb disk"  # a space, to prove %f quoting and path handling
    d.mkdir()
    return d


def stats(pg: LocalServer, db: str) -> dict[str, tuple[int, str]]:
    return table_stats(pg.conn(), db)


@pytest.fixture(scope="module")
def bigmail(pg: LocalServer) -> str:
    """A mail database of about 100 MB."""
    psql(pg.psql_bin(), pg.conn(), "create database bigmail")
    sample.load(pg.psql_bin(), pg.conn(), "bigmail", users=200, messages=75_000, words=40)
    size = int(psql(pg.psql_bin(), pg.conn(), "select pg_database_size('bigmail')")[0][0])
    assert size > 90e6
    return "bigmail"


@pytest.mark.parametrize(("fmt", "compress"), [("custom", 6), ("directory", 0), ("plain", 0), ("tar", 0), ("plain", 6)])
def test_round_trip_every_format(
    pg: LocalServer, pwfile: Path, bigmail: str, tmp: Path, fmt: str, compress: int
) -> None:
    d = tmp / "dest"
    d.mkdir()
    cfg = load(write_config(tmp / "c.toml", pg, pwfile, bigmail, d, format=fmt, compress=compress))
    rec = backup(cfg)
    assert rec.status == "ok" and rec.files and all(f.sha256 for f in rec.files)
    slot = d / rec.path
    mode = stat.S_IMODE(slot.stat().st_mode)
    assert mode & 0o077 == 0, f"backup readable by others: {oct(mode)}"
    target = f"restored_{fmt}_{compress}"
    r = cli("restore", rec.id, "--to-db", target, "--jobs", "2", "--config", tmp / "c.toml")
    assert r.returncode == 0, r.stderr
    assert stats(pg, target) == stats(pg, bigmail)
    psql(pg.psql_bin(), pg.conn(), f"drop database {target}")


def test_rotation_template_weekly_ring_and_counter(
    pg: LocalServer, pwfile: Path, maildb: str, dest: Path, tmp: Path
) -> None:
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest, name="%y/DBBACK-%w.DMP")
    days = ["2026-11-23T02:00:00", "2026-11-24T02:00:00", "2026-11-30T02:00:00"]  # Mon, Tue, next Mon
    for when in days:
        r = cli("backup", "--config", c, env={"DELTADUMP_NOW": when})
        assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (dest / "2026").iterdir()) == ["DBBACK-1.DMP", "DBBACK-2.DMP"]
    m = history(c)
    # the first backup's slot was reused by the third: retention dropped its record (nothing of it is left)
    assert [b.path for b in m.backups] == ["2026/DBBACK-2.DMP", "2026/DBBACK-1.DMP"]
    assert all(m.current(b) for b in m.backups)
    out = json.loads(cli("list", "--json", "--config", c).stdout)
    assert [b["id"] for b in out] == [b.id for b in reversed(m.backups)]
    assert [b["state"] for b in out] == ["ok", "ok"]
    # %2: advances once per calendar day with a good backup, cycling 0, 1, 0
    c2 = write_config(tmp / "c2.toml", pg, pwfile, maildb, dest, name="ring-%2.dump")
    for when in ["2026-12-01T01:00:00", "2026-12-01T13:00:00", "2026-12-02T01:00:00", "2026-12-03T01:00:00"]:
        assert cli("backup", "--config", c2, env={"DELTADUMP_NOW": when}).returncode == 0
    listed = json.loads(cli("list", "--json", "--config", c2).stdout)
    # 3 earlier success days (Nov 23, 24, 30) precede Dec 1 -> 1 (twice that day); Dec 2 -> 0 (4 days); Dec 3 -> 1.
    # The slots' current owners are listed, newest first
    assert [b["path"] for b in listed if b["path"].startswith("ring")] == ["ring-1.dump", "ring-0.dump"]
    assert sorted(p.name for p in dest.glob("ring-*")) == ["ring-0.dump", "ring-1.dump"]


def wait_for_after_command(c: Path):  # type: ignore[no-untyped-def]
    """The latest backup and its after note, once its detached after-command has finished (30 s at most)."""
    deadline = time.monotonic() + 30
    while True:
        h = history(c)
        rec = h.latest()
        note = next((n for n in h.notes if n.backup == rec.id and n.kind == "after"), None)
        if note is not None or time.monotonic() > deadline:
            return rec, note
        time.sleep(0.2)


def test_after_command_runs_detached_with_quoted_path(
    pg: LocalServer, pwfile: Path, maildb: str, dest: Path, tmp: Path
) -> None:
    marker, go = tmp / "after.out", tmp / "go"
    # the after-command waits for a file the test creates only once the backup has returned: had the
    # backup waited for it, it would never return
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest,
                     after=f"while [ ! -e {go} ]; do sleep 0.05; done; printf '%s\\n' %f > {marker}; "
                           "echo done-output; exit 3")  # fmt: skip
    r = cli("backup", "--config", c, timeout=120)
    assert r.returncode == 0, r.stderr
    assert not marker.exists()  # still waiting: the backup did not wait for it
    go.touch()
    rec, note = wait_for_after_command(c)
    assert rec.after and note is not None and note.exit_code == 3 and not note.ok
    assert marker.read_text() == f"{dest / rec.path}\n"  # one argument, spaces and all
    log = (dest / "deltadump-after.log").read_text()
    assert "done-output" in log and "exited with 3" in log
    # the timeout kills a hanging command; the backup still succeeded
    c2 = write_config(tmp / "c2.toml", pg, pwfile, maildb, dest, after="sleep 60", after_timeout=1)
    assert cli("backup", "--config", c2).returncode == 0
    rec, note = wait_for_after_command(c2)
    assert note is not None and note.exit_code != 0
    assert "killed after 1 s" in note.error


def _first_backup(c: Path, dest: Path) -> str:
    r = cli("backup", "--config", c)
    assert r.returncode == 0, r.stderr
    return str(history(c).latest().id)


def _assert_failed_cleanly(r: subprocess.CompletedProcess[str], dest: Path, good_id: str, c: Path, *words: str) -> None:
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    errors = [ln for ln in lines if "error" in ln.lower()]
    assert len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith("deltadump: error: "), r.stderr
    for w in words:
        assert w in errors[0], errors[0]
    assert "Traceback" not in r.stderr
    assert temps(dest) == []
    m = history(c)
    assert m.backups[-1].status == "failed" and m.backups[-1].error
    assert m.latest().id == good_id
    v = cli("verify", "--config", c)
    assert v.returncode == 0, v.stdout + v.stderr


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"port": "1"}, ("cannot reach", "127.0.0.1:1")),
        ({"password": "wrong"}, ("wrong or missing password",)),
        ({"db": "no_such_db"}, ('database "no_such_db" does not exist',)),
    ],
)
def test_preflight_failures(
    pg: LocalServer, pwfile: Path, maildb: str, dest: Path, tmp: Path, change: dict[str, str], words: tuple[str, ...]
) -> None:
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest, name="DBBACK.DMP")
    good = _first_backup(c, dest)
    before = (dest / "DBBACK.DMP").read_bytes()
    pw = pwfile
    db = change.get("db", maildb)
    if "password" in change:
        pw = tmp / "wrong.pw"
        pw.write_text("not-the-password-42\n")  # (a password is redacted wherever it appears in a message)
    bad = write_config(tmp / "bad.toml", pg, pw, db, dest, name="DBBACK.DMP")
    if "port" in change:
        bad.write_text(bad.read_text().replace(f":{pg.port}/", f":{change['port']}/"))
    r = cli("backup", "--config", bad)
    _assert_failed_cleanly(r, dest, good, c, *words)
    assert (dest / "DBBACK.DMP").read_bytes() == before
    assert pg.password not in r.stderr


def test_pg_dump_killed_midway(pg: LocalServer, pwfile: Path, bigmail: str, dest: Path, tmp: Path) -> None:
    c = write_config(tmp / "c.toml", pg, pwfile, bigmail, dest, name="DBBACK.DMP", compress=0)
    good = _first_backup(c, dest)
    before = (dest / "DBBACK.DMP").read_bytes()
    proc = subprocess.Popen(
        [*cli_argv(), "backup", "--config", str(c)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    killed = False
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline and not killed:
        for pid in children(proc.pid):
            if comm(pid) == "pg_dump" and temps(dest):
                os.kill(pid, 9)
                killed = True
        time.sleep(0.02)
    out, errtext = proc.communicate(timeout=60)
    assert killed
    _assert_failed_cleanly(
        subprocess.CompletedProcess([], proc.returncode, out, errtext), dest, good, c, "pg_dump", "SIGKILL"
    )
    assert (dest / "DBBACK.DMP").read_bytes() == before


def test_pg_dump_connection_terminated(pg: LocalServer, pwfile: Path, bigmail: str, dest: Path, tmp: Path) -> None:
    c = write_config(tmp / "c.toml", pg, pwfile, bigmail, dest, name="DBBACK.DMP", compress=0)
    good = _first_backup(c, dest)
    proc = subprocess.Popen(
        [*cli_argv(), "backup", "--config", str(c)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    done = 0
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline and not done:
        if temps(dest):
            rows = psql(pg.psql_bin(), pg.conn(), "select pg_terminate_backend(pid) from pg_stat_activity "
                        "where datname = 'bigmail' and state = 'active' and pid <> pg_backend_pid()")  # fmt: skip
            done = len(rows)
        time.sleep(0.02)
    out, errtext = proc.communicate(timeout=60)
    assert done
    _assert_failed_cleanly(subprocess.CompletedProcess([], proc.returncode, out, errtext), dest, good, c, "pg_dump")


def cli_argv() -> list[str]:
    import sys

    return [sys.executable, "-m", "deltadump.cli.main"]


def comm(pid: int) -> str | None:
    """A process's command name, or None once it has ended (a short-lived child may end any time)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


@pytest.fixture
def small_mount(tmp: Path) -> Path:
    """A real 3 MB filesystem (tmpfs) for the full-disk test; needs root, as CI has."""
    if os.geteuid() != 0:
        pytest.fail("the full-disk test mounts a tmpfs and must run as root (as CI does)")
    m = tmp / "small disk"
    m.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0755", "tmpfs", str(m)], check=True)
    yield m
    subprocess.run(["umount", "-l", str(m)], check=False)


def test_full_disk(pg: LocalServer, pwfile: Path, maildb: str, small_mount: Path, tmp: Path) -> None:
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, small_mount, name="DBBACK.DMP", compress=9)
    good = _first_backup(c, small_mount)
    before = (small_mount / "DBBACK.DMP").read_bytes()
    assert len(before) < 1_000_000
    sample.mail_day(pg.psql_bin(), pg.conn(), maildb, 1, new=6000, words=30)  # now the dump cannot fit
    bad = write_config(tmp / "bad.toml", pg, pwfile, maildb, small_mount, name="DBBACK.DMP", compress=0)
    r = cli("backup", "--config", bad)
    _assert_failed_cleanly(r, small_mount, good, c, "disk full", "MB free")
    assert (small_mount / "DBBACK.DMP").read_bytes() == before


def test_dest_not_writable_and_missing(pg: LocalServer, pwfile: Path, maildb: str, tmp: Path) -> None:
    ro = tmp / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
    else:
        ro.chmod(0o500)
    try:
        c = write_config(tmp / "c.toml", pg, pwfile, maildb, ro)
        t = time.monotonic()
        r = cli("backup", "--config", c)
        assert r.returncode == 1 and time.monotonic() - t < 10
        assert "permission denied" in r.stderr or "read-only" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(ro)], check=False)
    c = write_config(tmp / "c2.toml", pg, pwfile, maildb, tmp / "not-mounted")
    r = cli("backup", "--config", c)
    assert r.returncode == 1 and "does not exist" in r.stderr
    assert not (tmp / "not-mounted").exists()


def test_bad_config(pg: LocalServer, pwfile: Path, maildb: str, dest: Path, tmp: Path) -> None:
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest, name="DBBACK-%q.DMP")
    r = cli("backup", "--config", c)
    assert r.returncode == 2 and "unknown placeholder %q" in r.stderr
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest, colour="blue")
    r = cli("backup", "--config", c)
    assert r.returncode == 2 and "unknown config key 'backup.colour'" in r.stderr
    r = cli("backup", "--config", tmp / "missing.toml")
    assert r.returncode == 2 and "not found" in r.stderr
    assert list(dest.iterdir()) == []


def test_verify_detects_corruption_and_truncation(
    pg: LocalServer, pwfile: Path, maildb: str, dest: Path, tmp: Path
) -> None:
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest, format="directory", name="dir-%w")
    assert cli("backup", "--config", c).returncode == 0
    c2 = write_config(tmp / "c2.toml", pg, pwfile, maildb, dest, name="file-%w.dump")
    assert cli("backup", "--config", c2).returncode == 0
    assert cli("verify", "--all", "--config", c).returncode == 0
    rec = history(c).latest()
    f = dest / rec.path
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(data)
    r = cli("verify", "--config", c)
    assert r.returncode == 1 and f"{f}: sha256 mismatch" in r.stdout
    f.write_bytes(data[: len(data) // 2])
    r = cli("verify", rec.id, "--config", c)
    assert r.returncode == 1 and "size" in r.stdout
    # restore refuses a damaged backup before pg_restore sees a byte
    r = cli("restore", rec.id, "--to-db", "never_created", "--config", c)
    assert r.returncode == 1 and "damaged" in r.stderr
    assert not psql(pg.psql_bin(), pg.conn(), "select 1 from pg_database where datname = 'never_created'")
    # a changed record is reported, not trusted
    mf = next((dest / "records").glob(f"*-{rec.id}.json"))
    mf.write_text(mf.read_text().replace('"status": "ok"', '"status": "OK"', 1))
    r = cli("list", "--config", c)
    assert r.returncode == 1 and "does not match its signature" in r.stderr, r.stderr


def test_restore_refuses_non_empty_target_unless_clean(
    pg: LocalServer, pwfile: Path, maildb: str, dest: Path, tmp: Path
) -> None:
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
    assert cli("backup", "--config", c).returncode == 0
    r = cli("restore", "latest", "--to-db", maildb, "--config", c)
    assert r.returncode == 1 and "is not empty" in r.stderr
    before = stats(pg, maildb)
    psql(pg.psql_bin(), pg.conn(), "delete from messages where id % 2 = 0", db=maildb)
    r = cli("restore", "latest", "--to-db", maildb, "--clean", "--config", c)
    assert r.returncode == 0, r.stderr
    assert stats(pg, maildb) == before
    # an error during restore fails the restore (plain format, ON_ERROR_STOP)
    c2 = write_config(tmp / "c2.toml", pg, pwfile, maildb, dest, format="plain", compress=0, name="p.sql")
    assert cli("backup", "--config", c2).returncode == 0
    psql(pg.psql_bin(), pg.conn(), "create database half_full")
    psql(pg.psql_bin(), pg.conn(), "create table public.messages (x int)", db="half_full")
    r = cli("restore", "p.sql", "--to-db", "half_full", "--config", c2)
    assert r.returncode == 1 and "not empty" in r.stderr


def test_lock_refuses_second_backup(pg: LocalServer, pwfile: Path, maildb: str, dest: Path, tmp: Path) -> None:
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
    with RunLock(dest):
        r = cli("backup", "--config", c)
        assert r.returncode == 1 and "already running" in r.stderr and f"pid {os.getpid()}" in r.stderr
        waiter = subprocess.Popen([*cli_argv(), "backup", "--wait", "--config", str(c)], stderr=subprocess.PIPE)
        time.sleep(1.5)
        assert waiter.poll() is None  # waiting for the lock
    assert waiter.wait(timeout=120) == 0


def test_secrets_never_on_command_lines_or_in_files(
    pg: LocalServer, pwfile: Path, bigmail: str, dest: Path, tmp: Path
) -> None:
    c = write_config(tmp / "c.toml", pg, pwfile, bigmail, dest, compress=0)
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for d in Path("/proc").iterdir():
                if d.name.isdigit():
                    with contextlib.suppress(OSError):
                        seen.append((d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            time.sleep(0.01)

    t = threading.Thread(target=watch)
    t.start()
    r = cli("backup", "--config", c, "-v")
    stop.set()
    t.join()
    assert r.returncode == 0, r.stderr
    assert any("pg_dump" in s for s in seen), "the watcher never saw pg_dump run"
    assert not any(pg.password in s for s in seen)
    for f in dest.iterdir():
        if f.is_file():
            assert pg.password.encode() not in f.read_bytes(), f
            assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, f
    for f in dest.rglob("*"):
        if f.is_file():
            assert pg.password.encode() not in f.read_bytes(), f


def test_init_writes_private_config_and_refuses_overwrite(
    pg: LocalServer, pwfile: Path, maildb: str, dest: Path, tmp: Path
) -> None:
    cfgp = tmp / "new.toml"
    r = cli("init", "--dsn", pg.dsn(maildb), "--dest", dest, "--password-file", pwfile, "--config", cfgp)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(cfgp.stat().st_mode) == 0o600
    cfg = load(cfgp)
    assert cfg.backup.name == "DBBACK-%w.DMP" and cfg.dest == dest.resolve()
    r = cli("init", "--dsn", pg.dsn(maildb), "--dest", dest, "--config", cfgp)
    assert r.returncode == 2 and "already exists" in r.stderr
    r = cli(
        "init",
        "--dsn",
        pg.dsn(maildb),
        "--dest",
        tmp / "nowhere",
        "--password-file",
        pwfile,
        "--config",
        tmp / "x.toml",
    )
    assert r.returncode == 1 and "does not exist" in r.stderr and not (tmp / "x.toml").exists()
    # with the config in $DELTADUMP_CONFIG, commands find it
    r = cli("backup", env={"DELTADUMP_CONFIG": str(cfgp)})
    assert r.returncode == 0, r.stderr


def test_demo_runs_and_leaves_no_server() -> None:
    r = cli("demo", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "demo passed" in r.stdout
    # what makes deltadump different is shown: each day's upload against a compressed dump, the drill
    # table by table, and the restore from the offsite copy alone
    assert "sent offsite" in r.stdout and "pg_dump -Fc" in r.stdout
    days = [ln for ln in r.stdout.splitlines() if "│ delta" in ln and ln.rstrip(" │").endswith("%")]
    assert len(days) >= 3, r.stdout
    for ln in days:  # a delta day sends a few percent of a compressed dump
        assert float(ln.split("│")[-2].strip().rstrip("%")) < 10, ln
    assert "drill of backup" in r.stdout and "public.messages" in r.stdout
    assert "restored from the offsite copy alone" in r.stdout and "│ NO" not in r.stdout
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "deltadump-demo-" not in ps


def test_sigterm_during_backup_aborts_cleanly(
    pg: LocalServer, pwfile: Path, bigmail: str, dest: Path, tmp: Path
) -> None:
    import signal as sig

    c = write_config(tmp / "c.toml", pg, pwfile, bigmail, dest, name="DBBACK.DMP", compress=0)
    good = _first_backup(c, dest)
    before = (dest / "DBBACK.DMP").read_bytes()
    proc = subprocess.Popen(
        [*cli_argv(), "backup", "--config", str(c)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline and not temps(dest):
        time.sleep(0.02)
    proc.send_signal(sig.SIGTERM)
    _, errtext = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in errtext
    assert temps(dest) == [] and (dest / "DBBACK.DMP").read_bytes() == before
    m = history(c)
    assert m.backups[-1].status == "failed" and m.backups[-1].error == "interrupted"
    assert m.latest().id == good
    time.sleep(0.5)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(dest) not in ps  # pg_dump did not outlive it
    assert cli("backup", "--config", c).returncode == 0  # the lock was released


def test_a_restore_whose_copy_fills_the_disk_says_so(
    pg: LocalServer, pwfile: Path, small_mount: Path, tmp: Path
) -> None:
    """A restore copies the backup's file into its work folder, in the backup folder, as it checks it, and
    a full disk there is a storage error naming the copy. A small database's dump (a few KiB) was held
    whole in the copy's write buffer and only written when the copy was closed, outside that handling:
    on a full disk the restore ended with "internal error: OSError" instead."""
    db = f"tiny{os.getpid()}_{time.monotonic_ns()}"
    psql(pg.psql_bin(), pg.conn(), f"create database {db}")
    psql(pg.psql_bin(), pg.conn(), "create table t (x int); insert into t select generate_series(1, 100)", db=db)
    c = write_config(tmp / "c.toml", pg, pwfile, db, small_mount, format="custom", name="tiny.dump", compress=0)
    r = cli("backup", "--config", c)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (small_mount / "tiny.dump").stat().st_size < 8192
    fd = os.open(small_mount / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):  # (until the disk is full: ENOSPC)
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    r = cli("restore", "latest", "--to-db", f"{db}_copy", "--config", c)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "disk full while copying the backup to restore to" in r.stderr, r.stderr
    assert "internal error" not in r.stderr, r.stderr
    assert not temps(small_mount)
    assert not psql(pg.psql_bin(), pg.conn(), f"select 1 from pg_database where datname = '{db}_copy'")
