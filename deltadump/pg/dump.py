"""Runs pg_dump and pg_restore/psql as child processes, with progress callbacks, and validates
archives (`pg_restore --list`, or the completion trailer of a plain dump)."""

from __future__ import annotations

import contextlib
import gzip
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import DumpError, RestoreError
from .conn import Conn, classify, dbname_arg

FORMAT_FLAG = {"custom": "c", "directory": "d", "plain": "p", "tar": "t"}
PLAIN_TRAILER = b"-- PostgreSQL database dump complete"
GLOBALS_TRAILER = b"-- PostgreSQL database cluster dump complete"

Progress = Callable[[int], None]  # bytes written so far


def path_size(p: Path) -> int:
    try:
        if p.is_dir():
            return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        return p.stat().st_size
    except OSError:
        return 0


def _signame(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _watch(proc: subprocess.Popen[bytes], out: Path, progress: Progress | None, stop: threading.Event) -> None:
    while not stop.wait(0.25):
        if progress:
            progress(path_size(out))
    if progress:
        progress(path_size(out))
    del proc


def run_watched(argv: list[str], conn: Conn, out: Path, progress: Progress | None) -> tuple[int, str]:
    """Run a PostgreSQL program with conn's environment while reporting the size of `out`;
    killed if we are interrupted. Returns (exit code, negative for a signal; stderr)."""
    with conn.env() as env:
        stop = threading.Event()
        with subprocess.Popen(argv, env=env, pass_fds=env.fds, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) as proc:  # fmt: skip
            t = threading.Thread(target=_watch, args=(proc, out, progress, stop), daemon=True)
            t.start()
            try:
                _, err_b = proc.communicate()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            finally:
                stop.set()
                t.join()
    return proc.returncode, err_b.decode(errors="replace")


def run_pg_dump(
    pg_dump: Path,
    conn: Conn,
    out: Path,
    *,
    fmt: str,
    compress: int,
    options: list[str],
    progress: Progress | None = None,
    snapshot: str | None = None,
    jobs: int = 1,
) -> None:
    """Dump conn's database into `out` (a file, or a folder for the directory format, in parallel with
    `jobs` > 1: every worker on the same snapshot)."""
    argv = [str(pg_dump), f"--format={FORMAT_FLAG[fmt]}", f"--compress={compress}", f"--file={out}"]
    if snapshot:
        argv.append(f"--snapshot={snapshot}")
    if jobs > 1 and fmt == "directory":
        argv.append(f"--jobs={jobs}")
    argv.extend(options)
    rc, err = run_watched(argv, conn, out, progress)
    if rc == 0:
        return
    text = " ".join(err.split())
    if rc < 0:
        raise DumpError(f"pg_dump of {conn.where} was killed by {_signame(rc)}", detail=err)
    if "No space left on device" in text or ("could not write to output file" in text and "space" in text):
        raise DumpError(f"disk full while writing {out}: pg_dump stopped ({_free(out)})", detail=err)
    if "server version" in text and "aborting because of server version mismatch" in text:
        raise DumpError(f"pg_dump is older than the server at {conn.where}: {text[:200]}", detail=err)
    if "connection to server" in text and ("failed" in text or "could not connect" in text):
        raise classify(err, conn)
    if "password authentication failed" in text or ("does not exist" in text and "database" in text):
        raise classify(err, conn)
    last = next((ln for ln in reversed(err.splitlines()) if ln.strip()), f"exit code {rc}")
    raise DumpError(f"pg_dump of {conn.where} failed: {last.strip()[:300]}", detail=err)


def run_pg_dumpall_globals(pg_dumpall: Path, conn: Conn, out: Path, *, passwords: bool) -> None:
    """The server's roles, role memberships and settings, and tablespaces (`pg_dumpall --globals-only`)
    into the file `out`; the roles' password hashes only with `passwords` (they need a superuser)."""
    argv = [str(pg_dumpall), "--globals-only", f"--file={out}", "-l", dbname_arg(conn.dbname)]
    if not passwords:
        argv.append("--no-role-passwords")
    rc, err = run_watched(argv, conn, out, None)
    if rc == 0:
        return
    if rc < 0:
        raise DumpError(f"pg_dumpall of {conn.where} was killed by {_signame(rc)}", detail=err)
    text = " ".join(err.split())
    if "No space left on device" in text:
        raise DumpError(f"disk full while writing {out}: pg_dumpall stopped ({_free(out)})", detail=err)
    if "connection to server" in text or "password authentication failed" in text or "does not exist" in text:
        raise classify(err, conn)
    last = next((ln for ln in reversed(err.splitlines()) if ln.strip()), f"exit code {rc}")
    hint = " (role passwords need a superuser: [backup] globals = \"without-passwords\")" if (
        passwords and "permission denied" in text) else ""  # fmt: skip
    raise DumpError(f"pg_dumpall --globals-only of {conn.where} failed: {last.strip()[:300]}{hint}", detail=err)


def _free(p: Path) -> str:
    try:
        st = os.statvfs(p.parent)
        return f"{st.f_bavail * st.f_frsize / 1e6:.1f} MB free"
    except OSError:
        return "free space unknown"


def is_gzip(p: Path) -> bool:
    with open(p, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


# the encodings a dump may hold bytes of that a database of another encoding cannot take (SQL_ASCII: any
# bytes; MULE_INTERNAL: no conversion to UTF-8): a new database for such a dump is made in its encoding
UNCONVERTIBLE = ("SQL_ASCII", "MULE_INTERNAL")


def dump_encoding(pg_restore: Path, archive: Path, fmt: str, pass_fds: tuple[int, ...] = ()) -> str:
    """The encoding a logical dump was written in (its `SET client_encoding`), or '' if it says none.
    `pass_fds`: descriptors the archive's path goes through (/proc/self/fd/N/...: fsio.Pinned)."""
    import re
    import tempfile

    if fmt == "plain":
        with gzip.open(archive, "rb") if is_gzip(archive) else open(archive, "rb") as f:
            head = f.read(1 << 16)
    else:  # the script's preamble alone: an empty list of entries to restore
        with tempfile.NamedTemporaryFile(prefix="deltadump-list-") as empty:
            res = subprocess.run([str(pg_restore), "-f", "-", "-L", empty.name, str(archive)], capture_output=True,
                                 pass_fds=pass_fds, stdin=subprocess.DEVNULL)  # fmt: skip
        head = res.stdout[: 1 << 16]
    m = re.search(rb"^SET client_encoding = '([A-Za-z0-9_]+)';$", head, re.M)
    return m.group(1).decode() if m else ""


def data_files(pg_restore: Path, out: Path) -> dict[str, str]:
    """{file name: identity} of a directory-format dump's table data files, read from its TOC through
    `pg_restore --list` (never by parsing names: a table's name is data): "oid:<table oid>" for each
    TABLE DATA entry's <dumpid>.dat file. Other files (toc.dat, large objects) are not listed."""
    import re

    res = subprocess.run([str(pg_restore), "--list", str(out)], capture_output=True, text=True, errors="replace")
    if res.returncode != 0:
        raise DumpError(f"archive {out} is unreadable by pg_restore: {' '.join(res.stderr.split())[:300]}")
    files: dict[str, str] = {}
    for line in res.stdout.splitlines():
        m = re.match(r"(\d+); (\d+) (\d+) TABLE DATA ", line)
        if m:
            files[f"{m.group(1)}.dat"] = f"oid:{m.group(3)}"
    return files


def validate(pg_restore: Path, out: Path, fmt: str) -> None:
    """Check that a dump is complete and readable; raise DumpError naming what is wrong."""
    if fmt == "globals":  # pg_dumpall --globals-only: plain SQL, never compressed
        try:
            with open(out, "rb") as f:
                f.seek(max(0, out.stat().st_size - 4096))
                tail = f.read()
        except OSError as exc:
            raise DumpError(f"globals dump {out} is unreadable: {exc}") from exc
        if GLOBALS_TRAILER not in tail:
            raise DumpError(f"globals dump {out} is incomplete (no completion trailer)")
        return
    if fmt == "plain":
        try:
            if is_gzip(out):
                tail = b""
                with gzip.open(out, "rb") as f:
                    while chunk := f.read(1 << 20):
                        tail = (tail + chunk)[-4096:]
            else:
                with open(out, "rb") as f:
                    f.seek(max(0, out.stat().st_size - 4096))
                    tail = f.read()
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise DumpError(f"plain dump {out} is unreadable: {exc}") from exc
        if PLAIN_TRAILER not in tail:
            raise DumpError(f"plain dump {out} is incomplete (no completion trailer)")
        return
    res = subprocess.run([str(pg_restore), "--list", str(out)], capture_output=True, text=True, errors="replace")
    if res.returncode != 0:
        msg = " ".join(res.stderr.split())[:300]
        raise DumpError(f"archive {out} is unreadable by pg_restore: {msg}")


def run_restore(
    pg_restore: Path,
    psql_bin: Path,
    conn: Conn,
    archive: Path,
    fmt: str,
    *,
    jobs: int = 1,
    extra: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
    pass_fds: tuple[int, ...] = (),
) -> None:
    """Restore `archive` into conn's database; any error fails the restore. `pass_fds`: descriptors the
    archive's path goes through (/proc/self/fd/N/...: fsio.Pinned), handed on to the child."""
    with conn.env() as env:
        if fmt == "plain":
            argv = [str(psql_bin), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction"]
            if is_gzip(archive):
                with (
                    gzip.open(archive, "rb") as src,
                    subprocess.Popen(
                        argv,
                        env=env,
                        pass_fds=env.fds,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                    ) as proc,
                ):
                    stdin, stderr = proc.stdin, proc.stderr
                    if stdin is None or stderr is None:  # cannot happen: both are pipes
                        raise RestoreError("psql's pipes could not be opened")
                    err_chunks: list[bytes] = []
                    t = threading.Thread(target=lambda: err_chunks.append(stderr.read()), daemon=True)
                    t.start()
                    with contextlib.suppress(BrokenPipeError):
                        while chunk := src.read(1 << 20):
                            stdin.write(chunk)
                        stdin.close()
                    proc.wait()
                    t.join()
                    rc, err = proc.returncode, b"".join(err_chunks).decode(errors="replace")
            else:
                res = subprocess.run([*argv, "-f", str(archive)], env=env, pass_fds=(*env.fds, *pass_fds),
                                     capture_output=True, text=True, errors="replace",
                                     stdin=subprocess.DEVNULL)  # fmt: skip
                rc, err = res.returncode, res.stderr
        else:
            # a connection string naming the database literally: a bare --dbname would be expanded
            # by libpq if it contained '=' or started with postgresql://
            argv = [str(pg_restore), "--exit-on-error", f"--dbname={dbname_arg(conn.dbname)}"]
            if jobs > 1 and fmt in ("custom", "directory"):
                argv.append(f"--jobs={jobs}")
            argv += [*(extra or []), str(archive)]
            t0 = time.monotonic()
            res = subprocess.run(argv, env=env, pass_fds=(*env.fds, *pass_fds), capture_output=True, text=True,
                                 errors="replace", stdin=subprocess.DEVNULL)  # fmt: skip
            rc, err = res.returncode, res.stderr
            if progress:
                progress(f"pg_restore finished in {time.monotonic() - t0:.1f} s")
    if rc != 0:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        first_err = next((ln for ln in lines if "error" in ln.lower()), lines[-1] if lines else f"exit code {rc}")
        raise RestoreError(f"restore into {conn.where} failed: {first_err.strip()[:300]}", detail=err)
