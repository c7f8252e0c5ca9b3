"""deltadump.rsync: the rsync algorithm, byte-compatible with librsync 2.3.2's `rdiff`.

Knows nothing of databases or backups. Three operations over paths or binary file objects:

    signature(basis, out, *, block_len=0, strong_len=0, weak="rabinkarp", strong="blake2")
    delta(sig, new, out)
    patch(basis, delta, out)

each streaming in bounded memory and returning statistics. Submodules load on first use, and numpy
only for large inputs (`small` handles small ones in pure Python), so that a command on a small file
costs little more than the interpreter's start.
"""

from __future__ import annotations

TYPE_CHECKING = False  # no typing import at run time: `deltadump rdiff` starts fast
if TYPE_CHECKING:
    from typing import Any

    from .differ import DeltaStats, delta, load_signature
    from .format import SigParams, bounded_sig_params, sig_args, sig_memory
    from .patcher import PatchStats, patch
    from .search import Signature
    from .signer import SignatureStats, signature

_WHERE = {
    "DeltaStats": "differ",
    "Signature": "search",
    "delta": "differ",
    "load_signature": "differ",
    "SigParams": "format",
    "bounded_sig_params": "format",
    "sig_memory": "format",
    "sig_args": "format",
    "PatchStats": "patcher",
    "patch": "patcher",
    "SignatureStats": "signer",
    "signature": "signer",
}
__all__ = [
    "DeltaStats", "PatchStats", "SigParams", "Signature", "SignatureStats",
    "bounded_sig_params", "delta", "load_signature", "patch", "sig_args", "sig_memory", "signature",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        module = __import__(f"{__name__}.{_WHERE[name]}", fromlist=[name])  # (importlib costs a few imports)
        return getattr(module, name)
    raise AttributeError(name)
