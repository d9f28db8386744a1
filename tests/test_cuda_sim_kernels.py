"""Every CUDA kernel of kernels/cuda/ runs under the CPU simulation and passes its suite's check.

The same .cu sources that nvcc builds into libkb_cuda.so are compiled by g++ against kernels/cuda/sim/kb_sim.h
into libkb_cuda_sim.so (built here into .cache/sim-build on first use). Every variant a suite registers from
kernels/cuda/lib.py (the table is derived from the declarations) is checked by harness.check.check_variant,
bench.py's own check, on CPU tensors against the simulated library, at its suite's odd "test" shapes, with
fresh seeded inputs and NaN-poisoned outputs, under two schedule seeds.
A fresh process then runs one case of each kernel under AddressSanitizer and must produce no report.
Timing means nothing under simulation: these tests check results only.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from harness.check import check_variant
from harness.registry import Skip, all_suites
from kernels.cuda import lib as cuda_lib
from kernels.cuda.sim.build import ROOT, SimBuildError, asan_runtime, manifest, missing_tools, sim_library

pytestmark = pytest.mark.skipif(missing_tools() is not None, reason=str(missing_tools()))

SEEDS = (1, 2)  # schedule seeds: each check runs under both, with fresh inputs


def cuda_variants():
    """(suite, variant) for every variant the suites register from kernels/cuda/lib.py (derived, not listed)."""
    return [(s, v) for s in all_suites().values() for v in s.variants.values()
            if getattr(v.kernel, "backend", None) == "cuda"]


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
    lib.dll.kb_sim_set_schedule_seed.argtypes = [ctypes.c_longlong]
    lib.dll.kb_sim_last_error.restype = ctypes.c_char_p
    yield lib
    lib.dll.kb_sim_set_schedule_seed(-2)


@pytest.fixture
def on_sim(simlib, monkeypatch):
    """The declared setups run CPU cases on the simulated library: this one, built for the tests."""
    monkeypatch.setattr(cuda_lib.SIM, "for_case", lambda case: simlib)
    return simlib


def test_every_kernel_source_is_simulated(sim_path):
    """kernels/cuda/*.cu are all built under the simulation and none is left out."""
    m = manifest()
    on_disk = sorted(p.name for p in (ROOT / "kernels" / "cuda").glob("*.cu"))
    problems = [f"{src}: {m.get(src, ('unlisted', ''))[0]} {m.get(src, ('', ''))[1]}".strip()
                for src in on_disk if m.get(src, ("unlisted",))[0] != "simulated"]
    assert not problems, "CUDA kernels not simulated: " + "; ".join(problems)


def test_every_entry_point_is_registered(simlib):
    """Every kernel declared in kernels/cuda/lib.py is registered by a suite, hence checked below."""
    registered = {id(v.kernel) for _, v in cuda_variants()}
    missing = [k.symbol for k in cuda_lib.LIB.kernels if id(k) not in registered]
    assert not missing, f"entry points of kernels/cuda/lib.py registered in no suite: {missing}"


def cases():
    out = []
    for s, v in cuda_variants():
        for dtype in s.dtypes:
            for case in s.cases("test", device="cpu", dtype=dtype):
                out.append(pytest.param(s.name, v.name, case, id=f"{s.name}-{v.name}-{case.name}-{dtype}"))
    return out


@pytest.mark.parametrize("suite_name,variant,case", cases())
def test_kernel_matches_reference(on_sim, suite_name, variant, case):
    """harness.check.check_variant (bench.py's check and seeding: input seeds 0 and 1) under schedule seeds."""
    s = all_suites()[suite_name]
    try:
        for input_seed, sched in enumerate(SEEDS):
            try:
                r = check_variant(s, case, s.variants[variant], input_seed,
                                  before_call=lambda: on_sim.dll.kb_sim_set_schedule_seed(sched))
            finally:
                on_sim.dll.kb_sim_set_schedule_seed(-2)
            assert r.ok, f"schedule seed {sched}, input seed {r.seed}: {r.result.message}"
    except Skip as e:  # the real kernel does not take this case either (same setup code)
        pytest.skip(f"{suite_name} {variant}: {e}")


def test_launch_error_reaches_python(on_sim):
    """A launch that fails under the simulation surfaces in Python as KbCudaError carrying its message
    (cudaGetLastError -> kb_cuda_last_error -> the declared binding), for each entry point's error path."""
    s = all_suites()["softmax"]
    case = s.cases("test", device="cpu", dtype="float32")[0]
    inputs = s.make_inputs(case, seed=3)
    launcher = cuda_lib.SOFTMAX.setup(case, **inputs)
    on_sim.dll.kb_sim_inject_failure(b"injected by the test")
    with pytest.raises(cuda_lib.KbCudaError, match="injected by the test"):
        launcher()
    assert torch.isfinite(launcher()).all()  # the error was per launch


ASAN_RUN = """
    import sys
    sys.path.insert(0, {root!r})
    from harness.check import check_variant
    from harness.registry import Skip, all_suites
    from kernels.cuda import lib as cuda_lib
    simlib = cuda_lib.bind({path!r})
    cuda_lib.SIM.for_case = lambda case: simlib
    for name, variant, pick in {plan!r}:
        s = all_suites()[name]
        for dtype in s.dtypes:
            cs = s.cases("test", device="cpu", dtype=dtype)
            case = cs[min(pick, len(cs) - 1)]
            try:
                r = check_variant(s, case, s.variants[variant], seed=7)
            except Skip:
                continue
            assert r.ok, (name, case, dtype, r.result.message)
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
    plan = [("softmax", "cuda_rowcache", 0), ("rmsnorm", "cuda_rowcache", 0), ("layernorm", "cuda_rowcache", 4),
            ("gemm", "cuda_mma", 4), ("attention", "cuda_flash", 3)]
    code = textwrap.dedent(ASAN_RUN.format(root=str(ROOT), path=str(path), plan=plan))
    env = dict(os.environ, LD_PRELOAD=rt, ASAN_OPTIONS="detect_leaks=0", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(ROOT),
                       timeout=600)
    assert r.returncode == 0 and "clean" in r.stdout, r.stdout[-2000:] + r.stderr[-6000:]
    assert "AddressSanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr[-6000:]
