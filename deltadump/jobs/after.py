"""Runs a user's after-backup command, detached from the backup: output appended to the log in the
backup folder, killed after its timeout, its exit code recorded as an "after" note in the repository
(signed like every record; never the command's text). Never fails a backup.

Started by jobs.backup as `python -I -m deltadump.jobs.after DEST ID TIMEOUT KEYFILE` in the backup folder:
isolated mode (neither the caller's working folder nor PYTHON* variables decide what gets imported),
the command's text on stdin. The text (it may carry a token) is in no process's argv and in no log
line: the runner hands it to /bin/sh as a script in a memfd (`/bin/sh /proc/self/fd/N`), and logs only
the backup id, the start, the exit code and the duration; the command's own output goes to the log.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..clock import now
from ..config import Config
from ..fsio import child_env

LOG_NAME = "deltadump-after.log"


def substitute(command: str, path: Path | str) -> str:
    """%f -> the backup's path as one shell-quoted argument; %% -> %."""
    out = []
    i = 0
    while i < len(command):
        c = command[i]
        if c == "%" and i + 1 < len(command) and command[i + 1] in "f%":
            out.append(shlex.quote(str(path)) if command[i + 1] == "f" else "%")
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def start(cfg: Config, dest: Path, backup_id: str, path: Path | str, command: str, timeout: int) -> int:
    """Start the runner in its own session; returns its pid at once."""
    key = str(cfg.signing_key_path or "")
    argv = [sys.executable, "-I", "-m", "deltadump.jobs.after", str(dest), backup_id, str(timeout), key]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=dest, start_new_session=True, close_fds=True, env=child_env())  # fmt: skip
    if proc.stdin is not None:  # always: it is a pipe
        try:
            proc.stdin.write(substitute(command, path).encode())
        finally:
            proc.stdin.close()
    return proc.pid


def _record(dest: Path, backup_id: str, key: str, code: int, error: str) -> None:
    """The result as an "after" note about the backup (signed, like every record)."""
    try:
        from ..store.keys import load_secret
        from ..store.records import Note
        from ..store.repository import Change, LocalMeta, Repository, SeenState, Trust

        secret = load_secret(Path(key))
        repo = Repository(LocalMeta(dest), Trust(secret.public, secret, SeenState(Path(key + ".seen"))), label="local")
        repo.load()
        if repo.by_id(backup_id) is None:
            return  # already pruned
        repo.commit(Change(make=lambda n: [Note(repository=repo.id or "", number=n, backup=backup_id, kind="after",
                                                at=now(), ok=code == 0, exit_code=code, error=error)]))  # fmt: skip
    except Exception as exc:  # the log keeps the result anyway
        _log(dest, f"could not record the result in the repository: {exc}")


def _log(dest: Path, line: str) -> None:
    fd = os.open(dest / LOG_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"[{now().isoformat(timespec='seconds')}] {line}\n".encode())
    finally:
        os.close(fd)


def run(dest: Path, backup_id: str, timeout: int, key: str, shell_command: str) -> int:
    script = os.memfd_create("deltadump-after", os.MFD_CLOEXEC)
    os.write(script, shell_command.encode("utf-8", "surrogateescape"))
    os.lseek(script, 0, os.SEEK_SET)
    fd = os.open(dest / LOG_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(["/bin/sh", f"/proc/self/fd/{script}"], stdin=subprocess.DEVNULL, stdout=fd,
                                stderr=fd, cwd=dest, start_new_session=True, pass_fds=(script,))  # fmt: skip
    finally:
        os.close(fd)
        os.close(script)
    _log(dest, f"backup {backup_id}: after-command started (pid {proc.pid}, timeout {timeout} s)")
    error = ""
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        error = f"killed after {timeout} s (after_timeout)"
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
    took = time.monotonic() - t0
    _log(
        dest,
        f"backup {backup_id}: after-command exited with {code} after {took:.1f} s" + (f" ({error})" if error else ""),
    )
    _record(dest, backup_id, key, code, error)
    return code


if __name__ == "__main__":
    # the command's text arrives on stdin (never in argv, where `ps` would show it)
    text = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
    sys.exit(0 if run(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], text) == 0 else 1)
