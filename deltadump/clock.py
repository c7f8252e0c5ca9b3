"""The one place deltadump reads the time, so that tests and the demo can inject it.

DELTADUMP_NOW (ISO 8601, e.g. 2026-11-26T02:00:00) fixes "now" for rotation names and records.
"""

from __future__ import annotations

import os
from datetime import datetime


def now() -> datetime:
    fixed = os.environ.get("DELTADUMP_NOW")
    if fixed:
        dt = datetime.fromisoformat(fixed)
        return dt if dt.tzinfo else dt.astimezone()
    return datetime.now().astimezone()
