"""Single-instance lock for one backup folder: flock (released by the kernel if the holder dies)
plus the holder's identity (host, pid, command, start time) for the message others get."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from ..clock import now
from ..errors import LockedError
from ..fsio import storage_error, unlock_close

LOCK_NAME = "deltadump.lock"


class RunLock:
    def __init__(self, dest: Path, *, wait: bool = False, timeout: float | None = None, name: str = LOCK_NAME) -> None:
        self.path = dest / name
        self.wait = wait
        self.timeout = timeout
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise storage_error(exc, self.path, "creating the lock") from exc
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not self.wait or (deadline is not None and time.monotonic() > deadline):
                    holder = self._holder(fd)
                    os.close(fd)
                    raise LockedError(
                        f"another deltadump is already running on {self.path.parent} ({holder})",
                        hint="wait for it to finish, or use --wait",
                    ) from None
                time.sleep(0.2)
        ident = {"host": socket.gethostname(), "pid": os.getpid(), "command": " ".join(sys.argv[:3]),
                 "started": now().isoformat(timespec="seconds")}  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(ident).encode(), 0)
        self.fd = fd
        return self

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            d = json.loads(os.pread(fd, 4096, 0) or b"{}")
            return f"pid {d.get('pid')} on {d.get('host')}, '{d.get('command')}', since {d.get('started')}"
        except (OSError, ValueError):
            return "holder unknown"

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            unlock_close(self.fd)
            self.fd = None
