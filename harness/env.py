"""The machine and software a run happened on: device choice, names, versions, for rows and the manifest."""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def cuda_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def best_device() -> str:
    return "cuda" if cuda_available() else "cpu"


@lru_cache(None)
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(torch.cuda.current_device())
    return f"{cpu_name()} ({os.cpu_count()} cpus)"


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


@lru_cache(None)
def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def driver_version() -> str | None:
    try:
        import pynvml
        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
            return v.decode() if isinstance(v, bytes) else v
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cpu_regime(threads: int | None = None) -> tuple[dict, list[str]]:
    """Threads, affinity, frequency governor, turbo, load: what makes CPU figures (un)stable, and the warnings.

    The checks follow pyperf's `system show` (pyperf.readthedocs.io, "Tune the system for benchmarks"):
    CPU frequency governor, Turbo Boost, isolated CPUs, load; plus what this suite controls itself (torch
    threads against the CPUs this process may use)."""
    threads = threads or torch.get_num_threads()
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    govs = sorted({g for c in cpus if (g := _read(f"/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor"))})
    no_turbo = _read("/sys/devices/system/cpu/intel_pstate/no_turbo")
    boost = _read("/sys/devices/system/cpu/cpufreq/boost")
    turbo = (no_turbo == "0") if no_turbo is not None else (boost == "1") if boost is not None else None
    flags = ""
    try:
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        pass
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    info = {
        "torch_threads": threads, "affinity": cpus, "cpus_allowed": len(cpus), "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "governor": ",".join(govs) or None,
        "turbo": turbo, "isolated_cpus": _read("/sys/devices/system/cpu/isolated") or None,
        "virtual_machine": " hypervisor" in f" {flags} ", "load1": load1,
    }
    warn = []
    if threads > len(cpus):
        warn.append(f"{threads} threads on {len(cpus)} allowed CPUs: oversubscribed, figures unstable "
                    f"(--threads {len(cpus)})")
    if govs and govs != ["performance"]:
        warn.append(f"CPU frequency governor {','.join(govs)}: the clock follows the load "
                    "(pyperf system tune sets 'performance')")
    if not govs:
        info["governor"] = "unreadable: no cpufreq in sysfs" + (" (virtual machine)" if info["virtual_machine"] else "")
    if turbo:
        warn.append("turbo boost on: the clock depends on temperature and on how many cores are busy")
    if turbo is None:
        info["turbo"] = "unknown: no intel_pstate/no_turbo or cpufreq/boost in sysfs"
    if load1 is not None and load1 > 0.5 * len(cpus):
        warn.append(f"load average {load1:.1f} on {len(cpus)} CPUs: other processes compete for the cores "
                    "(see cpu_others_pct per row)")
    return info, warn


ROW_KEYS = ("device_name", "commit", "host", "torch", "triton", "cuda", "driver")


def row_keys(manifest: dict) -> dict:
    """Environment keys repeated on every results row (so one table can mix machines), read off the manifest."""
    return {k: manifest.get(k) for k in ROW_KEYS}


def manifest(device: str, argv: list[str]) -> dict:
    info = {
        "command": " ".join([Path(sys.argv[0]).name] + argv),
        "argv": argv,
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "numpy": _version("numpy"),
        "pandas": _version("pandas"),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device == "cuda" else None,
        "driver": driver_version() if device == "cuda" else None,
    }
    from harness import allocator
    info["allocator"] = allocator.describe()
    info["cpu_regime"], info["system_warnings"] = cpu_regime()
    if device == "cuda":
        p = torch.cuda.get_device_properties(torch.cuda.current_device())
        info.update(gpu_sms=p.multi_processor_count, gpu_memory_bytes=p.total_memory,
                    gpu_capability=f"{p.major}.{p.minor}", gpu_l2_bytes=getattr(p, "L2_cache_size", None))
    return info
