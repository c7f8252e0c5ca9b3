"""Differential tests against the real rdiff 2.3.2: both directions, many sizes and block lengths."""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from deltadump.rsync import delta, parallel, patch, signature
from deltadump.rsync.small import strong_hasher

RDIFF_CLI = [sys.executable, "-m", "deltadump.cli.rdiff"]


def mutate(rng: random.Random, data: bytes, edits: int) -> bytes:
    """Dump-like changes: inserted rows, deleted rows, small in-place edits, a moved run."""
    new = bytearray(data)
    for _ in range(edits):
        p = rng.randint(0, len(new))
        op = rng.random()
        if op < 0.35:
            new[p:p] = rng.randbytes(rng.randint(1, 300))
        elif op < 0.65:
            del new[p : p + rng.randint(1, 300)]
        elif op < 0.9:
            new[p : p + 8] = rng.randbytes(8)
        elif len(new) > 2000:
            a = rng.randint(0, len(new) - 1000)
            run = new[a : a + 1000]
            del new[a : a + 1000]
            q = rng.randint(0, len(new))
            new[q:q] = run
    return bytes(new)


def text_like(rng: random.Random, n: int) -> bytes:
    words = [rng.randbytes(rng.randint(2, 9)).hex().encode() for _ in range(300)]
    out = bytearray()
    i = 0
    while len(out) < n:
        out += b"%d\t" % i + b" ".join(rng.choices(words, k=8)) + b"\n"
        i += 1
    return bytes(out[:n])


SIG_TYPES = [("rabinkarp", "blake2"), ("rabinkarp", "md4"), ("rollsum", "blake2"), ("rollsum", "md4")]
CASES = [
    (seed, size, block)
    for seed, (size, block) in enumerate(
        [(0, 0), (1, 0), (2, 1), (100, 7), (255, 0), (256, 0), (257, 0), (1000, 64), (4096, 256), (5000, 0),
         (65536, 0), (65537, 0), (70000, 1000), (100_000, 512), (300_000, 0), (300_000, 333), (1_000_000, 2048),
         (2_000_000, 0)]
    )
]  # fmt: skip


def run_rdiff(rdiff: str, *args: str | Path) -> None:
    subprocess.run([rdiff, "-f", *map(str, args)], check=True, capture_output=True)


@pytest.mark.parametrize(("seed", "size", "block"), CASES)
def test_signatures_identical_all_types(tmp: Path, rdiff_bin: str, seed: int, size: int, block: int) -> None:
    rng = random.Random(seed)
    data = text_like(rng, size) if seed % 2 else rng.randbytes(size)
    (tmp / "b").write_bytes(data)
    for weak, strong in SIG_TYPES:
        for sl in (0, -1, 5):
            signature(tmp / "b", tmp / "ours", block_len=block, strong_len=sl, weak=weak, strong=strong)
            run_rdiff(
                rdiff_bin, "-b", block, "-S", sl, "-R", weak, "-H", strong, "signature", tmp / "b", tmp / "theirs"
            )
            assert (tmp / "ours").read_bytes() == (tmp / "theirs").read_bytes(), (weak, strong, sl)


@pytest.mark.parametrize(("seed", "size", "block"), CASES)
def test_deltas_cross_patch(tmp: Path, rdiff_bin: str, seed: int, size: int, block: int) -> None:
    rng = random.Random(1000 + seed)
    basis = text_like(rng, size) if seed % 2 else rng.randbytes(size)
    new = mutate(rng, basis, 1 + size // 20000)
    (tmp / "b").write_bytes(basis)
    (tmp / "n").write_bytes(new)
    weak, strong = SIG_TYPES[seed % 4]
    run_rdiff(rdiff_bin, "-b", block, "-R", weak, "-H", strong, "signature", tmp / "b", tmp / "sig")
    run_rdiff(rdiff_bin, "delta", tmp / "sig", tmp / "n", tmp / "theirs.delta")
    for exact in (True, False):
        delta(tmp / "sig", tmp / "n", tmp / "ours.delta", exact=exact)
        ours = (tmp / "ours.delta").read_bytes()
        theirs = (tmp / "theirs.delta").read_bytes()
        if exact:
            assert ours == theirs
        assert len(ours) <= len(theirs) * 1.01 + 16
        # our delta through their patch, and their delta through ours
        run_rdiff(rdiff_bin, "patch", tmp / "b", tmp / "ours.delta", tmp / "o1")
        assert (tmp / "o1").read_bytes() == new
    patch(tmp / "b", tmp / "theirs.delta", tmp / "o2")
    assert (tmp / "o2").read_bytes() == new


@pytest.mark.parametrize("block", [0, 512, 3000])
def test_parallel_search_equals_sequential_and_rdiff(
    tmp: Path, rdiff_bin: str, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker-process search, stitched at piece boundaries, gives exactly the sequential result."""
    from deltadump.rsync import search

    monkeypatch.setattr(parallel, "MIN_PARALLEL_BYTES", 1 << 20)
    monkeypatch.setattr(search, "PIECE", 1 << 18)  # (4 MiB pieces would give this input one boundary: 23 here)
    rng = random.Random(block)
    basis = text_like(rng, 6_000_000)
    new = mutate(rng, basis, 400)
    (tmp / "b").write_bytes(basis)
    (tmp / "n").write_bytes(new)
    signature(tmp / "b", tmp / "sig", block_len=block, parallel=2)
    run_rdiff(rdiff_bin, "-b", block, "signature", tmp / "b", tmp / "sig2")
    assert (tmp / "sig").read_bytes() == (tmp / "sig2").read_bytes()
    run_rdiff(rdiff_bin, "delta", tmp / "sig", tmp / "n", tmp / "theirs")
    delta(tmp / "sig", tmp / "n", tmp / "par", exact=True, parallel=2)
    delta(tmp / "sig", tmp / "n", tmp / "seq", exact=True, parallel=False)
    assert (tmp / "par").read_bytes() == (tmp / "seq").read_bytes() == (tmp / "theirs").read_bytes()
    delta(tmp / "sig", tmp / "n", tmp / "fast", parallel=2)
    assert (tmp / "fast").stat().st_size <= (tmp / "theirs").stat().st_size
    patch(tmp / "b", tmp / "fast", tmp / "out")
    assert (tmp / "out").read_bytes() == new


@pytest.mark.parametrize("seed", range(4))
def test_parallel_patch_equals_sequential_and_rdiff(
    tmp: Path, rdiff_bin: str, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files on disk take the two-thread path (batches of adjacent output written from windows of
    the basis and delta); tiny batch and window sizes make every cut, split and window change happen
    on a small input. Its output must equal the sequential path's (delta from a pipe) and rdiff's."""
    from deltadump.rsync import patcher

    monkeypatch.setattr(patcher, "PARALLEL_MIN", 0)  # (a real patch this small takes the sequential path)
    monkeypatch.setattr(patcher, "_BATCH", [4096, 10_000, 65536, 1 << 20][seed])
    monkeypatch.setattr(patcher, "_WINDOW", [8192, 20_000, 1 << 17, 1 << 21][seed])
    monkeypatch.setattr(patcher, "_IOV_MAX", [3, 1024, 7, 1024][seed])
    rng = random.Random(500 + seed)
    basis = text_like(rng, 600_000)
    new = mutate(rng, basis, 60)
    new = new[300_000:] + rng.randbytes(50_000) + new[:300_000]  # far jumps back and forth, a long literal
    (tmp / "b").write_bytes(basis)
    (tmp / "n").write_bytes(new)
    run_rdiff(rdiff_bin, "-b", [64, 512, 2048, 0][seed], "signature", tmp / "b", tmp / "sig")
    run_rdiff(rdiff_bin, "delta", tmp / "sig", tmp / "n", tmp / "d")
    st = patch(tmp / "b", tmp / "d", tmp / "fast")
    assert (tmp / "fast").read_bytes() == new
    assert st.out_bytes == len(new) and st.copy_bytes + st.literal_bytes == len(new)
    with open(tmp / "d", "rb") as d:
        r = subprocess.run([*RDIFF_CLI, "patch", tmp / "b", "-", tmp / "seq"], stdin=d, capture_output=True)
    assert r.returncode == 0, r.stderr
    assert (tmp / "seq").read_bytes() == new
    run_rdiff(rdiff_bin, "patch", tmp / "b", tmp / "d", tmp / "theirs")
    assert (tmp / "theirs").read_bytes() == new
    # a copy past the end of the basis is refused on this path too, and nothing is left behind
    (tmp / "short").write_bytes(basis[:-5000])
    from deltadump.errors import RsyncError

    with pytest.raises(RsyncError, match="beyond the end of the basis"):
        patch(tmp / "short", tmp / "d", tmp / "never")
    assert not any(p.name.startswith(".") or p.name == "never" for p in tmp.iterdir()), list(tmp.iterdir())


def test_patch_with_the_basis_on_another_file_system(tmp: Path, rdiff_bin: str) -> None:
    """A basis on another file system than the output (a USB disk, a share, a tmpfs): the kernel copy
    between them is refused (EXDEV), and the patch copies by reading and writing instead. It ended in
    a traceback (exit 1) on every delta with a COPY of 64 KiB or more."""
    import os

    shm = Path("/dev/shm")
    assert shm.is_dir() and os.stat(shm).st_dev != os.stat(tmp).st_dev, "the test needs a tmpfs at /dev/shm"
    rng = random.Random(77)
    basis_data = text_like(rng, 3_000_000)
    new = mutate(rng, basis_data, 20)
    with tempfile.TemporaryDirectory(dir=shm) as there:
        basis = Path(there) / "basis"
        basis.write_bytes(basis_data)
        (tmp / "n").write_bytes(new)
        run_rdiff(rdiff_bin, "signature", basis, tmp / "sig")
        run_rdiff(rdiff_bin, "delta", tmp / "sig", tmp / "n", tmp / "d")
        r = subprocess.run([*RDIFF_CLI, "patch", basis, tmp / "d", tmp / "ours"], capture_output=True, text=True)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        assert (tmp / "ours").read_bytes() == new
        st = patch(basis, tmp / "d", tmp / "lib")
        assert (tmp / "lib").read_bytes() == new and st.copy_bytes + st.literal_bytes == len(new)
        assert max(n for c, _, n in _commands(tmp / "d") if c) >= 1 << 16  # (a copy the kernel would make)


def _commands(delta: Path) -> list[tuple[bool, int, int]]:
    """The (is_copy, position, length) commands of a delta file."""
    from deltadump.rsync.patcher import _Commands

    out = []
    with open(delta, "rb") as f:
        f.read(4)
        cmds = _Commands(f)  # type: ignore[arg-type]
        for c, pos, n in cmds:
            out.append((c, pos, n))
            if not c:
                for _ in cmds.take(n):
                    pass
    return out


def test_duplicate_blocks_merge_into_fewer_copies(tmp: Path, rdiff_bin: str) -> None:
    """Where identical blocks repeat, our default delta extends the running COPY (never larger)."""
    unit = random.Random(5).randbytes(256)
    basis = unit * 20 + random.Random(6).randbytes(5000) + unit * 20
    new = basis[5120:] + b"tail"
    (tmp / "b").write_bytes(basis)
    (tmp / "n").write_bytes(new)
    run_rdiff(rdiff_bin, "signature", tmp / "b", tmp / "sig")
    run_rdiff(rdiff_bin, "delta", tmp / "sig", tmp / "n", tmp / "theirs")
    delta(tmp / "sig", tmp / "n", tmp / "ours")
    assert (tmp / "ours").stat().st_size < (tmp / "theirs").stat().st_size
    run_rdiff(rdiff_bin, "patch", tmp / "b", tmp / "ours", tmp / "out")
    assert (tmp / "out").read_bytes() == new


# Wang et al.'s MD4 collision (two 64-byte messages, little-endian words): equal MD4, different bytes
_MD4_A = "4d7a9c83 56cb927a b9d5a578 57a7a5ee de748a3c dcc366b3 b683a020 3b2a5d9f c69d71b3 f9e99198 d79f805e a63bb2e8 45dd8e31 97e31fe5 2794bf08 b9e8c3e9"
_MD4_B = "4d7a9c83 d6cb927a 29d5a578 57a7a5ee de748a3c dcc366b3 b683a020 3b2a5d9f c69d71b3 f9e99198 d79f805e a63bb2e8 45dc8e31 97e31fe5 2794bf08 b9e8c3e9"


@pytest.mark.parametrize("strong", ["md4", "blake2"])
@pytest.mark.parametrize("weak", ["rabinkarp", "rollsum"])
@pytest.mark.parametrize("size", [3, 20_000])  # blocks each side: a small signature, and a large one
def test_a_block_whose_strong_sum_collides_with_the_next_is_not_copied(
    tmp: Path, rdiff_bin: str, strong: str, weak: str, size: int
) -> None:
    """MD4 collisions are easy to make (whoever writes rows can plant one), a 1-byte strong sum collides
    by chance: after a matched block, a window whose strong sum equals the next basis block's but whose
    bytes (and weak sum) differ is no match for librsync, and must be none for us: copied, it would
    patch back to other data than the input."""
    rng = random.Random(size)
    hasher = strong_hasher(strong)
    if strong == "md4":
        m1, m2 = (b"".join(int(w, 16).to_bytes(4, "little") for w in m.split()) for m in (_MD4_A, _MD4_B))
        strong_len = 0  # all 16 bytes
    else:
        m1, strong_len = rng.randbytes(64), 1
        m2 = next(b for b in iter(lambda: rng.randbytes(64), b"") if hasher(b)[:1] == hasher(m1)[:1])
    assert m1 != m2 and hasher(m1)[: strong_len or 16] == hasher(m2)[: strong_len or 16]
    head, tail = rng.randbytes(64 * size), rng.randbytes(64 * size)
    (tmp / "b").write_bytes(head + m1 + tail)
    new = head + m2 + tail
    (tmp / "n").write_bytes(new)
    sig_args = ("-b", 64, "-R", weak, "-H", strong, "-S", strong_len)
    run_rdiff(rdiff_bin, *sig_args, "signature", tmp / "b", tmp / "sig")
    run_rdiff(rdiff_bin, "delta", tmp / "sig", tmp / "n", tmp / "theirs")
    delta(tmp / "sig", tmp / "n", tmp / "exact", exact=True)
    assert (tmp / "exact").read_bytes() == (tmp / "theirs").read_bytes()
    delta(tmp / "sig", tmp / "n", tmp / "fast")
    for d in ("exact", "fast"):
        run_rdiff(rdiff_bin, "patch", tmp / "b", tmp / d, tmp / "out")
        assert (tmp / "out").read_bytes() == new, d


@pytest.mark.parametrize("weak", ["rabinkarp", "rollsum"])
def test_the_filter_lets_no_weak_sum_through_that_no_block_has(weak: str) -> None:
    """The search's bitmap filter passes some windows whose weak sum no block has (those that share a
    bit with a block's): the binary search must drop them, the ones past the largest key included (the
    search then ends past the sorted keys), and find every block's sum at the first place of its key."""
    import numpy as np

    from deltadump.rsync import search
    from deltadump.rsync.format import SIG_MAGICS, SigParams

    magic = next(m for m, (w, s) in SIG_MAGICS.items() if (w, s) == (weak, "blake2"))
    params = SigParams(magic, 64, 32)
    rng = np.random.default_rng(5)
    blocks = rng.integers(0, 1 << 32, 3000, dtype=np.uint64).astype(np.uint32)
    blocks[:3] = blocks[3]  # equal sums: the lowest block number first
    sig = search.Signature(params, [blocks.copy()], np.zeros(3000 * 32, dtype=np.uint8))
    keys = (blocks - np.uint32(sig.key_base)) * np.uint32(search.MIX)
    top = int(keys.max())
    # windows that share a block key's filter word and bit but are no block's: keys that differ from a
    # block's in a middle bit only, and keys past the largest
    same = {int(k) for k in keys}
    fakes = [f for f in (int(k) ^ 32 for k in keys) if f not in same]
    span = 1 << int(sig.word_shift)  # keys with the same top bits share a word
    past = list(range(top + 32, (top | (span - 1)) + 1, 32))[:3]
    probe = np.array([*fakes, *past, *keys.tolist()], dtype=np.uint32)
    assert len(fakes) > 2900 and past
    cand, places = sig.candidates(probe)
    assert cand == list(range(len(probe) - len(keys), len(probe)))
    for c, j in zip(cand, places, strict=True):
        k = int(probe[c])
        assert int(sig.sorted_keys[j]) == k and (j == 0 or int(sig.sorted_keys[j - 1]) != k)
    assert sig.candidates(probe[: len(fakes)]) == ([], [])
    assert int(sig.order[int(np.searchsorted(sig.sorted_keys, keys[0]))]) == 0  # blocks 0-3 are equal


def test_cli_pipes_and_option_forms(tmp: Path, rdiff_bin: str) -> None:
    rng = random.Random(9)
    basis = text_like(rng, 200_000)
    new = mutate(rng, basis, 20)
    (tmp / "b").write_bytes(basis)
    (tmp / "n").write_bytes(new)
    # signature from a pipe (size unknown) to stdout, with the 's' prefix and glued option forms
    ours = subprocess.run(
        [*RDIFF_CLI, "-b1024", "--sum-size=8", "s", "-", "-"], input=basis, capture_output=True, check=True
    ).stdout
    theirs = subprocess.run(
        [rdiff_bin, "-b", "1024", "-S", "8", "signature"], input=basis, capture_output=True, check=True
    ).stdout
    assert ours == theirs
    (tmp / "sig").write_bytes(ours)
    d = subprocess.run([*RDIFF_CLI, "d", tmp / "sig", "-"], input=new, capture_output=True, check=True).stdout
    (tmp / "d").write_bytes(d)
    out = subprocess.run([*RDIFF_CLI, "--", "p", tmp / "b", "-"], input=d, capture_output=True, check=True).stdout
    assert out == new
    st = subprocess.run([*RDIFF_CLI, "-s", "-f", "patch", tmp / "b", tmp / "d", tmp / "o"], capture_output=True)
    assert st.returncode == 0 and b"librsync: patch statistics:" in st.stderr
    assert (tmp / "o").read_bytes() == new
    help_out = subprocess.run([*RDIFF_CLI, "--help"], capture_output=True, check=True).stdout
    assert help_out == subprocess.run([rdiff_bin, "--help"], capture_output=True).stdout


@pytest.mark.parametrize("parallel_on", [False, True])
def test_basis_extension_shrinks_deltas_and_rdiff_patches_them(
    tmp: Path, rdiff_bin: str, parallel_on: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows that move (as updated rows do in a dump) leave unaligned edges; with the basis at hand
    matches grow over them. The delta stays a plain rdiff delta."""
    monkeypatch.setattr(parallel, "MIN_PARALLEL_BYTES", 1 << 20)
    rng = random.Random(11)
    rows = [text_like(rng, rng.randint(1100, 1600)) + b"\n" for _ in range(2000)]  # each holds a whole block
    basis = b"".join(rows)
    for _ in range(200):  # updated rows: removed, changed a little, appended at the end
        row = rows.pop(rng.randrange(len(rows)))
        rows.append(row[:10] + b"UPDATED" + row[17:])
    new = b"".join(rows)
    (tmp / "b").write_bytes(basis)
    (tmp / "n").write_bytes(new)
    signature(tmp / "b", tmp / "sig", block_len=512)
    plain = delta(tmp / "sig", tmp / "n", tmp / "plain", parallel=parallel_on)
    ext = delta(tmp / "sig", tmp / "n", tmp / "ext", basis=tmp / "b", parallel=parallel_on)
    assert plain.literal_bytes > 200 * 500  # without the basis: most of every moved row is literal
    assert ext.literal_bytes < 200 * 40, ext.literal_bytes  # with it: about the 7 changed bytes per row
    run_rdiff(rdiff_bin, "patch", tmp / "b", tmp / "ext", tmp / "out")
    assert (tmp / "out").read_bytes() == new


@pytest.mark.parametrize("seed", range(6))
def test_composed_chain_equals_patching_step_by_step(tmp: Path, rdiff_bin: str, seed: int) -> None:
    from deltadump.rsync.compose import compose, read_chunks, write

    rng = random.Random(seed)
    gens = [text_like(rng, rng.choice([0, 1, 5000, 200_000]))]
    for _ in range(rng.randint(1, 6)):
        gens.append(mutate(rng, gens[-1], rng.randint(0, 30)))
    deltas = []
    for i in range(1, len(gens)):
        (tmp / f"g{i - 1}").write_bytes(gens[i - 1])
        (tmp / f"g{i}").write_bytes(gens[i])
        if i % 2:  # mix our deltas and rdiff's
            signature(tmp / f"g{i - 1}", tmp / "s", block_len=rng.choice([0, 64, 512]))
            delta(tmp / "s", tmp / f"g{i}", tmp / f"d{i}", basis=tmp / f"g{i - 1}")
        else:
            run_rdiff(rdiff_bin, "signature", tmp / f"g{i - 1}", tmp / "s")
            run_rdiff(rdiff_bin, "delta", tmp / "s", tmp / f"g{i}", tmp / f"d{i}")
        deltas.append(tmp / f"d{i}")
    plan = compose(len(gens[0]), deltas)
    assert plan.size == len(gens[-1])
    chunk = rng.choice([1, 7, 4096, 1 << 20])  # the base arrives in pieces of this size
    written = write(plan, read_chunks(tmp / "g0", chunk), deltas, tmp / "out", chunk)
    assert written.base_bytes == len(gens[0])
    assert written.sha256 == hashlib.sha256(gens[-1]).hexdigest()
    assert (tmp / "out").read_bytes() == gens[-1]


def test_composed_write_refuses_a_short_base(tmp: Path) -> None:
    from deltadump.errors import RsyncError
    from deltadump.rsync.compose import compose, read_chunks, write

    rng = random.Random(7)
    old = text_like(rng, 100_000)
    new = mutate(rng, old, 10)
    (tmp / "old").write_bytes(old)
    (tmp / "new").write_bytes(new)
    signature(tmp / "old", tmp / "s", block_len=512)
    delta(tmp / "s", tmp / "new", tmp / "d")
    plan = compose(len(old), [tmp / "d"])
    (tmp / "short").write_bytes(old[:-3000])  # the last rows of the base are copied by the delta
    with pytest.raises(RsyncError, match="the base ended"):
        write(plan, read_chunks(tmp / "short", 4096), [tmp / "d"], tmp / "out", 4096)
    (tmp / "long").write_bytes(old + b"more")  # extra bytes are read (and counted), never copied
    written = write(plan, read_chunks(tmp / "long", 4096), [tmp / "d"], tmp / "out", 4096)
    assert written.base_bytes == len(old) + 4 and (tmp / "out").read_bytes() == new


def test_composition_rejects_a_copy_past_its_basis(tmp: Path) -> None:
    from deltadump.errors import RsyncError
    from deltadump.rsync.compose import compose
    from deltadump.rsync.format import encode_copy

    (tmp / "d").write_bytes(b"rs\x026" + encode_copy(90, 20) + b"\0")
    with pytest.raises(RsyncError, match="beyond its basis"):
        compose(100, [tmp / "d"])


def test_worker_processes_end_quietly_under_the_cli_signal_handler(tmp: Path) -> None:
    """The CLI turns SIGTERM into KeyboardInterrupt; forked search workers must not inherit that: the
    pool's terminate() would make them unwind inside its queue locks (tracebacks, and a deadlock
    seen once in a 14-day benchmark). Many parallel deltas in a row, under the CLI's handler."""
    rng = random.Random(3)
    basis = rng.randbytes(20 << 20)  # above MIN_PARALLEL_BYTES: the search runs in worker processes
    new = mutate(rng, basis, 50)
    (tmp / "b").write_bytes(basis)
    (tmp / "n").write_bytes(new)
    signature(tmp / "b", tmp / "sig", block_len=512)
    script = (
        "import signal, sys\n"
        "def on_term(*a):\n    raise KeyboardInterrupt\n"
        "signal.signal(signal.SIGTERM, on_term)\n"
        "from deltadump.rsync import delta\n"
        "for i in range(25):\n"
        f"    delta({str(tmp / 'sig')!r}, {str(tmp / 'n')!r}, {str(tmp / 'd')!r}, parallel=2)\n"
        "print('done')\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "done", r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "KeyboardInterrupt" not in r.stderr, r.stderr[-2000:]
    patch(tmp / "b", tmp / "d", tmp / "out")
    assert (tmp / "out").read_bytes() == new


def test_patch_populates_only_the_basis_it_copies(tmp: Path, rdiff_bin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scattered small copies (updated rows in a real dump copy their old place from all over the
    basis) must not map and populate whole windows of the basis: that cost 1.3 GB of populated pages
    for 361 MB of output on a real pair. Dense windows are populated, sparse ones faulted in."""
    from deltadump.rsync import patcher, streams
    from deltadump.rsync.format import DELTA_MAGIC, encode_copy, encode_literal_header

    monkeypatch.setattr(patcher, "PARALLEL_MIN", 0)
    rng = random.Random(8)
    basis = rng.randbytes(48 << 20)
    (tmp / "b").write_bytes(basis)
    cmds, new = [DELTA_MAGIC.to_bytes(4, "big")], bytearray()
    for i in range(3000):  # 512 bytes from every 16 KiB of the basis, in order, and a few literal bytes
        pos = i * 16384 + rng.randrange(8192)
        cmds.append(encode_copy(pos, 512))
        new += basis[pos : pos + 512]
        lit = rng.randbytes(rng.randint(1, 40))
        cmds.append(encode_literal_header(len(lit)) + lit)
        new += lit
    cmds.append(encode_copy(1 << 20, 4 << 20))  # and one long dense copy
    new += basis[1 << 20 : 5 << 20]
    (tmp / "d").write_bytes(b"".join(cmds) + b"\0")
    populated = []
    real_map = streams.map_range

    def spy(fd: int, lo: int, hi: int, populate: bool = False) -> tuple[object, int]:
        if populate and fd != -1:
            populated.append(hi - lo)
        return real_map(fd, lo, hi, populate)

    monkeypatch.setattr(patcher, "map_range", spy)
    patch(tmp / "b", tmp / "d", tmp / "o")
    assert (tmp / "o").read_bytes() == bytes(new)
    copied = 3000 * 512 + (4 << 20)
    delta_size = (tmp / "d").stat().st_size
    assert sum(populated) <= 2 * copied + delta_size + (4 << 20), (sum(populated), copied)
    run_rdiff(rdiff_bin, "patch", tmp / "b", tmp / "d", tmp / "o2")
    assert (tmp / "o2").read_bytes() == bytes(new)
