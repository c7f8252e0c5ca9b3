"""Peak memory of a command's process tree as PSS (shared pages counted once), for the benchmarks."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def tree(root: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def sample_peak(proc: subprocess.Popen, every: float = 0.01, skip: Callable[[str], bool] = lambda c: False) -> int:  # type: ignore[type-arg]
    """Peak over time of the summed PSS (KiB) of proc's tree, leaving out processes whose name `skip`
    rejects; sampled every `every` seconds until proc exits."""
    peak = 0
    while proc.poll() is None:
        peak = max(peak, sum(pss_kb(p) for p in tree(proc.pid) if not skip(_comm(p))))
        time.sleep(every)
    return peak
