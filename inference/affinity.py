"""CPU affinity for `bench.py serve --server-cpus LIST --client-cpus LIST`: the server and the load generator on
disjoint CPUs.

Why: profiled on one core (`taskset -c 1`, corpus workload, rate inf), the load generator costs ours 0.36 s of a
1.77 s run and hf-static 0.58 s of 4.66 s (docs/streaming.md, "Where ours' time goes"): a client sharing the
server's core takes its CPU from the system under test, more of it from the faster server. vLLM's
benchmark_serving runs its client beside the server, not on the server's cores.

- `parse_cpu_list("0,2-3")` -> frozenset({0, 2, 3}) (the Linux list syntax of taskset -c and
  /proc/<pid>/status Cpus_allowed_list), `format_cpu_list` the reverse; `CpuListError` (one line) otherwise.
- `available_cpus()`: the CPUs online here (/sys/devices/system/cpu/online) that a process may be pinned to.
- `child_setup(cpus)`: a subprocess `preexec_fn` body: os.sched_setaffinity(0, cpus) in the child before exec,
  so the server's every thread (uvicorn's, torch's OpenMP pool) starts inside the mask.
- `pin_process(cpus)`: a context manager pinning every thread of this process (os.sched_setaffinity(0, ...)
  sets the calling thread only, so each task of /proc/self/task is set) and restoring their masks on exit;
  threads started inside inherit the mask of the thread that starts them.
- `affinity_of(pid)`: the pid's mask read back (os.sched_getaffinity) and the union over its threads.
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Iterable, Iterator

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
MAX_CPU = 1 << 16                                     # a bound on what a typo can ask for (4096 is Linux's NR_CPUS)


class CpuListError(ValueError):
    """A CPU list that cannot be used: bad syntax, or a CPU not available here."""


def parse_cpu_list(text: str) -> frozenset[int]:
    """'0,2-3' -> {0, 2, 3}: comma-separated CPU numbers and inclusive ranges lo-hi; no blanks, no empties."""
    if not isinstance(text, str) or not text.strip():
        raise CpuListError(f"{text!r} is not a CPU list (e.g. 1 or 0,2-3)")
    cpus: set[int] = set()
    for part in text.strip().split(","):
        m = _RANGE.match(part.strip())
        if not m:
            raise CpuListError(f"{text!r} is not a CPU list (e.g. 1 or 0,2-3): bad part {part!r}")
        lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if hi < lo:
            raise CpuListError(f"{text!r} is not a CPU list: range {part!r} runs backwards")
        if hi >= MAX_CPU:
            raise CpuListError(f"{text!r}: CPU {hi} is out of range")
        cpus.update(range(lo, hi + 1))
    return frozenset(cpus)


def format_cpu_list(cpus: Iterable[int]) -> str:
    """{0, 2, 3} -> '0,2-3' (what taskset -c and Cpus_allowed_list print)."""
    xs = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        parts.append(str(xs[i]) if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ",".join(parts)


def available_cpus() -> frozenset[int]:
    """The CPUs online on this machine (a process may be pinned to any of them, whatever its current mask)."""
    try:
        return parse_cpu_list(Path("/sys/devices/system/cpu/online").read_text())
    except (OSError, CpuListError):
        return frozenset(range(os.cpu_count() or 1))


def check_available(cpus: frozenset[int], available: frozenset[int] | None = None) -> None:
    """CpuListError naming the CPUs of `cpus` that are not online here."""
    available = available_cpus() if available is None else available
    missing = sorted(cpus - available)
    if missing:
        raise CpuListError(f"CPU {format_cpu_list(missing)} not present here (online: {format_cpu_list(available)})")


def supported() -> bool:
    return hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity")


def child_setup(cpus: Iterable[int] | None):
    """The part of a child's preexec_fn that pins it (None: leave the inherited mask alone)."""
    mask = frozenset(cpus) if cpus is not None else None

    def setup() -> None:
        if mask is not None:
            os.sched_setaffinity(0, mask)
    return setup


def _tasks(pid: int | str = "self") -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return [os.getpid() if pid == "self" else int(pid)]


def affinity_of(pid: int) -> tuple[frozenset[int], frozenset[int]]:
    """(the pid's own mask, the union of its threads' masks), read back from the kernel."""
    own = frozenset(os.sched_getaffinity(pid))
    union: set[int] = set(own)
    for tid in _tasks(pid):
        try:
            union |= os.sched_getaffinity(tid)
        except OSError:                               # a thread that ended meanwhile
            pass
    return own, frozenset(union)


@contextlib.contextmanager
def pin_process(cpus: Iterable[int] | None) -> Iterator[frozenset[int] | None]:
    """Pin every thread of this process to `cpus` for the block, then give each surviving thread the mask this
    (calling) thread had before. Yields the mask read back (None: `cpus` None, nothing changed)."""
    if cpus is None:
        yield None
        return
    mask = frozenset(cpus)
    before = frozenset(os.sched_getaffinity(0))
    os.sched_setaffinity(0, mask)                     # this thread first: an error here changes nothing
    try:
        for tid in _tasks():
            with contextlib.suppress(OSError):        # a thread that ended meanwhile
                os.sched_setaffinity(tid, mask)
        yield affinity_of(os.getpid())[1]
    finally:
        for tid in _tasks():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, before)
