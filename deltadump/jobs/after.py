"""Runs a user's after-backup command, detached from the backup: output appended to the log in the
backup folder, killed after its timeout, its exit code recorded as an "after" note in the repository
(never the command's text, which may carry a token). Never fails a backup.

Started by jobs.backup as `python -m deltadump.jobs.after DEST ID TIMEOUT KEYFILE COMMAND`.
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


def substitute(command: str, path: Path) -> str:
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


def start(cfg: Config, dest: Path, backup_id: str, path: Path, command: str, timeout: int) -> int:
    """Start the runner in its own session; returns its pid at once."""
    key = cfg.signing_key_path
    argv = [sys.executable, "-m", "deltadump.jobs.after", str(dest), backup_id, str(timeout), str(key or ""),
            substitute(command, path)]  # fmt: skip
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True, env=child_env())  # fmt: skip
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
    _log(dest, f"backup {backup_id}: after-command started")
    fd = os.open(dest / LOG_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        proc = subprocess.Popen(["/bin/sh", "-c", shell_command], stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                                cwd=dest, start_new_session=True)  # fmt: skip
    finally:
        os.close(fd)
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
    _log(dest, f"backup {backup_id}: after-command exited with {code}" + (f" ({error})" if error else ""))
    _record(dest, backup_id, key, code, error)
    return code


if __name__ == "__main__":
    time.sleep(0)  # keep the module import-light: it runs detached after every backup
    sys.exit(0 if run(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]) == 0 else 1)
