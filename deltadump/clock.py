"""The one place deltadump reads the time, so that tests and the demo can inject it.

DELTADUMP_NOW (ISO 8601, e.g. 2026-11-26T02:00:00) fixes "now" for rotation names and records.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime

_source: Callable[[], datetime] | None = None


def set_source(fn: Callable[[], datetime] | None) -> None:
    """Make now() ask `fn` (the scheduler's injectable clock); None restores the real clock."""
    global _source
    _source = fn


def now() -> datetime:
    if _source is not None:
        return _source()
    fixed = os.environ.get("DELTADUMP_NOW")
    if fixed:
        dt = datetime.fromisoformat(fixed)
        return dt if dt.tzinfo else dt.astimezone()
    return datetime.now().astimezone()
