"""Encryption as a target wrapper: any Target, with every object age-encrypted to the given recipients
under its key + ".age" (restic wraps its backends the same way). Decryption needs the identity (the
age secret key), which need not be on the backup host at all. Opaque bytes in, opaque bytes out."""

from __future__ import annotations

import builtins
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ConfigError, IntegrityError
from ..fsio import sha256_file
from . import Target, fetch_into, too_large

SUFFIX = ".age"


def sealed_size(size: int) -> int:
    """The most bytes an age file of `size` plain bytes takes: its header (a few hundred bytes per
    recipient; 64 KiB allows many), then 16 bytes of tag per 64 KiB chunk of payload (and one chunk
    for an empty file)."""
    return (64 << 10) + size + 16 * (size // (64 << 10) + 1)


class AgeTarget:
    def __init__(self, inner: Target, recipients: list[str], identity: Path | None = None) -> None:
        self.inner = inner
        self._recipient_texts = recipients
        self._identity_path = identity
        self._recipients: list[Any] | None = None
        self._identities: list[Any] | None = None

    def describe(self) -> str:
        return self.inner.describe() + " (age-encrypted)"

    def _rcpts(self) -> list[Any]:
        import pyrage

        if self._recipients is None:
            try:
                self._recipients = [pyrage.x25519.Recipient.from_str(r) for r in self._recipient_texts]
            except Exception as exc:
                raise ConfigError(f"invalid age recipient in [offsite] recipients: {exc}") from exc
        return self._recipients

    def _ids(self) -> list[Any]:
        import pyrage

        if self._identities is None:
            if self._identity_path is None:
                raise ConfigError("the offsite copy is encrypted: pass --identity KEYFILE (the age secret key)")
            try:
                lines = self._identity_path.read_text().splitlines()
                self._identities = [pyrage.x25519.Identity.from_str(ln.strip()) for ln in lines
                                    if ln.strip().startswith("AGE-SECRET-KEY-")]  # fmt: skip
            except Exception as exc:
                raise ConfigError(f"cannot read age identity {self._identity_path}: {exc}") from exc
            if not self._identities:
                raise ConfigError(f"no AGE-SECRET-KEY in {self._identity_path}")
        return self._identities

    def put(self, key: str, src: Path, sha256: str) -> None:
        import pyrage

        if sha256_file(src)[1] != sha256:
            raise IntegrityError(f"{src} does not match its expected sha256; not uploading it")
        with tempfile.TemporaryDirectory(prefix="deltadump-age-") as tmp:
            enc = Path(tmp) / "obj.age"
            pyrage.encrypt_file(str(src), str(enc), self._rcpts())
            self.inner.put(key + SUFFIX, enc, sha256_file(enc)[1])

    def get(self, key: str, dst: Path, limit: int | None = None) -> None:
        """Fetch the encrypted object beside `dst`, then decrypt it to a temporary name that becomes
        `dst` only once whole and checked: a kill mid-decrypt never leaves part of it under `dst`."""
        enc = dst.with_name(dst.name + SUFFIX)
        self.inner.get(key + SUFFIX, enc, None if limit is None else sealed_size(limit))
        try:
            fetch_into(dst, lambda tmp: self._decrypt(key, enc, tmp, limit))
        finally:
            enc.unlink(missing_ok=True)

    def _decrypt(self, key: str, enc: Path, out: Path, limit: int | None) -> None:
        import pyrage

        try:
            pyrage.decrypt_file(str(enc), str(out), self._ids())
        except ConfigError:
            raise
        except Exception as exc:
            raise IntegrityError(f"cannot decrypt {key}: wrong age identity or damaged file ({exc})") from exc
        if limit is not None and out.stat().st_size > limit:  # sealed by whoever has the public key
            raise too_large(f"{self.inner.describe()}/{key}{SUFFIX}", limit)

    def local_path(self, key: str) -> Path | None:
        return None  # encrypted: always decrypted into a scratch file

    def stat(self, key: str) -> int | None:
        return self.inner.stat(key + SUFFIX)  # the encrypted size

    def list(self, prefix: str = "") -> dict[str, int]:
        """Keys (without .age) with their encrypted sizes."""
        return {k.removesuffix(SUFFIX): n for k, n in self.inner.list(prefix).items() if k.endswith(SUFFIX)}

    def delete(self, key: str) -> None:
        self.inner.delete(key + SUFFIX)

    def clean_temporaries(self) -> builtins.list[str]:
        clean = getattr(self.inner, "clean_temporaries", None)
        return list(clean()) if clean is not None else []
