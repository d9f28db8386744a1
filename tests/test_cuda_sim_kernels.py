"""Every CUDA kernel of kernels/cuda/ runs under the CPU simulation and passes its suite's check.

The same .cu sources that nvcc builds into libkb_cuda.so are compiled by g++ against kernels/cuda/sim/kb_sim.h
into libkb_cuda_sim.so (built here into .cache/sim-build on first use). Each kernel is driven through the
setup function its suite registers (kernels/cuda/lib.py, bound to the simulated library with `bind(path)`),
on CPU tensors, at the suites' odd "test" shapes, with fresh inputs and NaN-poisoned outputs, under two
schedules (warps drifting apart, random thread order), and compared with the suite's float64 reference at the
suite's tolerance; and once more with the race checker, which fails a kernel on any shared- or global-memory race.
A fresh process then runs one case of each kernel under AddressSanitizer and must produce no report.
Timing means nothing under simulation: these tests check results only.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
import torch

from harness.check import compare
from harness.registry import Skip
from kernels.cuda import lib as cuda_lib
from kernels.cuda.sim.build import ROOT, SimBuildError, asan_runtime, manifest, missing_tools, sim_library

pytestmark = pytest.mark.skipif(missing_tools() is not None, reason=str(missing_tools()))

# (schedule, seed): each check runs under both, with fresh inputs. drift: one warp at a time to its next barrier,
# warps in seeded order; random: one random thread at a time, collectives fired as soon as their lanes arrive.
# The lockstep order runs in test_kernel_race_free, under the race checker.
SCHEDULES = (("drift", 1), ("random", 2))
SCHEDULE_MODE = {"lockstep": 0, "drift": 1, "random": 2}

# suite -> (kernels/cuda/lib.py setup, C entry points it drives, source file)
KERNELS = {
    "softmax": (cuda_lib.softmax_setup, ("kb_cuda_softmax",)),
    "norm": (cuda_lib.norm_setup, ("kb_cuda_rmsnorm", "kb_cuda_layernorm")),
    "gemm": (cuda_lib.gemm_setup, ("kb_cuda_gemm",)),
    "attention": (cuda_lib.attention_setup, ("kb_cuda_attention_fwd",)),
}


@pytest.fixture(scope="module")
def sim_path() -> Path:
    try:
        return sim_library("kb_cuda_sim")[0]
    except SimBuildError as e:
        pytest.fail(f"the CUDA kernels do not build under the simulation:\n{e}")


@pytest.fixture(scope="module")
def simlib(sim_path):
    lib = cuda_lib.bind(sim_path)
    assert lib.simulated and lib.device == "cpu"
    lib.lib.kb_sim_set_schedule_seed.argtypes = [ctypes.c_longlong]
    lib.lib.kb_sim_last_error.restype = ctypes.c_char_p
    yield lib
    lib.lib.kb_sim_set_schedule_seed(-2)
    lib.lib.kb_sim_set_schedule(-1)


@pytest.fixture(scope="module")
def racelib():
    """The same kernels built with the race checker (kernels/cuda/sim/kb_sim_race.cpp)."""
    try:
        lib = cuda_lib.bind(sim_library("kb_cuda_sim_race")[0])
    except SimBuildError as e:
        pytest.fail(f"the CUDA kernels do not build under the simulation's race checker:\n{e}")
    assert lib.lib.kb_sim_racecheck() == 1
    return lib


@pytest.fixture
def on_sim(simlib, monkeypatch):
    """The lib.py setups use the simulated library for CPU cases."""
    monkeypatch.setattr(cuda_lib, "_lib_for", lambda case: simlib)
    return simlib


def suite(name):
    mod = __import__(f"suites.{name}", fromlist=["SUITE"])
    return mod.SUITE


def test_every_kernel_source_is_simulated(sim_path):
    """kernels/cuda/*.cu are all listed in kernels/cuda/sim/CMakeLists.txt and none is left out."""
    m = manifest()
    on_disk = sorted(p.name for p in (ROOT / "kernels" / "cuda").glob("*.cu"))
    problems = [f"{src}: {m.get(src, ('unlisted', ''))[0]} {m.get(src, ('', ''))[1]}".strip()
                for src in on_disk if m.get(src, ("unlisted",))[0] != "simulated"]
    assert not problems, "CUDA kernels not simulated: " + "; ".join(problems)


def test_every_entry_point_is_checked(simlib):
    covered = {e for _, entries in KERNELS.values() for e in entries}
    missing = set(cuda_lib._SIGNATURES) - covered
    assert not missing, f"entry points of kernels/cuda/lib.py without a simulation test: {sorted(missing)}"


def cases():
    out = []
    for name in KERNELS:
        s = suite(name)
        for dtype in s.dtypes:
            for case in s.cases("test", device="cpu", dtype=dtype):
                out.append(pytest.param(name, case, id=f"{name}-{case.name}-{dtype}"))
    return out


@pytest.mark.parametrize("suite_name,case", cases())
def test_kernel_matches_reference(on_sim, suite_name, case):
    s = suite(suite_name)
    setup = KERNELS[suite_name][0]
    atol, rtol = s.tolerance(case)
    for schedule, seed in SCHEDULES:
        inputs = s.make_inputs(case, seed=zlib.crc32(f"{case.name}/{case.dtype_name}/{seed}".encode()))
        try:
            launcher = setup(case, **inputs)
        except Skip as e:  # the real kernel does not take this case either (same setup code)
            pytest.skip(f"{suite_name} cuda kernel: {e}")
        on_sim.lib.kb_sim_set_schedule_seed(seed)
        on_sim.lib.kb_sim_set_schedule(SCHEDULE_MODE[schedule])
        try:
            out = launcher()
        finally:
            on_sim.lib.kb_sim_set_schedule_seed(-2)
            on_sim.lib.kb_sim_set_schedule(-1)
        ref = s.compute_reference(case, inputs)
        r = compare(out, ref, atol, rtol)
        assert r.ok, f"schedule {schedule} seed {seed}: {r.message}"


@pytest.mark.parametrize("suite_name,case", cases())
def test_kernel_race_free(racelib, monkeypatch, suite_name, case):
    """No shared- or global-memory race in any barrier interval (RAW, WAR, WAW, cp.async destinations touched
    before their wait), whatever the schedule: the race checker reports the two threads, address and lines."""
    monkeypatch.setattr(cuda_lib, "_lib_for", lambda c: racelib)
    s = suite(suite_name)
    inputs = s.make_inputs(case, seed=zlib.crc32(f"race/{case.name}/{case.dtype_name}".encode()))
    try:
        launcher = KERNELS[suite_name][0](case, **inputs)
    except Skip as e:
        pytest.skip(f"{suite_name} cuda kernel: {e}")
    out = launcher()   # a race is a launch error: KbCudaError with the checker's report
    r = compare(out, s.compute_reference(case, inputs), *s.tolerance(case))
    assert r.ok, r.message


def test_launch_error_reaches_python(on_sim):
    """A launch that fails under the simulation surfaces in Python as KbCudaError carrying its message
    (cudaGetLastError -> kb_cuda_last_error -> lib.py), for each entry point's error path."""
    case = suite("softmax").cases("test", device="cpu", dtype="float32")[0]
    inputs = suite("softmax").make_inputs(case, seed=3)
    launcher = cuda_lib.softmax_setup(case, **inputs)
    on_sim.lib.kb_sim_inject_failure(b"injected by the test")
    with pytest.raises(cuda_lib.KbCudaError, match="injected by the test"):
        launcher()
    assert torch.isfinite(launcher()).all()  # the error was per launch


ASAN_RUN = """
    import ctypes, sys, torch
    sys.path.insert(0, {root!r})
    from harness.check import compare
    from kernels.cuda import lib as cuda_lib
    simlib = cuda_lib.bind({path!r})
    cuda_lib._lib_for = lambda case: simlib
    import importlib
    for name, setup, pick in {plan!r}:
        s = importlib.import_module("suites." + name).SUITE
        for dtype in s.dtypes:
            cs = s.cases("test", device="cpu", dtype=dtype)
            case = cs[min(pick, len(cs) - 1)]
            inputs = s.make_inputs(case, seed=7)
            try:
                out = getattr(cuda_lib, setup)(case, **inputs)()
            except Exception as e:
                if type(e).__name__ == "Skip":
                    continue
                raise
            r = compare(out, s.compute_reference(case, inputs), *s.tolerance(case))
            assert r.ok, (name, case, dtype, r.message)
            print("ok", name, case.name, dtype, flush=True)
    print("clean")
"""


def test_kernels_under_asan():
    """One small case of each kernel under AddressSanitizer + bounds checks: no report, right results."""
    rt = asan_runtime()
    if rt is None:
        pytest.skip("libasan.so not found (g++ -print-file-name=libasan.so)")
    try:
        path = sim_library("kb_cuda_sim_asan")[0]
    except SimBuildError as e:
        pytest.fail(str(e))
    plan = [("softmax", "softmax_setup", 0), ("norm", "norm_setup", 0), ("norm", "norm_setup", 4),
            ("gemm", "gemm_setup", 4), ("attention", "attention_setup", 3)]
    code = textwrap.dedent(ASAN_RUN.format(root=str(ROOT), path=str(path), plan=plan))
    env = dict(os.environ, LD_PRELOAD=rt, ASAN_OPTIONS="detect_leaks=0", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(ROOT),
                       timeout=600)
    assert r.returncode == 0 and "clean" in r.stdout, r.stdout[-2000:] + r.stderr[-6000:]
    assert "AddressSanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr[-6000:]
