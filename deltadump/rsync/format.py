"""librsync 2.3.2 file formats: magic numbers, signature parameters, delta opcodes.

Pure functions and constants only; see docs/librsync-format.md (sections 2, 5, 6).
"""

from __future__ import annotations

import struct
from math import isqrt

from ..errors import RsyncError

TYPE_CHECKING = False  # no typing import at run time: `deltadump rdiff` starts fast
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    F = TypeVar("F", bound=Callable[..., Any])

DELTA_MAGIC = 0x72730236
RS_MD4_SIG_MAGIC = 0x72730136
RS_BLAKE2_SIG_MAGIC = 0x72730137
RS_RK_MD4_SIG_MAGIC = 0x72730146
RS_RK_BLAKE2_SIG_MAGIC = 0x72730147

# magic -> (weak, strong)
SIG_MAGICS: dict[int, tuple[str, str]] = {
    RS_MD4_SIG_MAGIC: ("rollsum", "md4"),
    RS_BLAKE2_SIG_MAGIC: ("rollsum", "blake2"),
    RS_RK_MD4_SIG_MAGIC: ("rabinkarp", "md4"),
    RS_RK_BLAKE2_SIG_MAGIC: ("rabinkarp", "blake2"),
}
WEAK_KINDS = ("rabinkarp", "rollsum")
STRONG_KINDS = ("blake2", "md4")
STRONG_MAX = {"md4": 16, "blake2": 32}

MAX_LITERAL = 32768  # librsync never emits a literal command longer than this
OP_END = 0x00
OP_LITERAL_N1 = 0x41
OP_COPY_BASE = 0x45


def sig_magic(weak: str, strong: str) -> int:
    if weak not in WEAK_KINDS:
        raise ValueError(f"unknown weak sum {weak!r}")
    if strong not in STRONG_KINDS:
        raise ValueError(f"unknown strong sum {strong!r}")
    base = RS_BLAKE2_SIG_MAGIC if strong == "blake2" else RS_MD4_SIG_MAGIC
    return base + (0x10 if weak == "rabinkarp" else 0)


def _log2(x: int) -> int:
    return x.bit_length() - 1


class SigParams:
    """Signature parameters: magic number, block length, strong-sum length (and a warning to print)."""

    __slots__ = ("block_len", "magic", "strong_len", "warning")

    def __init__(self, magic: int, block_len: int, strong_len: int, warning: str = "") -> None:
        self.magic, self.block_len, self.strong_len, self.warning = magic, block_len, strong_len, warning

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SigParams) and (self.magic, self.block_len, self.strong_len) == (
            other.magic, other.block_len, other.strong_len)  # fmt: skip

    def __hash__(self) -> int:
        return hash((self.magic, self.block_len, self.strong_len))

    def __repr__(self) -> str:
        return f"SigParams(magic=0x{self.magic:08x}, block_len={self.block_len}, strong_len={self.strong_len})"

    @property
    def weak(self) -> str:
        return SIG_MAGICS[self.magic][0]

    @property
    def strong(self) -> str:
        return SIG_MAGICS[self.magic][1]

    @property
    def strong_proves(self) -> bool:
        """Whether equal strong sums alone prove equal blocks (as far as anyone can forge a pair): BLAKE2
        of BOUNDED_STRONG_LEN bytes or more. MD4 collisions are made at will, a shorter sum is forged
        by a birthday search or collides by chance: then the weak sums must be compared too."""
        return self.strong == "blake2" and self.strong_len >= BOUNDED_STRONG_LEN

    def header(self) -> bytes:
        return struct.pack(">III", self.magic, self.block_len, self.strong_len)


def sig_args(size: int | None, magic: int, block_len: int = 0, strong_len: int = 0) -> SigParams:
    """librsync's rs_sig_args: choose block and strong lengths for a basis of `size` bytes (None = unknown)."""
    if block_len < 0:
        raise RsyncError(RsyncError.RS_PARAM_ERROR, f"(rs_sig_args) invalid block_len={block_len}", job="")
    max_strong = STRONG_MAX[SIG_MAGICS[magic][1]]
    if size is None:
        rec_block = 2048
    elif size <= 65536:
        rec_block = 256
    else:
        rec_block = isqrt(size) & ~127
    bl = block_len or rec_block
    min_strong = 12 if size is None else 2 + (_log2(size + (1 << 24)) + _log2(size // bl + 1) + 7) // 8
    warning = ""
    if strong_len == 0:
        sl = max_strong
    elif strong_len == -1:
        sl = min_strong
    else:
        sl = strong_len
        if size is not None and 0 < sl < min_strong:
            warning = (
                f"(rs_sig_args) strong_len={sl} smaller than recommended minimum {min_strong} "
                f"for old_fsize={size} with block_len={bl}"
            )
        if sl > max_strong or sl < 0:
            raise RsyncError(
                RsyncError.RS_PARAM_ERROR,
                f"(rs_sig_args) invalid strong_len={sl % (1 << 64)} for magic=0x{magic:08x}",
                job="",
            )
    return SigParams(magic, bl, min(sl, max_strong), warning)


# What a signature takes once loaded for the delta's search (search.Signature), and the choice of
# parameters that keeps it under a budget for a file of any size (docs/offsite.md, "Block length").
SIG_MEMORY_BUDGET = 64 << 20
BOUNDED_STRONG_LEN = 16
FILTER_BITS_MAX = 24


def filter_bits(nblocks: int) -> int:
    """log2 of the bytes of the weak-sum filter (a bitmap) of a signature of nblocks blocks: 16 to
    32 bytes a block, at most 16 MiB."""
    return min(FILTER_BITS_MAX, max(10, nblocks.bit_length() + 4))


def sig_memory(nblocks: int, strong_len: int) -> int:
    """Bytes a signature of nblocks blocks takes once loaded for the delta's search: per block its
    strong sum and its weak sum with its block number in weak-sum order (strong_len + 8 bytes), plus
    the filter (at most 16 MiB)."""
    return nblocks * (strong_len + 8) + (1 << filter_bits(nblocks))


def bounded_sig_params(size: int, min_block: int = 512, budget: int = SIG_MEMORY_BUDGET) -> tuple[int, int]:
    """(block_len, strong_len) for the signature of a file of `size` bytes such that, loaded for a
    delta, it takes at most `budget` bytes (sig_memory): `min_block` while that fits, else the smallest
    multiple of `min_block` that does. The strong sum has BOUNDED_STRONG_LEN (16) bytes of BLAKE2b:
    a forged pair of blocks with equal sums (by whoever controls part of the input) costs about 2**64 tries, and 16 is
    above librsync's recommended minimum for every file size (at most 2**21 blocks: at most 13)."""
    sl = BOUNDED_STRONG_LEN
    if size < 0 or min_block < 1 or budget < sig_memory(1, sl):
        raise ValueError(f"no signature parameters for size={size}, min_block={min_block}, budget={budget}")
    lo, hi = 1, max(1, budget // (sl + 8))  # the most blocks that fit: sig_memory grows with nblocks
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if sig_memory(mid, sl) <= budget else (lo, mid - 1)
    block = max(min_block, -(-size // lo))
    block = -(-block // min_block) * min_block
    if block >= 1 << 31:  # the signature format's limit (librsync refuses longer blocks)
        raise ValueError(f"a file of {size} bytes needs blocks of {block} bytes to fit {budget} bytes")
    return block, sl


def parse_sig_header(hdr: bytes) -> SigParams:
    """Validate a 12-byte signature header the way librsync's loadsig does (spec section 6)."""
    if len(hdr) < 12:
        raise RsyncError(RsyncError.RS_INPUT_ENDED, job="loadsig")
    magic, block_len, strong_len = struct.unpack(">III", hdr[:12])
    if block_len >= 1 << 31 or block_len < 1:
        signed = block_len - (1 << 32) if block_len >= 1 << 31 else block_len
        raise RsyncError(
            RsyncError.RS_CORRUPT, f"(rs_loadsig_s_blocklen) block length of {signed} is bogus", job="loadsig"
        )
    if strong_len > 32:
        signed = strong_len - (1 << 32) if strong_len >= 1 << 31 else strong_len
        raise RsyncError(
            RsyncError.RS_CORRUPT,
            f"(rs_loadsig_s_stronglen) strong sum length {signed} is implausible",
            job="loadsig",
        )
    if magic == 0:
        magic = RS_RK_BLAKE2_SIG_MAGIC
    if magic not in SIG_MAGICS:
        raise RsyncError(RsyncError.RS_BAD_MAGIC, f"(rs_sig_args) invalid magic 0x{magic:08x}", job="loadsig")
    max_strong = STRONG_MAX[SIG_MAGICS[magic][1]]
    if strong_len == 0:
        strong_len = max_strong
    if strong_len > max_strong:
        raise RsyncError(
            RsyncError.RS_PARAM_ERROR,
            f"(rs_sig_args) invalid strong_len={strong_len} for magic=0x{magic:08x}",
            job="loadsig",
        )
    return SigParams(magic, block_len, strong_len)


def width(v: int) -> int:
    if v < 1 << 8:
        return 1
    if v < 1 << 16:
        return 2
    if v < 1 << 32:
        return 4
    return 8


_WIDTH_IDX = {1: 0, 2: 1, 4: 2, 8: 3}
_INT_FMT = {1: ">B", 2: ">H", 4: ">I", 8: ">Q"}


def encode_literal_header(n: int) -> bytes:
    """Opcode and length of a LITERAL command of n (1 <= n) bytes."""
    if n <= 64:
        return bytes((n,))
    w = width(n)
    return bytes((OP_LITERAL_N1 + _WIDTH_IDX[w],)) + struct.pack(_INT_FMT[w], n)


def encode_copy(pos: int, n: int) -> bytes:
    wp, wl = width(pos), width(n)
    op = OP_COPY_BASE + 4 * _WIDTH_IDX[wp] + _WIDTH_IDX[wl]
    return bytes((op,)) + struct.pack(_INT_FMT[wp], pos) + struct.pack(_INT_FMT[wl], n)


def decode_opcode(op: int) -> tuple[str, int, int]:
    """('end'|'literal'|'copy'|'bogus', a, b): for literal a = immediate length or 0 and b = length
    width; for copy a, b = position and length widths."""
    if op == OP_END:
        return ("end", 0, 0)
    if op <= 0x40:
        return ("literal", op, 0)
    if op <= 0x44:
        return ("literal", 0, (1, 2, 4, 8)[op - OP_LITERAL_N1])
    if op <= 0x54:
        i, j = divmod(op - OP_COPY_BASE, 4)
        return ("copy", (1, 2, 4, 8)[i], (1, 2, 4, 8)[j])
    return ("bogus", 0, 0)


def librsync_job(name: str) -> Callable[[F], F]:
    """Name the librsync job of any RsyncError raised by the decorated function that does not name
    one yet (written out, without functools: `deltadump rdiff` starts fast)."""

    def deco(fn: F) -> F:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except RsyncError as exc:
                if exc.job is None:
                    exc.job = name
                raise

        for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
            setattr(wrapper, attr, getattr(fn, attr))
        wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return deco
