"""The C++ kernels under AddressSanitizer.

kernels/cpp/CMakeLists.txt builds libkb_cpp_asan.so (every kernel with -fsanitize=address). A subprocess
with libasan preloaded (Python itself is not instrumented; preloading puts the ASan runtime first, so it
intercepts every malloc, torch's tensors included) runs tests/test_cpp_kernels.py against that library
(KB_CPP_LIB): every kernel, both ISA paths, the odd shapes -- and the report must be clean. A second
subprocess plants an out-of-bounds read (a softmax told its row is longer than its buffer) and the report
must name it: proof that the instrumented library is the one under test and that the check can fail.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD = Path(os.environ["KB_BUILD_DIR"]) if os.environ.get("KB_BUILD_DIR") else ROOT / "build"
ASAN_LIB = BUILD / "lib" / "libkb_cpp_asan.so"


def _libasan() -> str | None:
    for cc in ("g++", "gcc", "c++"):
        if shutil.which(cc):
            out = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
            if out and os.path.isabs(out) and os.path.exists(out):
                return out
    return None


@pytest.fixture(scope="module")
def asan_env():
    if not ASAN_LIB.exists() and (BUILD / "CMakeCache.txt").exists():
        subprocess.run(["cmake", "--build", str(BUILD), "--target", "kb_cpp_asan", "-j2"], capture_output=True,
                       timeout=600)
    if not ASAN_LIB.exists():
        pytest.skip(f"{ASAN_LIB} not built: run 'make build' (or cmake --build build --target kb_cpp_asan)")
    libasan = _libasan()
    if libasan is None:
        pytest.skip("libasan.so not found (g++ -print-file-name=libasan.so)")
    env = {**os.environ, "LD_PRELOAD": libasan, "KB_CPP_LIB": str(ASAN_LIB), "PYTHONUNBUFFERED": "1",
           # Python's own allocations are never freed at exit: leak checking would only report those.
           "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:halt_on_error=1:exitcode=86"}
    return env


def test_kernels_are_clean_under_asan(asan_env):
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           "tests/test_cpp_kernels.py", "-k", "not missing_library"],
                          cwd=ROOT, env=asan_env, capture_output=True, text=True, timeout=900)
    report = proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "AddressSanitizer" not in proc.stderr, report
    assert proc.returncode == 0, report
    assert " passed" in proc.stdout, report


def test_a_planted_out_of_bounds_read_is_reported(asan_env):
    script = textwrap.dedent("""
        import torch
        from kernels.cpp import lib
        k = lib.load()
        assert str(k.path).endswith("libkb_cpp_asan.so"), k.path
        x = torch.randn(100)                     # 100 floats...
        y = torch.empty(4096)
        k.dll.kb_cpp_softmax(x.data_ptr(), y.data_ptr(), 1, 4096, 4096, 4096, 0, 1)   # ...read as 4096
        print("NOT REPORTED")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=asan_env, capture_output=True, text=True,
                          timeout=300)
    assert "NOT REPORTED" not in proc.stdout
    assert "ERROR: AddressSanitizer" in proc.stderr, proc.stderr[-3000:]
    assert "kb_cpp_softmax" in proc.stderr or "softmax.cpp" in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 86, proc.returncode
