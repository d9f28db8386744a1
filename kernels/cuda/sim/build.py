"""Builds the libraries of the CUDA simulation (kernels/cuda/sim/CMakeLists.txt) for the tests.

`sim_library("kb_cuda_sim")` returns the path of build/lib/libkb_cuda_sim.so from a CMake build of
kernels/cuda/sim alone in `<repo>/.cache/sim-build` (incremental: a second call costs about a second), or
from `$KB_SIM_BUILD_DIR` when set (`$KB_SIM_BUILD_TYPE`, default Release, is its CMake build type at configure). Raises `SimBuildError` with the compiler's message when the build fails.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SIM_DIR = Path(__file__).resolve().parent
_lock = threading.Lock()
_configured: set[Path] = set()


class SimBuildError(RuntimeError):
    pass


def build_dir() -> Path:
    return Path(os.environ.get("KB_SIM_BUILD_DIR", ROOT / ".cache" / "sim-build"))


def missing_tools() -> str | None:
    """The reason the simulation cannot be built here, or None."""
    for tool in ("cmake", "g++", "readelf"):
        if shutil.which(tool) is None:
            return f"{tool} not found: the CUDA simulation needs cmake, g++ and readelf"
    return None


def sim_library(*targets: str, jobs: int = 2) -> list[Path]:
    """Builds `targets` (e.g. "kb_sim_tests", "kb_cuda_sim_asan") and returns their .so paths."""
    reason = missing_tools()
    if reason:
        raise SimBuildError(reason)
    bdir = build_dir()
    with _lock:
        if bdir not in _configured:
            build_type = os.environ.get("KB_SIM_BUILD_TYPE", "Release")  # Debug: make coverage (-O0)
            r = subprocess.run(["cmake", "-S", str(SIM_DIR), "-B", str(bdir), f"-DCMAKE_BUILD_TYPE={build_type}"],
                               capture_output=True, text=True)
            if r.returncode:
                raise SimBuildError("cmake configure of kernels/cuda/sim failed:\n" + r.stdout[-4000:] + r.stderr[-4000:])
            _configured.add(bdir)
        r = subprocess.run(["cmake", "--build", str(bdir), "-j", str(jobs), "--target", *targets],
                           capture_output=True, text=True)
        if r.returncode:
            raise SimBuildError(f"build of {' '.join(targets)} failed:\n" + (r.stdout + r.stderr)[-8000:])
    return [bdir / "lib" / f"lib{t}.so" for t in targets]


def manifest() -> dict[str, tuple[str, str]]:
    """{source: (status, reason)} of kernels/cuda/*.cu as the configure step classified them."""
    path = build_dir() / "lib" / "kb_cuda_sim_manifest.txt"
    out = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        out[parts[0]] = (parts[1], parts[2] if len(parts) > 2 else "")
    return out


def asan_runtime() -> str | None:
    """Path of libasan.so for LD_PRELOAD (a Python process must load the ASan runtime first)."""
    r = subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True)
    p = r.stdout.strip()
    return p if r.returncode == 0 and os.path.isabs(p) and os.path.exists(p) else None
