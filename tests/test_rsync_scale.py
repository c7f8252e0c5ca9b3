"""The engine at both ends of the size range, against the real rdiff.

Small files: the pure-Python forms (rsync/small.py) give byte for byte what the numpy forms give,
and rdiff's signatures, for many sizes around the thresholds; a command on a small file imports no
numpy. Large files: the signature parameters chosen for a size keep a loaded signature under its
budget (a pure rule, checked here for any size), a loaded signature takes what the rule counts, and
a delta's peak memory, measured in a process of its own, stays within that plus a fixed working set
and does not grow with the input.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_rsync_compat import mutate, text_like

from deltadump.errors import RsyncError
from deltadump.rsync import bounded_sig_params, delta, differ, patch, sig_args, sig_memory, signature, signer, small
from deltadump.rsync.format import BOUNDED_STRONG_LEN, RS_RK_BLAKE2_SIG_MAGIC, SIG_MEMORY_BUDGET

CLI = [sys.executable, "-m", "deltadump.cli.rdiff"]
SIG_TYPES = [("rabinkarp", "blake2"), ("rollsum", "blake2"), ("rabinkarp", "md4"), ("rollsum", "md4")]


def use_pure(monkeypatch: pytest.MonkeyPatch, pure: bool) -> None:
    """Send every input through the pure-Python forms, or none."""
    v = 1 << 62 if pure else -1
    for mod, names in ((small, ("SIGNATURE_MAX", "DELTA_MAX", "SIG_MAX")), (differ, ("DELTA_MAX", "SIG_MAX")),
                       (signer, ("SIGNATURE_MAX",))):  # fmt: skip
        for name in names:
            monkeypatch.setattr(mod, name, v)


def rdiff(rdiff_bin: str, *args: object) -> None:
    subprocess.run([rdiff_bin, "-f", *map(str, args)], check=True, capture_output=True)


# sizes around the block lengths, the tails, and small.DELTA_MAX / SIG_MAX (256 KiB)
SIZES = [0, 1, 2, 255, 256, 257, 511, 512, 513, 1023, 5000, 65536, 65537, 100_003, 262_143, 262_144, 262_145]


@pytest.mark.parametrize("size", SIZES)
def test_pure_forms_equal_numpy_forms_and_rdiff(
    tmp: Path, rdiff_bin: str, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(size)
    basis = text_like(rng, size) if size % 2 else rng.randbytes(size)
    new = mutate(rng, basis, 1 + size // 10_000) if size else rng.randbytes(700)
    if size > 600:  # a copy of the basis's short last block at the end (the shrinking tail windows)
        new += basis[-(size % 512 or 100) :]
    (tmp / "b").write_bytes(basis)
    (tmp / "n").write_bytes(new)
    for i, (weak, strong) in enumerate(SIG_TYPES):
        block = [0, 7, 512, 64][i]
        sl = [0, -1, 8, 0][i]
        rdiff(rdiff_bin, "-b", block, "-S", sl, "-R", weak, "-H", strong, "signature", tmp / "b", tmp / "theirs.sig")
        out = {}
        for pure in (True, False):
            use_pure(monkeypatch, pure)
            signature(tmp / "b", tmp / "ours.sig", block_len=block, strong_len=sl, weak=weak, strong=strong)
            assert (tmp / "ours.sig").read_bytes() == (tmp / "theirs.sig").read_bytes(), (weak, strong, pure)
            delta(tmp / "ours.sig", tmp / "n", tmp / "ours.delta")
            out[pure] = (tmp / "ours.delta").read_bytes()
        assert out[True] == out[False], (weak, strong)
        rdiff(rdiff_bin, "patch", tmp / "b", tmp / "ours.delta", tmp / "o")
        assert (tmp / "o").read_bytes() == new


def test_pure_forms_on_random_cases(tmp: Path, rdiff_bin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Repeats, reorders and moved runs of blocks, random block lengths: the same path, both forms."""
    rng = random.Random(11)
    for case in range(40):
        unit = rng.randbytes(rng.choice([64, 256, 512]))
        parts = [unit * rng.randint(0, 3), rng.randbytes(rng.randint(0, 4000)), unit, rng.randbytes(300)]
        basis = b"".join(rng.sample(parts, len(parts)))
        new = mutate(rng, basis, 3) + unit
        (tmp / "b").write_bytes(basis)
        (tmp / "n").write_bytes(new)
        weak, strong = SIG_TYPES[case % 4]
        block = rng.choice([0, 1, 16, 64, 100, 256])
        out = {}
        for pure in (True, False):
            use_pure(monkeypatch, pure)
            signature(tmp / "b", tmp / f"s{pure}", block_len=block, weak=weak, strong=strong)
            delta(tmp / f"s{pure}", tmp / "n", tmp / f"d{pure}")
            out[pure] = ((tmp / f"s{pure}").read_bytes(), (tmp / f"d{pure}").read_bytes())
        assert out[True] == out[False], case
        rdiff(rdiff_bin, "patch", tmp / "b", tmp / "dTrue", tmp / "o")
        assert (tmp / "o").read_bytes() == new, case


@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_commands_at_the_thresholds_match_rdiff(tmp: Path, rdiff_bin: str, offset: int) -> None:
    """As the command runs it: inputs one byte below, at and above each threshold (the dispatch
    itself), also through pipes, give rdiff's signature and a delta rdiff patches."""
    rng = random.Random(offset)
    size = small.SIGNATURE_MAX + offset
    basis = rng.randbytes(size)
    (tmp / "b").write_bytes(basis)
    subprocess.run([*CLI, "-f", "-b", "512", "signature", tmp / "b", tmp / "ours.sig"], check=True)
    rdiff(rdiff_bin, "-b", 512, "signature", tmp / "b", tmp / "theirs.sig")
    assert (tmp / "ours.sig").read_bytes() == (tmp / "theirs.sig").read_bytes()
    # signatures just under and over SIG_MAX (at 512/32, 36 bytes a block), new files just under, at
    # and over DELTA_MAX, also from a pipe: every combination of the two forms
    nb = (small.SIG_MAX - 12) // 36
    for blocks in (nb, nb + 1):
        sig_basis = rng.randbytes(blocks * 512)
        (tmp / "b2").write_bytes(sig_basis)
        subprocess.run([*CLI, "-f", "-b", "512", "signature", tmp / "b2", tmp / "s2"], check=True)
        assert ((tmp / "s2").stat().st_size <= small.SIG_MAX) == (blocks == nb)
        new = sig_basis[1000 : 1000 + small.DELTA_MAX + offset - 50] + rng.randbytes(50)
        (tmp / "n").write_bytes(new)
        for src in ("file", "pipe"):
            args = [tmp / "s2", tmp / "n", tmp / "d"] if src == "file" else [tmp / "s2", "-", tmp / "d"]
            with open(tmp / "n", "rb") as f:
                subprocess.run([*CLI, "-f", "delta", *args], stdin=f, check=True)
            rdiff(rdiff_bin, "patch", tmp / "b2", tmp / "d", tmp / "o")
            assert (tmp / "o").read_bytes() == new, (blocks, src)


def _modules_after(tmp: Path, *args: object) -> set[str]:
    """The modules a command imports, beyond those the interpreter has at start (site's own)."""
    code = (
        "import sys\nstart = set(sys.modules)\nfrom deltadump.cli.rdiff import run\n"
        "code = run(sys.argv[1:], sys.stdin.buffer, sys.stdout.buffer, sys.stderr)\n"
        "print(code, ' '.join(sorted(set(sys.modules) - start)))\n"
    )
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=True)
    status, mods = r.stdout.split(" ", 1)
    assert status == "0", r.stderr
    return set(mods.split())


def test_small_files_need_no_numpy_and_no_workers(tmp: Path) -> None:
    """A command on a small file costs about an interpreter's start: no numpy, no multiprocessing,
    no threads; a large one brings them."""
    rng = random.Random(2)
    basis = rng.randbytes(10_000)
    (tmp / "b").write_bytes(basis)
    (tmp / "n").write_bytes(basis[:3000] + b"edit" + basis[3100:])
    heavy = {"numpy", "multiprocessing", "threading", "typing", "pathlib", "hashlib"}
    for args in (
        ("signature", tmp / "b", tmp / "s"),
        ("delta", tmp / "s", tmp / "n", tmp / "d"),
        ("patch", tmp / "b", tmp / "d", tmp / "o"),
    ):
        loaded = _modules_after(tmp, "-f", *args)
        assert not heavy & loaded, (args[0], heavy & loaded)
    assert (tmp / "o").read_bytes() == (tmp / "n").read_bytes()
    (tmp / "big").write_bytes(rng.randbytes(small.SIGNATURE_MAX + 1))
    assert "numpy" in _modules_after(tmp, "-f", "signature", tmp / "big", tmp / "s")


# --- the signature parameters for large files ----------------------------------------------------


def _check_rule(size: int, min_block: int, budget: int) -> None:
    try:
        block, sl = bounded_sig_params(size, min_block, budget)
    except ValueError:  # only when even the longest block the format allows would not do
        longest = ((1 << 31) - 1) // min_block * min_block
        assert sig_memory(-(-size // longest), BOUNDED_STRONG_LEN) > budget
        return
    nb = -(-size // block)
    assert sl == BOUNDED_STRONG_LEN
    assert block % min_block == 0 and block >= min_block
    assert sig_memory(nb, sl) <= budget
    if block > min_block:  # the smallest that fits: one step smaller would not
        assert sig_memory(-(-size // (block - min_block)), sl) > budget
    if size:  # never weaker than librsync's recommended minimum for this size and block length
        assert sig_args(size, RS_RK_BLAKE2_SIG_MAGIC, block, -1).strong_len <= sl


@settings(max_examples=400, deadline=None)
@given(
    size=st.one_of(st.integers(0, 1 << 32), st.integers(0, 10**16)),
    min_block=st.sampled_from([1, 64, 512, 700, 4096]),
    budget=st.one_of(st.just(SIG_MEMORY_BUDGET), st.integers(8 << 10, 1 << 30)),
)
def test_signature_parameters_keep_any_size_under_the_budget(size: int, min_block: int, budget: int) -> None:
    _check_rule(size, min_block, budget)


def test_signature_parameters_keep_512_up_to_a_gibibyte() -> None:
    assert bounded_sig_params(0) == (512, 16)
    assert bounded_sig_params(400 * 10**6) == (512, 16)
    assert bounded_sig_params(1 << 30) == (512, 16)  # 2**21 blocks: 48 MiB of sums + a 16 MiB filter
    assert sig_memory(1 << 21, 16) == SIG_MEMORY_BUDGET
    assert bounded_sig_params((1 << 30) + 1) == (1024, 16)
    assert bounded_sig_params(12 * 10**9) == (6144, 16)
    assert bounded_sig_params(50 * 10**9) == (24064, 16)
    for size in (10**12, 10**15):
        _check_rule(size, 512, SIG_MEMORY_BUDGET)
    with pytest.raises(ValueError):
        bounded_sig_params(-1)
    with pytest.raises(ValueError):
        bounded_sig_params(100, min_block=0)
    with pytest.raises(ValueError):
        bounded_sig_params(100, budget=100)  # not even one block and the smallest filter
    with pytest.raises(ValueError):
        bounded_sig_params(1 << 62)  # would need blocks beyond the format's 2**31


def test_a_loaded_signature_takes_what_the_rule_counts(tmp: Path) -> None:
    from deltadump.rsync.differ import load_signature

    rng = random.Random(4)
    for size, budget in ((3 << 20, SIG_MEMORY_BUDGET), (20 << 20, 1 << 20)):
        (tmp / "b").write_bytes(rng.randbytes(size))
        block, sl = bounded_sig_params(size, 512, budget)
        signature(tmp / "b", tmp / "s", block_len=block, strong_len=sl)
        sig = load_signature(tmp / "s")
        assert sig.nbytes == sig_memory(sig.nblocks, sl) <= budget
        assert sig.nblocks == -(-size // block)
        # its bytes in memory (as a backup holds a signature it checked) load to the same signature,
        # which makes the same delta as the file
        raw = (tmp / "s").read_bytes()
        held = load_signature(raw)
        assert (held.nblocks, held.nbytes, bytes(held.strong_mv)) == (sig.nblocks, sig.nbytes, bytes(sig.strong_mv))
        new = bytearray((tmp / "b").read_bytes())
        new[size // 3 : size // 3 + 100] = rng.randbytes(100)
        (tmp / "n").write_bytes(new)
        delta(held, tmp / "n", tmp / "d1")
        delta(tmp / "s", tmp / "n", tmp / "d2")
        assert (tmp / "d1").read_bytes() == (tmp / "d2").read_bytes()
        with pytest.raises(RsyncError):
            load_signature(raw[: len(raw) - sl])  # cut inside a record


# --- memory of a delta, measured in a process of its own ------------------------------------------


def _write_dumplike(path: Path, size: int, seed: int) -> bytes:
    """A basis of `size` bytes (random rows) and returns what a new version inserts: the caller
    builds it (edits, a moved run, 16 MiB of new rows that make the search's regions grow)."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 << 20)
            f.write(rng.randbytes(n))
            left -= n
    return rng.randbytes(16 << 20)


def _make_new(basis: Path, new: Path, inserted: bytes, seed: int) -> None:
    rng = random.Random(seed)
    size = basis.stat().st_size
    cut = size // 3
    with open(basis, "rb") as b, open(new, "wb") as n:
        while (pos := b.tell()) < size:
            chunk = b.read(min(4 << 20, size - pos))
            if pos <= cut < pos + len(chunk):
                i = cut - pos
                n.write(chunk[:i] + inserted + chunk[i:])
            else:
                e = rng.randrange(len(chunk))
                n.write(chunk[:e] + b"edit" + chunk[e + 4 :])


# The peak resident size of this process (VmHWM, KiB). Not ru_maxrss: on Linux a child's ru_maxrss
# starts from its parent's size at fork, so it would report the test runner's memory.
_PEAK = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')).split()[1])"
_MEASURE = f"""
import sys
from deltadump.rsync import delta
import deltadump.rsync.search
base = {_PEAK}
if sys.argv[1] == "alloc":
    a = bytearray(int(sys.argv[2]))
else:
    delta(sys.argv[1], sys.argv[2], sys.argv[3], parallel=False, durable=False)
print(base, {_PEAK})
"""


def _delta_peak(*args: object) -> tuple[int, int]:
    """(KiB after the imports, peak KiB) of a delta run alone in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, *map(str, args)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    before, peak = map(int, out.stdout.split())
    return before, peak


WORKING_SET = 48 << 20  # the search's own: a scan region (16 bytes a window, 1 MiB of windows), a run
#                         of up to 8 MiB with its digests, literal reads of 4 MiB, buffers


def test_delta_memory_is_the_signature_budget_plus_a_fixed_working_set(tmp: Path) -> None:
    """300 MB at the chosen parameters (512/16: 585,938 blocks): the peak of the whole delta stays
    within what the loaded signature takes plus the search's fixed working set."""
    size = 300 * 10**6
    inserted = _write_dumplike(tmp / "b", size, 1)
    _make_new(tmp / "b", tmp / "n", inserted, 2)
    block, sl = bounded_sig_params(size)
    signature(tmp / "b", tmp / "s", block_len=block, strong_len=sl)
    before, peak = _delta_peak(tmp / "s", tmp / "n", tmp / "d")
    model = sig_memory(-(-size // block), sl)
    assert (peak - before) * 1024 <= model + WORKING_SET, (peak - before, model)
    patch(tmp / "b", tmp / "d", tmp / "o")
    assert (tmp / "o").stat().st_size == (tmp / "n").stat().st_size
    assert subprocess.run(["cmp", "-s", tmp / "o", tmp / "n"]).returncode == 0


def test_delta_memory_does_not_grow_with_the_input(tmp: Path) -> None:
    """With a small budget (1 MiB) both a 40 MB and a 120 MB file get signatures of the same size
    (longer blocks for the larger): the delta's peak must not grow by anything like the 80 MB more
    of input it reads."""
    peaks = []
    for size in (40 * 10**6, 120 * 10**6):
        inserted = _write_dumplike(tmp / "b", size, size)
        _make_new(tmp / "b", tmp / "n", inserted, 3)
        block, sl = bounded_sig_params(size, 512, 1 << 20)
        signature(tmp / "b", tmp / "s", block_len=block, strong_len=sl)
        assert sig_memory(-(-size // block), sl) <= 1 << 20
        before, peak = _delta_peak(tmp / "s", tmp / "n", tmp / "d")
        peaks.append(peak - before)
        patch(tmp / "b", tmp / "d", tmp / "o")
        assert subprocess.run(["cmp", "-s", tmp / "o", tmp / "n"]).returncode == 0
    assert peaks[1] - peaks[0] < 8 << 10, peaks  # KiB


def test_the_measurement_sees_an_allocation_and_nothing_of_its_parent() -> None:
    """The measurement itself: 64 MiB allocated in the child show as 64 MiB more, while this (test
    runner) process holding 200 MiB does not show at all."""
    held = bytearray(200 << 20)
    before, peak = _delta_peak("alloc", 64 << 20)
    assert 64 << 10 <= peak - before < 80 << 10, (before, peak)
    assert before < 150 << 10, before
    del held
