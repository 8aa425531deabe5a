"""CPU time of a process tree, read from /proc (user + system, the children it already reaped
included): what a server spent, measured from outside it, on a machine shared with the load."""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, str, float] | None:
    """(parent pid, command name, CPU seconds) of a live process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    # fields[1] is ppid; utime, stime, cutime, cstime are fields 14-17 of the full line.
    seconds = sum(int(v) for v in fields[11:15]) / TICKS
    return int(fields[1]), name, seconds


def all_stats() -> dict[int, tuple[int, str, float]]:
    result = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                result[int(entry)] = stat
    return result


def tree_cpu(root: int) -> float:
    """CPU seconds of `root` and all its descendants."""
    stats = all_stats()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        if pid in stats:
            total += stats[pid][2]
        stack.extend(children.get(pid, []))
    return total
