"""Signing keys and signatures in minisign's formats, so that an admin can check any head or record of
a repository by hand with `minisign -V -P PUBLIC_KEY -m FILE` (Debian package `minisign`).

Formats (minisign 0.11, Ed25519):
- public key: base64 of "Ed" + key id (8 bytes) + public key (32 bytes), after an untrusted comment line
  in a .pub file;
- secret key: base64 of "Ed" + kdf "\\0\\0" (unencrypted) + "B2" + salt (32) + opslimit (8) + memlimit (8)
  + key id (8) + Ed25519 secret (seed 32 + public 32) + checksum (32), after an untrusted comment line;
- signature (.minisig): an untrusted comment line; base64 of "ED" + key id + Ed25519 signature of the
  BLAKE2b-512 hash of the file (the pre-hashed form); "trusted comment: TEXT"; base64 of the Ed25519
  signature of (file signature + TEXT), which makes the trusted comment tamper-proof too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..errors import ConfigError, TrustError
from ..fsio import storage_error, write_bytes_atomic

ALG = b"Ed"
ALG_HASHED = b"ED"
KDF_NONE = b"\0\0"
KDF_SCRYPT = b"Sc"
CHK = b"B2"
MAX_SIG_BYTES = 4096  # a .minisig we write is about 330 bytes; anything much larger is not ours
OUR_COMMENT = "untrusted comment: signature from deltadump secret key"


@dataclass(frozen=True)
class PublicKey:
    key_id: bytes  # 8 bytes, minisign's key number
    raw: bytes  # 32 bytes

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        """A public key as minisign prints it ("RW..."), or the content of a minisign .pub file."""
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        if len(lines) == 2 and lines[0].startswith("untrusted comment:"):
            lines = lines[1:]
        if len(lines) != 1:
            raise ConfigError("not a minisign public key (expected one line starting with RW)")
        try:
            blob = base64.b64decode(lines[0], validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("not a minisign public key (bad base64)") from None
        if len(blob) != 42 or blob[:2] != ALG:
            raise ConfigError("not a minisign Ed25519 public key")
        return cls(blob[2:10], blob[10:])

    def encode(self) -> str:
        return base64.b64encode(ALG + self.key_id + self.raw).decode()

    @property
    def fingerprint(self) -> str:
        """The key id as minisign shows it (hex of the little-endian number)."""
        return self.key_id[::-1].hex().upper()

    def pub_file(self) -> str:
        return f"untrusted comment: minisign public key {self.fingerprint}\n{self.encode()}\n"

    def verify(self, data: bytes, sig: bytes, what: str, *, ours: bool = True) -> str:
        """Check a .minisig for `data`; returns its trusted comment. TrustError names `what`. With
        `ours` (every file deltadump stores) the signature file must be exactly as deltadump writes it,
        byte for byte (its untrusted comment, line ends, canonical base64): a damaged byte anywhere in
        it is found, not only in the signed parts."""
        if len(sig) > MAX_SIG_BYTES:
            raise TrustError(f"{what}: its signature file is too large to be one")
        try:
            text = sig.decode("ascii" if ours else "utf-8")
        except UnicodeDecodeError:
            raise TrustError(f"{what}: its signature file is damaged (not text)") from None
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        if (
            len(lines) != 4
            or not lines[0].startswith("untrusted comment:")
            or not lines[2].startswith("trusted comment: ")
            or (ours and (lines[0] != OUR_COMMENT or "\r" in text))
        ):
            raise TrustError(f"{what}: its signature file is damaged or not in minisign's format")
        try:
            blob = base64.b64decode(lines[1], validate=True)
            global_sig = base64.b64decode(lines[3], validate=True)
        except (binascii.Error, ValueError):
            raise TrustError(f"{what}: its signature file is damaged (bad base64)") from None
        if len(blob) != 74 or len(global_sig) != 64:
            raise TrustError(f"{what}: its signature file is damaged (wrong lengths)")
        if base64.b64encode(blob).decode() != lines[1] or base64.b64encode(global_sig).decode() != lines[3]:
            raise TrustError(f"{what}: its signature file is damaged (base64 not canonical)")
        alg, key_id, signature = blob[:2], blob[2:10], blob[10:]
        if key_id != self.key_id:
            raise TrustError(
                f"{what} is signed by another key ({key_id[::-1].hex().upper()}), not the trusted one "
                f"({self.fingerprint})"
            )
        if alg == ALG_HASHED:
            message = hashlib.blake2b(data, digest_size=64).digest()
        elif alg == ALG:
            message = data
        else:
            raise TrustError(f"{what}: unknown signature algorithm")
        comment = lines[2][len("trusted comment: ") :]
        pk = Ed25519PublicKey.from_public_bytes(self.raw)
        try:
            pk.verify(signature, message)
            pk.verify(global_sig, signature + comment.encode("utf-8"))
        except InvalidSignature:
            raise TrustError(f"{what} does not match its signature (changed or forged)") from None
        return comment


@dataclass(frozen=True)
class SecretKey:
    key_id: bytes
    seed: bytes  # 32 bytes

    @classmethod
    def generate(cls) -> SecretKey:
        return cls(secrets.token_bytes(8), secrets.token_bytes(32))

    @property
    def public(self) -> PublicKey:
        raw = self._private().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return PublicKey(self.key_id, raw)

    def _private(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.seed)

    def sign(self, data: bytes, trusted_comment: str) -> bytes:
        """A .minisig for `data` (pre-hashed form), with a one-line trusted comment."""
        if "\n" in trusted_comment or "\r" in trusted_comment:
            raise ValueError("a trusted comment is one line")
        priv = self._private()
        signature = priv.sign(hashlib.blake2b(data, digest_size=64).digest())
        global_sig = priv.sign(signature + trusted_comment.encode("utf-8"))
        return (
            f"{OUR_COMMENT}\n"
            f"{base64.b64encode(ALG_HASHED + self.key_id + signature).decode()}\n"
            f"trusted comment: {trusted_comment}\n"
            f"{base64.b64encode(global_sig).decode()}\n"
        ).encode()

    def encode(self) -> str:
        """minisign's secret key file, unencrypted (it lives in a 0600 file beside the config)."""
        sk = self.seed + self.public.raw
        chk = hashlib.blake2b(ALG + self.key_id + sk, digest_size=32).digest()
        blob = ALG + KDF_NONE + CHK + bytes(32) + bytes(8) + bytes(8) + self.key_id + sk + chk
        return f"untrusted comment: deltadump signing key (minisign, unencrypted)\n{base64.b64encode(blob).decode()}\n"

    @classmethod
    def parse(cls, text: str, where: str) -> SecretKey:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        try:
            blob = base64.b64decode(lines[-1], validate=True)
        except (binascii.Error, ValueError, IndexError):
            raise ConfigError(f"signing key {where} is not a minisign secret key") from None
        if len(blob) != 158 or blob[:2] != ALG or blob[4:6] != CHK:
            raise ConfigError(f"signing key {where} is not a minisign Ed25519 secret key")
        if blob[2:4] == KDF_SCRYPT:
            raise ConfigError(
                f"signing key {where} is password-protected; deltadump needs an unencrypted key in a 0600 file",
                hint="create one with 'minisign -G -W' or let deltadump create it",
            )
        if blob[2:4] != KDF_NONE:
            raise ConfigError(f"signing key {where} uses an unknown key derivation")
        key_id, sk, chk = blob[54:62], blob[62:126], blob[126:158]
        key = cls(key_id, sk[:32])
        if key.public.raw != sk[32:]:
            raise ConfigError(f"signing key {where} is damaged (its two halves do not match)")
        # minisign -W writes a zero checksum; ours is the BLAKE2b of the key: either is accepted
        if chk != bytes(32) and chk != hashlib.blake2b(ALG + key_id + sk, digest_size=32).digest():
            raise ConfigError(f"signing key {where} is damaged (checksum mismatch)")
        return key


def load_secret(path: Path) -> SecretKey:
    try:
        st = os.stat(path)
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"signing key {path} does not exist") from None
    except OSError as exc:
        raise storage_error(exc, path, "reading the signing key") from exc
    if st.st_mode & 0o077:
        raise ConfigError(
            f"signing key {path} is readable by others (mode {st.st_mode & 0o777:o})", hint=f"chmod 600 {path}"
        )
    return SecretKey.parse(text, str(path))


def create_secret(path: Path) -> SecretKey:
    """A new key in `path` (0600, never overwriting) and its public key in `path`.pub (0644)."""
    key = SecretKey.generate()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"signing key {path} already exists; not overwriting it") from None
    except OSError as exc:
        raise storage_error(exc, path, "creating the signing key") from exc
    with os.fdopen(fd, "w") as f:
        f.write(key.encode())
        f.flush()
        os.fsync(f.fileno())
    write_bytes_atomic(pub_path(path), key.public.pub_file().encode(), mode=0o644)
    return key


def pub_path(secret: Path) -> Path:
    return secret.with_name(secret.name + ".pub")


def load_public(text_or_path: str) -> PublicKey:
    """--trust KEY: a public key ("RW...") or the path of a minisign .pub file."""
    p = Path(text_or_path).expanduser()
    if not text_or_path.startswith("RW") and p.is_file():
        try:
            return PublicKey.parse(p.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read public key {p}: {exc.strerror}") from exc
    return PublicKey.parse(text_or_path)
