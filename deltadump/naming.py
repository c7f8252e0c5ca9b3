"""Rotation by file-name template: pure functions from a template and a moment to a relative path.

Placeholders: %w weekday 0-6 (0 = Sunday), %d day 01-31, %m month 01-12, %y year (4 digits),
%h hour 00-23, %2..%9 a counter cycling 0..n-1 that advances once per calendar day on which a backup
succeeded, %% a literal percent. They may appear in folder parts too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date, datetime
from pathlib import PurePosixPath

_TOKEN = re.compile(r"%(.)", re.DOTALL)
VALID = set("wdmyh%23456789")


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
    name = p.name
    if name.startswith(".tmp-") or name.startswith("deltadump-"):
        raise ValueError(f"name template {template!r} uses a name reserved for deltadump's own files")


def day_counter(success_days: Iterable[date], today: date, n: int) -> int:
    """%n: the number of distinct earlier days with a good backup, modulo n."""
    return len({d for d in success_days if d < today}) % n


def render(template: str, now: datetime, success_days: Iterable[date] = ()) -> str:
    days = list(success_days)

    def sub(m: re.Match[str]) -> str:
        c = m.group(1)
        if c == "%":
            return "%"
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
        return str(day_counter(days, now.date(), int(c)))

    return _TOKEN.sub(sub, template)
