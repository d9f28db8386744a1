"""The memory allocator of the measuring process: `--allocator system|jemalloc|tcmalloc`.

Why it matters (issue 23): an op that allocates its output (torch.softmax(x) returns a new tensor) frees and
reallocates it every call. glibc's malloc serves blocks above its dynamic mmap threshold (128 KiB rising to
32 MiB) with mmap and returns them with munmap, so each call maps fresh pages and takes one minor page fault
per page it touches; below the threshold the block is reused from the heap with no fault. The threshold
moves with the process's history, so the same op has two speeds (measured here for a 16 MiB output: 0 or
4096 faults per call from one call to the next; issue 23 saw 1.3-1.5 ms against 2.7-3.0 ms on torch.softmax
4096x1024) and the `minflt_per_call` column says which one a row measured. tcmalloc keeps the freed block
for the next call: 0 faults per call, always. jemalloc 5 purges blocks above its 8 MiB oversize threshold
at once: 4097 faults per call, always. (tests/test_allocator.py, docs/cpu-timing.md)

The allocator is loaded with LD_PRELOAD, which only takes effect when a process starts: `ensure()` re-executes
bench.py with it (once; KB_ALLOCATOR marks the child), and `worker_env()` gives the environment for worker
processes started by the runner. Libraries come from the Debian packages libjemalloc2 and
libtcmalloc-minimal4 (the Makefile's system-deps); a missing one is one line and exit 2.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

LIBRARIES = {"jemalloc": "libjemalloc.so.2", "tcmalloc": "libtcmalloc_minimal.so.4"}
PACKAGES = {"jemalloc": "libjemalloc2", "tcmalloc": "libtcmalloc-minimal4"}
CHOICES = ("system", *LIBRARIES)
_DIRS = ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64",
         "/usr/lib", "/usr/local/lib")


class AllocatorError(Exception):
    """The allocator asked for cannot be loaded (one line for the user)."""


def library(name: str) -> Path:
    """The shared library of allocator `name` (jemalloc, tcmalloc) on this machine, or AllocatorError."""
    if name not in LIBRARIES:
        raise AllocatorError(f"unknown allocator {name!r}; choose from: {', '.join(CHOICES)}")
    fname = LIBRARIES[name]
    dirs = [d for d in os.environ.get("KB_ALLOCATOR_DIRS", "").split(":") if d] or list(_DIRS)
    if not os.environ.get("KB_ALLOCATOR_DIRS"):
        try:                                      # the dynamic linker's own list first
            out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
            dirs = [str(Path(line.split("=>")[-1].strip()).parent) for line in out.splitlines()
                    if line.strip().startswith(fname)] + dirs
        except (OSError, subprocess.SubprocessError):
            pass
    for d in dirs:
        p = Path(d) / fname
        if p.exists():
            return p
    raise AllocatorError(f"--allocator {name}: {fname} not found (install the Debian package {PACKAGES[name]}: "
                         f"`make system-deps` as root, or apt-get install {PACKAGES[name]})")


def loaded() -> str:
    """The allocator mapped into this process: "jemalloc", "tcmalloc" or "system" (glibc malloc)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    for name in LIBRARIES:
        if f"lib{name}" in maps:
            return name
    return "system"


def _strip(preload: str) -> str:
    return " ".join(p for p in preload.replace(":", " ").split() if not any(n in p for n in ("jemalloc", "tcmalloc")))


def worker_env(name: str, env: dict | None = None) -> dict:
    """The environment for a process that measures under allocator `name` (LD_PRELOAD set or cleared)."""
    env = dict(os.environ if env is None else env)
    rest = _strip(env.get("LD_PRELOAD", ""))
    if name == "system":
        preload = rest
    else:
        preload = " ".join(x for x in (str(library(name)), rest) if x)
    if preload:
        env["LD_PRELOAD"] = preload
    else:
        env.pop("LD_PRELOAD", None)
    env["KB_ALLOCATOR"] = name
    return env


def ensure(name: str | None, argv: list[str]) -> None:
    """Make this process run under allocator `name`: re-executes bench.py with LD_PRELOAD when it is not.
    Returns when the allocator is in place; raises AllocatorError when it cannot be."""
    if name is None or name == loaded():
        return
    if os.environ.get("KB_ALLOCATOR") == name:     # already re-executed once and still not loaded
        raise AllocatorError(f"--allocator {name}: LD_PRELOAD={os.environ.get('LD_PRELOAD')!r} did not load it")
    env = worker_env(name)
    prog = Path(sys.argv[0])
    if prog.name != "bench.py":
        raise AllocatorError(f"--allocator {name} must be given to bench.py (it restarts itself with LD_PRELOAD); "
                             f"or start this process with LD_PRELOAD={env.get('LD_PRELOAD', '')}")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, str(prog), *argv], env)


def describe() -> dict:
    """For the manifest: the allocator in use, its library, and glibc malloc's tunables when it is glibc's."""
    name = loaded()
    info: dict = {"name": name, "ld_preload": os.environ.get("LD_PRELOAD") or None}
    if name != "system":
        try:
            info["library"] = str(library(name))
        except AllocatorError:
            info["library"] = None
    else:
        import platform
        info["libc"] = " ".join(platform.libc_ver())
        tun = {k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
        info["tunables"] = tun or None
    return info
