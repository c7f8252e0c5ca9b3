"""Bad input: every case gets rdiff's exit code, one clear message, no traceback, no output left."""

from __future__ import annotations

import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deltadump.errors import RsyncError
from deltadump.rsync import delta, patch, signature

CLI = [sys.executable, "-m", "deltadump.cli.rdiff"]
BASIS = random.Random(3).randbytes(20_000)
NEW = BASIS[:5000] + b"changed" + BASIS[6000:]


@pytest.fixture
def files(tmp: Path, rdiff_bin: str) -> Path:
    (tmp / "basis").write_bytes(BASIS)
    (tmp / "new").write_bytes(NEW)
    subprocess.run([rdiff_bin, "signature", tmp / "basis", tmp / "sig"], check=True)
    subprocess.run([rdiff_bin, "delta", tmp / "sig", tmp / "new", tmp / "delta"], check=True)
    return tmp


def both(rdiff: str, tmp: Path, *args: str | Path) -> tuple[subprocess.CompletedProcess[bytes], ...]:
    """Run rdiff and ours with the same arguments (outputs to separate names)."""
    res = []
    for f in ("out.ours", "out.theirs"):
        (tmp / f).unlink(missing_ok=True)
    for prog, suffix in (([rdiff], ".theirs"), (CLI, ".ours")):
        argv = [str(a).replace("OUT", "out" + suffix) for a in args]
        res.append(subprocess.run([*prog, *argv], capture_output=True, cwd=tmp))
    return tuple(res)


def corrupt(tmp: Path, name: str, data: bytes) -> str:
    (tmp / name).write_bytes(data)
    return name


def bad_inputs(tmp: Path) -> dict[str, tuple[str, ...]]:
    sig = (tmp / "sig").read_bytes()
    d = (tmp / "delta").read_bytes()
    copy_past_end = struct.pack(">I", 0x72730236) + bytes([0x4D]) + struct.pack(">IB", 19_990, 200) + b"\0"
    return {
        "sig wrong magic": ("delta", corrupt(tmp, "s1", b"XXXX" + sig[4:]), "new", "OUT"),
        "sig empty": ("delta", corrupt(tmp, "s2", b""), "new", "OUT"),
        "sig truncated header": ("delta", corrupt(tmp, "s3", sig[:7]), "new", "OUT"),
        "sig truncated record": ("delta", corrupt(tmp, "s4", sig[: 12 + 36 * 3 + 10]), "new", "OUT"),
        "sig absurd block len": ("delta", corrupt(tmp, "s5", sig[:4] + b"\xff\xff\xff\xf0" + sig[8:]), "new", "OUT"),
        "sig zero block len": ("delta", corrupt(tmp, "s6", sig[:4] + b"\0\0\0\0" + sig[8:]), "new", "OUT"),
        "sig absurd strong len": ("delta", corrupt(tmp, "s7", sig[:8] + b"\0\0\0\x40" + sig[12:]), "new", "OUT"),
        "md4 sig with strong 20": (
            "delta", corrupt(tmp, "s8", b"rs\x01\x46" + sig[4:8] + b"\0\0\0\x14" + sig[12:]), "new", "OUT"),
        "delta given as signature": ("delta", "delta", "new", "OUT"),
        "signature given as delta": ("patch", "basis", "sig", "OUT"),
        "delta wrong magic": ("patch", "basis", corrupt(tmp, "d1", b"rs\x02\x37" + d[4:]), "OUT"),
        "delta empty": ("patch", "basis", corrupt(tmp, "d2", b""), "OUT"),
        "delta truncated": ("patch", "basis", corrupt(tmp, "d3", d[: len(d) // 2]), "OUT"),
        "delta without END": ("patch", "basis", corrupt(tmp, "d4", d[:-1]), "OUT"),
        "copy beyond basis": ("patch", "basis", corrupt(tmp, "d5", copy_past_end), "OUT"),
        "bogus opcode": ("patch", "basis", corrupt(tmp, "d6", d[:4] + b"\x60" + d[4:]), "OUT"),
        "zero-length literal": ("patch", "basis", corrupt(tmp, "d7", d[:4] + b"\x41\x00" + d[4:]), "OUT"),
        "missing input": ("patch", "nonexistent", "delta", "OUT"),
        "output exists": ("signature", "basis", "new"),
        "unknown option": ("--frobnicate", "signature", "basis", "OUT"),
        "too many arguments": ("patch", "basis", "delta", "OUT", "extra"),
        "strong too long": ("-S", "33", "signature", "basis", "OUT"),
    }  # fmt: skip


def test_bad_inputs_match_rdiff_exit_codes(files: Path, rdiff_bin: str) -> None:
    for name, args in bad_inputs(files).items():
        theirs, ours = both(rdiff_bin, files, *args)
        assert theirs.returncode != 0, name
        assert ours.returncode == theirs.returncode, (name, ours.stderr, theirs.stderr)
        err = ours.stderr.decode()
        assert "Traceback" not in err and err.strip(), name
        assert not (files / "out.ours").exists(), f"{name}: left an output file behind"
    assert (files / "new").read_bytes() == NEW  # "output exists" left it untouched


def test_library_errors_carry_codes(files: Path) -> None:
    with pytest.raises(RsyncError) as e:
        patch(files / "basis", files / "sig", files / "o")
    assert e.value.rs_code == 104 and "magic" in str(e.value)
    with pytest.raises(RsyncError) as e:
        delta(files / "delta", files / "new", files / "o")  # header read as block/strong lengths first
    assert e.value.rs_code == 106 and "implausible" in str(e.value)
    with pytest.raises(RsyncError) as e:
        signature(files / "basis", files / "o", block_len=-5)
    assert e.value.rs_code == 108
    assert not (files / "o").exists()


def test_changed_basis_is_refused_when_hashes_given(files: Path) -> None:
    import hashlib

    good = hashlib.sha256(BASIS).hexdigest()
    patch(
        files / "basis", files / "delta", files / "o", basis_sha256=good, result_sha256=hashlib.sha256(NEW).hexdigest()
    )
    assert (files / "o").read_bytes() == NEW
    (files / "basis").write_bytes(BASIS[:100] + b"x" + BASIS[101:])
    with pytest.raises(RsyncError) as e:
        patch(files / "basis", files / "delta", files / "o2", basis_sha256=good)
    assert "basis" in str(e.value) and "changed" in str(e.value)
    assert not (files / "o2").exists()
    # a wrong expected result is caught after patching, and nothing is left behind
    (files / "basis").write_bytes(BASIS)
    with pytest.raises(RsyncError) as e:
        patch(files / "basis", files / "delta", files / "o3", result_sha256="0" * 64)
    assert not (files / "o3").exists()


def _fuzz_case(tmp: Path, rdiff: str, kind: str, blob: bytes) -> None:
    (tmp / "m").write_bytes(blob)
    args = ("delta", "m", "new", "OUT") if kind == "sig" else ("patch", "basis", "m", "OUT")
    theirs, ours = both(rdiff, tmp, *args)
    assert b"Traceback" not in ours.stderr
    assert (ours.returncode == 0) == (theirs.returncode == 0), (ours.stderr, theirs.stderr)
    if ours.returncode == 0 and kind == "delta":
        assert (tmp / "out.ours").read_bytes() == (tmp / "out.theirs").read_bytes()
    if ours.returncode != 0:
        assert not (tmp / "out.ours").exists()
    if kind == "delta":  # the two-thread path (for large files) gives the same code and output
        from unittest import mock

        from deltadump.rsync import patcher

        (tmp / "out.par").unlink(missing_ok=True)
        with mock.patch.object(patcher, "PARALLEL_MIN", 0):
            try:
                patch(tmp / "basis", tmp / "m", tmp / "out.par")
                code = 0
            except RsyncError as exc:
                code = exc.rs_code
        assert code == ours.returncode, (code, ours.stderr)
        if code == 0:
            assert (tmp / "out.par").read_bytes() == (tmp / "out.theirs").read_bytes()
        else:
            assert not (tmp / "out.par").exists()


mutation = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255), st.sampled_from("rdit")), max_size=6)


def apply(data: bytes, muts: list[tuple[int, int, str]]) -> bytes:
    b = bytearray(data)
    for pos, val, op in muts:
        p = pos % (len(b) + 1)
        if op == "r" and p < len(b):
            b[p] = val
        elif op == "d":
            del b[p : p + val % 17 + 1]
        elif op == "i":
            b[p:p] = bytes([val]) * (val % 5 + 1)
        else:
            del b[p:]
    return bytes(b)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(muts=mutation)
def test_fuzz_mutated_deltas(files: Path, rdiff_bin: str, muts: list[tuple[int, int, str]]) -> None:
    _fuzz_case(files, rdiff_bin, "delta", apply((files / "delta").read_bytes(), muts))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(muts=mutation)
def test_fuzz_mutated_signatures(files: Path, rdiff_bin: str, muts: list[tuple[int, int, str]]) -> None:
    _fuzz_case(files, rdiff_bin, "sig", apply((files / "sig").read_bytes(), muts))
