"""The shared conformance suite every Target passes (restic-style): folder, S3 over HTTP (moto), SMB
(Samba's smbd) and SFTP (OpenSSH's sshd), each a real server started by the tests."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from deltadump.errors import IntegrityError, TargetError
from deltadump.targets import ObjectTooLarge, Target, TargetOptions, open_target

KINDS = ["folder", "s3", "smb", "sftp"]
_folders = iter(range(10**6))


def smb_options(server: object) -> TargetOptions:
    return TargetOptions(password_file=str(server.password_file))  # type: ignore[attr-defined]


def sftp_options(server: object) -> TargetOptions:
    return TargetOptions(identity=str(server.identity), known_hosts=str(server.known_hosts))  # type: ignore[attr-defined]


@dataclass
class Remote:
    """A target over an empty folder of its own, how to open it again (url, endpoint, options), and
    where its bytes lie on this machine's disk (None for S3): the servers run here."""

    kind: str
    target: Target
    url: str
    endpoint: str
    options: TargetOptions
    disk: Path | None
    owner: tuple[int, int] | None = None

    def outside(self) -> dict[str, tuple[int, float]]:
        """Every file beside the target's folder on the server's disk (or in the bucket): what must
        stay untouched."""
        if self.disk is None:
            import boto3

            bucket = self.url.split("/")[2]
            res = boto3.client("s3", endpoint_url=self.endpoint).list_objects_v2(Bucket=bucket)
            return {
                o["Key"]: (o["Size"], o["LastModified"].timestamp())
                for o in res.get("Contents", [])
                if not o["Key"].startswith("some/prefix/")
            }
        top = self.disk.parent.parent if self.kind in ("smb", "sftp") else self.disk.parent
        out = {}
        for p in top.rglob("*"):
            if not p.is_relative_to(self.disk):
                st = p.lstat()
                out[str(p)] = (st.st_size, st.st_mtime)
        return out


def make_remote(kind: str, request: pytest.FixtureRequest, tmp: Path) -> Remote:
    n = next(_folders)
    if kind == "folder":
        (tmp / "remote").mkdir()
        url = f"file://{tmp / 'remote'}"
        return Remote(kind, open_target(url), url, "", TargetOptions(), tmp / "remote")
    if kind == "s3":
        s3 = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("bucket")
        url = f"s3://{bucket}/some/prefix"
        return Remote(kind, open_target(url, s3), url, s3, TargetOptions(), None)
    if kind == "smb":
        smb = request.getfixturevalue("smb_server")
        url, opts = smb.url("share", f"t{n}/offsite"), smb_options(smb)
        return Remote(kind, open_target(url, options=opts), url, "", opts, smb.share / f"t{n}" / "offsite", smb.owner)
    sftp = request.getfixturevalue("sftp_server")
    url, opts = sftp.url(sftp.root / f"t{n}" / "offsite"), sftp_options(sftp)
    return Remote(kind, open_target(url, options=opts), url, "", opts, sftp.root / f"t{n}" / "offsite", sftp.owner)


def make_target(kind: str, request: pytest.FixtureRequest, tmp: Path) -> Target:
    return make_remote(kind, request, tmp).target


@pytest.fixture(params=KINDS)
def remote(request: pytest.FixtureRequest, tmp: Path) -> Remote:
    return make_remote(request.param, request, tmp)


@pytest.fixture
def target(remote: Remote) -> Target:
    return remote.target


def _file(tmp: Path, name: str, data: bytes) -> tuple[Path, str]:
    p = tmp / name
    p.write_bytes(data)
    return p, hashlib.sha256(data).hexdigest()


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The common umask, under which a file made with the default mode is readable by all."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_put_get_stat_list_delete(target: Target, tmp: Path, umask_022: None) -> None:
    data = os.urandom(100_000)
    p, h = _file(tmp, "a", data)
    assert target.stat("chain/x.base.zst") is None
    target.put("chain/x.base.zst", p, h)
    target.put("top.json", *_file(tmp, "b", b"{}"))
    assert target.stat("chain/x.base.zst") == len(data)
    assert target.list() == {"chain/x.base.zst": len(data), "top.json": 2}
    assert target.list("chain/") == {"chain/x.base.zst": len(data)}
    target.get("chain/x.base.zst", tmp / "back")
    assert (tmp / "back").read_bytes() == data
    assert (tmp / "back").stat().st_mode & 0o777 == 0o600  # a database's data: its owner's only
    in_place = target.local_path("chain/x.base.zst")  # None, or a file that is the object
    assert in_place is None or in_place.read_bytes() == data
    target.delete("chain/x.base.zst")
    target.delete("chain/x.base.zst")  # idempotent
    assert target.stat("chain/x.base.zst") is None
    with pytest.raises(TargetError, match="missing"):
        target.get("chain/x.base.zst", tmp / "never")
    assert not (tmp / "never").exists()
    if in_place is not None:
        with pytest.raises(TargetError, match="missing"):
            target.local_path("chain/x.base.zst")


def test_overwrite_replaces_whole_object(target: Target, tmp: Path) -> None:
    target.put("k", *_file(tmp, "a", b"first version, longer"))
    target.put("k", *_file(tmp, "b", b"second"))
    target.get("k", tmp / "out")
    assert (tmp / "out").read_bytes() == b"second"


def test_large_object_in_parts(target: Target, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if hasattr(target, "part_size"):  # S3: force multipart with the minimum part size
        target.part_size = 5 << 20  # type: ignore[attr-defined]
    data = os.urandom(12 << 20)
    target.put("big", *_file(tmp, "big", data))
    target.get("big", tmp / "big.back")
    assert hashlib.sha256((tmp / "big.back").read_bytes()).digest() == hashlib.sha256(data).digest()


def test_get_with_a_limit_refuses_a_larger_object_and_writes_nothing(remote: Remote, tmp: Path) -> None:
    """A reader that knows an object's size (its signed record does) never downloads more: a grown object
    is refused before it can fill the disk, whatever the store's listing says."""
    t = remote.target
    data = os.urandom((9 << 20) + 5)  # more than two of a download's 4 MiB chunks
    t.put("chain/x.base.zst", *_file(tmp, "a", data))
    t.get("chain/x.base.zst", tmp / "exact", len(data))
    assert (tmp / "exact").read_bytes() == data
    for limit in (len(data) - 1, 5 << 20, 0):
        with pytest.raises(ObjectTooLarge, match="larger than the") as e:
            t.get("chain/x.base.zst", tmp / "got", limit)
        assert not e.value.transient
        assert not (tmp / "got").exists()
    assert [p.name for p in tmp.iterdir() if p.name not in ("a", "exact", "remote")] == []  # no temporary file
    with pytest.raises(TargetError, match="missing"):
        t.get("chain/none.zst", tmp / "got", 10)


def test_s3_get_streaming_more_than_the_head_is_cut_at_the_limit(s3_server: str, bucket: str, tmp: Path) -> None:
    """A hostile S3 store whose HEAD and listing give an object's true size but whose GET streams
    256 MiB more: the download stops as soon as it passes the limit, it does not fill the disk first."""
    from s3proxy import FaultProxy

    proxy = FaultProxy(s3_server)
    try:
        t = open_target(f"s3://{bucket}/r", proxy.url)
        data = os.urandom((1 << 20) + 7)
        t.put("chain/x.base.zst", *_file(tmp, "a", data))
        proxy.grow_gets = 256 << 20
        with pytest.raises(ObjectTooLarge, match="larger than the"):
            t.get("chain/x.base.zst", tmp / "got", len(data))
    finally:
        proxy.close()
    assert proxy.grown_sent < 32 << 20, proxy.grown_sent  # what the kernel's buffers hold, not the rest
    assert sorted(p.name for p in tmp.iterdir()) == ["a"]  # no temporary file


def test_age_target_limits_by_the_plain_size(tmp: Path) -> None:
    """Over an age-encrypted copy the limit is the plain size: the encrypted object may be as much larger
    as age makes it, and no more."""
    import pyrage

    from deltadump.targets.age import AgeTarget, sealed_size

    ident = pyrage.x25519.Identity.generate()
    (tmp / "id").write_text(str(ident))
    (tmp / "remote").mkdir()
    inner = open_target(f"file://{tmp / 'remote'}")
    t = AgeTarget(inner, [str(ident.to_public())], tmp / "id")
    for size in (0, 1, 65536, (1 << 20) + 3):
        data = os.urandom(size)
        t.put("k", *_file(tmp, "plain", data))
        assert (inner.stat("k.age") or 0) <= sealed_size(size)
        t.get("k", tmp / "back", size)
        assert (tmp / "back").read_bytes() == data
    grown = (tmp / "remote" / "k.age").read_bytes() + os.urandom(sealed_size((1 << 20) + 3))
    (tmp / "remote" / "k.age").write_bytes(grown)
    with pytest.raises(ObjectTooLarge):
        t.get("k", tmp / "none", (1 << 20) + 3)
    assert not (tmp / "none").exists()


def test_age_target_refuses_a_plain_object_past_the_limit(tmp: Path) -> None:
    """Anyone with the public recipient (the store, say) can seal a valid age file: one whose plain
    bytes pass the limit by less than age's allowance for its header is refused too, and not left."""
    import pyrage

    from deltadump.targets.age import AgeTarget

    ident = pyrage.x25519.Identity.generate()
    (tmp / "id").write_text(str(ident))
    (tmp / "remote").mkdir()
    t = AgeTarget(open_target(f"file://{tmp / 'remote'}"), [str(ident.to_public())], tmp / "id")
    (tmp / "remote" / "k.age").write_bytes(pyrage.encrypt(os.urandom(1001), [ident.to_public()]))
    with pytest.raises(ObjectTooLarge, match="larger than the 1000 bytes"):
        t.get("k", tmp / "got", 1000)
    assert sorted(p.name for p in tmp.iterdir()) == ["id", "remote"]
    t.get("k", tmp / "got", 1001)
    assert (tmp / "got").stat().st_size == 1001


def test_age_target_decrypts_to_a_temporary_name(tmp: Path, monkeypatch: pytest.MonkeyPatch, umask_022: None) -> None:
    """The plain bytes appear under the caller's name only once decrypted whole and checked: while age
    writes them (where a kill would stop it) that name holds nothing, and a damaged object or one past
    the limit leaves a file already there untouched, with no temporary file beside it."""
    import pyrage

    from deltadump.targets.age import AgeTarget

    ident = pyrage.x25519.Identity.generate()
    (tmp / "id").write_text(str(ident))
    (tmp / "remote").mkdir()
    (tmp / "scratch").mkdir()
    t = AgeTarget(open_target(f"file://{tmp / 'remote'}"), [str(ident.to_public())], tmp / "id")
    plain = os.urandom(300_000)
    (tmp / "remote" / "k.age").write_bytes(pyrage.encrypt(plain, [ident.to_public()]))
    dst = tmp / "scratch" / "got"
    seen: list[tuple[bool, int, int]] = []
    real = pyrage.decrypt_file

    def spy(src: str, out: str, ids: list[object]) -> None:
        real(src, out, ids)
        st = Path(out).stat()
        seen.append((dst.exists(), st.st_size, st.st_mode & 0o777))  # decrypted bytes: their owner's only

    monkeypatch.setattr(pyrage, "decrypt_file", spy)
    t.get("k", dst, len(plain))
    assert seen == [(False, len(plain), 0o600)] and dst.read_bytes() == plain
    dst.write_bytes(b"earlier")
    with pytest.raises(ObjectTooLarge):
        t.get("k", dst, len(plain) - 1)
    damaged = bytearray((tmp / "remote" / "k.age").read_bytes())
    damaged[-100] ^= 1
    (tmp / "remote" / "k.age").write_bytes(bytes(damaged))
    with pytest.raises(IntegrityError, match="cannot decrypt k"):
        t.get("k", dst, len(plain))
    assert dst.read_bytes() == b"earlier" and sorted(p.name for p in (tmp / "scratch").iterdir()) == ["got"]


def test_missing_source_is_a_clear_permanent_error(target: Target, tmp: Path) -> None:
    with pytest.raises(TargetError, match=r"cannot read .*nothing-here") as e:
        target.put("k", tmp / "nothing-here", "0" * 64)
    assert not e.value.transient
    assert target.stat("k") is None


def test_wrong_checksum_is_refused(target: Target, tmp: Path) -> None:
    p, _ = _file(tmp, "a", b"payload")
    with pytest.raises(TargetError):
        target.put("k", p, "0" * 64)


def test_permanent_errors_are_clear(s3_server: str, tmp: Path) -> None:
    t = open_target("s3://no-such-bucket/x", s3_server)
    p, h = _file(tmp, "a", b"x")
    with pytest.raises(TargetError) as e:
        t.put("k", p, h)
    assert "no-such-bucket" in str(e.value) and not e.value.transient


def test_interrupted_multipart_upload_resumes_with_the_parts_it_lacks(s3_server: str, bucket: str, tmp: Path) -> None:
    """An upload stopped after some parts (here: the store refuses parts 3 and up) is completed by the
    next put: the parts already held are checked against the file and kept, the rest sent; a part
    held with other bytes (an upload of something else under that key) is sent again."""
    import boto3
    from s3proxy import FaultProxy

    proxy = FaultProxy(s3_server)
    try:
        t = open_target(f"s3://{bucket}/r", proxy.url)
        t.part_size = 5 << 20  # type: ignore[attr-defined]
        data = os.urandom((5 << 20) * 4 + 12345)  # five parts
        p, h = _file(tmp, "big", data)
        proxy.refuse_parts_from = 3
        with pytest.raises(TargetError):
            t.put("chain/big.base.zst", p, h)
        s3 = boto3.client("s3", endpoint_url=s3_server)
        assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="r/")  # nothing visible
        proxy.refuse_parts_from = None
        proxy.writes.clear()
        t.put("chain/big.base.zst", p, h)
        sent = sorted(
            int(path.split("partNumber=")[1].split("&")[0]) for _, path in proxy.writes if "partNumber=" in path
        )
        assert sent == [3, 4, 5], proxy.writes  # parts 1 and 2 were not sent again
        t.get("chain/big.base.zst", tmp / "back")
        assert (tmp / "back").read_bytes() == data
        assert not s3.list_multipart_uploads(Bucket=bucket, Prefix="r/").get("Uploads")
        # an unfinished upload under the same key whose part 1 holds other bytes: part 1 is sent again
        other = s3.create_multipart_upload(Bucket=bucket, Key="r/chain/x.base.zst")["UploadId"]
        s3.upload_part(Bucket=bucket, Key="r/chain/x.base.zst", UploadId=other, PartNumber=1, Body=os.urandom(5 << 20))
        proxy.writes.clear()
        t.put("chain/x.base.zst", p, h)
        sent = sorted(
            int(path.split("partNumber=")[1].split("&")[0]) for _, path in proxy.writes if "partNumber=" in path
        )
        assert sent == [1, 2, 3, 4, 5]
        t.get("chain/x.base.zst", tmp / "back2")
        assert (tmp / "back2").read_bytes() == data
    finally:
        proxy.close()


# --- hostile keys, hostile stores, interruptions -------------------------------------------------

BAD_KEYS = ["../escape", "chain/../../escape", "/etc/passwd", "chain\\x", "a\x00b", "x" * 300, "a//b", "./a",
            "chain/", "", ".tmp-k.1.ab", "chain/.tmp-k.1.ab", "a\nb"]  # fmt: skip


@pytest.mark.parametrize("key", BAD_KEYS, ids=lambda k: repr(k)[:24])
def test_hostile_keys_are_refused_by_every_method(remote: Remote, tmp: Path, key: str) -> None:
    t = remote.target
    p, h = _file(tmp, "a", b"payload")
    before = remote.outside()
    calls = {
        "put": lambda: t.put(key, p, h),
        "get": lambda: t.get(key, tmp / "got"),
        "local_path": lambda: t.local_path(key),
        "stat": lambda: t.stat(key),
        "delete": lambda: t.delete(key),
    }
    for name, call in calls.items():
        with pytest.raises(TargetError, match="refused offsite key") as e:
            call()
        assert not e.value.transient, name
    for prefix in ("../", "chain/../../", "/etc/", "a\\b/", "a//", "x" * 300):
        with pytest.raises(TargetError, match="refused offsite key"):
            t.list(prefix)
    assert not (tmp / "got").exists()
    assert remote.outside() == before
    assert t.list() == {}


def test_listing_never_returns_temporary_or_foreign_names(remote: Remote, tmp: Path) -> None:
    t = remote.target
    t.put("chain/a.base.zst", *_file(tmp, "a", b"aaaa"))
    planted = ["chain/.tmp-b.base.zst.123.abcd", ".tmp-deltadump-manifest.json.9.ffff", "chain/back\\slash",
               "chain/ctl\x01name"]  # fmt: skip
    if remote.kind == "smb":  # Samba shows such names as mangled 8.3 names (valid keys): plant the temporary ones only
        planted = planted[:2]
    if remote.disk is None:
        import boto3

        s3 = boto3.client("s3", endpoint_url=remote.endpoint)
        for k in planted:
            s3.put_object(Bucket=remote.url.split("/")[2], Key=f"some/prefix/{k}", Body=b"partial")
    else:
        for k in planted:
            (remote.disk / k).write_bytes(b"partial")
    assert t.list() == {"chain/a.base.zst": 4}
    assert t.list("chain/") == {"chain/a.base.zst": 4}


@pytest.fixture(params=["folder", "smb", "sftp"])
def linked(request: pytest.FixtureRequest, tmp: Path) -> Remote:
    """A remote whose folder lies on this machine's disk, where a test can plant links."""
    return make_remote(request.param, request, tmp)


def test_links_leading_outside_the_folder_are_refused(linked: Remote, tmp: Path) -> None:
    """A store is not trusted: a link planted in it (to a file, or a folder, outside the target's
    folder) never makes us read or write outside it."""
    t = linked.target
    assert linked.disk is not None
    t.put("chain/real.base.zst", *_file(tmp, "a", b"ours"))
    secret_dir = linked.disk.parent / "elsewhere"  # outside the target's folder (inside the share)
    secret_dir.mkdir()
    (secret_dir / "secret").write_bytes(b"not ours")
    os.symlink("/etc/hostname", linked.disk / "abs.link")  # outside the share, too
    os.symlink(secret_dir / "secret", linked.disk / "chain" / "file.link")
    os.symlink(secret_dir, linked.disk / "dirlink")
    os.symlink("real.base.zst", linked.disk / "chain" / "alias.link")  # a link to one of ours: no object either
    if linked.owner:
        for p in (secret_dir, secret_dir / "secret"):
            os.chown(p, *linked.owner)
    # smbd itself follows a link that stays inside its share (Samba's default) and refuses one that leaves
    # it (wide links = no): a client sees no link there, only the one that leaves the share is refused
    refused = ["abs.link"] if linked.kind == "smb" else ["abs.link", "dirlink/secret", "chain/file.link",
                                                         "chain/alias.link"]  # fmt: skip
    for key in refused:
        with pytest.raises(TargetError):
            t.get(key, tmp / "got")
        assert not (tmp / "got").exists(), key
        if linked.kind == "folder":
            with pytest.raises(TargetError):
                t.local_path(key)
    before = sorted(p.name for p in secret_dir.iterdir())
    if linked.kind != "smb":  # smbd follows a link inside its share itself (Samba's default): nothing to see
        with pytest.raises(TargetError):
            t.put("dirlink/new", *_file(tmp, "b", b"escape"))
    assert sorted(p.name for p in secret_dir.iterdir()) == before
    listed = t.list()
    assert "chain/real.base.zst" in listed
    assert not set(refused) & set(listed), listed
    if linked.kind != "smb":
        t.delete("dirlink")  # removes the link, never what it points to
        assert not (linked.disk / "dirlink").exists()
    assert (secret_dir / "secret").read_bytes() == b"not ours"


PUT_CHILD = """
import sys, json
from pathlib import Path
from deltadump.targets import TargetOptions, open_target
url, endpoint, opts, key, src, sha = json.loads(sys.argv[1])
t = open_target(url, endpoint, TargetOptions(**opts))
print("start", flush=True)
t.put(key, Path(src), sha)
print("done", flush=True)
"""


def test_an_interrupted_put_leaves_nothing_under_the_final_name(remote: Remote, tmp: Path) -> None:
    """A put killed (SIGKILL) mid-upload: the key still holds its previous object, whole; a key never
    stored stays missing; the next put completes."""
    import dataclasses
    import json

    t = remote.target
    old, old_h = _file(tmp, "old", b"the previous version")
    t.put("chain/x.base.zst", old, old_h)
    data = os.urandom(256 << 20)
    big, h = _file(tmp, "big", data)
    for key in ("chain/x.base.zst", "chain/new.base.zst"):
        args = json.dumps([remote.url, remote.endpoint, dataclasses.asdict(remote.options), key, str(big), h])
        child = subprocess.Popen([sys.executable, "-c", PUT_CHILD, args], stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdout.readline() == "start\n"
        deadline = time.monotonic() + 60
        while not _upload_under_way(remote) and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.01)
        assert child.poll() is None, "the put finished before it could be interrupted"
        child.send_signal(signal.SIGKILL)
        child.wait()
        if key == "chain/x.base.zst":
            assert t.stat(key) == len(b"the previous version")
            t.get(key, tmp / "prev")
            assert (tmp / "prev").read_bytes() == b"the previous version"
        else:
            assert t.stat(key) is None
        assert set(t.list()) == {"chain/x.base.zst"}
    t.put("chain/new.base.zst", big, h)
    t.get("chain/new.base.zst", tmp / "back")
    assert hashlib.sha256((tmp / "back").read_bytes()).hexdigest() == h


def _upload_under_way(remote: Remote) -> bool:
    """Bytes of an unfinished put are on the store: a temporary file, or a multipart upload's part."""
    if remote.disk is None:
        import boto3

        s3 = boto3.client("s3", endpoint_url=remote.endpoint)
        bucket = remote.url.split("/")[2]
        ups = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return any(s3.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts") for u in ups)
    return any(p.stat().st_size > (1 << 20) for p in remote.disk.rglob(".tmp-*"))


# --- [offsite] keys of the config, checked when it loads ---------------------------------------------

OFFSITE_CONFIGS = [
    ('url = "ftp://host/x"', "unsupported offsite url scheme ftp:// (use file://, s3://, smb://, sftp://)"),
    ('url = "smb://ddsmb:hunter2@nas/share/x"\npassword_file = "/p"', "a password does not belong in the url"),
    ('url = "sftp://me:hunter2@host/x"', "a password does not belong in the url"),
    ('url = "smb://ddsmb@nas"\npassword_file = "/p"', "without a share"),
    ('url = "smb://nas/share/x"', "needs a username"),
    ('url = "smb://nas/share/x"\nusername = "u"', "and a password_file"),
    ('url = "smb://a@nas/share"\nusername = "b"\npassword_file = "/p"', "the url names user 'a' but username is 'b'"),
    ('url = "smb://u@nas/share"\npassword_file = "/p"\ndialect = "2.1"', "dialect 2.1 has no encryption"),
    ('url = "smb://u@nas/share"\npassword_file = "/p"\ndialect = "1.0"', "offsite.dialect"),
    ('url = "s3://bucket/x"\npassword_file = "/p"', "password_file applies to smb:// urls only"),
    ('url = "smb://u@nas/share"\npassword_file = "/p"\nidentity = "/k"', "identity applies to sftp:// urls only"),
    ('url = "sftp://host/x"', "without a user"),
    ('url = "sftp://me@host:99999/x"', "invalid port"),
    ('url = "sftp://me@host/a/../b"', "must not contain '..'"),
]


@pytest.mark.parametrize(("offsite", "message"), OFFSITE_CONFIGS, ids=[m for _, m in OFFSITE_CONFIGS])
def test_offsite_config_is_checked_at_load(tmp: Path, offsite: str, message: str) -> None:
    from conftest import cli

    c = tmp / "c.toml"
    c.write_text(f'[database]\ndsn = "dbname=x"\n\n[backup]\ndest = "{tmp}"\n\n[offsite]\n{offsite}\n')
    r = cli("status", "--config", c)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "hunter2" not in r.stderr + r.stdout
    assert len(r.stderr.strip().splitlines()) == 1


def test_offsite_config_gives_the_target_what_it_needs(tmp: Path) -> None:
    from deltadump.config import parse

    cfg = parse({"database": {"dsn": "dbname=x"}, "backup": {"dest": str(tmp)},
                 "offsite": {"url": "smb://nas.lan/backups/mail", "username": "backup", "password_file": "/etc/pw",
                             "domain": "OFFICE", "dialect": "3.0.2"}})  # fmt: skip
    opts = cfg.offsite_copy().target_options()
    assert (opts.username, opts.password_file, opts.domain, opts.dialect, opts.require_encryption) == (
        "backup", "/etc/pw", "OFFICE", "3.0.2", True)  # fmt: skip
    t = open_target(cfg.offsite_copy().url, options=opts)
    assert t.describe() == "smb://backup@nas.lan/backups/mail"
    cfg = parse({"database": {"dsn": "dbname=x"}, "backup": {"dest": str(tmp)},
                 "offsite": {"url": "sftp://me@host:2222/srv/b", "identity": "~/.ssh/id_ed25519"}})  # fmt: skip
    assert (
        open_target(cfg.offsite_copy().url, options=cfg.offsite_copy().target_options()).describe()
        == "sftp://me@host:2222/srv/b"
    )
