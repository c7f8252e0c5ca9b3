"""Several offsite copies ([[offsite]]): each synced on its own after every backup (one failing never
stops another), each with its own retention, encryption, mirror and rollback state; commands that read
a copy name it. Against real servers: PostgreSQL, Samba's smbd and OpenSSH's sshd (tests/servers.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import cli, history, write_config
from servers import SambaServer, SSHServer
from test_delta_offsite import DAYS, drop, stats

from deltadump.config import parse
from deltadump.errors import ConfigError
from deltadump.jobs import sample
from deltadump.store.chain import chain_of
from deltadump.store.keys import create_secret

# --- the config ----------------------------------------------------------------------------------------


def toml_value(v: object) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    return json.dumps(v)


def add_copies(cfg: Path, copies: list[dict[str, object]], **sections: dict[str, object]) -> Path:
    """[[offsite]] tables, a copy's `retention` as the `[offsite.retention]` sub-table that follows it
    (the shape docs/offsite.md shows), then other sections."""
    text = cfg.read_text()
    for c in copies:
        text += "\n[[offsite]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in c.items() if k != "retention")
        if "retention" in c:
            text += "[offsite.retention]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in c["retention"].items())  # type: ignore[attr-defined]
    for name, kv in sections.items():
        text += f"\n[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in kv.items())
    cfg.write_text(text)
    return cfg


BASE = {"database": {"dsn": "dbname=x"}, "backup": {"dest": "/tmp"}}


def test_a_single_offsite_table_is_the_copy_named_default() -> None:
    cfg = parse({**BASE, "offsite": {"url": "file:///a", "keep": {"daily": 3}}})
    (c,) = cfg.copies
    assert c.copy_name == "default" and c.url == "file:///a"
    assert cfg.keep.daily == 3 and cfg.copy_keep(c).daily == 3  # the older [offsite] keep still decides
    assert cfg.offsite_copy() is c and cfg.offsite_copy("default") is c
    assert parse({**BASE, "offsite": {"encrypt": False}}).copies == []  # no url: no copy, as before
    assert not parse(BASE).offsite_enabled


def test_several_copies_each_with_its_own_retention() -> None:
    cfg = parse({**BASE, "retention": {"daily": 10, "weekly": 2, "monthly": 0, "keep_last": 2},
                 "offsite": [{"name": "nas", "url": "file:///nas"},
                             {"name": "cloud", "url": "s3://b/p", "retention": {"monthly": 24}, "encrypt": True,
                              "recipients": ["age1x"]}]})  # fmt: skip
    nas, cloud = cfg.copies
    assert (nas.copy_name, cloud.copy_name) == ("nas", "cloud")
    k = cfg.copy_keep(nas)
    assert (k.daily, k.weekly, k.monthly, k.keep_last) == (10, 2, 0, 2)  # [retention]
    k = cfg.copy_keep(cloud)
    assert (k.daily, k.weekly, k.monthly, k.keep_last) == (10, 2, 24, 2)  # its own key, the others from [retention]
    assert cfg.offsite_copy("cloud") is cloud


@pytest.mark.parametrize(("offsite", "message"), [
    ([{"url": "file:///a"}, {"url": "file:///b"}], "each needs a name (copy 1, 2 has none)"),
    ([{"name": "a", "url": "file:///a"}, {"name": "a", "url": "file:///b"}], "two [[offsite]] copies are named 'a' twice"),
    ([{"name": "Cloud", "url": "file:///a"}, {"name": "cloud", "url": "file:///b"}],  # one folder on FAT or SMB
     "two [[offsite]] copies are named 'Cloud' and 'cloud'; each name must be unique, in more than case"),
    ([{"name": "a", "url": "file:///x/"}, {"name": "b", "url": "file:///x"}], "have the same url"),
    ([{"name": "a", "url": "file:///a"}, {"name": "b"}], "every [[offsite]] copy needs a url"),
    ([{"name": "9lives", "url": "file:///a"}], "invalid copy name '9lives'"),
    ([{"name": "a/b", "url": "file:///a"}], "invalid copy name"),
    ([{"name": "latest", "url": "file:///a"}], "'latest' cannot name a copy"),
    ([{"name": "a", "url": "file:///a", "keep": {"daily": 1}}, {"name": "b", "url": "file:///b"}],
     "keep belongs to configs with a single [offsite]"),
    ([{"name": "a", "url": "file:///a"}, {"name": "b", "url": "file:///b", "dialect": "3.0"}],
     "'offsite[2]': dialect applies to smb:// urls only"),
    ([{"name": "a", "url": "file:///a"}, {"name": "b", "url": "smb://u@h/s", "dialect": "1.0"}],
     "'offsite[2].dialect'"),
    ([{"name": "a", "url": "file:///a", "retention": {"keep_last": 0}}], "'offsite[1].retention.keep_last'"),
    ({"url": "file:///a", "retention": {"daily": -1}}, "'offsite.retention.daily'"),
])  # fmt: skip
def test_bad_copies_are_refused_at_load(offsite: object, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse({**BASE, "offsite": offsite})
    assert message in str(e.value), str(e.value)


def test_each_copy_is_checked_for_its_recipients(tmp: Path) -> None:
    c = tmp / "c.toml"
    c.write_text(f'[database]\ndsn = "dbname=x"\n[backup]\ndest = "{tmp}"\n')
    add_copies(
        c, [{"name": "plain", "url": f"file://{tmp}/p"}, {"name": "sealed", "url": f"file://{tmp}/s", "encrypt": True}]
    )
    r = cli("status", "--config", c)
    assert r.returncode == 2 and "offsite copy 'sealed': encrypt = true needs at least one age recipient" in r.stderr


def test_commands_name_the_copy_when_there_are_several(tmp: Path) -> None:
    """Without a name, every command that reads a copy stops with exit 2 naming the copies, before it
    connects anywhere; an unknown name too. With one copy the name is optional."""
    dest = tmp / "dest"
    dest.mkdir()
    c = tmp / "c.toml"
    c.write_text(f'[database]\ndsn = "postgresql://nobody@127.0.0.1:1/x"\n[backup]\ndest = "{dest}"\n')
    add_copies(c, [{"name": "nas", "url": f"file://{tmp}/nas"}, {"name": "cloud", "url": f"file://{tmp}/cloud"}])
    create_secret(tmp / "deltadump-signing.key")
    (tmp / "nas").mkdir()
    (tmp / "cloud").mkdir()
    for argv in (["list", "--offsite"], ["verify", "--offsite"], ["prune", "--offsite", "--dry-run"],
                 ["restore", "--from", "offsite", "--to-db", "x"], ["restore", "--from", "offsite", "latest", "--to-db", "x"],
                 ["drill", "--offsite"], ["drill", "latest", "--from", "offsite"], ["list", "--from", "offsite"]):  # fmt: skip
        r = cli(*argv, "--config", c)
        assert r.returncode == 2, (argv, r.stderr)
        assert "has 2 offsite copies (nas, cloud): name one" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    for argv in (["list", "--offsite", "nass"], ["restore", "--from", "offsite", "nass", "--to-db", "x"]):
        r = cli(*argv, "--config", c)
        assert r.returncode == 2 and "no offsite copy named 'nass' in the config (its copies: nas, cloud)" in r.stderr
    r = cli("list", "--from", "elsewhere", "--config", c)
    assert r.returncode == 2 and "--from takes local or offsite [NAME]" in r.stderr
    r = cli("list", "--offsite", "nas", "--from", "offsite", "--config", c)
    assert r.returncode == 2 and "either --from or --offsite" in r.stderr
    for argv in (["list", "--offsite", "nas"], ["list", "--from", "offsite", "cloud", "--json"]):
        r = cli(*argv, "--config", c)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    # one copy: no name needed; its name may be given
    c.write_text(c.read_text().split("[[offsite]]")[0] + f'[offsite]\nurl = "file://{tmp}/nas"\n')
    for argv in (["list", "--offsite"], ["list", "--offsite", "default"], ["list", "--from", "offsite", "--json"]):
        r = cli(*argv, "--config", c)
        assert r.returncode == 0, (argv, r.stderr)


# --- a week of delta backups to an SMB copy and an SFTP copy at once --------------------------------


def smb_copy(smb: SambaServer, folder: str, **kw: object) -> dict[str, object]:
    return {"name": "nas", "url": smb.url("share", folder), "password_file": str(smb.password_file), **kw}


def sftp_copy(ssh: SSHServer, folder: str, **kw: object) -> dict[str, object]:
    return {"name": "ssh", "url": ssh.url(ssh.root / folder), "identity": str(ssh.identity),
            "known_hosts": str(ssh.known_hosts), **kw}  # fmt: skip


class ProcWatch:
    """Scans every /proc/*/cmdline and environ for a secret, over and over, while a block runs."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.seen: list[str] = []
        self.scans = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for d in Path("/proc").iterdir():
                if d.name.isdigit():
                    for f in ("cmdline", "environ"):
                        try:
                            if self.secret in (d / f).read_bytes():
                                self.seen.append(f"{d}/{f}")
                        except OSError:
                            pass
            self.scans += 1
            self._stop.wait(0.02)  # a pause between full scans: the machine is shared

    def __enter__(self) -> ProcWatch:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


@pytest.fixture
def age_pair(tmp: Path) -> tuple[Path, str]:
    """An age identity file (0600) and its recipient."""
    import pyrage

    ident = pyrage.x25519.Identity.generate()
    key = tmp / "key.txt"
    key.write_text(str(ident) + "\n")
    key.chmod(0o600)
    return key, str(ident.to_public())


def backup_day(pg: Any, db: str, c: Path, day: int, new: int = 60) -> subprocess.CompletedProcess[str]:
    if day:
        sample.mail_day(pg.psql_bin(), pg.conn(), db, day, new=new, words=20)
    return cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[day]})


def test_a_week_to_an_smb_and_an_sftp_copy_each_restoring_alone(
    pg: Any, pwfile: Path, maildb: str, tmp: Path, smb_server: SambaServer, sftp_server: SSHServer,
    age_pair: tuple[Path, str],
) -> None:  # fmt: skip
    """Seven days of delta backups sent to both copies after each backup: the SMB copy encrypted with age
    and kept a week, the SFTP copy in the clear and kept three days (its own retention). With the local
    folder gone, each copy alone restores what it keeps; the password is in no command line, process
    environment, file, log or output."""
    key, recipient = age_pair
    dest = tmp / "dest"
    dest.mkdir()
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
    metrics = tmp / "metrics.prom"
    add_copies(c, [smb_copy(smb_server, f"week-{maildb}", encrypt=True, recipients=[recipient]),
                   sftp_copy(sftp_server, f"week-{maildb}", retention={"daily": 3, "weekly": 0, "monthly": 0})],
               delta={"enabled": True, "max_chain": 2}, notify={"metrics_file": str(metrics)})  # fmt: skip
    secret = smb_server.password.encode()
    snaps, outputs = [], ""
    with ProcWatch(secret) as watch:
        for day in range(7):
            r = backup_day(pg, maildb, c, day)
            assert r.returncode == 0, r.stderr
            assert "offsite copy nas: sent" in r.stderr and "offsite copy ssh: sent" in r.stderr, r.stderr
            outputs += r.stdout + r.stderr
            snaps.append(stats(pg, maildb))
    assert watch.scans >= 5 and watch.seen == [], watch.seen
    h = history(c)
    ids = [b.id for b in h.backups]
    by_id = {b.id: b for b in h.backups}
    assert [b.kind for b in h.backups].count("base") >= 3  # max_chain = 2: a new base at least every third day
    # each copy as the store holds it, with its own retention: the SMB copy keeps the week, the SFTP copy
    # the last three days and the chain they need
    ssh_keeps = {a.id for b in h.backups[4:] for a in chain_of(by_id, b)}
    assert len(ssh_keeps) < 7
    nas = json.loads(cli("list", "--offsite", "nas", "--json", "--identity", key, "--config", c).stdout)
    ssh = json.loads(cli("list", "--from", "offsite", "ssh", "--json", "--config", c).stdout)
    assert [b["id"] for b in reversed(nas)] == ids
    assert [b["id"] for b in reversed(ssh)] == [i for i in ids if i in ssh_keeps]
    share = smb_server.share / f"week-{maildb}"
    assert {p.suffix for p in share.rglob("*") if p.is_file() and p.name != "RECOVERY.txt"} == {".age"}
    assert not [p for p in (sftp_server.root / f"week-{maildb}").rglob("*") if p.suffix == ".age"]
    # each copy has its mirror and its own line in this host's rollback state
    assert sorted(p.name for p in (dest / "deltadump-offsite").iterdir()) == ["nas", "ssh"]
    seen = json.loads((tmp / "deltadump-signing.key.seen").read_text())
    rid = h.repo.id
    assert set(seen) == {f"{rid}:local", f"{rid}:offsite:nas", f"{rid}:offsite:ssh"} | {
        f"{rid}:offsite:{n}/named" for n in ("nas", "ssh")
    }  # (and that their heads name them)
    # status and metrics tell of each copy
    st = json.loads(cli("status", "--json", "--config", c, env={"DELTADUMP_NOW": DAYS[6]}).stdout)
    assert [(x["name"], x["there"], x["stale"]) for x in st["copies"]] == [("nas", True, False), ("ssh", True, False)]
    text = metrics.read_text()
    for name in ("nas", "ssh"):
        assert f'deltadump_offsite_lag_seconds{{database="{maildb}",copy="{name}"}} 0' in text
        assert f'deltadump_offsite_last_sync_success{{database="{maildb}",copy="{name}"}} 1' in text
    for v in ("verify --offsite nas --identity " + str(key), "verify --from offsite ssh"):
        r = cli(*v.split(), "--config", c)
        assert r.returncode == 0, r.stdout + r.stderr
        outputs += r.stdout + r.stderr
    r = cli("drill", "latest", "--offsite", "ssh", "--config", c)
    assert r.returncode == 0 and "drill passed" in r.stdout, r.stdout + r.stderr
    # the password: in no file deltadump wrote, no log, no output
    assert secret not in outputs.encode()
    written = [p for p in [*dest.rglob("*"), *tmp.glob("deltadump-signing.key*"), metrics] if p.is_file()]
    assert written and not [p for p in written if secret in p.read_bytes()]
    # the local folder is gone: each copy alone restores what it keeps, to exactly that day's data
    shutil.rmtree(dest)
    dest.mkdir()
    for copy, day, extra in (("nas", 6, ["--identity", key]), ("nas", 1, ["--identity", key]), ("ssh", 6, []),
                             ("ssh", 4, [])):  # fmt: skip
        db = f"{copy}_day{day}"
        r = cli("restore", "--from", "offsite", copy, "--at", DAYS[day][:10], "--to-db", db, *extra, "--config", c)
        assert r.returncode == 0, r.stderr
        assert f"offsite copy {copy} ({'smb' if copy == 'nas' else 'sftp'}://" in r.stderr, r.stderr
        assert stats(pg, db) == snaps[day], (copy, day)
        drop(pg, db)
    gone = next(i for i in ids if i not in ssh_keeps)
    r = cli("restore", "--from", "offsite", "ssh", gone, "--to-db", "pruned_there", "--config", c)
    assert r.returncode == 1 and f"no restorable backup '{gone}'" in r.stderr  # not kept by the SFTP copy


# --- one copy down: the others get everything, it catches up ------------------------------------------


@pytest.fixture
def own_smb() -> Iterator[SambaServer]:
    """A server of the test's own, which it stops and starts."""
    s = SambaServer()
    try:
        s.start()
        yield s
    finally:
        s.remove()


def test_a_copy_down_never_stops_the_other_and_catches_up(
    pg: Any, pwfile: Path, maildb: str, tmp: Path, own_smb: SambaServer, sftp_server: SSHServer
) -> None:
    """The SMB server is stopped for a day. The backup is safe, the SFTP copy (listed after the failing
    one) gets it, the run exits 1 naming the SMB copy alone; status and metrics say which copy lags. Once
    the server is back, the next backup sends the SMB copy the day it missed and the new one."""
    dest = tmp / "dest"
    dest.mkdir()
    metrics = tmp / "metrics.prom"
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
    add_copies(c, [smb_copy(own_smb, "down", alert_after="1h"), sftp_copy(sftp_server, f"down-{maildb}")],
               delta={"enabled": True}, notify={"metrics_file": str(metrics)})  # fmt: skip
    snaps = []
    for day in range(2):
        assert backup_day(pg, maildb, c, day).returncode == 0
        snaps.append(stats(pg, maildb))
    own_smb.stop()
    r = backup_day(pg, maildb, c, 2)
    snaps.append(stats(pg, maildb))
    missed = history(c).latest().id
    assert r.returncode == 1, r.stderr
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith(f"deltadump: error: backup {missed} is safe locally, but 1 of 2 offsite copies failed "
                          "(1 got it): nas (smb://"), err  # fmt: skip
    assert "ssh (" not in err and "offsite copy ssh: sent 1 object(s)" in r.stderr
    ssh = json.loads(cli("list", "--offsite", "ssh", "--json", "--config", c).stdout)
    assert ssh[0]["id"] == missed
    text = metrics.read_text()
    assert f'deltadump_offsite_last_sync_success{{database="{maildb}",copy="nas"}} 0' in text
    assert f'deltadump_offsite_last_sync_success{{database="{maildb}",copy="ssh"}} 1' in text
    assert f'deltadump_offsite_lag_seconds{{database="{maildb}",copy="ssh"}} 0' in text
    assert f'deltadump_last_run_success{{database="{maildb}"}} 0' in text
    # two hours later: the SMB copy lags past its alert_after; the SFTP copy is fine
    later = DAYS[2][:11] + "04:00:00"
    r = cli("status", "--config", c, env={"DELTADUMP_NOW": later})
    assert r.returncode == 1 and "deltadump: error: the offsite copy nas lags" in r.stderr, r.stdout + r.stderr
    assert "offsite nas: smb://" in r.stdout and "offsite ssh: sftp://" in r.stdout and "is there" in r.stdout
    st = json.loads(cli("status", "--json", "--config", c, env={"DELTADUMP_NOW": later}).stdout)
    assert [(x["name"], x["stale"]) for x in st["copies"]] == [("nas", True), ("ssh", False)]
    assert st["copies"][0]["there"] is None and "cannot be read" in str(st["copies"][0]["text"])
    # the server is back: the next run sends the SMB copy what it missed, then the new day
    own_smb.start()
    r = backup_day(pg, maildb, c, 3)
    assert r.returncode == 0, r.stderr
    snaps.append(stats(pg, maildb))
    nas = json.loads(cli("list", "--offsite", "nas", "--json", "--config", c).stdout)
    assert [b["id"] for b in reversed(nas)] == [b.id for b in history(c).backups]
    assert cli("verify", "--offsite", "nas", "--config", c).returncode == 0
    shutil.rmtree(dest)
    dest.mkdir()
    r = cli("restore", "--from", "offsite", "nas", missed, "--to-db", "caught_up", "--config", c)
    assert r.returncode == 0, r.stderr
    assert stats(pg, "caught_up") == snaps[2]
    drop(pg, "caught_up")


# --- the copy named "default" keeps what it had; each copy its own rollback protection ---------------


def test_an_offsite_table_becomes_one_of_several_copies(pg: Any, pwfile: Path, maildb: str, tmp: Path) -> None:
    """A config's single [offsite] copy, declared again as the [[offsite]] copy named "default" beside a
    new one: it goes on with its mirror and rollback state (no adoption, no refusal); the new copy
    starts with every backup still here. A rolled-back head of one copy is refused for that copy only,
    and prune --offsite NAME applies that copy's own retention."""
    dest, old, new = tmp / "dest", tmp / "old", tmp / "new"
    for d in (dest, old, new):
        d.mkdir()
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
    base = c.read_text()
    c.write_text(base + f'\n[delta]\nenabled = true\n[offsite]\nurl = "file://{old}"\n')
    for day in range(2):
        assert backup_day(pg, maildb, c, day, new=10).returncode == 0
    old_head = {p.name: p.read_bytes() for p in (old / "heads").iterdir()}
    seen_key = f"{history(c).repo.id}:offsite"
    assert seen_key in json.loads((tmp / "deltadump-signing.key.seen").read_text())
    c.write_text(base + "\n[delta]\nenabled = true\n")
    add_copies(c, [{"name": "default", "url": f"file://{old}"},
                   {"name": "second", "url": f"file://{new}", "retention": {"daily": 1, "weekly": 0, "monthly": 0}}])  # fmt: skip
    r = backup_day(pg, maildb, c, 2, new=10)
    assert r.returncode == 0, r.stderr
    assert "adopting" not in r.stderr and "offsite copy default: sent 1 object(s)" in r.stderr, r.stderr
    ids = [b.id for b in history(c).backups]
    for name, want in (("default", ids), ("second", ids)):  # the second copy keeps the chain the newest needs
        got = json.loads(cli("list", "--offsite", name, "--json", "--config", c).stdout)
        assert [b["id"] for b in reversed(got)] == want, name
    seen = json.loads((tmp / "deltadump-signing.key.seen").read_text())
    assert seen[seen_key] > 2 and f"{history(c).repo.id}:offsite:second" in seen
    # prune --offsite NAME: each copy's own retention (a new base on day 3 lets the second copy drop days 1-3)
    c.write_text(c.read_text().replace("enabled = true", "enabled = true\nmax_chain = 1", 1))
    assert backup_day(pg, maildb, c, 3, new=10).returncode == 0
    plan = {n: json.loads(cli("prune", "--offsite", n, "--dry-run", "--json", "--config", c).stdout)
            for n in ("default", "second")}  # fmt: skip
    assert all(d["keep"] for d in plan["default"]) and len(plan["default"]) == 4
    assert [d["keep"] for d in plan["second"]] == [True]  # the sync already applied it: only the newest is left
    # a rolled-back head of the old copy: refused for it, not for the other
    for p in (old / "heads").iterdir():
        p.unlink()
    for name, data in old_head.items():
        (old / "heads" / name).write_bytes(data)
    r = cli("list", "--offsite", "default", "--config", c)
    assert r.returncode == 1 and "rolled back" in r.stderr, r.stderr
    assert cli("list", "--offsite", "second", "--config", c).returncode == 0
