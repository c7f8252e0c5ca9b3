"""A Target that retries another's transient failures (restic's internal/backend/retry is the model).

It reads only `TargetError.transient`, set by the wrapped target where the error is born (a reset
connection or a timeout: transient; a refused login, a missing share, permission denied, a full disk:
permanent). A permanent error passes through at once. A transient one is retried after a capped,
jittered exponential backoff (full jitter: a random wait between 0 and min(cap, base * 2^n)), up to
`attempts` tries in all and within `max_elapsed` seconds; when it gives up it raises one TargetError
listing every attempt. The wrapped target must be able to go on after a transient error (it drops its
connection and opens a new one on the next call), and its put must be safe to repeat (a temporary name,
then a rename: a retried put never exposes a partial object).
"""

from __future__ import annotations

import builtins
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..errors import TargetError
from . import Target

T = TypeVar("T")
RETRY_HINT = "the server was unreachable or kept dropping the connection; the next run sends what is missing"


def backoff(attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after failed attempt number `attempt` (1, 2, ...): full jitter under a cap."""
    return rand() * min(cap, base * 2.0 ** (attempt - 1))


class RetryTarget:
    def __init__(self, inner: Target, attempts: int = 6, base: float = 0.5, cap: float = 15.0,
                 max_elapsed: float = 300.0, sleep: Callable[[float], None] = time.sleep) -> None:  # fmt: skip
        self.inner = inner
        self.attempts = attempts
        self.base = base
        self.cap = cap
        self.max_elapsed = max_elapsed
        self.sleep = sleep
        self.waits: list[float] = []  # the backoff waits of the last call (for tests and figures)

    def describe(self) -> str:
        return self.inner.describe()

    def _run(self, what: str, call: Callable[[], T]) -> T:
        failures: list[str] = []
        self.waits = []
        start = time.monotonic()
        for n in range(1, self.attempts + 1):
            try:
                return call()
            except TargetError as exc:
                if not exc.transient:
                    if failures:  # a permanent error after transient ones: say what came before
                        exc.detail = "; ".join(failures)
                    raise
                failures.append(f"attempt {n}: {exc.message}")
                wait = backoff(n, self.base, self.cap)
                if n == self.attempts or time.monotonic() - start + wait > self.max_elapsed:
                    err = TargetError(
                        f"{self.describe()}: {what} failed after {n} attempts ({'; '.join(failures)})",
                        hint=exc.hint or RETRY_HINT,
                    )
                    err.transient = True
                    raise err from exc
                self.waits.append(wait)
                self.sleep(wait)
        raise AssertionError("unreachable")  # attempts >= 1

    def put(self, key: str, src: Path, sha256: str) -> None:
        self._run(f"uploading {key}", lambda: self.inner.put(key, src, sha256))

    def get(self, key: str, dst: Path, limit: int | None = None) -> None:
        self._run(f"downloading {key}", lambda: self.inner.get(key, dst, limit))

    def local_path(self, key: str) -> Path | None:
        return self._run(f"reading {key}", lambda: self.inner.local_path(key))

    def stat(self, key: str) -> int | None:
        return self._run(f"checking {key}", lambda: self.inner.stat(key))

    def list(self, prefix: str = "") -> dict[str, int]:
        return self._run(f"listing {prefix or '/'}", lambda: self.inner.list(prefix))

    def delete(self, key: str) -> None:
        self._run(f"deleting {key}", lambda: self.inner.delete(key))

    def clean_temporaries(self) -> builtins.list[str]:
        """The wrapped target's clean-up of unfinished uploads, when it has one."""
        clean = getattr(self.inner, "clean_temporaries", None)
        if clean is None:
            return []
        return list(self._run("removing unfinished uploads", clean))

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()
