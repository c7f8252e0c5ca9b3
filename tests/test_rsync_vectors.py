"""The spec's test vectors (generated with the real rdiff 2.3.2): signatures and deltas byte for byte."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from deltadump.rsync import delta, patch, signature
from deltadump.rsync.format import sig_args
from deltadump.rsync.sums import strong_hasher, weak_one

E = b""
O = b"A"
P = bytes(i % 251 for i in range(5000))
R = random.Random(42).randbytes(1048576)
B5 = random.Random(1).randbytes(5000)

OPTS = {
    "default": {},
    "md4-rk": dict(block_len=2048, strong_len=8, strong="md4"),
    "md4-rs": dict(block_len=2048, strong_len=8, strong="md4", weak="rollsum"),
    "b2-rs": dict(weak="rollsum"),
    "min": dict(strong_len=-1),
    "md4": dict(strong="md4"),
}

HEX = {
    ("E", "default"): "727301470000010000000020",
    ("E", "md4-rk"): "727301460000080000000008",
    ("E", "md4-rs"): "727301360000080000000008",
    ("E", "b2-rs"): "727301370000010000000020",
    ("E", "min"): "727301470000010000000005",
    ("E", "md4"): "727301460000010000000010",
    (
        "O",
        "default",
    ): "72730147000001000000002008104266a3a0081351bb785d0758ddf68076a95ffd3f10b88bbc9911e9fea4d793c06414",
    ("O", "md4-rk"): "72730146000008000000000808104266d5ef20eeb3f75679",
    ("O", "md4-rs"): "72730136000008000000000800600060d5ef20eeb3f75679",
    ("O", "b2-rs"): "72730137000001000000002000600060a3a0081351bb785d0758ddf68076a95ffd3f10b88bbc9911e9fea4d793c06414",
    ("O", "min"): "72730147000001000000000508104266a3a0081351",
    ("O", "md4"): "72730146000001000000001008104266d5ef20eeb3f75679f86cf57f93ed0ffe",
    ("P", "md4-rk"): "72730146000008000000000836cde615f6e86a99cf04b325796dd75595a128893e853ef8acf566fb908a1241d68d4ad7",
    ("P", "md4-rs"): "7273013600000800000000082d90cf84f6e86a99cf04b325fa50d5c495a128893e853ef8dbea3892908a1241d68d4ad7",
}

SHA = {
    ("P", "default"): (732, "b1d253e53429bee95e4ea8e7a9cdb18d74f82f1ca38787e99ff28a8b97fb4fd7"),
    ("P", "b2-rs"): (732, "14fc66d95d83630acc5544f552f904a8243e0e3d1d299331c3813b0076d9dcb1"),
    ("P", "min"): (212, "16ef58d9687147dcad00e7000357768fb680e481e1e9ef7b92f3887966cf037c"),
    ("P", "md4"): (412, "6f78da54bbe33f1c8d6434840767b7b00e22e411581d31691b75265705bbb3b9"),
    ("R", "default"): (36876, "94df9fa3ac232e1b5267a2f0b964d56e5a93b93a87b1bcd36483972299d772de"),
    ("R", "md4-rk"): (6156, "e7d2b6cf4607febff14fe980b70ab545850bea488b3f96a6f9643e695b463e88"),
    ("R", "md4-rs"): (6156, "07c05119fdee40df2706aaaaeae307d13ee9ff88e2b5a0b71fc3ecb8b8473f29"),
    ("R", "b2-rs"): (36876, "0cb2201575d9e22a9104eb35f74b54728768d796e29b5df4199d4ea0c2aad710"),
    ("R", "min"): (11276, "60fdfc9e63e6ac58bfc2b23643b7472b0385fc8823a51589f98413be963fcba4"),
    ("R", "md4"): (20492, "f799bf9c543498fa3e04d963b9443af071b4bac93df22f750477e1cee50c0a8f"),
}

INPUTS = {"E": E, "O": O, "P": P, "R": R}


def _sig(tmp: Path, data: bytes, **kw: object) -> bytes:
    (tmp / "in").write_bytes(data)
    signature(tmp / "in", tmp / "sig", **kw)  # type: ignore[arg-type]
    return (tmp / "sig").read_bytes()


@pytest.mark.parametrize(("inp", "opt"), sorted(HEX))
def test_small_signature_hex(tmp: Path, inp: str, opt: str) -> None:
    assert _sig(tmp, INPUTS[inp], **OPTS[opt]).hex() == HEX[(inp, opt)]


@pytest.mark.parametrize(("inp", "opt"), sorted(SHA))
def test_signature_sha256(tmp: Path, inp: str, opt: str) -> None:
    out = _sig(tmp, INPUTS[inp], **OPTS[opt])
    size, digest = SHA[(inp, opt)]
    assert len(out) == size
    assert hashlib.sha256(out).hexdigest() == digest


def test_signature_from_pipe_uses_unknown_size_defaults(tmp: Path) -> None:
    import io

    class Pipe(io.RawIOBase):  # a stream with no fileno: size unknown, like a pipe
        def __init__(self, data: bytes) -> None:
            self.b = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buf: bytearray) -> int:  # type: ignore[override]
            n = self.b.readinto(buf)
            return n

    out = io.BytesIO()
    signature(io.BufferedReader(Pipe(R)), out)
    got = out.getvalue()
    assert len(got) == 18444
    assert got[:12].hex() == "727301470000080000000020"


def test_weak_and_strong_examples() -> None:
    assert weak_one(b"A", "rabinkarp") == 0x08104266
    assert weak_one(b"A", "rollsum") == 0x00600060
    md4 = strong_hasher("md4")
    assert md4(b"").hex() == "31d6cfe0d16ae931b73c59d7e0c089c0"
    assert md4(b"abc").hex() == "a448017aaf21d8525fc10ae87aa6729d"


@pytest.mark.parametrize(
    ("size", "block", "strong"),
    [(0, 256, 5), (5000, 256, 6), (65536, 256, 6), (65537, 256, 6), (1048575, 896, 7), (1048576, 1024, 7),
     (2**24, 4096, 7), (10**8, 9984, 7), (2**30, 32768, 8), (2**32 + 1, 65536, 8), (10**11, 316160, 9),
     (10**12, 999936, 10), (None, 2048, 12)],
)  # fmt: skip
def test_sig_args_table(size: int | None, block: int, strong: int) -> None:
    p = sig_args(size, 0x72730147, 0, -1)
    assert (p.block_len, p.strong_len) == (block, strong)


def test_min_strong_uses_chosen_block() -> None:
    assert sig_args(1 << 20, 0x72730147, 100, -1).strong_len == 7


DELTAS = {
    "D6": (B5, B5[256:768] + b"xyz" + B5[4864:], {}, 18, "727302364a010002000378797a4913008800"),
    "D5": (
        B5,
        B5[1000:3000] + b"INSERTED" + B5[:1000] + B5[3000:4900] + B5[4864:],
        {},
        586,
        "231d147be20d015bb319fcdec82096ba8b487223b49c1da29fec34e1b1ff9304",
    ),
    "D1": (
        P,
        P[1000:3000] + b"INSERTED" + P[:1000] + P[3000:4900],
        {},
        580,
        "c62a79104ecc424b5273cd4862d8d68c716ef16aca37784bf9618dd9dffb45bc",
    ),
    "D2": (
        R,
        R[:300000] + b"The quick brown fox" + R[300000:700000] + R[800000:] + random.Random(7).randbytes(40000),
        {},
        42460,
        "356262644c68200ef8d31188d7537d1826a41f1e73f9f36fa687b340d336c40d",
    ),
    "D3": (E, P, {}, 5064, "35629245360f7fee74dcb26d91641ac713eca03c80944e83848200c85d76deb7"),
    "D4": (
        P,
        P[1000:3000] + b"INSERTED" + P[:1000] + P[3000:4900],
        OPTS["md4-rs"],
        4916,
        "07e29ef9a9e31c24779ff503a4d6f67662c1559e2bae0aa8f7911771e60ac0d3",
    ),
}


@pytest.mark.parametrize("name", sorted(DELTAS))
@pytest.mark.parametrize("exact", [True, False])
def test_delta_vectors(tmp: Path, name: str, exact: bool) -> None:
    basis, new, kw, size, digest = DELTAS[name]
    _sig(tmp, basis, **kw)
    (tmp / "new").write_bytes(new)
    delta(tmp / "sig", tmp / "new", tmp / "delta", exact=exact)
    d = (tmp / "delta").read_bytes()
    assert len(d) == size
    assert (d.hex() if len(digest) != 64 else hashlib.sha256(d).hexdigest()) == digest
    patch(tmp / "in", tmp / "delta", tmp / "out")
    assert (tmp / "out").read_bytes() == new
