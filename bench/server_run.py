"""A benchmark's private PostgreSQL server: started in its work folder, removed when the run ends."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from deltadump.pg.server import LocalServer


def with_server(
    args: argparse.Namespace, prefix: str, run: Callable[[LocalServer, Path, argparse.Namespace], None]
) -> None:
    """Run `run(server, work, args)` with a fresh server in `args.workdir` (or a temporary folder, removed
    after); the server is stopped and removed whatever happens."""
    work = args.workdir or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o711)  # the server runs as an unprivileged user and must reach its folder
    server = LocalServer(work / "server")
    server.start()
    try:
        run(server, work, args)
    finally:
        server.remove()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
