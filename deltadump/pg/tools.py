"""Finds PostgreSQL client programs: the config's pg_bin, PATH, the versioned folders where Debian,
Ubuntu and RPM packages install them, and the embedded server's (pgserver) binaries. Picks a
pg_dump at least as new as the server, preferring the same major version."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ..errors import ToolNotFound

PACKAGE_GLOBS = (
    "/usr/lib/postgresql/*/bin",  # Debian, Ubuntu
    "/usr/pgsql-*/bin",  # PGDG RPMs
    "/usr/local/pgsql/bin",
    "/opt/homebrew/opt/postgresql@*/bin",
    "/usr/local/opt/postgresql@*/bin",
    "/Applications/Postgres.app/Contents/Versions/*/bin",
)


@dataclass(frozen=True)
class Tool:
    path: Path
    version: str  # e.g. "15.18"

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def sibling(self, name: str) -> Path | None:
        p = self.path.parent / name
        return p if p.exists() and os.access(p, os.X_OK) else None


def embedded_bin() -> Path | None:
    """The bin folder of the pgserver package's PostgreSQL, when installed."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("pgserver")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return p if p.is_dir() else None


def candidate_dirs(pg_bin: str = "") -> list[Path]:
    dirs: list[Path] = []
    if pg_bin:
        dirs.append(Path(pg_bin).expanduser())
    dirs.extend(Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p)
    for pattern in PACKAGE_GLOBS:
        dirs.extend(sorted((Path(p) for p in glob.glob(pattern)), reverse=True))
    emb = embedded_bin()
    if emb:
        dirs.append(emb)
    seen: set[Path] = set()
    out = []
    for d in dirs:
        try:
            r = d.resolve()
        except OSError:
            continue
        if r not in seen:
            seen.add(r)
            out.append(d)
    return out


@cache
def tool_version(path: Path) -> str | None:
    try:
        res = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)?)", res.stdout)
    return m.group(1) if m else None


def find_all(name: str, pg_bin: str = "") -> list[Tool]:
    tools = []
    for d in candidate_dirs(pg_bin):
        p = d / name
        try:  # a PATH entry may be unreadable, too long a name, a loop...: not a place to look
            usable = p.is_file() and os.access(p, os.X_OK)
        except OSError:
            continue
        if usable:
            v = tool_version(p)
            if v:
                tools.append(Tool(p, v))
    return tools


def find(name: str, pg_bin: str = "", *, min_major: int = 0) -> Tool:
    """The program `name`, at least `min_major`; the same major as wanted if possible, else newest."""
    tools = find_all(name, pg_bin)
    fit = [t for t in tools if t.major >= min_major]
    if not fit:
        found = ", ".join(f"{t.path} ({t.version})" for t in tools) or "none"
        need = f" at least version {min_major} (the server's)" if min_major else ""
        raise ToolNotFound(f"no usable {name}{need} was found; found: {found}")
    same = [t for t in fit if t.major == min_major]
    if same:
        return same[0]
    if pg_bin:
        first = [t for t in fit if t.path.parent == Path(pg_bin).expanduser()]
        if first:
            return first[0]
    return max(fit, key=lambda t: tuple(int(x) for x in t.version.split(".")))


def which_any(name: str, pg_bin: str = "") -> Path:
    t = find_all(name, pg_bin)
    if t:
        return t[0].path
    p = shutil.which(name)
    if p:
        return Path(p)
    raise ToolNotFound(f"{name} was not found")
