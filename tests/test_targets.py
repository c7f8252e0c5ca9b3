"""The shared conformance suite every Target passes (restic-style): folder, and S3 over HTTP."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from deltadump.errors import TargetError
from deltadump.targets import Target, open_target


@pytest.fixture(params=["folder", "s3"])
def target(request: pytest.FixtureRequest, tmp: Path) -> Target:
    if request.param == "folder":
        (tmp / "remote").mkdir()
        return open_target(f"file://{tmp / 'remote'}")
    s3 = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("bucket")
    return open_target(f"s3://{bucket}/some/prefix", s3)


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
    from boto3.s3.transfer import TransferConfig

    if hasattr(target, "transfer"):  # S3: force multipart with the minimum part size
        target.transfer = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20)  # type: ignore[attr-defined]
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
