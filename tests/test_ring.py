"""The rotation ring written straight to a share (`[backup] dest = "smb://..."`), without mounting:
the slots on a real Samba server (tests/servers.py), the records, locks and chain objects in the local
state folder. A whole ring with its after-command, restores and verify through the share, a damaged
slot, the share down, a kill at every step, and the password kept out of every command line and file."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import cli, history, write_config
from servers import SambaServer
from test_copies import ProcWatch, backup_day
from test_delta_offsite import drop, stats

from deltadump.config import parse
from deltadump.errors import ConfigError
from deltadump.pg.conn import psql


def ring_config(tmp: Path, pg: Any, pwfile: Path, db: str, smb: SambaServer, folder: str, **backup: object) -> Path:
    """A config whose dest is a folder of the share (its state folder: tmp/c.state, beside the config)."""
    return write_config(tmp / "c.toml", pg, pwfile, db, smb.url("share", folder),  # type: ignore[arg-type]
                        password_file=str(smb.password_file), **backup)  # fmt: skip


def wait_for_after(c: Path, bid: str) -> Any:
    """The after note of backup `bid`, once its detached after-command has finished (60 s at most)."""
    deadline = time.monotonic() + 60
    while True:
        note = next((n for n in history(c).notes if n.backup == bid and n.kind == "after"), None)
        if note is not None or time.monotonic() > deadline:
            return note
        time.sleep(0.2)


BASE = {"database": {"dsn": "dbname=x"}}


@pytest.mark.parametrize(("backup", "message"), [
    ({"dest": "sftp://u@h/x"}, "dest is a folder or an smb:// url"),
    ({"dest": "smb://u@nas/share/x"}, "needs a username (or user@ in the url) and a password_file"),
    ({"dest": "smb://u:pw@nas/share/x", "password_file": "/p"}, "a password does not belong in the url"),
    ({"dest": "smb://u@nas", "password_file": "/p"}, "without a share"),
    ({"dest": "/var/backups", "password_file": "/p"}, "password_file applies to an smb:// dest only"),
    ({"dest": "/var/backups", "state": "/var/lib/x"}, "state applies to an smb:// dest only"),
    ({"dest": "smb://u@nas/s", "password_file": "/p", "format": "directory"}, 'format = "directory" need a folder'),
    ({"dest": "smb://u@nas/s", "password_file": "/p", "kind": "physical"}, "physical backups need a folder"),
    ({"dest": "smb://u@nas/s", "password_file": "/p", "dialect": "2.1"}, "dialect 2.1 has no encryption"),
])  # fmt: skip
def test_an_smb_dest_is_checked_at_load(backup: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse({**BASE, "backup": backup})
    assert message in str(e.value), str(e.value)
    assert "pw@" not in str(e.value)


def test_the_state_folder_is_beside_the_config_unless_named(tmp: Path) -> None:
    b = {"dest": "smb://backup@nas.lan/backups/mail", "password_file": "/etc/pw"}
    cfg = parse({**BASE, "backup": b}, tmp / "mail.toml")
    assert cfg.dest == tmp / "mail.state" and cfg.backup.remote
    assert cfg.slot_where("DBBACK-3.DMP") == "smb://backup@nas.lan/backups/mail/DBBACK-3.DMP"
    cfg = parse({**BASE, "backup": {**b, "state": str(tmp / "st")}}, tmp / "mail.toml")
    assert cfg.dest == tmp / "st"
    opts = cfg.backup.target_options()
    assert (opts.password_file, opts.require_encryption) == ("/etc/pw", True)
    with pytest.raises(ConfigError, match=r"needs \[backup\] state"):
        _ = parse({**BASE, "backup": b}).dest
    r = cli("init", "--dsn", "postgresql://nobody@127.0.0.1:1/x", "--dest", b["dest"], "--config", tmp / "new.toml")
    assert r.returncode == 2 and "init --dest takes a folder" in r.stderr and not (tmp / "new.toml").exists()


def test_a_whole_ring_on_a_share_with_its_after_command(
    pg: Any, pwfile: Path, maildb: str, tmp: Path, smb_server: SambaServer
) -> None:
    """Eight days into a weekly ring of seven slots on the share (the first one reused), each backup's
    after-command told the slot's url, an offsite folder copy fed from the share; every slot on the
    share is exactly its record's dump, nothing of it in the state folder; verify and restore read the
    share; a damaged slot is named by verify and never restored; the password is in no command line,
    file or output."""
    folder = f"ring-{maildb}"
    share = smb_server.share / folder
    remote, marker = tmp / "remote", tmp / "after.txt"
    remote.mkdir()
    c = ring_config(tmp, pg, pwfile, maildb, smb_server, folder, after=f"printf '%s\\n' %f >> {marker}")
    c.write_text(c.read_text() + f'\n[offsite]\nurl = "file://{remote}"\n[retention]\ndaily = 30\n')
    state = tmp / "c.state"
    secret = smb_server.password.encode()
    snaps: dict[str, dict[str, tuple[int, str]]] = {}
    outputs, urls, ids = "", [], []
    with ProcWatch(secret) as watch:
        for day in range(8):
            r = backup_day(pg, maildb, c, day, new=20)
            assert r.returncode == 0, r.stderr
            outputs += r.stdout + r.stderr
            rec = history(c).latest()
            snaps[rec.id] = stats(pg, maildb)
            ids.append(rec.id)
            url = smb_server.url("share", f"{folder}/{rec.path}")
            assert f"backup {rec.id}: {url} (" in r.stdout
            note = wait_for_after(c, rec.id)
            assert note is not None and note.ok and note.exit_code == 0, note
            urls.append(url)
    assert watch.scans >= 5 and watch.seen == [], watch.seen
    assert marker.read_text().splitlines() == urls  # %f: the slot's url on the share
    h = history(c)
    # the ring came round: the first backup's slot was reused on day 8, and it left the backup folder
    assert [b.id for b in h.backups] == ids[1:] and h.owners[h.backups[-1].path].id == ids[7]
    # the share holds the seven slots, each exactly the dump its current owner recorded; nothing else
    assert sorted(p.name for p in share.rglob("*")) == sorted(f"DBBACK-{i}.DMP" for i in range(7))
    for path, owner in h.owners.items():
        data = (share / path).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (owner.files[0].size, owner.files[0].sha256)
    assert not list(state.glob("DBBACK-*")) and not list(state.rglob(".tmp-*"))
    assert (state / "heads").is_dir() and (state / "deltadump-after.log").is_file()
    # verify reads every slot through the share; the replaced backup is listed as such
    r = cli("verify", "--config", c)
    assert r.returncode == 0 and r.stdout.count("ok      ") == 7, r.stdout + r.stderr
    rows = json.loads(cli("list", "--json", "--config", c).stdout)
    assert [x["state"] for x in rows] == ["ok"] * 7
    # restores read the share: the newest and the oldest slot of the ring
    for b in (h.backups[-1], h.backups[0]):
        r = cli("restore", b.id, "--to-db", f"ring_{b.id[-4:]}", "--config", c)
        assert r.returncode == 0 and "(slot)" in r.stdout, r.stderr
        assert stats(pg, f"ring_{b.id[-4:]}") == snaps[b.id]
        drop(pg, f"ring_{b.id[-4:]}")
    r = cli("drill", "latest", "--config", c)
    assert r.returncode == 0 and "drill passed" in r.stdout, r.stdout + r.stderr
    # the offsite copy got every backup made without delta, fetched from the share
    off = json.loads(cli("list", "--offsite", "--json", "--config", c).stdout)
    assert {x["id"] for x in off} == set(ids)
    assert cli("verify", "--offsite", "--config", c).returncode == 0
    # a damaged slot on the share: verify names it, restore refuses it before any database exists
    victim = h.backups[3]
    data = bytearray((share / victim.path).read_bytes())
    data[len(data) // 2] ^= 0x01
    (share / victim.path).write_bytes(bytes(data))
    r = cli("verify", "--config", c)
    assert r.returncode == 1 and f"FAILED  {victim.id}  {smb_server.url('share', folder)}/{victim.path}: sha256 mismatch" \
        in r.stdout, r.stdout  # fmt: skip
    r = cli("restore", victim.id, "--to-db", "damaged_slot", "--config", c)
    assert r.returncode == 1 and "sha256 mismatch" in r.stderr, r.stderr
    assert not psql(pg.psql_bin(), pg.conn(), "select 1 from pg_database where datname = 'damaged_slot'")
    # the password: in no file deltadump wrote, no log, no output
    assert secret not in outputs.encode()
    written = [p for p in [*state.rglob("*"), *tmp.glob("deltadump-signing.key*"), marker] if p.is_file()]
    assert written and not [p for p in written if secret in p.read_bytes()]


@pytest.fixture
def own_smb() -> Iterator[SambaServer]:
    s = SambaServer()
    try:
        s.start()
        yield s
    finally:
        s.remove()


def test_delta_on_a_share_and_the_share_down(
    pg: Any, pwfile: Path, maildb: str, tmp: Path, own_smb: SambaServer
) -> None:
    """Delta backups with the slot on the share and the chain in the state folder: every day restores
    (the slot through the share, older days from the chain). With the server down a backup fails at
    once with one line and writes nothing; the next one succeeds."""
    c = ring_config(tmp, pg, pwfile, maildb, own_smb, "delta", name="DBBACK.DMP")
    c.write_text(c.read_text() + "\n[delta]\nenabled = true\n")
    snaps = []
    for day in range(3):
        assert backup_day(pg, maildb, c, day, new=20).returncode == 0
        snaps.append(stats(pg, maildb))
    h = history(c)
    assert [b.kind for b in h.backups] == ["base", "delta", "delta"]
    assert sorted(p.name for p in (own_smb.share / "delta").iterdir()) == ["DBBACK.DMP"]
    for i, b in enumerate(h.backups):
        r = cli("restore", b.id, "--to-db", f"d{i}", "--config", c)
        assert r.returncode == 0 and ("(slot)" if i == 2 else "(chain)") in r.stdout, r.stderr
        assert stats(pg, f"d{i}") == snaps[i]
        drop(pg, f"d{i}")
    own_smb.stop()
    before = sorted(p.relative_to(tmp).as_posix() for p in (tmp / "c.state").rglob("*") if "lock" not in p.name)
    t = time.monotonic()
    r = backup_day(pg, maildb, c, 3, new=20)
    assert r.returncode == 1 and time.monotonic() - t < 120
    assert r.stderr.startswith(f"deltadump: error: dest {own_smb.url('share', 'delta')} cannot be reached"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    after = sorted(p.relative_to(tmp).as_posix() for p in (tmp / "c.state").rglob("*") if "lock" not in p.name)
    assert after == before  # nothing written, nothing recorded
    own_smb.start()
    assert backup_day(pg, maildb, c, 4, new=20).returncode == 0
    assert cli("verify", "--config", c).returncode == 0


def test_kill_a_backup_to_a_share_at_every_step(
    pg: Any, pwfile: Path, maildb: str, tmp: Path, own_smb: SambaServer
) -> None:
    """tests/test_crash.py's harness on a ring on the share: killed at every step boundary (the put to
    the share among them), nothing listed is lost, everything verifies and restores, and the next run
    leaves no temporary file, here or on the share."""
    from test_crash import kill_everywhere, run

    c = ring_config(tmp, pg, pwfile, maildb, own_smb, "crash", name="DBBACK-%w.DMP")
    for day in range(2):
        assert run(c, day).returncode == 0
    figures = kill_everywhere(pg, maildb, c, tmp / "c.state", own_smb.share / "crash", first_day=2)
    print(f"\nF04 ring on a share: {figures}")
    assert figures["kill points"] >= 8 and figures["backups lost"] == 0
    assert not [p for p in (own_smb.share / "crash").rglob("*") if p.name.startswith(".tmp-")]
