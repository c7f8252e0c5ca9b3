"""Big databases: directory-format delta backups, one chain per table (matched by the table's identity,
not its file number), unchanged tables costing nothing, parallel pg_dump and pg_restore, every day
restorable locally and from the offsite copy alone, and one table's file recovered by hand with the
real rdiff. Real server, real tools."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

from conftest import cli, history, require_tool, write_config

from deltadump.jobs import sample
from deltadump.pg.conn import psql
from deltadump.pg.inspect import table_stats
from deltadump.pg.server import LocalServer

DAYS = [f"2026-11-{d:02d}T02:00:00" for d in range(1, 29)]


def cmdlines() -> list[str]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                out.append((d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return out


@contextlib.contextmanager
def watching(seen: list[str]) -> Iterator[None]:
    """Every process's command line, sampled while the block runs."""
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.05):
            seen.extend(cmdlines())

    t = threading.Thread(target=watch)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()


def test_directory_format_delta_chains_per_table(pg: LocalServer, pwfile: Path, maildb: str, tmp: Path) -> None:
    rdiff = require_tool("rdiff")
    db = maildb
    q = lambda sql: psql(pg.psql_bin(), pg.conn(), sql, db=db)  # noqa: E731
    q("create table quiet (id int primary key, v text); insert into quiet select g, md5(g::text) from "
      "generate_series(1, 4000) g")  # fmt: skip
    q("create table churn (id int primary key, v text); insert into churn select g, repeat(md5(g::text), 8) from "
      "generate_series(1, 4000) g")  # fmt: skip
    dest, remote = tmp / "dest", tmp / "remote"
    dest.mkdir()
    remote.mkdir()
    c = write_config(tmp / "c.toml", pg, pwfile, db, dest, name="DUMP-%w", format="directory", compress=0, jobs=2)
    c.write_text(c.read_text() + f'\n[delta]\nenabled = true\n[offsite]\nurl = "file://{remote}"\n')
    changes = [
        "",  # day 0: the base
        "update churn set v = v || 'x' where id % 97 = 0",  # a few rows change
        "create table fresh (id int, v text); insert into fresh select g, md5(g::text) from generate_series(1, 3000) g",
        "drop table fresh; alter table churn rename to renamed",  # dropped, and renamed (same identity)
        "vacuum full renamed",  # rewritten on disk: same rows, same identity
        "update renamed set v = 'y' where id = 7",
    ]
    snaps, seen = [], []
    for day, sql in enumerate(changes):
        if sql:
            q(sql)
        sample.mail_day(pg.psql_bin(), pg.conn(), db, day + 1, new=20, words=20) if day % 2 else None
        with watching(seen):
            r = cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[day]})
        assert r.returncode == 0, r.stderr
        snaps.append(table_stats(pg.conn(), db))
    assert any("pg_dump" in s and "--jobs=2" in s for s in seen), "pg_dump did not run in parallel"
    h = history(c)
    assert [b.kind for b in h.backups] == ["base"] + ["delta"] * (len(changes) - 1)
    assert all(b.format == "directory" and b.dir_files for b in h.backups)
    quiet_key = {f.key for f in h.backups[0].dir_files if f.key.startswith("oid:")}
    hows = [{f.key: f.how for f in b.dir_files} for b in h.backups]
    # the quiet table is stored once and then costs nothing: the same file, by identity
    quiet = [k for k in quiet_key if all(hw.get(k) == "same" for hw in hows[1:])]
    assert quiet, hows
    # the renamed table keeps its chain (a delta, not a new whole copy); the new table came whole
    churn = [k for k in quiet_key if hows[3].get(k) in ("delta", "same") and k not in quiet]
    assert churn, hows
    assert any(hw.get(k) == "delta" for hw in hows for k in churn), hows  # changed rows: an rdiff delta
    # every day restores to exactly that day's data, from the chain here...
    for i, b in enumerate(h.backups):
        r = cli("restore", b.id, "--to-db", f"dir_{i}", "--jobs", "2", "--config", c)
        assert r.returncode == 0, r.stderr
        assert table_stats(pg.conn(), f"dir_{i}") == snaps[i], f"day {i}"
    assert cli("verify", "--deep", "--config", c).returncode == 0
    # ... and from the offsite copy alone
    shutil.rmtree(dest)
    dest.mkdir()
    for i in (1, len(changes) - 1):
        r = cli("restore", "--from", "offsite", h.backups[i].id, "--to-db", f"off_{i}", "--config", c)
        assert r.returncode == 0, r.stderr
        assert table_stats(pg.conn(), f"off_{i}") == snaps[i]
    # by hand: one table's file of the last day, with zstd and the real rdiff patch, from the offsite copy
    last = h.backups[-1]
    key = next(k for k in churn)
    versions = [next(f for f in b.dir_files if f.key == key) for b in h.backups]
    start = max(i for i, v in enumerate(versions) if v.how == "whole")
    w = tmp / "by-hand"
    w.mkdir()
    cur = w / "v0"
    subprocess.run(["zstd", "-q", "-d", str(remote / versions[start].object.path), "-o", str(cur)], check=True)
    for i, v in enumerate(versions[start + 1 :], 1):
        if v.how == "delta":
            subprocess.run(["zstd", "-q", "-d", str(remote / v.object.path), "-o", str(w / f"d{i}")], check=True)
            subprocess.run([rdiff, "patch", str(cur), str(w / f"d{i}"), str(w / f"v{i}")], check=True)
            cur = w / f"v{i}"
    digest = subprocess.run(["sha256sum", str(cur)], capture_output=True, text=True).stdout.split()[0]
    assert digest == versions[-1].sha256 == next(f for f in last.dir_files if f.key == key).sha256
    listed = json.loads(cli("list", "--offsite", "--json", "--config", c).stdout)
    assert len(listed) == len(changes)


def test_deltas_refuse_what_they_cannot_do(pg: LocalServer, pwfile: Path, maildb: str, tmp: Path) -> None:
    dest = tmp / "dest"
    dest.mkdir()
    for backup, word in (({"format": "plain"}, "custom or directory"), ({"compress": 6}, "uncompressed")):
        c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest, **backup)
        c.write_text(c.read_text() + "\n[delta]\nenabled = true\n")
        r = cli("backup", "--config", c)
        assert r.returncode == 2 and word in r.stderr, r.stderr
        assert cli("list", "--config", c).returncode == 0  # the config still reads: restores still work
    assert not list(dest.glob("DBBACK*"))


def test_a_basis_lends_its_bytes_to_a_delta_only_when_it_proves_to_be_the_signatures_own(tmp: Path) -> None:
    """Yesterday's dump confirms matches by its bytes (smaller deltas, no hashing) only if it is the file
    the signature was made of: it is hashed while the delta reads it (one read of a file that is no longer
    in memory, not two). A basis changed since (here made to look like today's dump where yesterday's
    was different, or cut short) must not lend its bytes: the delta is then made from the signature
    alone, and still rebuilds today's dump from the true basis with the real `rdiff patch`."""
    import hashlib
    import os

    from deltadump.jobs.chain import delta_with_basis
    from deltadump.rsync import signature

    rdiff = require_tool("rdiff")
    true = os.urandom(3 << 20)
    region = slice(1 << 20, (1 << 20) + 300_000)
    new = bytearray(true)
    new[region] = os.urandom(300_000)
    basis, today, sig = tmp / "basis", tmp / "today", tmp / "sig"
    basis.write_bytes(true)
    today.write_bytes(new)
    signature(basis, sig, block_len=2048, strong_len=32)
    want = (len(true), hashlib.sha256(true).hexdigest())
    forged = bytearray(true)
    forged[region] = new[region]  # the basis now equals today's dump: every byte would "match"
    for what, content in (("the true basis", true), ("a changed basis", bytes(forged)),
                          ("a basis cut short", true[: 2 << 20]), ("no basis", None)):  # fmt: skip
        if content is None:
            basis.unlink()
        else:
            basis.write_bytes(content)
        raw = tmp / "d"
        st = delta_with_basis(sig.read_bytes(), today, raw, basis if content is not None else None, want)
        (tmp / "b").write_bytes(true)  # the basis the chain really has
        out = tmp / "out"
        out.unlink(missing_ok=True)
        subprocess.run([rdiff, "patch", tmp / "b", raw, out], check=True)
        assert out.read_bytes() == bytes(new), what
        if what == "a changed basis":  # (it would have lent bytes it does not have: copied all of it)
            assert st.literal_bytes >= 290_000, st.literal_bytes
