"""An adversarial review of repository format 2, as three adversaries one at a time: a hostile offsite
store (write access to the copy, no signing key), a hostile table name or database content (a role
that may create tables), and a power cut. Each test shows one finding with real parts: the real
deltadump command line, a real PostgreSQL server, a real offsite folder or moto's S3 server."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import cli, require_tool, write_config

from deltadump.errors import DeltadumpError
from deltadump.jobs import sample
from deltadump.pg.server import LocalServer

DAYS = [f"2026-11-{d:02d}T02:00:00" for d in range(10, 30)]


def add_sections(cfg: Path, **sections: dict[str, object]) -> Path:
    text = cfg.read_text()
    for name, kv in sections.items():
        text += f"\n[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in kv.items())
    cfg.write_text(text)
    return cfg


def backup(c: Path, day: int, **env: str) -> tuple[int, str]:
    r = cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[day], **env})
    return r.returncode, r.stdout + r.stderr


def offsite_setup(pg: LocalServer, pwfile: Path, db: str, tmp: Path, **delta: object) -> tuple[Path, Path, Path]:
    """A config with delta backups and an offsite folder; returns (config, backup folder, offsite folder)."""
    dest, remote = tmp / "dest", tmp / "remote"
    dest.mkdir()
    remote.mkdir()
    c = write_config(tmp / "c.toml", pg, pwfile, db, dest)
    add_sections(c, delta={"enabled": True, **delta}, offsite={"url": f"file://{remote}"})
    return c, dest, remote


# --- 1. the offsite store as an attacker ----------------------------------------------------------------


def database_with_rows(pg: LocalServer, name: str, rows: int) -> None:
    """A new database named `name` (quoted as an identifier, whatever it holds) with one table of `rows` rows."""
    from psycopg import sql
    from test_server import ident, run

    run(pg, "postgres", sql.SQL("create database {}").format(ident(name)))
    run(pg, name, "create table t (id int primary key)", f"insert into t select generate_series(1, {rows})")


def test_a_stray_name_under_heads_in_the_store_never_breaks_the_sync(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path
) -> None:
    """The store lists `heads/x.json.minisig` (any name ending so): the sync parsed the sequence out of
    the name by position, int() raised ValueError, and every backup from then on ended in "internal
    error": no offsite copy, no local retention, no failure notification."""
    c, _dest, remote = offsite_setup(pg, pwfile, maildb, tmp)
    assert backup(c, 0)[0] == 0
    (remote / "heads" / "x.json.minisig").write_bytes(b"not ours")
    sample.mail_day(pg.psql_bin(), pg.conn(), maildb, 1, new=20, words=20)
    code, out = backup(c, 1)
    assert "internal error" not in out, out
    assert code == 0, out
    r = cli("verify", "--offsite", "--config", c)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(json.loads(cli("list", "--offsite", "--json", "--config", c).stdout)) == 2


def test_a_fifo_in_an_offsite_folder_is_refused_not_waited_on(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path
) -> None:
    """A folder target opened an object (or a record's signature, read by name) with a blocking open:
    a FIFO planted there makes `list --offsite`, `verify --offsite` and `restore --from offsite` wait
    forever for a writer, with no error and no end."""
    c, _dest, remote = offsite_setup(pg, pwfile, maildb, tmp)
    assert backup(c, 0)[0] == 0
    base = next((remote / "chain").glob("*.base.zst"))
    base.unlink()
    os.mkfifo(base)
    sig = next(p for p in (remote / "records").glob("*.json.minisig") if ".tables." not in p.name)
    for cmd in (["list", "--offsite"], ["restore", "--from", "offsite", "--to-db", "fifo_restored"]):
        if cmd[0] == "list":
            saved = sig.read_bytes()
            sig.unlink()
            os.mkfifo(sig)
        try:
            r = cli(*cmd, "--config", c, timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{cmd[0]} waited on a FIFO in the offsite folder") from None
        assert r.returncode == 1, r.stdout + r.stderr
        assert r.stderr.count("deltadump: error:") == 1 and "internal error" not in r.stderr, r.stderr
        if cmd[0] == "list":
            sig.unlink()
            sig.write_bytes(saved)


# --- 4. a hostile signature given to `deltadump rdiff` -----------------------------------------------


def test_a_signature_of_absurd_block_length_costs_no_memory(tmp: Path) -> None:
    """A 48-byte signature (one block record) claiming blocks of 2**31 - 1 bytes, given to `rdiff delta`
    with a small new file: the small-file path built one RabinKarp weight per byte of a block before
    looking at the input (16 GiB of Python ints): "internal error: MemoryError" under any memory limit,
    the machine's memory eaten without one. rdiff makes an all-literal delta at once; so must we."""
    import resource
    import struct
    import sys

    rdiff = require_tool("rdiff")
    new = tmp / "new"
    new.write_bytes(b"hello world " * 50)
    for magic in (0x72730147, 0x72730137):  # RabinKarp and rollsum weak sums, BLAKE2
        sig = tmp / f"sig{magic:x}"
        sig.write_bytes(struct.pack(">III", magic, (1 << 31) - 1, 32) + b"\1" * 36)
        ours, theirs = tmp / f"ours{magic:x}", tmp / f"theirs{magic:x}"

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

        r = subprocess.run([sys.executable, "-m", "deltadump.cli.main", "rdiff", "delta", str(sig), str(new), str(ours)],
                           capture_output=True, text=True, preexec_fn=limit, timeout=120)  # fmt: skip
        assert r.returncode == 0, r.stderr
        subprocess.run([rdiff, "delta", str(sig), str(new), str(theirs)], check=True)
        assert ours.read_bytes() == theirs.read_bytes()


def test_another_copys_old_head_is_never_taken_for_this_copys(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path
) -> None:
    """Two copies of one config (here two folders; as easily two prefixes of one bucket) share the
    repository's id and its records, each head only its own sequence. Whoever can write to copy b and
    once read copy a puts a's old head in b's heads/ under a number b has not passed: it checked (the
    key's, the repository's, no rollback of b's sequence), and `restore --from offsite b latest`
    restored the backup of three days before, saying nothing."""
    from test_copies import add_copies

    dest, a, b = tmp / "dest", tmp / "a", tmp / "b"
    for d in (dest, a, b):
        d.mkdir()
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
    base = c.read_text()
    add_copies(c, [{"name": "a", "url": f"file://{a}"}], delta={"enabled": True})
    for day in range(3):
        assert backup(c, day)[0] == 0
    c.write_text(base)  # a second copy, b, from the fourth day on
    add_copies(c, [{"name": "a", "url": f"file://{a}"}, {"name": "b", "url": f"file://{b}"}], delta={"enabled": True})
    assert backup(c, 3)[0] == 0
    kept = {p.name: p.read_bytes() for p in (a / "heads").iterdir()}  # a's head of that day, kept
    for day in (4, 5, 6):
        sample.mail_day(pg.psql_bin(), pg.conn(), maildb, day, new=5, words=10)
        assert backup(c, day)[0] == 0
    newest = json.loads(cli("list", "--offsite", "b", "--json", "--config", c).stdout)[0]["id"]
    for p in (b / "heads").iterdir():
        p.unlink()
    for name, data in kept.items():  # a's head 4, where b's head 4 was
        (b / "heads" / name).write_bytes(data)
    for args in (("list", "--offsite", "b", "--json"), ("restore", "--from", "offsite", "b", "latest", "--to-db",
                                                         f"rolled_{maildb}")):  # fmt: skip
        r = cli(*args, "--config", c)
        assert r.returncode == 1, f"{args[0]}: {r.stdout}"
        assert "offsite copy a's head" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    # the backup host writes b from its own record of b: the next backup puts b's newest head back
    assert backup(c, 7)[0] == 0
    listed = json.loads(cli("list", "--offsite", "b", "--json", "--config", c).stdout)
    assert newest in {x["id"] for x in listed[1:]} and listed[0]["started"] == "2026-11-17T02:00:00Z", listed
    # a copy renamed in the config is still adopted by the next backup (its heads then say its new name)
    c.write_text(c.read_text().replace('name = "b"', 'name = "b2"'))
    code, out = backup(c, 8)
    assert code == 0 and "adopting" in out, out
    assert len(json.loads(cli("list", "--offsite", "b2", "--json", "--config", c).stdout)) == len(listed) + 1


def test_an_object_grown_in_an_offsite_folder_is_refused_before_it_is_read(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path
) -> None:
    """A folder copy's objects are read where they are, not downloaded, so get's limit never applied:
    the base grown to a sparse terabyte in the store (one truncate) was hashed to its end before its
    sha256 was compared, and verify --offsite or a restore from the copy ran for hours."""
    c, _, remote = offsite_setup(pg, pwfile, maildb, tmp)
    assert backup(c, 0)[0] == 0
    base = next((remote / "chain").glob("*.base.zst"))
    with open(base, "r+b") as f:
        f.truncate(1 << 40)
    for args in (("verify", "--offsite"), ("restore", "--from", "offsite", "--to-db", f"grown_{maildb}")):
        r = cli(*args, "--config", c, timeout=120)
        assert r.returncode == 1, r.stdout + r.stderr
        assert base.name in r.stdout + r.stderr and "larger than" in r.stdout + r.stderr, r.stdout + r.stderr


def test_a_recovery_text_changed_in_the_store_is_put_back(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path
) -> None:
    """RECOVERY.txt is unsigned and read by a person recovering by hand; once there it was never written
    again, so a text changed in the store (here: check the records with the attacker's public key, whose
    forged records then pass minisign -V) stayed for good. Every sync now puts back its own text."""
    from deltadump.jobs.offsite import RECOVERY

    c, _, remote = offsite_setup(pg, pwfile, maildb, tmp)
    assert backup(c, 0)[0] == 0
    text = remote / "RECOVERY.txt"
    assert text.read_text() == RECOVERY
    for forged in (RECOVERY.replace("using the public key printed by `deltadump key`", "using RWQf6LRCGA9i53ml")
                   + "x" * 10, RECOVERY.replace("deltadump key", "deltadump_key")):  # fmt: skip
        text.write_text(forged)
        assert backup(c, 1)[0] == 0
        assert text.read_text() == RECOVERY


def test_a_folder_of_the_store_swapped_for_a_link_never_leads_a_write_or_delete_outside(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path
) -> None:
    """The folder target checked that a key's folder lay inside the store, then wrote or deleted by path:
    whoever can write to the store swaps chain/ with a link to any folder in between (renameat2's
    exchange, in a loop), plants names there for the sync to clean up, and the sync (as root, often)
    deleted the files of those names in that folder, and wrote its objects there. Writes and deletes
    now go through descriptors of the folders, opened without following a link."""
    import ctypes
    import threading

    c, _, remote = offsite_setup(pg, pwfile, maildb, tmp)
    assert backup(c, 0)[0] == 0
    victim = tmp / "victim"
    victim.mkdir()
    names = [f"zz{i:04d}" for i in range(300)]
    for n in names:
        (remote / "chain" / n).write_bytes(b"planted")
        (victim / n).write_bytes(b"precious")
    link = remote / "elsewhere"
    os.symlink(victim, link)
    renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    a, b = os.fsencode(remote / "chain"), os.fsencode(link)
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            renameat2(-100, a, -100, b, 2)  # AT_FDCWD, RENAME_EXCHANGE: chain/ and the link trade places

    t = threading.Thread(target=swap)
    t.start()
    try:
        for day in range(1, 20):
            sample.mail_day(pg.psql_bin(), pg.conn(), maildb, day, new=3, words=5)
            backup(c, day)  # refused or not: it must never touch the victim's folder
            if sorted(p.name for p in victim.iterdir()) != names:
                break
    finally:
        stop.set()
        t.join()
    assert sorted(p.name for p in victim.iterdir()) == names
    assert all((victim / n).read_bytes() == b"precious" for n in names)


def test_what_a_killed_put_left_is_cleaned_when_the_offsite_folder_is_reached_through_a_link(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path
) -> None:
    """The offsite folder given as a link (/srv/offsite -> /mnt/nas/offsite, as mounts often are): the
    clean-up of temporaries walked it with os.fwalk, which yields nothing for a top that is a link, so
    what a killed put left (a .tmp- file of the object's size) stayed there for good, run after run,
    while puts and reads went through the link as configured."""
    c, _, real = offsite_setup(pg, pwfile, maildb, tmp)
    link = tmp / "offsite-link"
    os.symlink(real, link)
    c.write_text(c.read_text().replace(f"file://{real}", f"file://{link}"))
    assert backup(c, 0)[0] == 0
    left = [real / "chain" / ".tmp-killed.4242.0badf00d", real / ".tmp-RECOVERY.txt.4242.0badf00d"]
    for p in left:
        p.write_bytes(b"x" * 100_000)  # what a put killed mid-way (kill -9, power cut) leaves
    sample.mail_day(pg.psql_bin(), pg.conn(), maildb, 1, new=3, words=5)
    code, out = backup(c, 1)
    assert code == 0, out
    assert [p for p in left if p.exists()] == []


# --- 2. the database catalog as an attacker --------------------------------------------------------------


def test_a_database_named_with_a_line_break_is_backed_up_and_restored(pg: LocalServer, pwfile: Path, tmp: Path) -> None:
    """Any role with CREATEDB makes a database named "x<LF>y": every whole-server run failed on it with
    "missing password" (its name, written into the private passfile, split the line in two, and libpq
    found no password for it), so no run was ever good again and the database was never backed up."""
    from psycopg import sql
    from test_server import databases, ident, run, secret_file, whole_config

    from deltadump.pg.server import LocalServer as Server

    others = databases(pg)
    name = f"line\nbreak_{os.getpid()}"
    database_with_rows(pg, name, 40)
    dest = tmp / "dest"
    dest.mkdir()
    c = whole_config(tmp / "c.toml", pg, pwfile, dest, databases="all", exclude=others)
    try:
        code, out = backup(c, 0)
        assert code == 0, out
        target = Server()
        target.start()
        try:
            tpw = secret_file(tmp / "t.pw", target.password)
            r = cli("restore", "--server", "--to-dsn", target.dsn(), "--password-file", tpw, "--config", c)
            assert r.returncode == 0, r.stdout + r.stderr
            assert name in databases(target)
        finally:
            target.remove()
    finally:
        run(pg, "postgres", sql.SQL("drop database {}").format(ident(name)))


def test_two_databases_differing_in_case_never_share_a_slot_on_a_share(
    pg: LocalServer, pwfile: Path, tmp: Path, smb_server: Any
) -> None:
    """%D kept a database's name as it is, letters in their case: on an SMB share (case-insensitive, as
    Windows and most NAS shares are) the databases "Mail" and "mail" (any CREATEDB role can make the
    second) got one slot, and the second dump replaced the first's: the first database's newest backup
    listed good, its dump gone."""
    from psycopg import sql
    from test_server import databases, ident, run, whole_config

    others = databases(pg)
    u = os.getpid()
    names = [f"Case_{u}", f"case_{u}"]
    for i, n in enumerate(names):
        database_with_rows(pg, n, 10 + i)
    folder = f"case-{u}"
    c = whole_config(tmp / "c.toml", pg, pwfile, smb_server.url("share", folder), databases="all",  # type: ignore[arg-type]
                     exclude=others, extra=f"password_file = {json.dumps(str(smb_server.password_file))}\n")  # fmt: skip
    try:
        code, out = backup(c, 0)
        assert code == 0, out
        r = cli("verify", "--config", c)
        assert r.returncode == 0, r.stdout + r.stderr
        slots = sorted(
            str(p.relative_to(smb_server.share / folder)) for p in (smb_server.share / folder).rglob("*.DMP")
        )
        assert len(slots) == 3, slots  # the globals and the two databases
    finally:
        for n in names:
            run(pg, "postgres", sql.SQL("drop database {}").format(ident(n)))


def _as_windows_sees(part: str) -> str:
    """A file name as Windows and an SMB share compare it: case ignored, a last '.' or space dropped."""
    return part.casefold().rstrip(". ")


def test_two_database_names_never_give_one_slot_name_ignoring_case() -> None:
    """The same rule for every name, Unicode included: %D of two different names differ even where case
    is ignored (casefold is wider than what any file system folds) and a last '.' or space dropped, as
    Windows does; and it is never a name Windows keeps for a device."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from deltadump.naming import db_part

    devices = {"con", "prn", "aux", "nul", "conin$", "conout$",
               *(f"{d}{n}" for d in ("com", "lpt") for n in [*range(10), "¹", "²", "³"])}  # fmt: skip
    names = st.one_of(st.text(min_size=1, max_size=20), st.sampled_from(sorted(devices)).map(lambda d: d + "."),
                      st.from_regex(r"(mail|con|nul|aux|com1|lpt9|com¹|lpt³|conin\$|conout\$)[. ]{0,2}(\.[a-z]{0,3})?",
                                    fullmatch=True))  # fmt: skip

    @settings(max_examples=500, deadline=None)
    @given(names, names)
    def prop(a: str, b: str) -> None:
        pa, pb = db_part(a), db_part(b)
        assert _as_windows_sees(pa).split(".", 1)[0].rstrip(" ") not in devices, (a, pa)
        if a != b:
            assert _as_windows_sees(pa) != _as_windows_sees(pb), (a, b)

    prop()
    assert db_part("Mail").casefold() != db_part("mail").casefold()
    assert db_part("mail.") != "mail." and db_part("mail ") != "mail " and db_part("con") != "con"
    assert db_part("mail") == "mail" and db_part("console") == "console"  # ordinary names stay as they are


def test_a_database_named_as_a_folder_of_the_repository_is_backed_up(pg: LocalServer, pwfile: Path, tmp: Path) -> None:
    """Databases named "chain", "records" or "deltadump-offsite" (any CREATEDB role can make one; the first
    two are ordinary names) made the documented %D/DBBACK-%w.DMP a reserved or hidden folder: the
    database was never backed up and every run from then on failed."""
    from psycopg import sql
    from test_server import databases, ident, run, whole_config

    others = databases(pg)
    names = ["chain", "records", "deltadump-offsite"]
    for n in names:
        database_with_rows(pg, n, 7)
    dest = tmp / "dest"
    dest.mkdir()
    c = whole_config(tmp / "c.toml", pg, pwfile, dest, databases="all", exclude=others)
    try:
        code, out = backup(c, 0)
        assert code == 0, out
        rows = json.loads(cli("list", "--json", "--config", c).stdout)
        assert sorted(r["db"] for r in rows if r["db"] and r["state"] == "ok") == sorted(names)
        assert cli("verify", "--config", c).returncode == 0
    finally:
        for n in names:
            run(pg, "postgres", sql.SQL("drop database {}").format(ident(n)))


def test_a_whole_server_directory_delta_backup_is_made_and_restored(pg: LocalServer, pwfile: Path, tmp: Path) -> None:
    """A whole-server config (%D/...) with format "directory" and [delta]: each data file's name inside
    the dump was taken as what follows the first '/' of its recorded path, which is the database's folder
    there, so every database's backup failed on a file that does not exist ("No such file or directory")
    and the server was never backed up; the same for any single-database template with a folder in it."""
    from psycopg import sql
    from test_server import databases, ident, run, secret_file, whole_config

    from deltadump.pg.server import LocalServer as Server

    others = databases(pg)
    u = os.getpid()
    names = [f"dir/..%2F{u}", f"Dir {u}."]  # a slash, '..', a percent, a case, a last '.' and a space
    for i, n in enumerate(names):
        database_with_rows(pg, n, 3000 + i)
    dest, remote = tmp / "dest", tmp / "remote"
    dest.mkdir()
    remote.mkdir()
    c = whole_config(tmp / "c.toml", pg, pwfile, dest, databases="all", exclude=others)
    c.write_text(c.read_text().replace('"%D/DBBACK-%w.DMP"', '"%D/DBBACK-%w.DMP"\nformat = "directory"'))
    add_sections(c, delta={"enabled": True}, offsite={"url": f"file://{remote}"})
    try:
        for day in (0, 1):
            run(pg, names[0], f"insert into t select generate_series({10000 * (day + 1)}, {10000 * (day + 1) + 50})")
            code, out = backup(c, day)
            assert code == 0, out
        rows = json.loads(cli("list", "--json", "--config", c).stdout)
        assert sorted(r["db"] for r in rows if r["db"] and r["state"] == "ok") == sorted(names * 2), rows
        assert cli("verify", "--deep", "--config", c).returncode == 0
        shutil.rmtree(dest)  # from the offsite copy alone
        dest.mkdir()
        target = Server()
        target.start()
        try:
            tpw = secret_file(tmp / "t.pw", target.password)
            r = cli("restore", "--server", "--to-dsn", target.dsn(), "--password-file", tpw, "--from", "offsite",
                    "--config", c)  # fmt: skip
            assert r.returncode == 0, r.stdout + r.stderr
            for i, n in enumerate(names):
                got = target_rows(target, n)
                assert got == 3000 + i + (102 if i == 0 else 0), (n, got)
        finally:
            target.remove()
    finally:
        for n in names:
            run(pg, "postgres", sql.SQL("drop database {}").format(ident(n)))


def target_rows(server: LocalServer, db: str) -> int:
    from test_server import rows

    return int(rows(server, db, "select count(*) from t")[0][0])  # type: ignore[call-overload]


def test_the_after_command_gets_a_url_that_names_the_slot_on_the_share(
    pg: LocalServer, pwfile: Path, tmp: Path, smb_server: Any
) -> None:
    """With an smb:// dest the after-command's %f (and the notification's path) is the slot's url. A
    whole-server slot holds %XX for every upper-case letter of a database's name ("Up" is "%55p"), and
    the slot was appended to the url as it is, so the url named "Up/...": a program that reads the url
    (smbget, any url parser) fetched another file, on a share that ignores case the backup of the
    database "up". The slot's part of the url is now percent-encoded."""
    from urllib.parse import unquote, urlsplit

    from psycopg import sql
    from test_ring import wait_for_after
    from test_server import databases, ident, run, whole_config

    others = databases(pg)
    name = f"Up_{os.getpid()}"
    database_with_rows(pg, name, 5)
    folder, marker = f"url-{os.getpid()}", tmp / "after.txt"
    c = whole_config(tmp / "c.toml", pg, pwfile, smb_server.url("share", folder), databases="all",  # type: ignore[arg-type]
                     exclude=others, extra=f"password_file = {json.dumps(str(smb_server.password_file))}\n"
                     f"after = {json.dumps(f'echo %f >> {marker}')}\n")  # fmt: skip
    try:
        code, out = backup(c, 0)
        assert code == 0, out
        rows = json.loads(cli("list", "--json", "--config", c).stdout)
        rec = next(r for r in rows if r["db"] == name)
        assert wait_for_after(c, rec["id"]) is not None
        # (the globals' after-command runs too, in the background: one line each, in either order)
        urls = marker.read_text().splitlines()
        assert urls and all(u.startswith("smb://") for u in urls), urls
        # /share/folder/SLOT, as any reader of the url takes it
        assert f"/share/{folder}/{rec['path']}" in [unquote(urlsplit(u).path) for u in urls], (urls, rec["path"])
        assert (smb_server.share / folder / rec["path"]).is_file()
    finally:
        run(pg, "postgres", sql.SQL("drop database {}").format(ident(name)))


def _sql(pg: LocalServer, db: str, script: bytes, encoding: str) -> None:
    """Run `script` (bytes as they are) with psql in a session of that client encoding."""
    c = pg.conn()
    env = {**os.environ, "PGPASSWORD": pg.password, "PGCLIENTENCODING": encoding}
    argv = [str(pg.psql_bin()), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", c.keywords["host"], "-p",
            c.keywords["port"], "-U", c.keywords["user"], "-d", db]  # fmt: skip
    r = subprocess.run(argv, input=script, env=env, capture_output=True)
    assert r.returncode == 0, r.stderr


def test_databases_in_other_encodings_and_names_of_no_utf8_are_backed_up_or_named(
    pg: LocalServer, pwfile: Path, tmp: Path
) -> None:
    """Any CREATEDB role may make a SQL_ASCII database, and in it a database (or table) whose name is no
    UTF-8. Such a name stopped every whole-server run before its first backup ("internal error:
    UnicodeDecodeError": nothing backed up, no record); a SQL_ASCII database stopped it where its turn
    came (its catalog read as bytes: "internal error: TypeError"), and so did a LATIN1 database with a
    table named "café" (pg_restore --list read as UTF-8): the databases after it were never backed up.
    Now the name that is no UTF-8 fails alone, in one line, and the others are backed up and drilled."""
    from psycopg import sql
    from test_server import databases, run, whole_config

    others = databases(pg)
    u = os.getpid()
    asc, lat, bad = f"asc_{u}", f"lat_{u}", b"bad\xff\xfe_" + str(u).encode()
    run(pg, "postgres", f"create database {asc} encoding 'SQL_ASCII' template template0 lc_collate 'C' lc_ctype 'C'",
        f"create database {lat} encoding 'LATIN1' template template0 lc_collate 'C' lc_ctype 'C'")  # fmt: skip
    _sql(pg, asc, b'create database "' + bad + b'"; create table "t\xff" (i int); insert into "t\xff" values (1);'
         b"create table plain (i int); insert into plain values (1), (2);", "SQL_ASCII")  # fmt: skip
    _sql(pg, lat, b'create table "caf\xe9" (i int); insert into "caf\xe9" values (1), (2), (3);', "LATIN1")
    dest = tmp / "dest"
    dest.mkdir()
    c = whole_config(tmp / "c.toml", pg, pwfile, dest, databases="all", exclude=others)
    try:
        code, out = backup(c, 0)
        assert code == 1, out
        line = out.strip().splitlines()[-1]
        assert line.startswith("deltadump: error: 1 of 4 backups of the run failed") and "no UTF-8" in line, out
        assert line.count("bad\\xff\\xfe_") == 2 and f"committed: (globals), {asc}, {lat}" in line, line
        rows = json.loads(cli("list", "--json", "--config", c).stdout)
        assert sorted(r["db"] for r in rows if r["db"] and r["state"] == "ok") == [asc, lat], rows
        tables = {r["db"]: r for r in rows if r["db"]}
        assert tables[lat]["state"] == "ok"
        r = cli("drill", "latest", "--db", lat, "--config", c)
        assert r.returncode == 0 and "café" in r.stdout, r.stdout + r.stderr
        r = cli("backup", "-v", "--config", c, env={"DELTADUMP_NOW": DAYS[1]})  # its hint: no record for it
        assert r.returncode == 1 and 'not database "bad\\xff\\xfe_' in r.stderr and "no record can hold" in r.stderr
    finally:
        _sql(pg, asc, b'drop database "' + bad + b'"', "SQL_ASCII")
        run(pg, "postgres", *(sql.SQL("drop database {}").format(sql.Identifier(n)) for n in (asc, lat)))


def test_databases_in_encodings_python_has_no_codec_for_are_backed_up(pg: LocalServer, pwfile: Path, tmp: Path) -> None:
    """EUC_TW and MULE_INTERNAL are server encodings Python has no codec for: psycopg refused every query
    on such a database ("codec not available in Python"), so its row counts were never measured and its
    backup failed at every run: the database was never backed up (and a whole-server config connecting
    to one listed no database at all, and restore --clean over one stopped at its check of the target).
    Now its session reads in UTF-8 (the server converts) or, where the server cannot convert, as
    SQL_ASCII; the EUC_TW one also drills and is restored over itself."""
    import psycopg
    from psycopg import sql
    from test_server import databases, run, whole_config

    from deltadump.pg.inspect import connect_kwargs

    others = databases(pg)
    u = os.getpid()
    tw, mule = f"tw_{u}", f"mule_{u}"
    run(pg, "postgres", f"create database {tw} encoding 'EUC_TW' template template0 lc_collate 'C' lc_ctype 'C'",
        f"create database {mule} encoding 'MULE_INTERNAL' template template0 lc_collate 'C' lc_ctype 'C'")  # fmt: skip
    try:
        _sql(pg, tw, 'create table "表a" (i int); insert into "表a" values (1), (2);'.encode(), "UTF8")
        _sql(pg, mule, b'create table "t b" (i int); insert into "t b" values (1);', "MULE_INTERNAL")
        dest = tmp / "dest"
        dest.mkdir()
        c = whole_config(tmp / "c.toml", pg, pwfile, dest, databases="all", exclude=others)
        code, out = backup(c, 0)
        assert code == 0, out
        rows = json.loads(cli("list", "--json", "--config", c).stdout)
        assert sorted(r["db"] for r in rows if r["db"] and r["state"] == "ok") == [mule, tw], rows
        r = cli("drill", "latest", "--db", tw, "--config", c)
        assert r.returncode == 0 and "表a" in r.stdout, r.stdout + r.stderr
        r = cli("drill", "latest", "--db", mule, "--config", c)  # (into a database made in MULE_INTERNAL)
        assert r.returncode == 0 and "t b" in r.stdout, r.stdout + r.stderr
        _sql(pg, tw, b'insert into "\xe8\xa1\xa8a" values (3);', "UTF8")
        r = cli("restore", "latest", "--db", tw, "--to-db", tw, "--clean", "--config", c)  # (its check of the target)
        assert r.returncode == 0, r.stdout + r.stderr
        with psycopg.connect(**connect_kwargs(pg.conn(), tw), client_encoding="UTF8") as db:
            assert db.execute('select count(*) from "表a"').fetchone() == (2,)
        # a whole-server config connecting to such a database (a cluster made in EUC_TW) listed none
        (tmp / "dest2").mkdir()
        c2 = whole_config(tmp / "c2.toml", pg, pwfile, tmp / "dest2", dsn=pg.dsn(tw), databases="all",
                          exclude=others)  # fmt: skip
        code, out = backup(c2, 0)
        assert code == 0 and f'database "{tw}": backup' in out and f'database "{mule}": backup' in out, out
    finally:
        run(pg, "postgres", *(sql.SQL("drop database {}").format(sql.Identifier(n)) for n in (tw, mule)))


def test_a_sql_ascii_database_of_bytes_no_utf8_is_drilled_and_restored_to_a_new_database(
    pg: LocalServer, pwfile: Path, tmp: Path
) -> None:
    """A SQL_ASCII database holds any bytes (here a table name and a value of no UTF-8); its backups were
    made, but a drill (and a restore --to-db of a new name) created its database in the server's default
    encoding, UTF-8, which refused those bytes: every drill of it failed ("invalid byte sequence for
    encoding UTF8") and it could not be restored but into a database made by hand. The database a
    restore makes is now made in the dump's encoding when that is one no other can take."""
    import psycopg
    from psycopg import sql
    from test_server import databases, run, whole_config

    from deltadump.pg.inspect import connect_kwargs

    others = databases(pg)
    asc = f"ascii_{os.getpid()}"
    run(pg, "postgres", f"create database {asc} encoding 'SQL_ASCII' template template0 lc_collate 'C' lc_ctype 'C'")
    try:
        _sql(pg, asc, b'create table "t\xff" (i int); insert into "t\xff" values (1), (2);'
             b"create table p (t text); insert into p values ('\xe9t\xe9');", "SQL_ASCII")  # fmt: skip
        dest = tmp / "dest"
        dest.mkdir()
        c = whole_config(tmp / "c.toml", pg, pwfile, dest, databases="all", exclude=others)
        code, out = backup(c, 0)
        assert code == 0, out
        r = cli("drill", "latest", "--db", asc, "--config", c)
        assert r.returncode == 0 and "t\\xff" in r.stdout, r.stdout + r.stderr
        r = cli("restore", "latest", "--db", asc, "--to-db", f"{asc}_r", "--config", c)
        assert r.returncode == 0, r.stdout + r.stderr
        with psycopg.connect(**connect_kwargs(pg.conn(), f"{asc}_r")) as db:
            assert db.execute("select t from p").fetchone() == (b"\xe9t\xe9",)  # (SQL_ASCII: psycopg gives bytes)
            assert db.execute('select count(*) from "t\xff"'.encode("latin-1")).fetchone() == (2,)
    finally:
        run(
            pg,
            "postgres",
            *(sql.SQL("drop database if exists {}").format(sql.Identifier(n)) for n in (asc, f"{asc}_r")),
        )


# --- 3. a power cut --------------------------------------------------------------------------------------


def test_a_drill_after_a_killed_backup_never_takes_the_dead_record_for_its_own(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path
) -> None:
    """A backup killed after writing its record (and maybe its signature) but before the head that makes
    it visible leaves that record file under the next number. Only the next backup's clean-up removed
    it: a drill (or restore --server, which records drills) run first committed its note under that very
    number, and the listing then read the dead record as the live one: "has no signature", and `list`
    (and whatever reads the records) refused from then on, the clean-up keeping the file since its
    number is live."""
    import re

    dest = tmp / "dest"
    dest.mkdir()
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
    add_sections(c, delta={"enabled": True})
    assert backup(c, 0)[0] == 0
    log = tmp / "steps.log"
    assert backup(c, 1, DELTADUMP_STEP_LOG=str(log))[0] == 0
    # the steps that write a record of the backup's commit (NNNNNNNN-ID.json, .tables.json, signatures)
    steps = [int(w[0]) for line in log.read_text().splitlines() if re.fullmatch(r"\d{8}-\S+", (w := line.split())[-1])]
    assert steps, log.read_text()
    day = 2
    for n in steps:
        before = json.loads(cli("list", "--json", "--config", c).stdout)
        code, out = backup(c, day, DELTADUMP_KILL_AT=str(n))
        day += 1
        assert code == -9, out
        r = cli("drill", "latest", "--config", c, env={"DELTADUMP_NOW": DAYS[day]})
        assert r.returncode == 0, f"kill at step {n}: {r.stdout + r.stderr}"
        r = cli("list", "--json", "--config", c)
        assert r.returncode == 0, f"kill at step {n}: {r.stderr}"
        after = json.loads(r.stdout)
        assert [b["id"] for b in after] == [b["id"] for b in before], f"kill at step {n}: a dead backup listed"
        assert any(b["drill"] for b in after), f"kill at step {n}: the drill's note lost"
        assert cli("verify", "--config", c).returncode == 0, f"kill at step {n}"
        code, out = backup(c, day)
        day += 1
        assert code == 0, f"the backup after a kill at step {n} and a drill: {out}"


def test_a_slot_grown_on_the_share_is_refused_before_it_is_downloaded(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path, smb_server: Any
) -> None:
    """Whoever may write to the share appends to a slot (here 64 MiB, sparse; terabytes as easily):
    verify, restore, drill and the offsite copy fed from the share downloaded the whole file into the
    state folder before comparing its size with the record's, filling that disk. Under a 16 MiB
    file-size limit, verify died of SIGXFSZ; it must name the grown slot instead."""
    import resource
    import sys

    from test_ring import ring_config

    folder = f"grown-{maildb}"
    c = ring_config(tmp, pg, pwfile, maildb, smb_server, folder)
    assert backup(c, 0)[0] == 0
    slot = next((smb_server.share / folder).rglob("*.DMP"))
    with open(slot, "r+b") as f:
        f.truncate(64 << 20)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))

    r = subprocess.run([sys.executable, "-m", "deltadump.cli.main", "verify", "--config", str(c)],
                       capture_output=True, text=True, preexec_fn=limit, timeout=300)  # fmt: skip
    assert r.returncode == 1, (r.returncode, r.stdout + r.stderr)
    assert "recorded" in r.stdout and "grown" in r.stdout, r.stdout + r.stderr


def test_an_error_is_one_line_whatever_a_name_holds(pg: LocalServer, pwfile: Path, maildb: str, tmp: Path) -> None:
    """A name with a line break (here a backup folder's, from the config; a database's from the catalog)
    once split the `deltadump: error:` line, so that a log or a mail showed a line of the attacker's."""
    dest = tmp / "gone\nFORGED: all backups are fine"
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
    r = cli("backup", "--config", c)
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("deltadump: error:"), r.stderr
    assert "\\nFORGED" in r.stderr and "\nFORGED" not in r.stderr


def test_an_object_read_in_place_and_swapped_after_its_check_is_refused_never_read_for_ever(tmp: Path) -> None:
    """A folder copy's objects (and the backup folder's) are read in place: checked (no link, not larger
    than recorded), then opened again by the readers that hash and unpack them. A store writer that swaps
    the object between the two (a loop of renames wins that race) could give a FIFO (a read that waits
    for ever: the restore hangs), a link to a device (/dev/zero: a hash that never ends) or a sparse
    terabyte. Each reader now opens only a regular file, never through a link, no larger than recorded."""
    import threading

    import zstandard

    from deltadump.errors import IntegrityError
    from deltadump.fsio import sha256_file
    from deltadump.jobs.chain import unzstd_checked, unzstd_pieces

    data = zstandard.ZstdCompressor().compress(b"row\n" * 1000)
    size, sha = len(data), __import__("hashlib").sha256(data).hexdigest()
    obj = tmp / "chain" / "x.base.zst"
    obj.parent.mkdir()
    fifo = tmp / "fifo"
    os.mkfifo(fifo)
    holder = os.open(fifo, os.O_RDWR)  # a writer that never writes: a read of the FIFO would wait for ever
    big = tmp / "big"
    with open(big, "wb") as f:
        f.truncate(1 << 40)  # a sparse terabyte
    readers = {
        "hash": lambda: sha256_file(obj, max_size=size),
        "unpack": lambda: unzstd_checked(obj, tmp / "out", sha, 1 << 20, size),
        "pieces": lambda: list(unzstd_pieces(obj, 1 << 16, size, 4000)),
    }
    swaps = {"fifo": ("fifo", "not a regular file"), "link to /dev/zero": ("/dev/zero", "symbolic link"),
             "link to the fifo": (str(fifo), "symbolic link"), "sparse terabyte": ("big", "larger than")}  # fmt: skip
    try:
        obj.write_bytes(data)
        assert sha256_file(obj, max_size=size) == (size, sha)  # the object as recorded is read
        for what, (swap, why) in swaps.items():
            obj.unlink()
            if swap == "fifo":
                os.mkfifo(obj)
            elif swap == "big":
                os.link(big, obj)
            else:
                obj.symlink_to(swap)
            for name, read in readers.items():
                got: list[BaseException | None] = []

                def go(read: Any = read, got: list[BaseException | None] = got) -> None:
                    try:
                        read()
                        got.append(None)
                    except BaseException as exc:
                        got.append(exc)

                t = threading.Thread(target=go, daemon=True)
                t.start()
                t.join(60)  # a reader that waits for ever on the FIFO is the bug: give up on it, never hang
                assert not t.is_alive(), f"{name} of a {what} never ended"
                assert isinstance(got[0], IntegrityError) and why in got[0].message, (what, name, got)
    finally:
        os.close(holder)


def _skippable_terabytes(path: Path, head: bytes, size: int) -> None:
    """`head`, then zstd skippable frames (headers only, their contents sparse) up to `size` bytes: a
    file that zstd reads through to its end without a byte coming out."""
    import struct

    frame = 0xFFFF0000
    with open(path, "wb") as f:
        f.write(head)
        at = len(head)
        while at + 8 + frame <= size:
            f.seek(at)
            f.write(struct.pack("<II", 0x184D2A50, frame))
            at += 8 + frame
        f.truncate(at)


def test_an_object_swapped_or_grown_after_its_hash_is_not_read_past_its_recorded_size(tmp: Path) -> None:
    """A chain's base is hashed (bounded by its recorded size), then opened again to be decompressed
    into the dump: that second opening had no bound at all, and the composer reads every piece of the
    base before it compares the size. A store writer that swaps the base between the two (or extends
    the very file) for the real base followed by terabytes of zstd skippable frames (sparse: they cost
    no disk) made a restore or a deep verify read for hours. And a file that grows after open_regular's
    check (the same inode, appended to) was read past its size by unzstd_checked's second pass."""
    import hashlib
    import threading

    import zstandard

    from deltadump.errors import IntegrityError
    from deltadump.fsio import open_regular
    from deltadump.jobs import chain
    from deltadump.store.records import ObjectRecord

    raw = b"row\n" * 100_000
    data = zstandard.ZstdCompressor().compress(raw)
    dest = tmp / "dest"
    obj = dest / "chain" / "b.zst"
    obj.parent.mkdir(parents=True)
    obj.write_bytes(data)
    rec = ObjectRecord(path="chain/b.zst", size=len(data), sha256=hashlib.sha256(data).hexdigest())
    evil = tmp / "evil"
    _skippable_terabytes(evil, data, 8 << 40)
    checked = chain.sha256_file

    def swap_after_the_hash(path: Path, *a: Any, **kw: Any) -> tuple[int, str]:
        out = checked(path, *a, **kw)
        os.replace(evil, path)  # the store writer wins the race: after the check, before the reading
        return out

    chain.sha256_file = swap_after_the_hash  # type: ignore[assignment]
    got: list[BaseException | None] = []

    def go() -> None:
        try:
            chain.rebuild(rec, len(raw), [], hashlib.sha256(raw).hexdigest(), len(raw), chain.local_fetch(dest),
                          tmp / "work", tmp / "work" / "dump", "x")  # fmt: skip
            got.append(None)
        except BaseException as exc:
            got.append(exc)

    try:
        (tmp / "work").mkdir()
        t = threading.Thread(target=go, daemon=True)
        t.start()
        t.join(60)
        assert not t.is_alive(), "the swapped base is read for ever"
        assert isinstance(got[0], IntegrityError) and "larger than" in got[0].message, got
    finally:
        chain.sha256_file = checked  # type: ignore[assignment]
    # the very file grows after its check: a second reading from the start stops at its recorded size
    obj.write_bytes(data)
    with open_regular(obj, len(data)) as f:
        assert f.read() == data
        with open(obj, "r+b") as w:  # (the writer's own descriptor: the same inode)
            w.seek(len(data))
            w.write(struct_header := b"\x50\x2a\x4d\x18\xf0\xff\xff\xff")
            w.truncate(len(data) + len(struct_header) + 0xFFFFFFF0)
        f.seek(0)
        try:
            while f.read(4 << 20):
                pass
            raise AssertionError("read past its recorded size")
        except IntegrityError as exc:
            assert "larger than" in exc.message


def test_a_fifo_or_a_sparse_terabyte_in_the_backup_folder_is_refused_by_verify_not_waited_on(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path
) -> None:
    """`deltadump verify` opened each object and slot file of the backup folder with open_under, which
    refuses links but not a FIFO (a blocking open: verify waited for ever for a writer that never came,
    and a restore of the slot with it) nor a sparse terabyte (hashed to its end before its size was
    compared). Every file is now opened non-blocking, refused unless regular and of its recorded size."""
    c, dest, _ = offsite_setup(pg, pwfile, maildb, tmp)
    assert backup(c, 0)[0] == 0
    base = next((dest / "chain").glob("*.base.zst"))
    saved = base.read_bytes()
    for how in ("fifo", "sparse terabyte"):
        base.unlink()
        if how == "fifo":
            os.mkfifo(base)
        else:
            base.write_bytes(saved)
            with open(base, "r+b") as f:
                f.truncate(1 << 40)
        try:
            r = cli("verify", "--config", c, timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"verify waited on a {how} in the backup folder") from None
        assert r.returncode == 1 and base.name in r.stdout + r.stderr, r.stdout + r.stderr
        assert ("not a regular file" if how == "fifo" else "(grown)") in r.stdout, r.stdout
    slot = next(p for p in dest.rglob("*") if p.is_file() and "chain" not in p.parts and p.stat().st_size > 1000
                and p.suffix not in (".json", ".minisig", ".sig"))  # fmt: skip
    base.unlink()
    base.write_bytes(saved)
    slot.unlink()
    os.mkfifo(slot)
    try:
        r = cli("restore", "latest", "--to-db", f"fifo_{maildb}", "--config", c, timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError("restore waited on a FIFO in place of the slot") from None
    assert r.returncode == 0 and "not a regular file" in r.stdout + r.stderr, r.stdout + r.stderr  # (from its chain)


def test_two_database_names_never_give_one_slot_name_on_a_share_that_ignores_unicode_normalization() -> None:
    """macOS (APFS, HFS+) and the SMB shares it serves ignore Unicode normalization as they ignore case:
    "한" and the same syllable as its two letters (NFD; PostgreSQL keeps both as two databases, any
    CREATEDB role can make the second) were one file name there, so the two databases shared one slot.
    %D encodes every character that normalization can change or join: what remains is the same in NFC
    and in NFD."""
    import unicodedata

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from deltadump.naming import db_part

    def as_a_mac_sees(part: str) -> str:
        return unicodedata.normalize("NFD", part).casefold()

    pairs = ["한", "が", "ü", "\u0bca", "\uf900", "\u1100\u1161", "a\u0301", "\u1e69", "q\u0307\u0323"]
    for name in pairs:
        for other in {unicodedata.normalize(f, name) for f in ("NFC", "NFD")} - {name}:
            assert as_a_mac_sees(db_part(name)) != as_a_mac_sees(db_part(other)), (name, other)
    letters = st.sampled_from([*"aAeé한がか\u3099\u0301\u0323\u0307\u1100\u1161\u11a8\u0bc6\u0bbe\uf900\u8c48."])
    names = st.lists(letters, min_size=1, max_size=6).map("".join)

    @settings(max_examples=500, deadline=None)
    @given(names, names)
    def prop(a: str, b: str) -> None:
        if a != b:
            assert as_a_mac_sees(db_part(a)) != as_a_mac_sees(db_part(b)), (a, b)

    prop()
    assert db_part("mail") == "mail" and db_part("日本") == "日本"  # names of no such character stay as they are


def test_a_sparse_terabyte_in_place_of_an_object_still_to_send_offsite_is_not_hashed_to_its_end(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path
) -> None:
    """The offsite sync hashes each object it still has to send, read in place from the backup folder,
    before the upload: with no bound, a slot file grown there into a sparse terabyte (one truncate, by a
    backup-folder writer) was hashed to its end inside the backup run, holding its lock for hours,
    before "no longer matches its record"."""
    dest, remote = tmp / "dest", tmp / "remote"
    dest.mkdir()
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
    add_sections(c, offsite={"url": f"file://{remote}"})
    code, out = backup(c, 0)  # the offsite folder is not there yet: nothing sent
    assert code != 0 and "offsite" in out, out
    first = json.loads(cli("list", "--json", "--config", c).stdout)[-1]
    slot = dest / first["path"]
    with open(slot, "r+b") as f:
        f.truncate(1 << 40)
    remote.mkdir()
    try:
        r = cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[1]}, timeout=90)
    except subprocess.TimeoutExpired:
        raise AssertionError("the sync hashed a sparse terabyte") from None
    assert "internal error" not in r.stderr and slot.name in r.stdout + r.stderr, r.stdout + r.stderr
    assert "larger than" in r.stdout + r.stderr, r.stdout + r.stderr


def test_a_signature_grown_in_the_backup_folder_is_not_hashed_to_its_end_by_the_next_backup(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path
) -> None:
    """The next delta backup checks the signature of its basis (chain/ID.sig, read in place) against its
    record before it is used: with no bound, one grown into a sparse terabyte by a backup-folder writer
    was hashed to its end inside the backup run (holding its lock for hours) before it was found
    damaged and a new base made. It is now refused by its size at once: a new base."""
    c, dest, _ = offsite_setup(pg, pwfile, maildb, tmp)
    assert backup(c, 0)[0] == 0
    sig = next((dest / "chain").glob("*.sig"))
    with open(sig, "r+b") as f:
        f.truncate(1 << 40)
    sample.mail_day(pg.psql_bin(), pg.conn(), maildb, 1, new=20, words=20)
    try:
        r = cli("backup", "--config", c, env={"DELTADUMP_NOW": DAYS[1]}, timeout=90)
    except subprocess.TimeoutExpired:
        raise AssertionError("the backup hashed a sparse terabyte") from None
    assert r.returncode == 0 and "is damaged: a new base" in r.stdout + r.stderr, r.stdout + r.stderr


def test_a_signature_swapped_after_its_check_never_makes_a_delta_that_cannot_be_rebuilt(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path, monkeypatch: Any
) -> None:
    """The next delta is made against its basis's signature, read in place from the backup folder: it
    was hashed against its record, then opened again by path by the delta. A backup-folder writer (no
    signing key) that spoils the basis's slot (so that its bytes are not lent) and swaps the signature
    in that window for one of other data got a delta of copies from blocks the basis never had: the
    backup was recorded ok, hashed right and verified, and could never be rebuilt."""
    from deltadump.config import load
    from deltadump.jobs import chain
    from deltadump.jobs.backup import backup_and_report
    from deltadump.rsync import bounded_sig_params

    dest = tmp / "dest"
    dest.mkdir()
    c = add_sections(write_config(tmp / "c.toml", pg, pwfile, maildb, dest), delta={"enabled": True})
    assert backup(c, 0)[0] == 0
    slot = next(p for p in dest.iterdir() if p.is_file() and p.name.startswith("DBBACK"))
    with open(slot, "ab") as f:  # its bytes are then never lent to the delta
        f.write(b"x")
    sig = next((dest / "chain").glob("*.sig"))
    sample.mail_day(pg.psql_bin(), pg.conn(), maildb, 1, new=20, words=20)
    real = chain.rs_delta

    def swapped_first(s: Path, new: Path, out: Path, **kw: Any) -> Any:
        bl, sl = bounded_sig_params(new.stat().st_size, 2048)
        chain.rs_signature(new, sig, block_len=bl, strong_len=sl)  # the writer wins the race: another signature
        return real(s, new, out, **kw)

    monkeypatch.setattr(chain, "rs_delta", swapped_first)
    monkeypatch.setenv("DELTADUMP_NOW", DAYS[1])
    backup_and_report(load(c))  # (recorded ok, hashed right: a verify finds nothing wrong)
    monkeypatch.undo()
    latest = max(json.loads(cli("list", "--json", "--config", c).stdout), key=lambda b: b["id"])
    (dest / latest["path"]).unlink()  # its slot reused: the backup is its delta chain alone
    r = cli("restore", "latest", "--to-db", f"swapped_{maildb}", "--config", c)
    assert r.returncode == 0 and "(chain)" in r.stdout, r.stdout + r.stderr


def _a_backup_and_a_dump_of_other_rows(
    pg: LocalServer, pwfile: Path, db: str, tmp: Path, fmt: str
) -> tuple[Path, Path, Any, Path]:
    """A backup of `db` in `fmt` (config, backup folder, the tables as backed up), then half of its
    messages deleted and dumped in the same format: a valid dump of other rows, as a writer could make."""
    from deltadump.pg.conn import psql
    from deltadump.pg.inspect import table_stats

    dest = tmp / "dest"
    dest.mkdir()
    c = write_config(tmp / "c.toml", pg, pwfile, db, dest, format=fmt, name=f"{fmt}-%w", compress=0)
    assert backup(c, 0)[0] == 0
    want = table_stats(pg.conn(), db)
    other = tmp / "other"
    psql(pg.psql_bin(), pg.conn(), "delete from messages where id % 2 = 0", db=db)
    env = {**os.environ, "PGPASSWORD": pg.password}
    subprocess.run([pg.bin / "pg_dump", f"--format={fmt}", "-Z0", "-f", other, "-h", "127.0.0.1", "-p",
                    str(pg.port), "-U", pg.superuser, db], env=env, check=True)  # fmt: skip
    assert table_stats(pg.conn(), db) != want
    return c, dest, want, other


@pytest.mark.parametrize("fmt", ["custom", "directory"])
def test_a_work_folder_swapped_after_the_check_is_never_what_pg_restore_reads(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path, monkeypatch: Any, fmt: str
) -> None:
    """The checked copy of a slot lies in the restore's private work folder (0700), in the backup folder.
    Its contents are private, but its name is the backup folder's: a writer of that folder (no signing
    key) renames the work folder aside and puts a folder of its own under the same name, holding a
    valid dump of other rows, after the check and before pg_restore opens the copy by its path."""
    from deltadump.config import load
    from deltadump.jobs import restore as restore_job
    from deltadump.pg.conn import psql
    from deltadump.pg.inspect import table_stats

    c, dest, want, other = _a_backup_and_a_dump_of_other_rows(pg, pwfile, maildb, tmp, fmt)
    real = restore_job.run_restore

    def swapped_first(*a: Any, **kw: Any) -> None:  # the writer wins the race: after the check, before the read
        (work,) = dest.glob(".tmp-restore.*")
        work.rename(dest / "aside")
        work.mkdir()
        (shutil.copytree if fmt == "directory" else shutil.copyfile)(other, work / "slot")
        real(*a, **kw)

    monkeypatch.setattr(restore_job, "run_restore", swapped_first)
    with contextlib.suppress(DeltadumpError):  # (failing is fine; restoring the writer's rows is not)
        restore_job.restore(load(c), "latest", f"swapped_{maildb}")
    if f"swapped_{maildb}" in {r[0] for r in psql(pg.psql_bin(), pg.conn(), "select datname from pg_database")}:
        assert table_stats(pg.conn(), f"swapped_{maildb}") == want


@pytest.mark.parametrize("fmt", ["directory", "custom", "plain"])
def test_a_slot_changed_after_its_check_is_never_what_pg_restore_reads(
    pg: LocalServer, pwfile: Path, maildb: str, tmp: Path, monkeypatch: Any, fmt: str
) -> None:
    """restore's promise: what pg_restore (or psql) reads is what was checked. A directory-format slot
    was checked file by file, then handed to pg_restore by its path: a backup-folder writer (no signing
    key) that emptied a table's data file in that window got a restore that exits 0 with the table
    empty. A dump file was hashed through one descriptor and handed on as /dev/fd/N, which pg_restore
    opens again: the same file, overwritten in place, restored a dump of other rows."""
    from deltadump.config import load
    from deltadump.jobs import restore as restore_job
    from deltadump.pg.inspect import table_stats

    c, dest, want, other = _a_backup_and_a_dump_of_other_rows(pg, pwfile, maildb, tmp, fmt)
    slot = next(dest.glob(f"{fmt}-*"))
    real = restore_job.run_restore

    def changed_first(*a: Any, **kw: Any) -> None:  # the writer wins the race: after the check, before the read
        if fmt == "directory":
            data = max((p for p in slot.rglob("*.dat") if p.name != "toc.dat"), key=lambda p: p.stat().st_size)
            data.write_bytes(b"")
        else:
            with open(slot, "r+b") as f:  # the same file, in place
                f.write(other.read_bytes())
                f.truncate()
        real(*a, **kw)

    monkeypatch.setattr(restore_job, "run_restore", changed_first)
    restore_job.restore(load(c), "latest", f"changed_{maildb}")
    assert table_stats(pg.conn(), f"changed_{maildb}") == want
