"""Snapshot (physical) backups with the real pg_basebackup and pg_verifybackup, taken under write
load, laid out as a data directory and started: PostgreSQL recovers it like after a crash."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import cli, history, write_config, write_load

from deltadump.pg.conn import Conn, psql
from deltadump.pg.physical import run_as_user
from deltadump.pg.server import LocalServer, free_port


@pytest.fixture
def outside() -> Path:
    """A folder the unprivileged server user can reach (pytest's tmp is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="deltadump-phys-"))
    d.chmod(0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_physical_backup_under_load_restores_and_starts(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path, outside: Path
) -> None:
    dest = tmp / "dest"
    dest.mkdir()
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest, kind="physical", name="SNAP-%w", compress=0)
    psql(
        pg.psql_bin(),
        pg.conn(),
        "create table load (id bigserial primary key, at timestamptz default now())",
        db=maildb,
    )
    with write_load(pg, maildb, "insert into load default values"):
        while int(psql(pg.psql_bin(), pg.conn(), "select count(*) from load", db=maildb)[0][0]) < 20:
            pass
        before = int(psql(pg.psql_bin(), pg.conn(), "select max(id) from load", db=maildb)[0][0])
        r = cli("backup", "--config", c)
    assert r.returncode == 0, r.stderr
    rec = history(c).latest()
    assert rec.format == "physical"
    names = sorted(Path(f.path).name for f in rec.files)
    assert "backup_manifest" in names and "base.tar" in names and "pg_wal.tar" in names
    assert cli("verify", "--config", c).returncode == 0
    # refuse a non-empty folder
    (outside / "busy").mkdir()
    (outside / "busy" / "x").write_text("x")
    r = cli("restore", "latest", "--to-datadir", outside / "busy", "--config", c)
    assert r.returncode == 1 and "not empty" in r.stderr
    port = free_port()
    data = outside / "data"
    r = cli("restore", "latest", "--to-datadir", data, "--start", "--port", str(port), "--config", c)
    try:
        assert r.returncode == 0, r.stderr
        conn = Conn(
            {"host": "127.0.0.1", "port": str(port), "user": "postgres", "dbname": maildb, "password": pg.password}
        )
        got = int(psql(pg.psql_bin(), conn, f"select count(*) from load where id <= {before}")[0][0])
        assert got == before  # every row committed before the backup began
        assert int(psql(pg.psql_bin(), conn, "select count(*) from messages")[0][0]) == 300
    finally:
        argv = [str(pg.bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
        user = run_as_user()
        subprocess.run(["runuser", "-u", user, "--", *argv] if user else argv, capture_output=True)


def test_damaged_physical_backup_fails_verification(pg: LocalServer, pwfile: Path, maildb: str, tmp: Path) -> None:
    dest = tmp / "dest"
    dest.mkdir()
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest, kind="physical", name="SNAP", compress=0)
    assert cli("backup", "--config", c).returncode == 0
    base = dest / "SNAP" / "base.tar"
    data = bytearray(base.read_bytes())
    data[len(data) // 3] ^= 0xFF
    base.write_bytes(data)
    r = cli("verify", "--config", c)
    assert r.returncode == 1 and "base.tar" in r.stdout
    bad = write_config(tmp / "bad.toml", pg, pwfile, maildb, dest, kind="physical")
    bad.write_text(bad.read_text() + "\n[delta]\nenabled = true\n")
    r = cli("backup", "--config", bad)
    assert r.returncode == 2 and "physical" in r.stderr


def test_physical_drill_uses_a_throwaway_server(pg: LocalServer, pwfile: Path, maildb: str, tmp: Path) -> None:
    dest = tmp / "dest"
    dest.mkdir()
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest, kind="physical", name="SNAP-%w", compress=0)
    assert cli("backup", "--config", c).returncode == 0
    r = cli("drill", "latest", "--config", c)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{maildb}: public.messages" in r.stdout and "300" in r.stdout
    h = history(c)
    rec = h.latest()
    assert [n.ok for n in h.notes if n.kind == "drill" and n.backup == rec.id] == [True]
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "deltadump-drill-" not in ps  # the throwaway server is gone
    # without its WAL the backup cannot be recovered: the drill says so
    (dest / rec.path / "pg_wal.tar").unlink()
    r = cli("drill", "latest", "--config", c)
    assert r.returncode == 1 and "did not start" in r.stderr


def test_physical_backup_restores_from_offsite_alone(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path, outside: Path
) -> None:
    dest, remote = tmp / "dest", tmp / "remote"
    dest.mkdir()
    remote.mkdir()
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest, kind="physical", name="SNAP", compress=0)
    c.write_text(c.read_text() + f'\n[offsite]\nurl = "file://{remote}"\n')
    r = cli("backup", "--config", c)
    assert r.returncode == 0, r.stderr
    assert history(c).latest().format == "physical"
    shutil.rmtree(dest)  # the local folder is gone
    port = free_port()
    data = outside / "from_offsite"
    r = cli("restore", "--from", "offsite", "--to-datadir", data, "--start", "--port", str(port), "--config", c)
    try:
        assert r.returncode == 0, r.stderr
        conn = Conn(
            {"host": "127.0.0.1", "port": str(port), "user": "postgres", "dbname": maildb, "password": pg.password}
        )
        assert int(psql(pg.psql_bin(), conn, "select count(*) from messages")[0][0]) == 300
    finally:
        argv = [str(pg.bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
        user = run_as_user()
        subprocess.run(["runuser", "-u", user, "--", *argv] if user else argv, capture_output=True)
    r = cli("drill", "latest", "--offsite", "--config", c)  # a throwaway server, from the offsite copy
    assert r.returncode == 0 and "drill passed" in r.stdout, r.stdout + r.stderr
    # a damaged object offsite: refused, named, and no data directory laid out
    base = next(p for p in remote.rglob("base.tar"))
    blob = bytearray(base.read_bytes())
    blob[len(blob) // 2] ^= 1
    base.write_bytes(bytes(blob))
    r = cli("restore", "--from", "offsite", "--to-datadir", outside / "bad", "--config", c)
    assert r.returncode == 1 and "base.tar" in r.stderr and "corrupt" in r.stderr, r.stderr
    assert not (outside / "bad").exists()
    assert not [p for p in outside.iterdir() if p.name.startswith("deltadump-restore-")]
    r = cli("drill", "latest", "--offsite", "--config", c)
    assert r.returncode == 1 and "base.tar" in r.stdout + r.stderr, r.stdout + r.stderr
