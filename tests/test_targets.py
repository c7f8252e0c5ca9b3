"""The shared conformance suite every Target passes (restic-style): folder, S3 over HTTP (moto), SMB
(Samba's smbd) and SFTP (OpenSSH's sshd), each a real server started by the tests."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from deltadump.errors import TargetError
from deltadump.targets import Target, TargetOptions, open_target

KINDS = ["folder", "s3", "smb", "sftp"]
_folders = iter(range(10**6))


def smb_options(server: object) -> TargetOptions:
    return TargetOptions(password_file=str(server.password_file))  # type: ignore[attr-defined]


def sftp_options(server: object) -> TargetOptions:
    return TargetOptions(identity=str(server.identity), known_hosts=str(server.known_hosts))  # type: ignore[attr-defined]


def make_target(kind: str, request: pytest.FixtureRequest, tmp: Path) -> Target:
    """A target of that kind over an empty folder (prefix, share folder) of its own."""
    n = next(_folders)
    if kind == "folder":
        (tmp / "remote").mkdir()
        return open_target(f"file://{tmp / 'remote'}")
    if kind == "s3":
        s3 = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("bucket")
        return open_target(f"s3://{bucket}/some/prefix", s3)
    if kind == "smb":
        smb = request.getfixturevalue("smb_server")
        return open_target(smb.url("share", f"t{n}/offsite"), options=smb_options(smb))
    sftp = request.getfixturevalue("sftp_server")
    return open_target(sftp.url(sftp.root / f"t{n}" / "offsite"), options=sftp_options(sftp))


@pytest.fixture(params=KINDS)
def target(request: pytest.FixtureRequest, tmp: Path) -> Target:
    return make_target(request.param, request, tmp)


def _file(tmp: Path, name: str, data: bytes) -> tuple[Path, str]:
    p = tmp / name
    p.write_bytes(data)
    return p, hashlib.sha256(data).hexdigest()


def test_put_get_stat_list_delete(target: Target, tmp: Path) -> None:
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
