"""/proc readers shared by the samplers: whole-machine CPU time, this process's CPU time, others' share."""
from __future__ import annotations

import math

def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _proc_stat_cpu(text: str | None) -> tuple[int, int] | None:
    """(busy, total) jiffies from the aggregate 'cpu' line of /proc/stat."""
    if not text:
        return None
    for line in text.splitlines():
        if line.startswith("cpu "):
            v = [int(x) for x in line.split()[1:]]
            idle = v[3] + (v[4] if len(v) > 4 else 0)          # idle + iowait
            total = sum(v[:8])                                 # guest time is already inside user/nice
            return total - idle, total
    return None


def _self_ticks(text: str | None) -> int | None:
    """utime + stime of this process (all threads), in clock ticks, from /proc/self/stat."""
    if not text:
        return None
    try:
        f = text[text.rindex(")") + 2:].split()           # fields after "pid (comm) "
        return int(f[11]) + int(f[12])                     # fields 14 and 15 of proc(5)
    except (ValueError, IndexError):
        return None


def _others_pct(st1, own1: int, st0, own0: int) -> float:
    """% of all CPU time between two /proc/stat readings that went to other processes (>= 0).

    Both files count in USER_HZ ticks; /proc/stat sums every CPU, so the total is cpus x elapsed ticks."""
    total = st1[1] - st0[1]
    if total <= 0:
        return math.nan
    return max(0.0, 100.0 * ((st1[0] - st0[0]) - (own1 - own0)) / total)
