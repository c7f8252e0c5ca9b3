"""Delta backups and offsite copies against a real PostgreSQL server, a real folder, and a real S3
protocol over HTTP (moto's server), with faults injected by a proxy; manual recovery with the real
age, zstd, rdiff and pg_restore."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import boto3
import pytest
from conftest import cli, history, require_tool, write_config
from hypothesis import given, settings
from hypothesis import strategies as st
from s3proxy import FaultProxy

from deltadump.jobs import sample
from deltadump.pg.conn import psql
from deltadump.pg.inspect import table_stats
from deltadump.pg.server import LocalServer
from deltadump.store.chain import chain_of
from deltadump.store.records import BackupRecord, ObjectRecord
from deltadump.store.retention import Policy, plan

DAYS = [f"2026-11-{d:02d}T02:00:00" for d in range(10, 30)]


def add_sections(cfg: Path, **sections: dict[str, object]) -> Path:
    text = cfg.read_text()
    for name, kv in sections.items():
        text += f"\n[{name}]\n" + "".join(f"{k} = {json.dumps(v) if not isinstance(v, dict) else inline(v)}\n"
                                          for k, v in kv.items())  # fmt: skip
    cfg.write_text(text)
    return cfg


def inline(d: dict[str, object]) -> str:
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in d.items()) + " }"


def stats(pg: LocalServer, db: str) -> dict[str, tuple[int, str]]:
    return table_stats(pg.conn(), db)


def run_days(
    pg: LocalServer, db: str, c: Path, n: int, env: dict[str, str] | None = None, new: int = 60
) -> list[dict[str, tuple[int, str]]]:
    snaps = []
    for day in range(n):
        if day:
            sample.mail_day(pg.psql_bin(), pg.conn(), db, day, new=new, words=20)
        r = cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[day], **(env or {})})
        assert r.returncode == 0, r.stderr
        snaps.append(stats(pg, db))
    return snaps


def drop(pg: LocalServer, db: str) -> None:
    psql(pg.psql_bin(), pg.conn(), f"drop database if exists {db} with (force)")


def test_chain_restores_every_day_and_ships_small_deltas(pg: LocalServer, pwfile: Path, maildb: str, tmp: Path) -> None:
    dest, remote = tmp / "dest", tmp / "remote"
    dest.mkdir()
    remote.mkdir()
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest, name="DBBACK.DMP")  # one slot: older days need the chain
    add_sections(c, delta={"enabled": True, "mode": "incremental"}, offsite={"url": f"file://{remote}"})
    snaps = run_days(pg, maildb, c, 5, new=10)
    m = history(c)
    assert [b.kind for b in m.backups] == ["base", "delta", "delta", "delta", "delta"]
    assert all(b.compress == 0 and b.format == "custom" for b in m.backups)
    base = m.backups[0]
    by_id = {b.id: b for b in m.backups}
    for b in m.backups[1:]:
        assert b.parent is not None and b.objects[0].size < 0.25 * base.objects[0].size
        assert chain_of(by_id, b)[0].id == base.id
    # a decompressed delta is a valid rdiff delta
    d = dest / m.backups[1].objects[0].path
    raw = subprocess.run(["zstd", "-d", "-c", str(d)], capture_output=True, check=True).stdout
    assert raw[:4] == b"rs\x026"
    # every day restores, from its slot or by reconstruction, to exactly that day's data
    for i, b in enumerate(m.backups):
        r = cli("restore", b.id, "--to-db", f"day{i}", "--config", c)
        assert r.returncode == 0, r.stderr
        assert stats(pg, f"day{i}") == snaps[i], f"day {i}"
        drop(pg, f"day{i}")
    assert "(chain)" in cli("restore", m.backups[0].id, "--to-db", "again", "--config", c).stdout
    drop(pg, "again")
    # the offsite copy holds every object and the manifest; verify --offsite agrees
    assert sorted(p.name for p in (remote / "chain").iterdir()) == sorted(
        Path(o.path).name for b in m.backups for o in b.objects
    )
    v = cli("verify", "--offsite", "--config", c)
    assert v.returncode == 0, v.stdout + v.stderr
    # a damaged base offsite: named, and nothing restored (its bytes never reach the output)
    base_obj = remote / base.objects[0].path
    data = bytearray(base_obj.read_bytes())
    data[len(data) // 2] ^= 0x40
    base_obj.write_bytes(bytes(data))
    r = cli("restore", "--from", "offsite", "--to-db", "broken", "--config", c)
    assert r.returncode == 1 and Path(base.objects[0].path).name in r.stderr and "corrupt" in r.stderr, r.stderr
    assert not psql(pg.psql_bin(), pg.conn(), "select 1 from pg_database where datname = 'broken'")


def test_rebase_after_max_chain_and_differential(pg: LocalServer, pwfile: Path, maildb: str, tmp: Path) -> None:
    dest = tmp / "dest"
    dest.mkdir()
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
    add_sections(c, delta={"enabled": True, "mode": "differential", "max_chain": 2})
    run_days(pg, maildb, c, 5)
    m = history(c)
    assert [b.kind for b in m.backups] == ["base", "delta", "delta", "base", "delta"]
    assert m.backups[2].parent == m.backups[0].id  # differential: against the base
    assert sorted(p.name for p in (dest / "chain").glob("*.sig")) == [f"{m.backups[3].id}.sig"]


@pytest.fixture
def age_key(tmp: Path) -> tuple[Path, str]:
    import pyrage

    ident = pyrage.x25519.Identity.generate()
    key = tmp / "key.txt"
    key.write_text(str(ident) + "\n")
    key.chmod(0o600)
    return key, str(ident.to_public())


def test_restore_from_offsite_alone_encrypted_s3(pg: LocalServer, pwfile: Path, maildb: str, tmp: Path,
                                                 s3_server: str, bucket: str, age_key: tuple[Path, str]) -> None:  # fmt: skip
    key, recipient = age_key
    dest = tmp / "dest"
    dest.mkdir()
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
    add_sections(c, delta={"enabled": True}, offsite={"url": f"s3://{bucket}/mail", "endpoint_url": s3_server,
                                                      "encrypt": True, "recipients": [recipient]})  # fmt: skip
    snaps = run_days(pg, maildb, c, 3)
    s3 = boto3.client("s3", endpoint_url=s3_server)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert all(k.endswith(".age") or k.endswith("RECOVERY.txt") for k in keys), keys
    shutil.rmtree(dest)  # the local folder is gone
    dest.mkdir()
    r = cli("restore", "--from", "offsite", "--to-db", "from_offsite", "--identity", key, "--config", c)
    assert r.returncode == 0, r.stderr
    assert stats(pg, "from_offsite") == snaps[2]
    r = cli("restore", "--from", "offsite", "--at", DAYS[1][:10], "--to-db", "day1", "--identity", key, "--config", c)
    assert r.returncode == 0, r.stderr
    assert stats(pg, "day1") == snaps[1]
    out = cli("list", "--offsite", "--json", "--identity", key, "--config", c)
    assert out.returncode == 0 and len(json.loads(out.stdout)) == 3
    # a wrong identity: a clear error, nothing restored
    import pyrage

    wrong = tmp / "wrong.txt"
    wrong.write_text(str(pyrage.x25519.Identity.generate()) + "\n")
    r = cli("restore", "--from", "offsite", "--to-db", "nope", "--identity", wrong, "--config", c)
    assert r.returncode != 0 and "wrong age identity" in r.stderr
    assert not psql(pg.psql_bin(), pg.conn(), "select 1 from pg_database where datname = 'nope'")
    # a corrupted delta offsite: verify names it, restore refuses and never restores wrong data
    delta_key = next(k for k in keys if ".delta.zst" in k)
    s3.put_object(Bucket=bucket, Key=delta_key, Body=b"garbage")
    v = cli("verify", "--offsite", "--identity", key, "--config", c)
    assert v.returncode == 1 and Path(delta_key).name.removesuffix(".age") in v.stdout
    r = cli("restore", "--from", "offsite", "--to-db", "broken", "--identity", key, "--config", c)
    assert r.returncode == 1 and ".delta.zst" in r.stderr
    assert not psql(pg.psql_bin(), pg.conn(), "select 1 from pg_database where datname = 'broken'")
    s3.delete_object(Bucket=bucket, Key=delta_key)
    v = cli("verify", "--offsite", "--identity", key, "--config", c)
    assert v.returncode == 1 and "missing" in v.stdout


def test_manual_recovery_with_standard_tools(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path, age_key: tuple[Path, str]
) -> None:
    for tool in ("age", "zstd", "rdiff", "minisign"):
        require_tool(tool)
    key, recipient = age_key
    dest, remote = tmp / "dest", tmp / "remote"
    dest.mkdir()
    remote.mkdir()
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
    add_sections(
        c, delta={"enabled": True}, offsite={"url": f"file://{remote}", "encrypt": True, "recipients": [recipient]}
    )
    snaps = run_days(pg, maildb, c, 3)
    public = cli("key", "--config", c, "-q").stdout.strip()  # noted at init, kept with the recovery papers
    assert public.startswith("RW")
    shutil.rmtree(dest)
    recovery = (remote / "RECOVERY.txt").read_text()
    assert "rdiff patch" in recovery and "minisign -V" in recovery and "in steps of" in recovery
    # by hand, following RECOVERY.txt: decrypt, check every signature with minisign, follow the chain
    w = tmp / "by-hand"
    w.mkdir()
    sh = lambda *a: subprocess.run([*map(str, a)], check=True, capture_output=True)  # noqa: E731

    def fetch(name: str) -> Path:
        out = w / name.replace("/", "_")
        sh("age", "-d", "-i", key, "-o", out, remote / (name + ".age"))
        return out

    def signed_json(name: str) -> dict[str, object]:
        data, sig = fetch(name), fetch(name + ".minisig")
        sh("minisign", "-V", "-P", public, "-m", data, "-x", sig)  # fails (exit 1) on any change
        return json.loads(data.read_text())  # type: ignore[no-any-return]

    heads = sorted(p.name.removesuffix(".age") for p in (remote / "heads").glob("*.json.age"))
    head = signed_json(f"heads/{heads[-1]}")
    live = set()
    for part in str(head["live"]).split(","):  # as RECOVERY.txt describes: "1-5,8,9-21:2"
        span, _, step = part.partition(":")
        a, _, b = span.partition("-")
        live.update(range(int(a), int(b or a) + 1, int(step or 1)))
    records = {}
    for p in (remote / "records").glob("*.json.age"):
        name = "records/" + p.name.removesuffix(".age")
        if int(name.split("/")[1].split("-")[0]) in live and name.count(".") == 1:
            r = signed_json(name)
            records[r["id"]] = r
    last = max(records.values(), key=lambda r: r["number"])  # type: ignore[arg-type, return-value]
    chain = [last]
    while chain[-1]["parent"]:
        chain.append(records[chain[-1]["parent"]])
    chain.reverse()
    cur = None
    for i, b in enumerate(chain):
        obj = fetch(b["objects"][0]["path"])  # type: ignore[index]
        if b["kind"] == "base":
            sh("zstd", "-q", "-d", obj, "-o", w / f"dump.{i}")
        else:
            sh("zstd", "-q", "-d", obj, "-o", w / f"d.{i}")
            sh("rdiff", "patch", cur, w / f"d.{i}", w / f"dump.{i}")
        obj.unlink()
        cur = w / f"dump.{i}"
        assert (
            subprocess.run(["sha256sum", str(cur)], capture_output=True, text=True).stdout.split()[0]
            == b["dump_sha256"]
        )
    # a changed record does not pass minisign
    name = next(n for n in (f"records/{p.name.removesuffix('.age')}" for p in (remote / "records").glob("*.json.age"))
                if f"-{last['id']}.json" in n)  # fmt: skip
    data, sig = fetch(name), fetch(name + ".minisig")
    data.write_text(data.read_text().replace(str(last["dump_sha256"]), "0" * 64))
    bad = subprocess.run(["minisign", "-V", "-P", public, "-m", str(data), "-x", str(sig)], capture_output=True)
    assert bad.returncode != 0
    psql(pg.psql_bin(), pg.conn(), "create database by_hand")
    with pg.conn("by_hand").env() as env:
        subprocess.run(
            [str(pg.bin / "pg_restore"), "--exit-on-error", "--dbname=by_hand", str(cur)],
            env=env,
            pass_fds=env.fds,  # the passfile is a memfd the child inherits
            check=True,
        )
    assert stats(pg, "by_hand") == snaps[-1]


def test_s3_faults_retry_resume_and_kill(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path, s3_server: str, bucket: str
) -> None:
    proxy = FaultProxy(s3_server)
    try:
        dest = tmp / "dest"
        dest.mkdir()
        c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
        add_sections(c, delta={"enabled": True}, offsite={"url": f"s3://{bucket}/p", "endpoint_url": proxy.url})
        # transient 500s in the middle of uploads: retried with backoff, the backup succeeds
        proxy.fail_writes = 3
        r = cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[0]})
        assert r.returncode == 0, r.stderr
        assert proxy.failed == 3
        # the server "down" (every write fails): the local backup is safe, the command says so
        sample.mail_day(pg.psql_bin(), pg.conn(), maildb, 1)
        proxy.fail_writes = 10**6
        r = cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[1]})
        assert r.returncode == 1 and "safe locally" in r.stderr and "attempts" in r.stderr, r.stderr
        assert history(c).backups[-1].status == "ok"
        # back up again: the next backup sends what was missing
        proxy.fail_writes = 0
        sample.mail_day(pg.psql_bin(), pg.conn(), maildb, 2)
        assert cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[2]}).returncode == 0
        assert cli("verify", "--offsite", "--config", c).returncode == 0
        # SIGKILL during an upload: nothing partial becomes visible; the next run completes the copy
        sample.mail_day(pg.psql_bin(), pg.conn(), maildb, 3)
        proxy.hang_writes = 30
        p = subprocess.Popen([*cli_argv(), "backup", "--config", str(c)], env={**os.environ, "DELTADUMP_NOW": DAYS[3]},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list((dest / "records").glob(f"*-{DAYS[3][:10].replace('-', '')}*")):
            time.sleep(0.1)
        time.sleep(1)
        p.send_signal(signal.SIGKILL)
        p.wait()
        proxy.hang_writes = 0
        s3 = boto3.client("s3", endpoint_url=s3_server)
        listed = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
        newest = history(c).backups[-1]
        for o in newest.objects:
            assert f"p/{o.path}" not in listed or listed[f"p/{o.path}"] == o.size  # never partial
        assert cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[4]}).returncode == 0
        assert cli("verify", "--offsite", "--config", c).returncode == 0
    finally:
        proxy.close()


def cli_argv() -> list[str]:
    import sys

    return [sys.executable, "-m", "deltadump.cli.main"]


def test_clock_going_backwards(pg: LocalServer, pwfile: Path, maildb: str, tmp: Path) -> None:
    dest = tmp / "dest"
    dest.mkdir()
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
    add_sections(c, delta={"enabled": True})
    assert cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[5]}).returncode == 0
    sample.mail_day(pg.psql_bin(), pg.conn(), maildb, 1)
    assert cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[2]}).returncode == 0  # clock went back
    want = stats(pg, maildb)
    m = history(c)
    assert m.backups[1].parent == m.backups[0].id
    assert cli("restore", "latest", "--to-db", "after_skew", "--config", c).returncode == 0
    assert stats(pg, "after_skew") == want


# --- retention: property-based ------------------------------------------------------------------


REPO = "0" * 32


def _history(draw_days: list[tuple[int, bool, bool, int]]) -> list[BackupRecord]:
    """Random histories: gaps (the clock may go back), failures, rebases, slots reused."""
    from datetime import datetime, timedelta

    out: list[BackupRecord] = []
    t = datetime(2026, 1, 1, 2, 0).astimezone()
    last_ok: BackupRecord | None = None
    base: BackupRecord | None = None
    for i, (gap, ok, rebase, slot) in enumerate(draw_days):
        t += timedelta(hours=gap)
        fields: dict[str, object] = {"repository": REPO, "number": i + 1, "id": f"b{i:04d}", "started": t,
                                     "status": "ok" if ok else "failed", "format": "custom", "path": f"s{slot}"}  # fmt: skip
        if ok:
            if base is None or rebase or last_ok is None:
                fields.update(kind="base", base=fields["id"])
            else:
                fields.update(kind="delta", parent=last_ok.id, base=base.id)
            fields["objects"] = [ObjectRecord(path=f"chain/{fields['id']}", size=1, sha256="0" * 64)]
        rec = BackupRecord(**fields)  # type: ignore[arg-type]
        if ok:
            last_ok = rec
            if rec.kind == "base":
                base = rec
        out.append(rec)
    return out


# RELIABILITY F25 asks for 10,000 histories: DELTADUMP_HISTORIES=10000 pytest tests/test_delta_offsite.py -k kept_chain
@settings(max_examples=int(os.environ.get("DELTADUMP_HISTORIES") or 300), deadline=None)
@given(
    days=st.lists(
        st.tuples(st.integers(-30, 24 * 20), st.booleans(), st.booleans(), st.integers(0, 3)), min_size=1, max_size=60
    ),
    keep=st.tuples(st.integers(0, 8), st.integers(0, 5), st.integers(0, 7), st.integers(1, 3)),
    local=st.booleans(),
)
def test_retention_never_breaks_a_kept_chain(
    days: list[tuple[int, bool, bool, int]], keep: tuple[int, int, int, int], local: bool
) -> None:
    backups = _history(days)
    p = plan(backups, Policy(*keep), local=local)
    kept = {d.id for d in p.keep}
    by_id = {b.id: b for b in backups}
    good = [b for b in backups if b.status == "ok"]
    if good:
        assert good[-1].id in kept  # the newest good backup (by commit, whatever the clock said) is always kept
    for bid in kept:
        rec = by_id[bid]
        if rec.in_chain:
            for need in chain_of(by_id, rec):
                assert need.id in kept
    assert kept.isdisjoint(d.id for d in p.delete)
    assert {b.id for b in backups} == kept | {d.id for d in p.delete}
    if local:  # the dump of every slot's newest backup is kept with what it needs
        owners = {b.path: b for b in good}
        assert {b.id for b in owners.values()} <= kept


def test_full_disk_during_the_delta_step(pg: LocalServer, pwfile: Path, maildb: str, tmp: Path) -> None:
    """The dump fits, the chain step (signature, delta) does not: clean failure, earlier backups restorable."""
    import os

    if os.geteuid() != 0:
        pytest.fail("this test mounts a tmpfs and must run as root (as CI does)")
    probe = tmp / "probe"
    probe.mkdir()
    cp = write_config(tmp / "p.toml", pg, pwfile, maildb, probe, name="DBBACK.DMP")
    add_sections(cp, delta={"enabled": True})
    assert cli("backup", "--config", cp).returncode == 0
    files = [f for f in probe.rglob("*") if f.is_file()]
    used = sum(-(-f.stat().st_size // 4096) * 4096 for f in files)  # tmpfs allocates whole pages
    dump = -(-(probe / "DBBACK.DMP").stat().st_size // 4096) * 4096
    small = tmp / "small"
    small.mkdir()
    # room for the first backup, plus the next dump, but not for the next chain step (signature ~7% of the dump)
    size_kb = (used + dump) // 1024 + 16
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k,mode=0755", "tmpfs", str(small)], check=True)
    try:
        c = write_config(tmp / "c.toml", pg, pwfile, maildb, small, name="DBBACK.DMP")
        add_sections(c, delta={"enabled": True})
        assert cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[0]}).returncode == 0
        want = stats(pg, maildb)
        sample.mail_day(pg.psql_bin(), pg.conn(), maildb, 1, new=3, words=20)
        r = cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[1]})
        assert r.returncode == 1 and "disk full while" in r.stderr and str(small / "chain") in r.stderr, r.stderr
        m = history(c)
        assert [b.status for b in m.backups] == ["ok", "failed"]
        failed = m.backups[-1].id
        # nothing of the failed run is left but its (failure) record
        assert [p.parent.name for p in small.rglob(f"*{failed}*")] == ["records", "records"]
        assert not list(small.rglob(".tmp-*"))
        assert cli("restore", "latest", "--to-db", "after_full", "--config", c).returncode == 0
        assert stats(pg, "after_full") == want
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_full_disk_while_restoring_a_chain(pg: LocalServer, pwfile: Path, maildb: str, tmp: Path) -> None:
    """Reconstructing a dump on a full disk: one clear error, no database, nothing left behind."""
    import os

    if os.geteuid() != 0:
        pytest.fail("this test mounts a tmpfs and must run as root (as CI does)")
    small, remote = tmp / "small", tmp / "remote"
    small.mkdir()
    remote.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "tmpfs", str(small)], check=True)
    try:
        c = write_config(tmp / "c.toml", pg, pwfile, maildb, small, name="DBBACK.DMP")
        add_sections(c, delta={"enabled": True}, offsite={"url": f"file://{remote}"})
        run_days(pg, maildb, c, 2, new=3)
        dump = (small / "DBBACK.DMP").stat().st_size
        free = os.statvfs(small).f_bavail * os.statvfs(small).f_frsize
        (small / "filler").write_bytes(b"\0" * (free - dump // 2))  # room for half a dump
        before = sorted(p.name for p in small.iterdir())
        r = cli("restore", "--from", "offsite", "--to-db", "no_room", "--config", c, "-q")
        assert r.returncode == 1 and "disk full while writing" in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert not psql(pg.psql_bin(), pg.conn(), "select 1 from pg_database where datname = 'no_room'")
        assert sorted(p.name for p in small.iterdir()) == before  # no work folder left
        (small / "filler").unlink()
        r = cli("restore", "--from", "offsite", "--to-db", "with_room", "--config", c)
        assert r.returncode == 0, r.stderr
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_retention_removes_old_chains_here_and_offsite(pg: LocalServer, pwfile: Path, maildb: str, tmp: Path) -> None:
    dest, remote = tmp / "dest", tmp / "remote"
    dest.mkdir()
    remote.mkdir()
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
    add_sections(c, delta={"enabled": True, "mode": "differential", "max_chain": 1},
                 offsite={"url": f"file://{remote}", "keep": {"daily": 2, "weekly": 0, "monthly": 0}})  # fmt: skip
    snaps = run_days(pg, maildb, c, 4, new=10)
    m = history(c)
    assert [b.kind for b in m.backups] == ["base", "delta", "base", "delta"]
    # here, every backup's dump is still in its slot (a weekly ring): all are kept, with their chains
    assert all(m.current(b) for b in m.backups)
    for b in m.backups:
        for o in b.objects:
            assert (dest / o.path).exists()
    # offsite, the policy (two days) keeps the last two; the others' records and objects are gone
    off = json.loads(cli("list", "--offsite", "--json", "--config", c).stdout)
    assert [b["id"] for b in off] == [b.id for b in reversed(m.backups[2:])]
    for b in m.backups[:2]:
        assert not list((remote / "records").glob(f"*-{b.id}*"))
        for o in b.objects:
            assert not (remote / o.path).exists()
    for b in m.backups[2:]:
        for o in b.objects:
            assert (remote / o.path).exists()
    # with a single slot, the backups outside the policy go here too
    dry = json.loads(cli("prune", "--dry-run", "--json", "--config", c).stdout)
    assert all(d["keep"] for d in dry)
    assert cli("verify", "--offsite", "--config", c).returncode == 0
    shutil.rmtree(dest)
    dest.mkdir()
    r = cli("restore", "--from", "offsite", "--at", DAYS[2][:10], "--to-db", "kept_day", "--config", c)
    assert r.returncode == 0, r.stderr
    assert stats(pg, "kept_day") == snaps[2]
