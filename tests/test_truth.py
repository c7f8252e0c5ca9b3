"""Truthful answers: verify finds damage in every kind of stored file and names what depends on it,
status tells the truth about the offsite copy through an outage, a damaged record never stops the
next backup (and is reported), decompression is bounded, and monitoring notices silence (pings in the
order dead-man services read them, a Prometheus textfile). Real server, real folders, real CLI."""

from __future__ import annotations

import json
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import cli, history, write_config

from deltadump.errors import IntegrityError
from deltadump.jobs import sample
from deltadump.pg.inspect import table_stats
from deltadump.pg.server import LocalServer

DAYS = [f"2026-11-{d:02d}T02:00:00" for d in range(1, 29)]


def add(c: Path, text: str) -> Path:
    c.write_text(c.read_text() + "\n" + text + "\n")
    return c


def backup(c: Path, day: int, pg: LocalServer | None = None, db: str = "") -> str:
    if pg is not None and day:
        sample.mail_day(pg.psql_bin(), pg.conn(), db, day, new=15, words=15)
    r = cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[day]})
    assert r.returncode == 0, r.stderr
    return str(history(c).latest().id)


def flip(p: Path, at: float = 0.5) -> None:
    data = bytearray(p.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    p.write_bytes(bytes(data))


def test_verify_finds_a_flipped_byte_in_every_kind_of_file(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path
) -> None:
    dest = tmp / "dest"
    dest.mkdir()
    c = add(write_config(tmp / "c.toml", pg, pwfile, maildb, dest, name="DBBACK.DMP"), "[delta]\nenabled = true")
    ids = [backup(c, d, pg, maildb) for d in range(4)]  # a base and three deltas; only the newest in the slot
    h = history(c)
    assert cli("verify", "--deep", "--config", c).returncode == 0
    cases = [
        ("slot", dest / "DBBACK.DMP", ids[3:]),
        ("base", dest / h.backups[0].objects[0].path, ids),  # every backup of the chain needs the base
        ("delta", dest / h.backups[2].objects[0].path, ids[2:]),  # the second delta and those after it
        ("signature", dest / f"chain/{ids[3]}.sig", [ids[3]]),
    ]
    for kind, path, affected in cases:
        saved = path.read_bytes()
        flip(path)
        r = cli("verify", "--config", c)
        assert r.returncode == 1, (kind, r.stdout)
        named = {ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("FAILED")}
        assert set(affected) <= named, (kind, r.stdout)
        assert str(path) in r.stdout or path.name in r.stdout, (kind, r.stdout)
        if kind in ("base", "delta"):
            line = next(ln for ln in r.stdout.splitlines() if ln.startswith("DAMAGED"))
            assert all(i in line for i in affected), (kind, line)
        path.write_bytes(saved)
    # a record: its signature no longer matches, and it is named
    rec = next((dest / "records").glob(f"*-{ids[1]}.json"))
    saved = rec.read_bytes()
    flip(rec, 0.3)
    r = cli("verify", "--config", c)
    assert r.returncode == 1 and rec.name in r.stderr and "signature" in r.stderr, r.stderr
    rec.write_bytes(saved)
    assert cli("verify", "--deep", "--config", c).returncode == 0  # and no false alarm once repaired


class Listener:
    """A local HTTP server that records every request: pings and webhooks."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, bytes]] = []
        me = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                me.requests.append((self.path, self.rfile.read(n)))
                self.send_response(200)
                self.end_headers()

            do_GET = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def listener() -> object:
    lst = Listener()
    yield lst
    lst.close()


def test_pings_and_metrics_tell_of_every_run(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path, listener: Listener
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    dest = tmp / "dest"
    dest.mkdir()
    metrics = tmp / "metrics" / "deltadump.prom"
    metrics.parent.mkdir()
    notify = f'[notify]\nping_url = "{listener.url}/ping/abc"\nmetrics_file = "{metrics}"'
    c = add(write_config(tmp / "c.toml", pg, pwfile, maildb, dest), notify)
    backup(c, 0)
    assert [p for p, _ in listener.requests] == ["/ping/abc/start", "/ping/abc"]

    def parsed() -> dict[str, float]:
        out = {}
        for fam in text_string_to_metric_families(metrics.read_text()):
            for s in fam.samples:
                assert s.labels == {"database": maildb}
                out[s.name] = s.value
        return out

    m = parsed()
    assert m["deltadump_last_run_success"] == 1 and m["deltadump_last_dump_size_bytes"] > 1000
    good_time = m["deltadump_last_success_timestamp_seconds"]
    assert good_time > 1.7e9
    # a failed run: /start then /fail with the error line; the metrics say so, the last success stays
    listener.requests.clear()
    bad = add(write_config(tmp / "bad.toml", pg, pwfile, maildb, dest), notify)
    bad.write_text(bad.read_text().replace(f":{pg.port}/", ":1/"))  # the server cannot be reached
    r = cli("backup", "--config", bad, env={"DELTADUMP_NOW": DAYS[1]})
    assert r.returncode == 1
    assert [p for p, _ in listener.requests] == ["/ping/abc/start", "/ping/abc/fail"]
    assert b"cannot reach" in listener.requests[1][1] and pg.password.encode() not in listener.requests[1][1]
    m = parsed()
    assert m["deltadump_last_run_success"] == 0 and m["deltadump_last_success_timestamp_seconds"] == good_time


def test_a_damaged_record_never_stops_the_next_backup(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path, listener: Listener
) -> None:
    dest = tmp / "dest"
    dest.mkdir()
    c = add(write_config(tmp / "c.toml", pg, pwfile, maildb, dest), f'[notify]\nwebhook = "{listener.url}/hook"')
    first = backup(c, 0)
    # the head is damaged (garbage where the newest head was)
    head = max((dest / "heads").glob("*.json"))
    head.write_bytes(b"\x00garbage")
    r = cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[1]})
    assert r.returncode == 1 and "set aside" in r.stderr, r.stderr
    hook = json.loads(listener.requests[-1][1])
    assert hook["status"] == "failed" and "set aside" in hook["error"]
    h = history(c)
    assert next(b.id for b in h.backups if b.status == "ok") == first  # the earlier backup is still there
    assert len([b for b in h.backups if b.status == "ok"]) == 2
    assert list((dest / "deltadump-damaged").rglob("*.json"))
    assert cli("verify", "--config", c).returncode == 0
    # a damaged record: set aside and dropped, the rest goes on
    rec = next((dest / "records").glob(f"*-{first}.json"))
    flip(rec, 0.4)
    r = cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[2]})
    assert r.returncode == 1 and rec.name in r.stderr, r.stderr
    assert cli("list", "--config", c).returncode == 0 and cli("verify", "--config", c).returncode == 0
    assert cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[3]}).returncode == 0  # and then all is well


def test_decompression_is_bounded_and_after_the_hash(tmp: Path) -> None:
    import hashlib

    import zstandard

    from deltadump.jobs.chain import unzstd_checked

    bomb = tmp / "bomb.zst"
    bomb.write_bytes(zstandard.ZstdCompressor(level=19).compress(b"\0" * (32 << 20)))
    assert bomb.stat().st_size < 4096
    sha = hashlib.sha256(bomb.read_bytes()).hexdigest()
    out = tmp / "out"
    with pytest.raises(IntegrityError, match="more than its recorded"):
        unzstd_checked(bomb, out, sha, limit=1 << 20, size=bomb.stat().st_size)
    assert not out.exists()  # nothing half-written is left
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        unzstd_checked(bomb, out, "0" * 64, limit=64 << 20, size=bomb.stat().st_size)
    assert not out.exists()  # a wrong hash: not a byte decompressed
    unzstd_checked(bomb, out, sha, limit=32 << 20, size=bomb.stat().st_size)
    assert out.stat().st_size == 32 << 20 and zlib.crc32(out.read_bytes()) == zlib.crc32(b"\0" * (32 << 20))


def test_an_unmounted_offsite_share_for_a_day(pg: LocalServer, pwfile: Path, maildb: str, tmp: Path) -> None:
    """One slot, no delta, data changing daily, the offsite folder missing for a day: the next runs
    upload the latest backup, the one that never got there is reported, verify --offsite passes, and
    status tells the truth throughout."""
    dest, remote = tmp / "dest", tmp / "share"
    dest.mkdir()
    remote.mkdir()
    c = add(write_config(tmp / "c.toml", pg, pwfile, maildb, dest, name="DBBACK.DMP"),
            f'[offsite]\nurl = "file://{remote}"\nalert_after = "26h"')  # fmt: skip

    def status(day: int, hour: int = 3) -> tuple[int, dict[str, object]]:
        r = cli("status", "--json", "--config", c, env={"DELTADUMP_NOW": DAYS[day][:11] + f"{hour:02d}:00:00"})
        return r.returncode, json.loads(r.stdout)

    backup(c, 0)
    code, st = status(0)
    assert code == 0 and "is there" in str(st["offsite"])
    remote.rename(tmp / "share.unmounted")  # the share is not mounted for a day
    sample.mail_day(pg.psql_bin(), pg.conn(), maildb, 1, new=10, words=10)
    r = cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[1]})
    assert r.returncode == 1 and "safe locally" in r.stderr
    missed = history(c).latest().id
    code, st = status(1)
    assert code == 0 and "NOT there" in str(st["offsite"]) and missed in str(st["offsite"])  # not yet too late
    code, st = status(2, 6)  # 28 hours later, still not there: stale
    assert code == 1 and st["offsite_stale"]
    (tmp / "share.unmounted").rename(remote)
    sample.mail_day(pg.psql_bin(), pg.conn(), maildb, 2, new=10, words=10)
    want = table_stats(pg.conn(), maildb)
    r = cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[2]})
    assert r.returncode == 0, r.stderr
    assert missed in r.stderr and "skipped" in r.stderr  # the day that never got there is reported
    code, st = status(2)
    assert code == 0 and "is there" in str(st["offsite"])
    assert cli("verify", "--offsite", "--config", c).returncode == 0
    r = cli("restore", "--from", "offsite", "--to-db", "after_outage", "--config", c)
    assert r.returncode == 0 and table_stats(pg.conn(), "after_outage") == want
    # and it goes on: the next days are sent as usual
    sample.mail_day(pg.psql_bin(), pg.conn(), maildb, 3, new=10, words=10)
    assert cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[3]}).returncode == 0
    assert status(3)[0] == 0


def test_a_clock_that_jumps_back_prunes_nothing_new(pg: LocalServer, pwfile: Path, maildb: str, tmp: Path) -> None:
    dest = tmp / "dest"
    dest.mkdir()
    c = add(write_config(tmp / "c.toml", pg, pwfile, maildb, dest, name="DBBACK.DMP"),
            "[delta]\nenabled = true\n[retention]\ndaily = 1\nweekly = 0\nmonthly = 0\nkeep_last = 1")  # fmt: skip
    backup(c, 10, pg, maildb)
    sample.mail_day(pg.psql_bin(), pg.conn(), maildb, 3, new=10, words=10)
    want = table_stats(pg.conn(), maildb)
    r = cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[3]})  # the clock went back a week
    assert r.returncode == 0 and "clock went back" in r.stderr
    h = history(c)
    newest = h.backups[-1]
    assert newest.started.day == 4 and h.latest().id == newest.id  # newest by commit, not by clock
    r = cli("prune", "--dry-run", "--json", "--config", c)
    assert next(d for d in json.loads(r.stdout) if d["id"] == newest.id)["keep"]
    assert cli("restore", "latest", "--to-db", "skewed", "--config", c).returncode == 0
    assert table_stats(pg.conn(), "skewed") == want
