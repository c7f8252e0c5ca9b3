"""Rotation by file-name template: pure functions from a template and a moment to a relative path.

Placeholders: %w weekday 0-6 (0 = Sunday), %d day 01-31, %m month 01-12, %y year (4 digits),
%h hour 00-23, %2..%9 a counter cycling 0..n-1 that advances once per calendar day on which a backup
succeeded, %D the database (whole-server configs: each database, and the globals, get slots of their
own), %% a literal percent. They may appear in folder parts too.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from pathlib import PurePosixPath

_TOKEN = re.compile(r"%(.)", re.DOTALL)
VALID = set("wdmyhD%23456789")


def validate_template(template: str) -> None:
    """Raise ValueError naming the problem if `template` is not a valid relative name template."""
    if not template.strip():
        raise ValueError("the name template is empty")
    if template.endswith("%") and not template.endswith("%%"):
        raise ValueError(f"name template {template!r} ends with a lone '%'")
    for m in _TOKEN.finditer(template):
        if m.group(1) not in VALID:
            raise ValueError(f"unknown placeholder %{m.group(1)} in name template {template!r}")
    p = PurePosixPath(template)
    if p.is_absolute() or ".." in p.parts or template.startswith("~"):
        raise ValueError(f"name template {template!r} must be a relative path inside dest")
    if template.endswith("/"):
        raise ValueError(f"name template {template!r} must name a file, not a folder")
    check_parts(template, f"name template {template!r}")


def check_parts(name: str, what: str) -> None:
    """No part of a slot's name (a template, or a rendered name) hidden or deltadump's own."""
    p = PurePosixPath(name)
    for part in p.parts:
        if part.startswith(".") or part.startswith("deltadump"):
            raise ValueError(
                f"{what}: {part!r} is hidden or reserved (names starting with '.' or "
                "'deltadump' are deltadump's own files and temporary files)"
            )
    if p.parts and p.parts[0] in RESERVED_TOP:
        raise ValueError(f"{what}: the folder {p.parts[0]!r} is deltadump's own")


RESERVED_TOP = ("chain", "full", "heads", "records")  # the repository's own folders (store/records.py)


def earlier_days(success_days: int, last_success_day: date | None, today: date) -> int:
    """How many distinct calendar days before `today` had a good backup, from the head's counter."""
    if last_success_day is not None and last_success_day >= today:
        return max(success_days - 1, 0)
    return success_days


# %D of the globals (roles, memberships, tablespaces): parentheses never come out of db_part
GLOBALS_PART = "(globals)"
# the names Windows keeps for devices, whatever follows a '.' (in lower case: upper-case letters are encoded)
# (Windows also keeps COM and LPT with a superscript digit, and the console's CONIN$ and CONOUT$)
_DEVICES = {"con", "prn", "aux", "nul", "conin$", "conout$",
            *(f"{d}{n}" for d in ("com", "lpt") for n in (*"0123456789", "\u00b9", "\u00b2", "\u00b3"))}  # fmt: skip
# the conjoining Hangul letters, which NFC joins into a syllable (as it joins a combining mark to a letter)
_JAMO = (("\u1100", "\u11ff"), ("\ua960", "\ua97f"), ("\ud7b0", "\ud7ff"))
_UNSAFE = set('%/\\<>:"|?*()')  # percent-encoded in %D: separators, Windows' reserved characters, our own marks


def db_part(name: str) -> str:
    """A database name as one part of a file name, the same name always, two names never the same:
    percent-encoded ('/' is %2F) where a character could separate folders, hide the file (a leading
    '.'), be refused by a Windows or SMB file system, or be a control character; and every letter but
    a to z that has a case (upper-case ones, accented ones): a share (SMB, Windows, macOS) ignores
    case, and "Mail" and "mail" must not be one slot there. The first character too of a name that
    would be a folder of deltadump's own ("chain" is %63hain, "deltadump-x" %64eltadump-x): a database
    so named is backed up like any other (check_parts refuses the reserved names), and of a name that
    Windows reserves for a device ("con", "nul.x", "com1", "com¹", "conin$"). A last '.' or space too: Windows and SMB
    drop it, and "mail." would be "mail"'s slot there. And every character that Unicode normalization
    can change or join to the one before it (a precomposed "é" or "한", a combining mark, a Hangul
    letter): macOS and the shares it serves ignore normalization too, and "한" and the same syllable as
    its two letters (both databases on PostgreSQL) would be one slot there; what remains is the same
    in NFC and in NFD."""
    import unicodedata

    out = []
    own = name in RESERVED_TOP or name.startswith("deltadump") or name.split(".", 1)[0].rstrip(" ") in _DEVICES
    last = len(name) - 1
    for i, c in enumerate(name):
        cased = c.upper() != c.lower() and not "a" <= c <= "z"
        edge = (i == 0 and (c == "." or own)) or (i == last and c in ". ")
        joins = c > "\x7f" and (unicodedata.category(c)[0] == "M" or unicodedata.normalize("NFD", c) != c
                                 or any(lo <= c <= hi for lo, hi in _JAMO))  # fmt: skip
        if c in _UNSAFE or ord(c) < 0x20 or ord(c) == 0x7F or edge or not c.isprintable() or cased or joins:
            out.append("".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass")))
        else:
            out.append(c)
    return "".join(out)


def render(template: str, now: datetime, earlier: int = 0, db: str | None = None) -> str:
    """The slot name for a backup starting at `now`; `earlier` is earlier_days(...) (for %2..%9); `db`
    what %D becomes (db_part of a database name, or GLOBALS_PART)."""

    def sub(m: re.Match[str]) -> str:
        c = m.group(1)
        if c == "%":
            return "%"
        if c == "D":
            if db is None:
                raise ValueError(f"name template {template!r} uses %D, which only whole-server configs have")
            return db
        if c == "w":
            return str((now.weekday() + 1) % 7)
        if c == "d":
            return f"{now.day:02d}"
        if c == "m":
            return f"{now.month:02d}"
        if c == "y":
            return f"{now.year:04d}"
        if c == "h":
            return f"{now.hour:02d}"
        return str(earlier % int(c))

    return _TOKEN.sub(sub, template)


URI_PREFIXES = ("postgresql://", "postgres://")
_CONTROL = re.compile("[\x00-\x1f\x7f]")  # control characters: never in a name, escaped in a line


def dbname_problem(name: str) -> str | None:
    """Why `name` is no database name as PostgreSQL has them (None when it is one): empty, longer than 63
    bytes, a NUL, or bytes of no UTF-8 (a name read from a SQL_ASCII database's catalog keeps them as
    surrogates). Any other text is a name: one with '=' or starting with postgresql:// is given to libpq
    as PGDATABASE or as a quoted `dbname='...'` value (pg.conn.dbname_arg), never where it would be
    expanded into connection parameters. The one rule of the names of catalogs, configs and records."""
    if not name or "\0" in name:
        return "empty" if not name else "it holds a NUL"
    if any("\ud800" <= ch <= "\udfff" for ch in name):
        return "its name is no UTF-8 (it was made in a SQL_ASCII database)"
    if len(name.encode()) > 63:
        return "longer than PostgreSQL's 63 bytes"
    return None


def plain_dbname(name: str) -> bool:
    """A name a user gives as the database to restore into (`--to-db`), which is never a connection
    string: one with '=' or starting with postgresql:// is refused (exit 2) rather than taken for a
    database so named, as the user most likely meant a connection. The rule of pg.conn.check_dbname."""
    return dbname_problem(name) is None and "=" not in name and not name.lower().startswith(URI_PREFIXES)


def one_line(text: str) -> str:
    """`text` with its control characters written as escapes (a line break as \\n): a name read from a
    catalog, a store or a config never starts a line of its own in an error line, a log or a mail header."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


MAX_NAME = 1024  # bytes of a whole relative name
MAX_PART = 255  # bytes of one component (most file systems' limit)


def check_relpath(name: object, prefixes: tuple[str, ...] = ()) -> str:
    """The one check of a relative POSIX name read from anywhere we do not control (a record, a
    listing, a tar member, a key): a non-empty str of '/'-separated components, none empty, '.' or
    '..', no absolute path, no backslash, no NUL or other control character, bounded length; with
    `prefixes`, it must start with one of them. Returns the name; ValueError says what is wrong."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"invalid name {name!r}: not a non-empty string")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME:
        raise ValueError(f"invalid name {name[:60]!r}...: longer than {MAX_NAME} bytes")
    if _CONTROL.search(name):
        raise ValueError(f"invalid name {name!r}: control character")
    if "\\" in name:
        raise ValueError(f"invalid name {name!r}: backslash")
    if name.startswith("/"):
        raise ValueError(f"invalid name {name!r}: absolute")
    for part in name.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"invalid name {name!r}: empty, '.' or '..' component")
        if len(part.encode("utf-8", "surrogatepass")) > MAX_PART:
            raise ValueError(f"invalid name {name[:60]!r}: a component longer than {MAX_PART} bytes")
    if prefixes and not name.startswith(prefixes):
        raise ValueError(f"invalid name {name!r}: not under {', '.join(prefixes)}")
    return name
