"""Repository format v2: signed records and heads, a store we need not trust, migration from format 1,
and prune. Real parts: the real `minisign`, a real PostgreSQL server, a folder target and moto's S3
server over HTTP, the real deltadump command line."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from datetime import datetime, timedelta
from pathlib import Path

import boto3
import pytest
from conftest import ROOT, cli, history, require_tool, write_config
from hypothesis import given, settings
from hypothesis import strategies as st

from deltadump.errors import IntegrityError, TrustError
from deltadump.jobs import sample
from deltadump.pg.conn import psql
from deltadump.pg.inspect import table_stats
from deltadump.pg.server import LocalServer
from deltadump.store import manifest as v1
from deltadump.store.keys import PublicKey, SecretKey, create_secret, load_secret
from deltadump.store.records import MAX_HEAD_BYTES, BackupRecord, ObjectRecord, format_ranges, parse_ranges
from deltadump.store.repository import Change, LocalMeta, Repository, SeenState, Trust

V1_COMMIT = "1e5ffcc2579245b2d20cc7ed962e9d557017521c"  # the last commit that wrote repository format 1
DAYS = [f"2026-11-{d:02d}T02:00:00" for d in range(10, 30)]


def add_sections(cfg: Path, **sections: dict[str, object]) -> Path:
    text = cfg.read_text()
    for name, kv in sections.items():
        text += f"\n[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in kv.items())
    cfg.write_text(text)
    return cfg


def stats(pg: LocalServer, db: str) -> dict[str, tuple[int, str]]:
    return table_stats(pg.conn(), db)


def db_exists(pg: LocalServer, db: str) -> bool:
    return bool(psql(pg.psql_bin(), pg.conn(), f"select 1 from pg_database where datname = '{db}'"))


# --- signatures: minisign's formats, checked with the real minisign ---------------------------------


def test_signatures_interoperate_with_minisign(tmp: Path) -> None:
    minisign = require_tool("minisign")
    ours = create_secret(tmp / "ours.key")
    data = tmp / "record.json"
    data.write_bytes(b'{"deltadump": "record"}\n')
    (tmp / "record.json.minisig").write_bytes(ours.sign(data.read_bytes(), "deltadump records/x.json"))
    r = subprocess.run([minisign, "-V", "-p", str(tmp / "ours.key.pub"), "-m", str(data)], capture_output=True)
    assert r.returncode == 0, r.stderr
    # one changed byte: minisign refuses, and so do we
    data.write_bytes(b'{"deltadump": "recorD"}\n')
    r = subprocess.run([minisign, "-V", "-p", str(tmp / "ours.key.pub"), "-m", str(data)], capture_output=True)
    assert r.returncode != 0
    with pytest.raises(TrustError, match="does not match its signature"):
        ours.public.verify(data.read_bytes(), (tmp / "record.json.minisig").read_bytes(), "record")
    # minisign's own (unencrypted) key and signature are read by us; our key file signs with minisign
    subprocess.run([minisign, "-G", "-W", "-p", str(tmp / "m.pub"), "-s", str(tmp / "m.key")], check=True,
                   capture_output=True)  # fmt: skip
    os.chmod(tmp / "m.key", 0o600)
    (tmp / "f").write_bytes(b"hello")
    subprocess.run([minisign, "-S", "-s", str(tmp / "m.key"), "-m", str(tmp / "f"), "-t", "trusted text"], check=True,
                   capture_output=True)  # fmt: skip
    theirs = PublicKey.parse((tmp / "m.pub").read_text())
    assert theirs.verify(b"hello", (tmp / "f.minisig").read_bytes(), "f", ours=False) == "trusted text"
    with pytest.raises(TrustError, match="damaged"):  # not written by us: its comment is not ours
        theirs.verify(b"hello", (tmp / "f.minisig").read_bytes(), "f")
    assert load_secret(tmp / "m.key").public == theirs
    with pytest.raises(TrustError, match="signed by another key"):
        ours.public.verify(b"hello", (tmp / "f.minisig").read_bytes(), "f", ours=False)


def test_live_ranges_round_trip() -> None:
    for numbers in ([], [1], [1, 2, 3], [1, 3, 5, 6, 7, 10], list(range(1, 400, 2))):
        assert parse_ranges(format_ranges(numbers)) == set(numbers)
    assert format_ranges(list(range(1, 366))) == "1-365"
    assert format_ranges(list(range(1, 731, 2))) == "1-729:2"  # two commits a backup: still one range
    for bad in ("0", "5-3", "1,,2", "a", "1-99999999999", "1-9:0", "1-9:"):
        with pytest.raises(IntegrityError):
            parse_ranges(bad)


# --- the repository against a hostile folder ---------------------------------------------------------


def _repo(root: Path, key: SecretKey, seen: Path, **kw: object) -> Repository:
    return Repository(LocalMeta(root), Trust(key.public, key, SeenState(seen), **kw), label="local")  # type: ignore[arg-type]


def _record(repo: Repository, n: int, i: int) -> BackupRecord:
    return BackupRecord(repository=repo.id or "", number=n, id=f"20261110T0200{i:02d}-abcd", started=datetime(2026, 11, 10).astimezone(),
                        status="ok", path=f"slot-{i}", format="custom",
                        files=[{"path": f"slot-{i}", "size": 1, "sha256": "0" * 64}])  # type: ignore[list-item]  # fmt: skip


def _three(tmp: Path) -> tuple[Repository, SecretKey]:
    key = SecretKey.generate()
    root = tmp / "repo"
    root.mkdir()
    repo = _repo(root, key, tmp / "seen")
    for i in range(3):
        repo.commit(Change(make=lambda n, i=i: [_record(repo, n, i)]))  # type: ignore[misc]
    return repo, key


def test_a_store_that_lies_is_refused(tmp: Path) -> None:
    repo, key = _three(tmp)
    root = repo.meta.describe()
    fresh = lambda **kw: _repo(Path(root), key, tmp / "seen", **kw)  # noqa: E731
    honest = fresh()
    honest.load()
    assert [b.path for b in honest.backups()] == ["slot-0", "slot-1", "slot-2"]
    rec = next(Path(root, "records").glob("*-20261110T020001-abcd.json"))
    good = rec.read_bytes()
    # a forged record (one field changed)
    rec.write_bytes(good.replace(b'"slot-1"', b'"slot-9"', 1))
    r = fresh()
    r.load()
    with pytest.raises(TrustError, match="does not match its signature"):
        r.backups()
    rec.write_bytes(good)
    # a record signed with another key
    other = SecretKey.generate()
    (rec.parent / (rec.name + ".minisig")).write_bytes(other.sign(good, "x"))
    r.load()
    with pytest.raises(TrustError, match="signed by another key"):
        r.backups()
    (rec.parent / (rec.name + ".minisig")).write_bytes(key.sign(good, "x"))
    # a record of another repository (same key, other repository id): refused
    foreign = json.loads(good)
    foreign["repository"] = "f" * 32
    data = json.dumps(foreign).encode()
    rec.write_bytes(data)
    (rec.parent / (rec.name + ".minisig")).write_bytes(key.sign(data, "x"))
    r.load()
    with pytest.raises(TrustError, match="another repository"):
        r.backups()
    rec.write_bytes(good)
    (rec.parent / (rec.name + ".minisig")).write_bytes(key.sign(good, "x"))
    # a deleted record
    rec.unlink()
    r.load()
    with pytest.raises(IntegrityError, match="missing"):
        r.backups()
    rec.write_bytes(good)
    # a forged head (more live records than were committed)
    head = max(Path(root, "heads").glob("*.json"))
    h = json.loads(head.read_bytes())
    h["live"] = "1-9"
    head.write_bytes(json.dumps(h).encode())
    with pytest.raises(TrustError, match="does not match its signature"):
        fresh().load()


def test_rollback_is_refused_unless_allowed(tmp: Path) -> None:
    repo, key = _three(tmp)
    root = Path(repo.meta.describe())
    old = {p.name: p.read_bytes() for p in (root / "heads").iterdir()}  # head 3
    repo.commit(Change(make=lambda n: [_record(repo, n, 7)]))
    # an attacker puts the older head back (and removes the newer one)
    for p in (root / "heads").iterdir():
        p.unlink()
    for name, data in old.items():
        (root / "heads" / name).write_bytes(data)
    with pytest.raises(TrustError, match="rolled back"):
        _repo(root, key, tmp / "seen").load()
    assert _repo(root, key, tmp / "seen", allow_older=True).load().seq == 3  # type: ignore[union-attr]
    # every head deleted: refused too, since this repository was seen at head 4
    for p in (root / "heads").iterdir():
        p.unlink()
    r = _repo(root, key, tmp / "seen")
    r.expect = repo.id
    with pytest.raises(TrustError, match="no head"):
        r.load()


def test_names_from_a_record_are_confined() -> None:
    base = {
        "repository": "0" * 32,
        "number": 1,
        "id": "x1",
        "started": datetime(2026, 1, 1).astimezone(),
        "status": "ok",
    }
    for bad in ("../etc/passwd", "/etc/passwd", "a\\b", "a\0b", "x/" * 600, "a//b", "chain/../../x"):
        with pytest.raises(ValueError):
            BackupRecord(**base, path=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            ObjectRecord(path=bad, size=1, sha256="0" * 64)
    with pytest.raises(ValueError):  # objects live under chain/ or full/ only
        ObjectRecord(path="records/x.json", size=1, sha256="0" * 64)
    with pytest.raises(ValueError):
        BackupRecord(**{**base, "id": "../x"})  # type: ignore[arg-type]


# --- the offsite store as an attacker: folder and S3 ---------------------------------------------------


def run_days(pg: LocalServer, db: str, c: Path, n: int, start: int = 0) -> list[dict[str, tuple[int, str]]]:
    snaps = []
    for day in range(start, start + n):
        if day:
            sample.mail_day(pg.psql_bin(), pg.conn(), db, day, new=20, words=20)
        r = cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[day]})
        assert r.returncode == 0, r.stderr
        snaps.append(stats(pg, db))
    return snaps


class Store:
    """Raw access to an offsite store, as an attacker with write access to it has."""

    def __init__(self, kind: str, tmp: Path, s3: str | None = None, bucket: str | None = None) -> None:
        self.kind, self.tmp = kind, tmp
        if kind == "file":
            self.root = tmp / "remote"
            self.root.mkdir()
            self.url = f"file://{self.root}"
        else:
            self.client = boto3.client("s3", endpoint_url=s3)
            self.bucket, self.url, self.endpoint = bucket, f"s3://{bucket}/p", s3

    def section(self) -> dict[str, object]:
        return {"url": self.url} if self.kind == "file" else {"url": self.url, "endpoint_url": self.endpoint}

    def names(self) -> list[str]:
        if self.kind == "file":
            return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        return sorted(o["Key"][2:] for o in self.client.list_objects_v2(Bucket=self.bucket, Prefix="p/")["Contents"])

    def get(self, key: str) -> bytes:
        if self.kind == "file":
            return (self.root / key).read_bytes()
        return self.client.get_object(Bucket=self.bucket, Key=f"p/{key}")["Body"].read()  # type: ignore[no-any-return]

    def put(self, key: str, data: bytes) -> None:
        if self.kind == "file":
            (self.root / key).parent.mkdir(parents=True, exist_ok=True)
            (self.root / key).write_bytes(data)
        else:
            self.client.put_object(Bucket=self.bucket, Key=f"p/{key}", Body=data)

    def delete(self, key: str) -> None:
        if self.kind == "file":
            (self.root / key).unlink()
        else:
            self.client.delete_object(Bucket=self.bucket, Key=f"p/{key}")


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp: Path) -> Store:
    if request.param == "file":
        return Store("file", tmp)
    s3 = request.getfixturevalue("s3_server")
    return Store("s3", tmp, s3, request.getfixturevalue("bucket"))


def test_hostile_offsite_store(pg: LocalServer, pwfile: Path, maildb: str, tmp: Path, store: Store) -> None:
    dest = tmp / "dest"
    dest.mkdir()
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
    add_sections(c, delta={"enabled": True}, offsite=store.section())
    snaps = run_days(pg, maildb, c, 2)
    older_head = {k: store.get(k) for k in store.names() if k.startswith("heads/")}
    snaps += run_days(pg, maildb, c, 1, start=2)
    public = cli("key", "-q", "--config", c).stdout.strip()
    # another repository, signed with the same key (another backup folder of this host)
    dest2, remote2 = tmp / "dest2", tmp / "remote2"
    dest2.mkdir()
    remote2.mkdir()
    c2 = write_config(tmp / "c2.toml", pg, pwfile, maildb, dest2)
    add_sections(c2, delta={"enabled": True}, offsite={"url": f"file://{remote2}"})
    assert cli("backup", "--config", c2).returncode == 0
    foreign = next(p for p in (remote2 / "records").glob("00000001-*.json") if ".tables." not in p.name)
    shutil.rmtree(dest)  # from here on only the offsite copy, the config and the public key are left
    dest.mkdir()
    victim = tmp / "victim.txt"  # a file outside the copy, that nothing may touch
    victim.write_text("not deltadump's")
    before = sorted(p.name for p in tmp.iterdir())

    def attempt(*expect: str, read_objects_only: bool = False) -> None:
        """list, verify and restore are each refused with one clear line; no database, nothing written."""
        cmds = [["verify", "--offsite"], ["restore", "--from", "offsite", "--to-db", "forged"]]
        for cmd in cmds if read_objects_only else [["list", "--offsite"], *cmds]:
            r = cli(*cmd, "--trust", public, "--config", c)
            assert r.returncode == 1, (cmd, r.stdout, r.stderr)
            assert any(e in r.stderr + r.stdout for e in expect), (cmd, r.stdout, r.stderr)
            assert "Traceback" not in r.stderr and r.stderr.count("deltadump: error:") == 1, r.stderr
            assert not db_exists(pg, "forged")
        assert sorted(p.name for p in tmp.iterdir()) == before
        assert all(p.name.startswith("deltadump-") for p in dest.iterdir())

    keys = store.names()
    rec_key = next(k for k in keys if k.startswith("records/00000001-") and k.endswith(".json") and ".tables" not in k)
    head_key = max(k for k in keys if k.startswith("heads/") and k.endswith(".json"))
    good = {k: store.get(k) for k in (rec_key, rec_key + ".minisig", head_key, head_key + ".minisig")}

    def heal() -> None:
        for k, v in good.items():
            store.put(k, v)

    # the honest copy restores, and the head's time and sequence are told
    r = cli("restore", "--from", "offsite", "--to-db", f"honest_{store.kind}", "--trust", public, "--config", c)
    assert r.returncode == 0, r.stderr
    assert f"head {head_key[6:16].lstrip('0')}" in r.stderr and stats(pg, f"honest_{store.kind}") == snaps[-1]
    # a forged record (what it restores changed): its signature does not match
    f = json.loads(good[rec_key])
    f["dump_sha256"] = "0" * 64
    store.put(rec_key, json.dumps(f).encode())
    attempt("does not match its signature")
    heal()
    # names with .., absolute, backslash, NUL or over-long in a record: cannot be signed by an attacker
    for bad in ("../../etc/x", "/etc/passwd", "chain\\..\\x", "chain/\u0000x", "chain/" + "x" * 300):
        f = json.loads(good[rec_key])
        f["objects"] = [{"path": bad, "size": 1, "sha256": "0" * 64}]
        store.put(rec_key, json.dumps(f).encode())
        attempt("does not match its signature")
    heal()
    # a record signed by another key
    store.put(rec_key + ".minisig", SecretKey.generate().sign(good[rec_key], "x"))
    attempt("signed by another key")
    heal()
    # a record from another repository (signed by the same key), in place of ours: refused
    store.delete(rec_key)
    store.delete(rec_key + ".minisig")
    for name in (foreign.name, foreign.name + ".minisig"):
        store.put(f"records/{name}", (foreign.parent / name).read_bytes())
    attempt("another repository")
    store.delete(f"records/{foreign.name}")
    store.delete(f"records/{foreign.name}.minisig")
    heal()
    # a forged head (a live record added)
    h = json.loads(good[head_key])
    h["live"] = h["live"] + ",999"
    store.put(head_key, json.dumps(h).encode())
    attempt("does not match its signature")
    heal()
    # a deleted record
    store.delete(rec_key)
    attempt("missing")
    heal()
    # a head grown past any head's size (a store that would fill the disk): refused, never read whole
    store.put(head_key, good[head_key] + b" " * MAX_HEAD_BYTES)
    attempt("larger than any file of its kind")
    heal()
    # an object grown on the store past its recorded size: refused before a byte of it is read (downloaded,
    # or in a folder copy read in place)
    obj_key = next(k for k in store.names() if k.startswith("chain/") and k.endswith(".base.zst"))
    saved_obj = store.get(obj_key)
    store.put(obj_key, saved_obj + b"\0" * 65536)
    attempt("larger than the", read_objects_only=True)
    store.put(obj_key, saved_obj)
    # a rolled-back head: the older signed head put back, the newer deleted. This host saw the newer one.
    for k in [k for k in store.names() if k.startswith("heads/")]:
        store.delete(k)
    for k, v in older_head.items():
        store.put(k, v)
    attempt("rolled back")
    r = cli(
        "restore",
        "--from",
        "offsite",
        "--to-db",
        f"older_{store.kind}",
        "--trust",
        public,
        "--allow-older",
        "--config",
        c,
    )
    assert r.returncode == 0, r.stderr
    assert stats(pg, f"older_{store.kind}") == snaps[1]  # the older data, and the user was told which head it is
    for k in [k for k in store.names() if k.startswith("heads/")]:
        store.delete(k)
    heal()
    # names the store lists that are not ours (.., backslash, over-long, and in a folder a planted link to
    # a file outside): ignored by readers; a backup's clean-up deletes nothing outside the copy
    if store.kind == "file":
        (store.root / "chain" / "x\\..\\y").write_bytes(b"x")
        obj = next(p for p in (store.root / "chain").glob("*.base.zst"))
        saved = obj.read_bytes()
        obj.unlink()
        obj.symlink_to(victim)  # the base object, replaced by a link to a file outside the copy
        attempt("a link", "symbolic link", "missing", read_objects_only=True)
        obj.unlink()
        obj.write_bytes(saved)
        (store.root / "chain" / "stray").symlink_to(victim)
    else:
        for k in ("chain/../../victim", "chain\\..\\x", "full/" + "y" * 900):
            store.put(k, b"x")
    r = cli("restore", "--from", "offsite", "--to-db", f"still_good_{store.kind}", "--trust", public, "--config", c)
    assert r.returncode == 0, r.stderr
    assert stats(pg, f"still_good_{store.kind}") == snaps[-1]
    shutil.rmtree(dest)
    dest.mkdir()
    r = cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[5]})  # a new host folder: adopts, sends, cleans
    assert r.returncode == 0, r.stderr
    assert victim.read_text() == "not deltadump's"
    assert cli("verify", "--offsite", "--config", c).returncode == 0


# --- migration from format 1, written by the code that wrote it --------------------------------------


@pytest.fixture(scope="module")
def v1_code(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The deltadump that wrote repository format 1, from this repository's history."""
    out = tmp_path_factory.mktemp("v1code")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", V1_COMMIT, "deltadump"], capture_output=True)
    assert archive.returncode == 0, "the history of this repository (a full clone) holds the format 1 code"
    (out / "v1.tar").write_bytes(archive.stdout)
    with tarfile.open(out / "v1.tar") as t:
        t.extractall(out, filter="data")
    return out


def old_cli(code: Path, *args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deltadump.cli.main", *map(str, args)], capture_output=True, text=True,
                          cwd=code, env={**os.environ, "PYTHONPATH": str(code), **(env or {})}, timeout=300)  # fmt: skip


def v1_days(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path, code: Path, days: int
) -> tuple[Path, Path, Path, list[dict[str, tuple[int, str]]]]:
    """A backup folder and an offsite folder written by the format 1 code, a day of mail traffic between
    its backups (a base, then deltas): the config, the two folders and each day's table stats."""
    dest, remote = tmp / "dest", tmp / "remote"
    dest.mkdir()
    remote.mkdir()
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest, name="DBBACK.DMP")
    add_sections(c, delta={"enabled": True}, offsite={"url": f"file://{remote}"})
    snaps = []
    for day in range(days):
        if day:
            sample.mail_day(pg.psql_bin(), pg.conn(), maildb, day, new=20, words=20)
        r = old_cli(code, "backup", "--config", c, env={"DELTADUMP_NOW": DAYS[day]})
        assert r.returncode == 0, r.stderr
        snaps.append(stats(pg, maildb))
    return c, dest, remote, snaps


def test_migration_of_a_folder_and_an_offsite_copy_written_by_format_1(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path, v1_code: Path
) -> None:
    c, dest, remote, snaps = v1_days(pg, pwfile, maildb, tmp, v1_code, 3)
    assert (dest / "deltadump-manifest.json").exists() and (remote / "deltadump-manifest.json").exists()
    old_ids = [b["id"] for b in json.loads((dest / "deltadump-manifest.json").read_text())["backups"]]
    # the new code: the first command migrates the folder in place (signed), keeping every backup
    r = cli("list", "--json", "--config", c)
    assert r.returncode == 0, r.stderr
    assert [b["id"] for b in json.loads(r.stdout)] == list(reversed(old_ids))
    assert not (dest / "deltadump-manifest.json").exists() and (dest / "deltadump-manifest.json.v1-migrated").exists()
    assert cli("verify", "--config", c).returncode == 0
    for i, bid in enumerate(old_ids):  # every old day restores (the older ones from the old chain)
        r = cli("restore", bid, "--to-db", f"old{i}", "--config", c)
        assert r.returncode == 0, r.stderr
        assert stats(pg, f"old{i}") == snaps[i]
    # a backup with the new code extends the old chain and migrates the offsite copy
    sample.mail_day(pg.psql_bin(), pg.conn(), maildb, 3, new=20, words=20)
    r = cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[3]})
    assert r.returncode == 0, r.stderr
    snaps.append(stats(pg, maildb))
    h = history(c)
    assert [b.id for b in h.backups[:3]] == old_ids and h.backups[3].kind == "delta"
    assert not (remote / "deltadump-manifest.json").exists() and list((remote / "heads").glob("*.json.minisig"))
    assert cli("verify", "--offsite", "--config", c).returncode == 0
    for i, bid in enumerate([*old_ids, h.backups[3].id]):
        r = cli("restore", "--from", "offsite", bid, "--to-db", f"off{i}", "--config", c)
        assert r.returncode == 0, r.stderr
        assert stats(pg, f"off{i}") == snaps[i]
    # and prune, with a policy that lets the oldest go offsite (the single slot keeps only the newest here)
    c.write_text(c.read_text() + "\n[retention]\ndaily = 1\nweekly = 0\nmonthly = 0\nkeep_last = 1\n")
    dry = json.loads(cli("prune", "--dry-run", "--json", "--config", c).stdout)
    r = cli("prune", "--json", "--config", c)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == dry
    assert [d["id"] for d in dry if d["keep"]] == [b.id for b in h.backups]  # the newest needs its whole chain
    r = cli("restore", "latest", "--to-db", "after_prune", "--config", c)
    assert r.returncode == 0 and stats(pg, "after_prune") == snaps[-1]


def test_a_format_1_offsite_copy_alone_is_adopted_not_lost(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path, v1_code: Path
) -> None:
    """The backup folder is lost while the offsite copy is still in format 1 (a new machine, this
    version): a restore names the way (one backup), and that backup adopts every backup the copy held
    before it signs and migrates the copy, so they all stay restorable from it: not one object of
    theirs is deleted."""
    c, dest, remote, snaps = v1_days(pg, pwfile, maildb, tmp, v1_code, 3)
    old_ids = [b["id"] for b in json.loads((remote / "deltadump-manifest.json").read_text())["backups"]]
    old_objects = {p.relative_to(remote) for p in (remote / "chain").rglob("*") if p.is_file()}
    assert len(old_ids) == 3 and old_objects
    shutil.rmtree(dest)  # the machine is lost; the copy, the config and this version are left
    dest.mkdir()
    r = cli("restore", "--from", "offsite", "--to-db", "nothing_yet", "--config", c)
    assert r.returncode == 1 and "format 1" in r.stderr and "run one backup" in r.stderr, r.stderr
    sample.mail_day(pg.psql_bin(), pg.conn(), maildb, 3, new=20, words=20)
    r = cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[3]})
    assert r.returncode == 0, r.stderr
    snaps.append(stats(pg, maildb))
    assert not (remote / "deltadump-manifest.json").exists()
    assert old_objects <= {p.relative_to(remote) for p in (remote / "chain").rglob("*") if p.is_file()}
    listed = [b["id"] for b in reversed(json.loads(cli("list", "--offsite", "--json", "--config", c).stdout))]
    assert listed[:3] == old_ids and len(listed) == 4
    assert cli("verify", "--offsite", "--config", c).returncode == 0
    for i, bid in enumerate(listed):
        r = cli("restore", "--from", "offsite", bid, "--to-db", f"adopted{i}", "--config", c)
        assert r.returncode == 0, r.stderr
        assert stats(pg, f"adopted{i}") == snaps[i]


def test_a_kill_at_any_step_of_a_format_1_copy_migration_loses_no_backup(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path, v1_code: Path
) -> None:
    """The new folder's first backup is killed at each step of migrating the format 1 copy (every write
    of its records and head, and the manifest's removal, counted by fsio.checkpoint): the next backup
    ends with every old backup listed and restorable from the copy, none of their objects deleted."""
    c, dest, remote, snaps = v1_days(pg, pwfile, maildb, tmp, v1_code, 2)
    old_ids = [b["id"] for b in json.loads((remote / "deltadump-manifest.json").read_text())["backups"]]
    pristine = tmp / "pristine"
    shutil.copytree(remote, pristine)
    old_objects = {p.relative_to(remote) for p in (remote / "chain").rglob("*") if p.is_file()}

    def fresh_machine() -> None:
        for d in (dest, remote):
            shutil.rmtree(d)
        dest.mkdir()
        shutil.copytree(pristine, remote)
        for key in tmp.glob("deltadump-signing.key*"):
            key.unlink()

    def backup(day: int, **env: str) -> subprocess.CompletedProcess[str]:
        return cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[day], **env})

    fresh_machine()
    log = tmp / "steps.log"
    assert backup(2, DELTADUMP_STEP_LOG=str(log)).returncode == 0
    steps = [line.split(" ", 1) for line in log.read_text().splitlines()]
    done = next(int(n) for n, what in steps if what == "offsite format 1 migrated")
    first = next(int(n) for n, what in steps if "deltadump-signing.key" not in what)
    kills = list(range(first, done + 2))  # the migration's writes (after the new key's), its end, the removal
    assert len(kills) >= 4, steps
    for kill in kills:
        fresh_machine()
        r = backup(2, DELTADUMP_KILL_AT=str(kill))
        assert r.returncode == -9, (kill, r.stderr)
        r = backup(3)
        assert r.returncode == 0, (kill, r.stderr)
        assert old_objects <= {p.relative_to(remote) for p in (remote / "chain").rglob("*") if p.is_file()}, kill
        listed = [b["id"] for b in reversed(json.loads(cli("list", "--offsite", "--json", "--config", c).stdout))]
        assert listed[:2] == old_ids, (kill, listed)
        assert not (remote / "deltadump-manifest.json").exists(), kill
    assert cli("verify", "--offsite", "--config", c).returncode == 0
    for i, bid in enumerate(old_ids):
        r = cli("restore", "--from", "offsite", bid, "--to-db", f"after_kill{i}", "--config", c)
        assert r.returncode == 0 and stats(pg, f"after_kill{i}") == snaps[i], r.stderr


def test_a_format_1_copy_unreadable_when_the_folder_was_new_is_refused_not_wiped(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path, v1_code: Path
) -> None:
    """The backup folder is lost while the copy is in format 1, and the copy's share is not mounted at
    the new folder's first backup (so nothing is taken over from it). When the share is back, the next
    backup must not drop the copy's old backups and delete their objects: it refuses in one line, and
    what the line says to do keeps every one of them restorable."""
    c, dest, remote, snaps = v1_days(pg, pwfile, maildb, tmp, v1_code, 2)
    old_ids = [b["id"] for b in json.loads((remote / "deltadump-manifest.json").read_text())["backups"]]
    old_files = {p.relative_to(remote) for p in remote.rglob("*") if p.is_file()}
    shutil.rmtree(dest)
    dest.mkdir()
    remote.rename(tmp / "unmounted")
    r = cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[2]})
    assert "does not exist" in r.stderr and len(json.loads(cli("list", "--json", "--config", c).stdout)) == 1
    (tmp / "unmounted").rename(remote)
    r = cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[3]})
    assert r.returncode != 0 and "format 1" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert old_files <= {p.relative_to(remote) for p in remote.rglob("*") if p.is_file()}, "old backups deleted"
    # what the hint says: a new, empty backup folder takes them over
    dest.rename(tmp / "dest.aside")
    dest.mkdir()
    r = cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[4]})
    assert r.returncode == 0, r.stderr
    for i, bid in enumerate(old_ids):
        r = cli("restore", "--from", "offsite", bid, "--to-db", f"kept{i}", "--config", c)
        assert r.returncode == 0, r.stderr
        assert stats(pg, f"kept{i}") == snaps[i]


def v1_manifest(backups: list[dict[str, object]]) -> bytes:
    """A format 1 manifest as the old code wrote it (its checksum over its canonical content)."""
    canon = json.dumps(backups, sort_keys=True, separators=(",", ":"), default=str)
    doc = {"format": "deltadump-manifest", "version": 1, "backups": backups,
           "sha256": hashlib.sha256(canon.encode()).hexdigest()}  # fmt: skip
    return json.dumps(doc).encode()


V1_FIELDS = ("id", "started", "finished", "status", "path", "format", "compress", "size", "files", "database",
             "server_version", "pg_dump_version", "duration", "kind", "parent", "base", "dump_sha256", "dump_size",
             "objects")  # fmt: skip


def test_a_store_cannot_plant_format_1_in_a_copy_this_host_signed(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path
) -> None:
    """A host that signed the copy in format 2 loses its backup folder; the store then deletes the copy's
    heads and records and plants an unsigned format 1 manifest: a forged backup that claims to be the
    newest but rebuilds the oldest day. The new folder's backup must not sign it (the one-time trust of
    format 1 is only for a copy this host never saw signed)."""
    dest, remote = tmp / "dest", tmp / "remote"
    dest.mkdir()
    remote.mkdir()
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
    add_sections(c, delta={"enabled": True}, offsite={"url": f"file://{remote}"})
    run_days(pg, maildb, c, 2)
    first = next(json.loads(p.read_text()) for p in sorted((remote / "records").glob("00000001-*.json"))
                 if ".tables." not in p.name)  # fmt: skip
    forged = {k: first[k] for k in V1_FIELDS} | {"id": "20261129T020000-f0f0", "started": "2026-11-29T02:00:00+00:00"}
    for k in ("files", "objects"):
        forged[k] = [{f: o[f] for f in ("path", "size", "sha256")} for o in first[k]]
    shutil.rmtree(dest)
    dest.mkdir()
    for d in ("heads", "records"):
        shutil.rmtree(remote / d)
    (remote / "deltadump-manifest.json").write_bytes(v1_manifest([forged]))
    r = cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[2]})
    assert "seen" in r.stderr, r.stderr
    assert len(json.loads(cli("list", "--json", "--config", c).stdout)) == 1  # the backup itself is safe here
    assert not any(forged["id"] in p.name for p in (remote / "records").rglob("*")), "the forged backup was signed"
    r = cli("list", "--offsite", "--json", "--config", c)
    assert forged["id"] not in r.stdout and "Traceback" not in r.stderr, r.stdout


def test_a_hostile_format_1_manifest_is_refused_in_one_line_and_the_backup_is_made(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path
) -> None:
    """Whatever a store puts at deltadump-manifest.json (not an object, nested past any limit, fields
    format 1 never had): one line naming it, and a new folder's backup is still made here."""
    bad = [b"[]", b'"x"', b"[" * 100_000, v1_manifest([{"id": "x", "started": "2026-11-10T02:00:00", "status": "ok",
                                                        "files": [{"path": "a", "size": 1, "sha256": "0", "x": 1}]}])]  # fmt: skip
    for raw in bad:
        with pytest.raises(IntegrityError) as exc:
            v1.parse(raw, "store/deltadump-manifest.json")
        assert "\n" not in exc.value.message and "deltadump-manifest.json" in exc.value.message
    dest, remote = tmp / "dest", tmp / "remote"
    dest.mkdir()
    remote.mkdir()
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
    add_sections(c, offsite={"url": f"file://{remote}"})
    (remote / "deltadump-manifest.json").write_bytes(b"[]")
    r = cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[0]})
    assert "internal error" not in r.stderr and "deltadump-manifest.json" in r.stderr, r.stderr
    assert len(json.loads(cli("list", "--json", "--config", c).stdout)) == 1


# --- prune: what --dry-run shows is what prune deletes ------------------------------------------------


def _random_repo(root: Path, key: SecretKey, days: list[tuple[int, bool, bool, int]]) -> Repository:
    from deltadump.store.records import TablesRecord  # noqa: F401  (records of a commit)

    repo = _repo(root, key, root.parent / "seen")
    t = datetime(2026, 1, 1, 2, 0).astimezone()
    last: BackupRecord | None = None
    base: BackupRecord | None = None
    (root / "chain").mkdir()
    for i, (gap, ok, rebase, slot) in enumerate(days):
        t += timedelta(hours=gap)
        bid = f"b{i:04d}"
        fields: dict[str, object] = {"id": bid, "started": t, "status": "ok" if ok else "failed", "format": "custom",
                                     "path": f"s{slot}"}  # fmt: skip
        if ok:
            if base is None or rebase or last is None:
                fields.update(kind="base", base=bid)
            else:
                fields.update(kind="delta", parent=last.id, base=base.id)
            obj = root / "chain" / f"{bid}.zst"
            obj.write_bytes(b"x")
            fields["objects"] = [ObjectRecord(path=f"chain/{bid}.zst", size=1, sha256="0" * 64)]
        repo.commit(Change(make=lambda n, f=fields: [BackupRecord(repository=repo.id or "", number=n, **f)]))  # type: ignore[arg-type,misc]
        rec = repo.by_id(bid)
        if ok and rec is not None:
            last = rec
            if rec.kind == "base":
                base = rec
    return repo


@settings(max_examples=25, deadline=None)
@given(
    days=st.lists(
        st.tuples(st.integers(-20, 24 * 9), st.booleans(), st.booleans(), st.integers(0, 2)), min_size=1, max_size=25
    ),
    keep=st.tuples(st.integers(0, 4), st.integers(0, 3), st.integers(0, 3), st.integers(1, 2)),
)
def test_prune_deletes_exactly_what_dry_run_shows(
    tmp_path_factory: pytest.TempPathFactory, days: list[tuple[int, bool, bool, int]], keep: tuple[int, int, int, int]
) -> None:
    from deltadump.config import parse
    from deltadump.jobs.common import SilentReporter
    from deltadump.jobs.prune import prune_local
    from deltadump.store.retention import Policy

    root = tmp_path_factory.mktemp("prune") / "dest"
    root.mkdir()
    key = SecretKey.generate()
    repo = _random_repo(root, key, days)
    cfg = parse({"database": {"dsn": "dbname=x"}, "backup": {"dest": str(root)}, "delta": {"enabled": True}})
    before = {b.id for b in repo.backups()}
    shown = prune_local(cfg, repo, Policy(*keep), SilentReporter(), dry_run=True)
    assert {b.id for b in repo.backups()} == before  # a dry run deletes nothing
    done = prune_local(cfg, repo, Policy(*keep), SilentReporter())
    assert done.decisions == shown.decisions
    after = _repo(root, key, root.parent / "seen")
    after.load()
    left = {b.id for b in after.backups()}
    assert left == {d.id for d in shown.keep} and before - left == {d.id for d in shown.delete}
    objects = {p.stem for p in (root / "chain").iterdir()}
    kept_objects = {b.id for b in after.backups() if b.status == "ok"}
    assert objects == kept_objects  # deleted backups' objects are gone, kept ones' are all there
    names = {p.name.split("-", 1)[1].split(".")[0] for p in (root / "records").glob("*.json")}
    assert names == left  # and so are their records


def test_a_config_written_by_the_old_init_keeps_its_deltas(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path, v1_code: Path
) -> None:
    """The old `init` wrote `compress = 6` (its default) into every config, and deltas used to ignore it;
    deltas now refuse a compression level the user chose, but the old template's line is init's, not the
    user's: such a config, with [delta] enabled as the old README said, keeps backing up."""
    dest = tmp / "dest"
    dest.mkdir()
    make = "import sys\nfrom deltadump.config import render_template\nsys.stdout.write(render_template(sys.argv[1], sys.argv[2]))"
    old = subprocess.run([sys.executable, "-c", make, pg.dsn(maildb), str(dest)], capture_output=True, text=True,
                         cwd=v1_code, env={**os.environ, "PYTHONPATH": str(v1_code)}, check=True).stdout  # fmt: skip
    assert "\ncompress = 6\n" in old
    c = tmp / "old.toml"
    c.write_text(old.replace('# password_file = "/etc/deltadump/db.password"', f"password_file = {json.dumps(str(pwfile))}")
                 .replace('# pg_bin = "/usr/lib/postgresql/16/bin"', f"pg_bin = {json.dumps(str(pg.bin))}")
                 + "\n[delta]\nenabled = true\n")  # fmt: skip
    for day in range(2):
        if day:
            sample.mail_day(pg.psql_bin(), pg.conn(), maildb, day, new=20, words=20)
        r = cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[day]})
        assert r.returncode == 0, r.stderr
    assert [b.kind for b in history(c).backups] == ["base", "delta"]
    # a level the user wrote is still refused (the same value under a comment of the user's own)
    c.write_text(c.read_text().replace("# pg_dump -Z level; 0 = uncompressed (delta-friendly)\n", "# smaller slots\n"))
    r = cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[2]})
    assert r.returncode == 2 and "compress" in r.stderr, r.stderr


def test_a_date_is_exactly_a_day_and_a_mistyped_id_names_no_backup() -> None:
    """`restore 2026-11-12` means the newest backup of that day or before; a reference that only begins
    with a date (a mistyped id or time) names no backup, so nothing is restored in its place."""
    from deltadump.store.resolve import resolve

    recs = [
        BackupRecord(
            repository="0" * 32,
            number=n,
            id=f"202611{d:02d}T020000-abc{n}",
            started=datetime(2026, 11, d).astimezone(),
            status="ok",
            path=f"slot-{n}",
            format="custom",
        )
        for n, d in ((1, 10), (2, 11), (3, 13))
    ]
    assert resolve(recs, "2026-11-12") is recs[1]
    assert resolve(recs, "2026-11-13") is recs[2]
    assert resolve(recs, "2026-11-09") is None
    assert resolve(recs, "20261111T020000-abc2") is recs[1]
    for ref in ("2026-11-12T02:00", "2026-11-13 typo", "2026-11-13-abc3", "２０２６-11-13", "2026-11-1", "2026-13-01"):
        assert resolve(recs, ref) is None, ref
