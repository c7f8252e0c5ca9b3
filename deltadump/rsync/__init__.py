"""deltadump.rsync: the rsync algorithm, byte-compatible with librsync 2.3.2's `rdiff`.

Knows nothing of databases or backups. Three operations over paths or binary file objects:

    signature(basis, out, *, block_len=0, strong_len=0, weak="rabinkarp", strong="blake2")
    delta(sig, new, out)
    patch(basis, delta, out)

each streaming in bounded memory and returning statistics.
"""

from .delta import DeltaStats, Signature, delta, load_signature
from .format import SigParams, sig_args
from .patch import PatchStats, patch
from .signature import SignatureStats, signature

__all__ = [
    "DeltaStats",
    "PatchStats",
    "SigParams",
    "Signature",
    "SignatureStats",
    "delta",
    "load_signature",
    "patch",
    "sig_args",
    "signature",
]
