"""Faults of the network targets against real servers (Samba's smbd, OpenSSH's sshd): refused logins,
missing shares, unknown and changed host keys, servers killed mid-upload, full disks, transient
drops retried (restic-style retry wrapper), and the SMB password kept out of every command line."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import cli, require_tool
from servers import SambaServer, SSHServer, mount_tmpfs, umount
from test_targets import sftp_options, smb_options

from deltadump.errors import TargetError
from deltadump.targets import TargetOptions, open_target
from deltadump.targets.retry import RetryTarget, backoff


def _file(tmp: Path, name: str, size: int) -> tuple[Path, str]:
    p = tmp / name
    data = os.urandom(size)
    p.write_bytes(data)
    return p, hashlib.sha256(data).hexdigest()


@pytest.fixture
def fresh_smb() -> Iterator[SambaServer]:
    """A server of the test's own, which it may kill."""
    s = SambaServer()
    try:
        s.start()
        yield s
    finally:
        s.remove()


@pytest.fixture
def fresh_sftp() -> Iterator[SSHServer]:
    s = SSHServer()
    try:
        s.trust()
        s.start()
        yield s
    finally:
        s.remove()


def quick(t: Any, attempts: int = 4) -> RetryTarget:
    """The target's retry wrapper with short waits (the policy itself is tested below)."""
    assert isinstance(t, RetryTarget)
    t.attempts, t.base, t.cap = attempts, 0.05, 0.2
    return t


# --- the retry policy --------------------------------------------------------------------------------


def test_backoff_is_capped_and_jittered() -> None:
    highest = [backoff(n, 0.5, 15.0, rand=lambda: 0.999999) for n in range(1, 10)]
    assert highest == pytest.approx([0.5, 1, 2, 4, 8, 15, 15, 15, 15], rel=1e-5)
    assert backoff(3, 0.5, 15.0, rand=lambda: 0.0) == 0.0  # full jitter: anywhere from 0
    waits = {backoff(4, 0.5, 15.0) for _ in range(50)}
    assert len(waits) > 40 and all(0 <= w <= 4 for w in waits)


def test_s3_is_not_retried_twice_over(s3_server: str) -> None:
    assert not isinstance(open_target("s3://b/x", s3_server), RetryTarget)  # botocore retries S3 itself
    assert not isinstance(open_target("file:///tmp"), RetryTarget)


# --- SMB ------------------------------------------------------------------------------------------------


def test_smb_wrong_password_fails_at_once_with_one_clear_line(smb_server: SambaServer, tmp: Path) -> None:
    pw = tmp / "wrong.password"
    pw.write_text("not-the-password\n")
    t = open_target(smb_server.url(), options=TargetOptions(password_file=str(pw)))
    start = time.monotonic()
    with pytest.raises(TargetError) as e:
        t.list()
    assert time.monotonic() - start < 5
    assert not e.value.transient
    assert "refused the login of 'ddsmb'" in str(e.value) and "\n" not in str(e.value)
    assert "password_file" in e.value.hint
    assert "not-the-password" not in str(e.value) + e.value.hint + e.value.detail


def test_smb_missing_share_fails_at_once(smb_server: SambaServer) -> None:
    t = open_target(smb_server.url("nosuchshare", "x"), options=smb_options(smb_server))
    start = time.monotonic()
    with pytest.raises(TargetError, match="no share 'nosuchshare'") as e:
        t.stat("k")
    assert time.monotonic() - start < 5 and not e.value.transient
    assert "smbclient -L" in e.value.hint


def test_smb_missing_password_file_is_clear(smb_server: SambaServer, tmp: Path) -> None:
    t = open_target(smb_server.url(), options=TargetOptions(password_file=str(tmp / "none")))
    with pytest.raises(TargetError, match="cannot read the SMB password file") as e:
        t.list()
    assert not e.value.transient


@pytest.mark.parametrize(("dialect", "encrypt"), [("", True), ("3.1.1", True), ("3.0.2", True), ("2.1", False),
                                                  ("2.0.2", False)])  # fmt: skip
def test_smb_dialects_and_encryption(smb_server: SambaServer, tmp: Path, dialect: str, encrypt: bool) -> None:
    opts = TargetOptions(password_file=str(smb_server.password_file), dialect=dialect, require_encryption=encrypt)
    t = open_target(smb_server.url("share", f"dialect{dialect or 'default'}"), options=opts)
    p, h = _file(tmp, "a", 300_000)
    t.put("k", p, h)
    t.get("k", tmp / "back")
    assert (tmp / "back").read_bytes() == p.read_bytes()
    conn = next(iter(t.inner._cache.values()))  # type: ignore[attr-defined]
    want = {"": 0x0311, "3.1.1": 0x0311, "3.0.2": 0x0302, "2.1": 0x0210, "2.0.2": 0x0202}[dialect]
    assert conn.dialect == want
    session = next(iter(conn.session_table.values()))
    assert session.encrypt_data is encrypt


def test_smb_dialect_without_encryption_is_refused_unless_allowed(smb_server: SambaServer) -> None:
    with pytest.raises(TargetError, match=r"dialect 2\.1 has no encryption") as e:
        open_target(smb_server.url(), options=TargetOptions(password_file=str(smb_server.password_file), dialect="2.1"))
    assert "require_encryption = false" in e.value.hint


def test_smb_full_share_is_a_permanent_clear_error(smb_server: SambaServer, tmp: Path) -> None:
    mount_tmpfs(smb_server.small, "8m", smb_server.owner)
    try:
        t = open_target(smb_server.url("small", "offsite"), options=smb_options(smb_server))
        p, h = _file(tmp, "big", (8 << 20) + (512 << 10))  # fails near its end: the last writes in flight
        start = time.monotonic()
        with pytest.raises(TargetError) as e:
            t.put("chain/big.base.zst", p, h)
        assert time.monotonic() - start < 10 and not e.value.transient
        assert "the share is full while uploading to" in str(e.value), str(e.value)
        assert re.search(r"\(0\.\d MB free with the partial upload\)", str(e.value)), str(e.value)
        assert t.stat("chain/big.base.zst") is None
        assert not list(smb_server.small.rglob(".tmp-*"))  # the temporary file was removed
        small, sh = _file(tmp, "small", 1 << 20)
        t.put("chain/small.base.zst", small, sh)  # the space is back
        assert t.list() == {"chain/small.base.zst": 1 << 20}
    finally:
        umount(smb_server.small)


def _during_put(t: Any, src: Path, sha: str, disk: Path, action: Any) -> BaseException | None:
    """Run t.put in a thread; once more than 8 MiB of it are on the server's disk, run action()."""
    failure: list[BaseException] = []

    def put() -> None:
        try:
            t.put("chain/big.base.zst", src, sha)
        except BaseException as exc:
            failure.append(exc)

    th = threading.Thread(target=put)
    th.start()
    deadline = time.monotonic() + 60
    while th.is_alive() and time.monotonic() < deadline:
        if any(p.stat().st_size > (8 << 20) for p in disk.rglob(".tmp-*")):
            break
        time.sleep(0.005)
    assert th.is_alive(), "the put ended before the fault"
    action()
    th.join(120)
    assert not th.is_alive()
    return failure[0] if failure else None


def test_smb_dropped_connection_is_retried_and_the_put_completes(smb_server: SambaServer, tmp: Path) -> None:
    t = quick(open_target(smb_server.url("share", "drop"), options=smb_options(smb_server)))
    p, h = _file(tmp, "big", 512 << 20)  # long enough that the kill lands mid-upload on a loaded machine
    killed: list[int] = []
    err = _during_put(t, p, h, smb_server.share / "drop", lambda: killed.append(smb_server.kill_connections()))
    assert killed and killed[0] >= 1 and err is None
    assert len(t.waits) == 1  # one transient failure, one retry
    t.get("chain/big.base.zst", tmp / "back")
    assert hashlib.sha256((tmp / "back").read_bytes()).hexdigest() == h


def test_smb_server_killed_mid_upload(fresh_smb: SambaServer, tmp: Path) -> None:
    """smbd dies during a large put: the retries fail (listed in one message), nothing is visible under
    the key; once the server is back, the next put completes."""
    t = quick(open_target(fresh_smb.url("share", "k"), options=smb_options(fresh_smb)), attempts=3)
    p, h = _file(tmp, "big", 200 << 20)
    err = _during_put(t, p, h, fresh_smb.share / "k", fresh_smb.stop)
    assert isinstance(err, TargetError) and err.transient
    assert "failed after 3 attempts" in str(err)
    assert all(f"attempt {n}:" in str(err) for n in (1, 2, 3)), str(err)
    assert not (fresh_smb.share / "k" / "chain" / "big.base.zst").exists()
    fresh_smb.start()
    assert t.stat("chain/big.base.zst") is None and t.list() == {}
    t.put("chain/big.base.zst", p, h)
    assert hashlib.sha256((fresh_smb.share / "k" / "chain" / "big.base.zst").read_bytes()).hexdigest() == h


@pytest.mark.parametrize("kind", ["smb", "sftp"])
def test_a_server_that_stops_answering_is_a_transient_error_and_the_retry_completes(
    kind: str, request: pytest.FixtureRequest, tmp: Path
) -> None:
    """The processes serving our connection freeze (SIGSTOP: the connection stays open, nothing answers)
    mid-upload, and again before a stat: each time the wait ends after the target's timeout with a
    transient error, and the retry's new connection (served by new processes) finishes the call."""
    server: Any = request.getfixturevalue(f"fresh_{kind}")
    if kind == "smb":
        t = quick(open_target(server.url("share", "hang"), options=smb_options(server)))
        disk = server.share / "hang"
    else:
        t = quick(open_target(server.url(), options=sftp_options(server)))
        disk = server.root
    t.inner.timeout = 2.0
    p, h = _file(tmp, "big", 256 << 20)
    frozen: list[int] = []

    def freeze() -> None:
        now = server.connection_children()
        frozen.extend(now)
        for pid in now:
            os.kill(pid, signal.SIGSTOP)

    try:
        err = _during_put(t, p, h, disk, freeze)
        assert frozen and err is None
        assert len(t.waits) == 1  # one transient failure, one retry
        assert hashlib.sha256((disk / "chain" / "big.base.zst").read_bytes()).hexdigest() == h
        freeze()  # the retry's connection, idle now
        assert t.stat("chain/big.base.zst") == 256 << 20
        assert len(t.waits) == 1
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                os.kill(pid, signal.SIGCONT)


def test_an_smb_server_still_at_work_is_waited_for_past_the_timeout(smb_server: SambaServer) -> None:
    """smbd answers "pending" to a lock request that another handle's lock blocks (the interim answer a
    busy server gives for any long request), and the final answer only once that lock goes: three
    timeouts later here. The wait goes on, the server answering echoes meanwhile, and the request
    succeeds; it ended with "no answer from the server" at the first timeout."""
    import uuid

    from smbprotocol.exceptions import SMBConnectionClosed
    from smbprotocol.open import (
        CreateDisposition,
        CreateOptions,
        FileAttributes,
        FilePipePrinterAccessMask,
        ImpersonationLevel,
        LockFlags,
        Open,
        ShareAccess,
        SMB2LockElement,
    )
    from smbprotocol.session import Session
    from smbprotocol.tree import TreeConnect

    from deltadump.targets.smb import _timed_connection

    timeout = 1.0

    def handle() -> tuple[Any, Open]:
        conn = _timed_connection()(uuid.uuid4(), "127.0.0.1", smb_server.port, require_signing=True)
        conn.answer_timeout = timeout
        conn.connect()
        session = Session(conn, smb_server.user, smb_server.password)
        session.connect()
        tree = TreeConnect(session, r"\\127.0.0.1\share")
        tree.connect()
        f = Open(tree, "locked-pending")
        f.create(ImpersonationLevel.Impersonation,
                 FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE,
                 FileAttributes.FILE_ATTRIBUTE_NORMAL, ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE,
                 CreateDisposition.FILE_OPEN_IF, CreateOptions.FILE_NON_DIRECTORY_FILE)  # fmt: skip
        return conn, f

    def element(flags: int) -> SMB2LockElement:
        e = SMB2LockElement()
        e["offset"], e["length"], e["flags"] = 0, 10, flags
        return e

    holder_conn, holder = handle()
    waiter_conn, waiter = handle()
    try:
        holder.lock([element(LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK | LockFlags.SMB2_LOCKFLAG_FAIL_IMMEDIATELY)])
        msg, answer = waiter.lock([element(LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK)], send=False)
        req = waiter_conn.send(msg, waiter.tree_connect.session.session_id, waiter.tree_connect.tree_connect_id)
        outcome: list[object] = []
        th = threading.Thread(target=lambda: outcome.append(_outcome(lambda: answer(req))))
        th.start()
        deadline = time.monotonic() + 10
        while req.async_id is None and time.monotonic() < deadline:  # (set when the interim answer comes)
            req.response_event.wait(0.05)
        assert req.async_id is not None, "smbd sent no interim answer"
        interim = time.monotonic()
        th.join(3 * timeout)  # the server at work for three timeouts
        assert th.is_alive(), outcome
        # its lock goes with it (once in a full CI run smbd had closed this connection already, which
        # releases its lock as well)
        with contextlib.suppress(SMBConnectionClosed):
            holder.close()
        th.join(30)
        assert outcome and not isinstance(outcome[0], BaseException), outcome
        assert time.monotonic() - interim >= 3 * timeout
    finally:
        holder_conn.disconnect()
        waiter_conn.disconnect()


def _outcome(fn: Any) -> object:
    try:
        return fn()
    except BaseException as exc:  # (handed to the test's thread)
        return exc


def test_smb_password_never_on_a_command_line(smb_server: SambaServer, tmp: Path) -> None:
    """While a put runs, no /proc/*/cmdline nor any process environment holds the password."""
    secret = smb_server.password.encode()
    t = open_target(smb_server.url("share", "pwcheck"), options=smb_options(smb_server))
    p, h = _file(tmp, "big", 100 << 20)
    seen: list[str] = []
    th = threading.Thread(target=t.put, args=("big", p, h))
    th.start()
    scans = 0
    while th.is_alive() or scans == 0:
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                for f in ("cmdline", "environ"):
                    try:
                        if secret in (d / f).read_bytes():
                            seen.append(f"{d}/{f}")
                    except OSError:
                        pass
        scans += 1
    th.join()
    assert t.stat("big") == 100 << 20  # the put ran (and was watched) to its end
    assert scans >= 2 and seen == [], seen


# --- SFTP --------------------------------------------------------------------------------------------------


def test_sftp_unknown_host_key_is_refused_with_its_fingerprint(sftp_server: SSHServer, tmp: Path) -> None:
    empty = tmp / "known_hosts"
    empty.write_text("")
    t = open_target(sftp_server.url(), options=TargetOptions(identity=str(sftp_server.identity),
                                                             known_hosts=str(empty)))  # fmt: skip
    with pytest.raises(TargetError, match=r"host key of .* is unknown") as e:
        t.list()
    assert not e.value.transient
    fp = _fingerprint(sftp_server)
    assert fp in str(e.value) and "deltadump trust-host" in e.value.hint
    assert empty.read_text() == ""  # nothing trusted on first use


def test_sftp_changed_host_key_is_refused(fresh_sftp: SSHServer, tmp: Path) -> None:
    t = open_target(fresh_sftp.url(), options=sftp_options(fresh_sftp))
    p, h = _file(tmp, "a", 1000)
    t.put("k", p, h)
    old_fp = _fingerprint(fresh_sftp)
    fresh_sftp.stop()
    fresh_sftp.new_host_key()  # a reinstalled server, or someone in the middle
    fresh_sftp.start()
    t2 = open_target(fresh_sftp.url(), options=sftp_options(fresh_sftp))
    with pytest.raises(TargetError, match=r"host key of .* has CHANGED") as e:
        t2.stat("k")
    assert not e.value.transient
    assert old_fp in str(e.value) and _fingerprint(fresh_sftp) in str(e.value)
    assert "--replace" in e.value.hint
    fresh_sftp.stop()
    fresh_sftp.new_host_key("ecdsa")  # now a key of a type known_hosts does not list for it
    fresh_sftp.start()
    with pytest.raises(TargetError, match="none of the key types known_hosts lists for it") as e:
        t2.stat("k")
    assert not e.value.transient and "--replace" in e.value.hint


def test_sftp_wrong_key_fails_at_once(sftp_server: SSHServer, tmp: Path) -> None:
    other = tmp / "other_key"
    subprocess.run([require_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    t = open_target(sftp_server.url(), options=TargetOptions(identity=str(other),
                                                             known_hosts=str(sftp_server.known_hosts)))  # fmt: skip
    start = time.monotonic()
    with pytest.raises(TargetError, match="refused the key login of 'ddsftp'") as e:
        t.list()
    assert not e.value.transient and time.monotonic() - start < 5


def test_trust_host_adds_the_key_once_and_refuses_a_changed_one(fresh_sftp: SSHServer, tmp: Path) -> None:
    kh = tmp / "ssh" / "known_hosts"
    url = fresh_sftp.url()
    r = cli("trust-host", url, "--known-hosts", kh)
    assert r.returncode == 0, r.stderr
    assert _fingerprint(fresh_sftp) in r.stdout and "added" in r.stdout
    assert kh.stat().st_mode & 0o777 == 0o600
    t = open_target(url, options=TargetOptions(identity=str(fresh_sftp.identity), known_hosts=str(kh)))
    assert t.list() == {}
    r = cli("trust-host", url, "--known-hosts", kh)
    assert r.returncode == 0 and "already trusted" in r.stdout
    assert len(kh.read_text().splitlines()) == 1
    fresh_sftp.stop()
    fresh_sftp.new_host_key()
    fresh_sftp.start()
    r = cli("trust-host", url, "--known-hosts", kh)
    assert r.returncode == 1 and "--replace" in r.stderr and len(r.stderr.strip().splitlines()) <= 2, r.stderr
    assert _fingerprint(fresh_sftp) not in kh.read_text()
    r = cli("trust-host", url, "--known-hosts", kh, "--replace")
    assert r.returncode == 0 and "replaced" in r.stdout, r.stderr
    assert len(kh.read_text().splitlines()) == 1
    t2 = open_target(url, options=TargetOptions(identity=str(fresh_sftp.identity), known_hosts=str(kh)))
    assert t2.list() == {}


def test_sftp_dropped_connection_is_retried_and_the_put_completes(sftp_server: SSHServer, tmp: Path) -> None:
    t = quick(open_target(sftp_server.url(sftp_server.root / "drop"), options=sftp_options(sftp_server)))
    p, h = _file(tmp, "big", 200 << 20)
    killed: list[int] = []
    err = _during_put(t, p, h, sftp_server.root / "drop", lambda: killed.append(sftp_server.kill_connections()))
    assert killed and killed[0] >= 1 and err is None
    assert len(t.waits) == 1
    t.get("chain/big.base.zst", tmp / "back")
    assert hashlib.sha256((tmp / "back").read_bytes()).hexdigest() == h


def test_sftp_server_killed_mid_upload(fresh_sftp: SSHServer, tmp: Path) -> None:
    t = quick(open_target(fresh_sftp.url(), options=sftp_options(fresh_sftp)), attempts=3)
    p, h = _file(tmp, "big", 200 << 20)
    err = _during_put(t, p, h, fresh_sftp.root, fresh_sftp.stop)
    assert isinstance(err, TargetError) and err.transient and "failed after 3 attempts" in str(err)
    assert all(f"attempt {n}:" in str(err) for n in (1, 2, 3)), str(err)
    assert not (fresh_sftp.root / "chain" / "big.base.zst").exists()
    fresh_sftp.start()
    assert t.stat("chain/big.base.zst") is None and t.list() == {}
    t.put("chain/big.base.zst", p, h)
    assert hashlib.sha256((fresh_sftp.root / "chain" / "big.base.zst").read_bytes()).hexdigest() == h


def test_sftp_full_disk_is_a_permanent_clear_error(sftp_server: SSHServer, tmp: Path) -> None:
    mount_tmpfs(sftp_server.small, "8m", sftp_server.owner)
    try:
        t = open_target(sftp_server.url(sftp_server.small), options=sftp_options(sftp_server))
        p, h = _file(tmp, "big", (8 << 20) + (512 << 10))  # fails near its end: the last writes in flight
        start = time.monotonic()
        with pytest.raises(TargetError) as e:
            t.put("chain/big.base.zst", p, h)
        assert time.monotonic() - start < 10 and not e.value.transient
        assert "failed uploading to" in str(e.value), str(e.value)
        assert re.search(r"\(0\.\d MB free with the partial upload\)", str(e.value)), str(e.value)
        assert "disk may be full" in e.value.hint
        assert t.stat("chain/big.base.zst") is None
        assert not list(sftp_server.small.rglob(".tmp-*"))
        small, sh = _file(tmp, "small", 1 << 20)
        t.put("chain/small.base.zst", small, sh)
    finally:
        umount(sftp_server.small)


def test_sftp_missing_folder_on_read_is_empty_and_created_on_put(sftp_server: SSHServer, tmp: Path) -> None:
    t = open_target(sftp_server.url(sftp_server.root / "not" / "yet"), options=sftp_options(sftp_server))
    assert t.list() == {} and t.stat("k") is None
    p, h = _file(tmp, "a", 10)
    t.put("k", p, h)
    assert (sftp_server.root / "not" / "yet" / "k").stat().st_mode & 0o777 == 0o600  # owner only
    assert (sftp_server.root / "not" / "yet").stat().st_mode & 0o777 == 0o700


def _fingerprint(server: SSHServer) -> str:
    out = subprocess.run([require_tool("ssh-keygen"), "-l", "-f", str(server.host_key) + ".pub"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return out.split()[1]


def test_recovery_by_hand_with_smbclient_and_sftp(smb_server: SambaServer, sftp_server: SSHServer, tmp: Path) -> None:
    """docs/offsite.md's fetch commands, as written there, bring back exactly what the targets stored."""
    objects = {"deltadump-manifest.json": os.urandom(3000), "chain/a.base.zst": os.urandom(5 << 20),
               "chain/b.delta.zst": os.urandom(70_000)}  # fmt: skip
    smb_t = open_target(smb_server.url("share", "byhand/mail"), options=smb_options(smb_server))
    sftp_t = open_target(sftp_server.url(sftp_server.root / "byhand" / "mail"), options=sftp_options(sftp_server))
    for key, data in objects.items():
        (tmp / "obj").write_bytes(data)
        for t in (smb_t, sftp_t):
            t.put(key, tmp / "obj", hashlib.sha256(data).hexdigest())
    auth = tmp / "auth.txt"
    auth.write_text(f"username = {smb_server.user}\npassword = {smb_server.password}\n")
    auth.chmod(0o600)
    (tmp / "smb").mkdir()
    subprocess.run([require_tool("smbclient"), "//127.0.0.1/share", "-p", str(smb_server.port), "-A", str(auth),
                    "--client-protection=encrypt", "-c", "cd byhand/mail; recurse ON; prompt OFF; mget *"],
                   cwd=tmp / "smb", check=True, capture_output=True)  # fmt: skip
    (tmp / "sftp").mkdir()
    subprocess.run([require_tool("sftp"), "-i", str(sftp_server.identity), "-o",
                    f"UserKnownHostsFile={sftp_server.known_hosts}", "-o", "BatchMode=yes", "-P", str(sftp_server.port),
                    "-r", f"{sftp_server.user}@127.0.0.1:{sftp_server.root}/byhand/mail", "."],
                   cwd=tmp / "sftp", check=True, capture_output=True)  # fmt: skip
    for key, data in objects.items():
        assert (tmp / "smb" / key).read_bytes() == data, key
        assert (tmp / "sftp" / "mail" / key).read_bytes() == data, key


@pytest.mark.parametrize("kind", ["smb", "sftp"])
def test_delta_backups_offsite_and_restore_from_it_alone(kind: str, request: pytest.FixtureRequest, pg: Any,
                                                         pwfile: Path, maildb: str, tmp: Path) -> None:  # fmt: skip
    """The whole path through the config: three days of delta backups copied to the share or the SSH
    server, the local folder lost, every day restored from the offsite copy alone; verify --offsite."""
    import shutil

    from conftest import write_config
    from test_delta_offsite import DAYS, add_sections, run_days, stats

    if kind == "smb":
        smb = request.getfixturevalue("smb_server")
        offsite = {"url": smb.url("share", f"e2e-{maildb}"), "password_file": str(smb.password_file)}
    else:
        ssh = request.getfixturevalue("sftp_server")
        offsite = {"url": ssh.url(ssh.root / f"e2e-{maildb}"), "identity": str(ssh.identity),
                   "known_hosts": str(ssh.known_hosts)}  # fmt: skip
    dest = tmp / "dest"
    dest.mkdir()
    c = write_config(tmp / "c.toml", pg, pwfile, maildb, dest)
    add_sections(c, delta={"enabled": True}, offsite=offsite)
    snaps = run_days(pg, maildb, c, 3)
    v = cli("verify", "--offsite", "--config", c, "-v")
    assert v.returncode == 0, v.stdout + v.stderr
    if kind == "smb":  # the password is in no record, log or output
        secret = smb.password.encode()
        assert secret not in (v.stdout + v.stderr).encode()
        assert not [p for p in dest.rglob("*") if p.is_file() and secret in p.read_bytes()]
    shutil.rmtree(dest)  # the local folder is gone
    dest.mkdir()
    for day in (2, 0):
        db = f"{kind}_day{day}"
        r = cli("restore", "--from", "offsite", "--at", DAYS[day][:10], "--to-db", db, "--config", c)
        assert r.returncode == 0, r.stderr
        assert stats(pg, db) == snaps[day]
