"""A small pool of forked worker processes that read the input themselves with pread.

Strong sums of small blocks cannot run in threads (hashlib keeps the GIL below 2 KiB), so the heavy
per-block work runs in processes. Workers inherit the open file and the engine's read-only state at
fork time; a task is just (offset, count), and only digests or counts travel back.
"""

from __future__ import annotations

import itertools
import multiprocessing
import multiprocessing.pool
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_STATE: Any = None

MIN_PARALLEL_BYTES = 16 << 20  # below this, forking costs more than it saves


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _init(state: Any) -> None:
    """In each worker: the engine's state, and the default signal dispositions. A worker inherits the
    parent's Python handlers (the CLI turns SIGTERM into KeyboardInterrupt); terminate() must kill it
    at once instead, never let it unwind inside the pool's queue locks (a deadlock, and tracebacks),
    and Ctrl-C is the parent's to handle."""
    global _STATE
    _STATE = state
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def worker_state() -> Any:
    return _STATE


class WorkerPool:
    """Forked workers sharing `state`; use as a context manager."""

    def __init__(self, state: Any, workers: int) -> None:
        self.workers = workers
        ctx = multiprocessing.get_context("fork")
        self._pool = ctx.Pool(workers, initializer=_init, initargs=(state,))

    def imap(self, fn: Callable[[Any], Any], tasks: Iterable[Any], ahead: int = 0) -> Iterator[Any]:
        """fn over tasks in the workers, results in order; at most `ahead` tasks (default: two per
        worker) are given out before their results are taken, so that memory stays bounded when
        the results come faster than the caller uses them."""
        ahead = ahead or 2 * self.workers
        todo = iter(tasks)
        pending: deque[multiprocessing.pool.AsyncResult[Any]] = deque(
            self._pool.apply_async(fn, (t,)) for t in itertools.islice(todo, ahead)
        )
        while pending:
            res = pending.popleft().get()
            for t in itertools.islice(todo, 1):
                pending.append(self._pool.apply_async(fn, (t,)))
            yield res

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.terminate()
        self._pool.join()


def want_workers(size: int | None, parallel: bool | int) -> int:
    """How many workers to use for an input of `size` bytes (0 = work in this process)."""
    if parallel is False or size is None or size < MIN_PARALLEL_BYTES:
        return 0
    n = cpu_count() if parallel is True else int(parallel)
    return n if n > 1 else 0
