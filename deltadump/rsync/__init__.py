"""deltadump.rsync: the rsync algorithm, byte-compatible with librsync 2.3.2's `rdiff`.

Knows nothing of databases or backups. Three operations over paths or binary file objects:

    signature(basis, out, *, block_len=0, strong_len=0, weak="rabinkarp", strong="blake2")
    delta(sig, new, out)
    patch(basis, delta, out)

each streaming in bounded memory and returning statistics. Submodules load on first use, so that
`patch` (pure I/O) never pays for importing numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .differ import DeltaStats, delta, load_signature
    from .format import SigParams, sig_args
    from .patcher import PatchStats, patch
    from .search import Signature
    from .signer import SignatureStats, signature

_WHERE = {
    "DeltaStats": "differ",
    "Signature": "search",
    "delta": "differ",
    "load_signature": "differ",
    "SigParams": "format",
    "sig_args": "format",
    "PatchStats": "patcher",
    "patch": "patcher",
    "SignatureStats": "signer",
    "signature": "signer",
}
__all__ = [
    "DeltaStats", "PatchStats", "SigParams", "Signature", "SignatureStats",
    "delta", "load_signature", "patch", "sig_args", "signature",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(name)
