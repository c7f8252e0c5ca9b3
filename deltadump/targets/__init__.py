"""deltadump.targets: offsite storage behind one small protocol (put, get, stat, list, delete).

Targets move opaque bytes under keys and know nothing of backups. Every implementation passes the
shared conformance suite in tests/test_targets.py. Errors are TargetError, transient or permanent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit


class Target(Protocol):
    def put(self, key: str, src: Path, sha256: str) -> None:
        """Store src under key; the key becomes visible only once complete and checked."""

    def get(self, key: str, dst: Path) -> None:
        """Write the object to dst (a complete file or an error)."""

    def local_path(self, key: str) -> Path | None:
        """A local file that is the object, to read in place instead of copying it, or None (then get)."""

    def stat(self, key: str) -> int | None:
        """The object's size, or None when missing."""

    def list(self, prefix: str = "") -> dict[str, int]:
        """Keys under prefix with their sizes."""

    def delete(self, key: str) -> None:
        """Remove the object (no error when already gone)."""

    def describe(self) -> str: ...


def open_target(url: str, endpoint_url: str = "") -> Target:
    u = urlsplit(url)
    if u.scheme == "file":
        from .folder import FolderTarget

        return FolderTarget(Path(unquote(u.path)))
    if u.scheme == "s3":
        from .s3 import S3Target

        return S3Target(u.netloc, u.path.strip("/"), endpoint_url or None)
    raise ValueError(f"unsupported offsite url {url!r}")
