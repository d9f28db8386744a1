"""The CUDA simulation (kernels/cuda/sim) catches the bugs it is there to catch.

Each test kernel in tests/sim_kernels/ has a planted bug and a correct twin: a missing __syncthreads
(results change with the schedule seed), a wrong shuffle lane and a wrong mma fragment register (wrong
results), a cp.async wait that covers too little (stale shared memory), out-of-bounds shared and global
accesses (AddressSanitizer / bounds-checker reports), and barriers or warp collectives that not every thread
reaches (a launch error naming the kernel, within a timeout, never a hang). The twins pass.
Runs on the CPU; needs cmake, g++ and readelf (built into .cache/sim-build on first use).
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

from kernels.cuda.sim.build import ROOT, SimBuildError, asan_runtime, missing_tools, sim_library
from tests.sim_helpers import check_block_reduce

pytestmark = pytest.mark.skipif(missing_tools() is not None, reason=str(missing_tools()))

SEEDS = (1, 2, 3, 4, 5)
ERR_LAUNCH, ERR_VALUE, ERR_CONFIG = 719, 1, 9


@pytest.fixture(scope="module")
def lib_paths():
    try:
        return sim_library("kb_sim_tests", "kb_sim_tests_asan")
    except SimBuildError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def lib(lib_paths):
    so = ctypes.CDLL(str(lib_paths[0]))
    so.kb_sim_last_error.restype = ctypes.c_char_p
    so.kb_sim_set_schedule_seed.argtypes = [ctypes.c_longlong]
    yield so
    so.kb_sim_set_schedule_seed(-2)


def ptr(a: np.ndarray) -> ctypes.c_void_p:
    return a.ctypes.data_as(ctypes.c_void_p)


def last_error(lib) -> str:
    return lib.kb_sim_last_error().decode()


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


def run_seeds(lib, fn, seeds=(-1,) + SEEDS):
    """Runs fn() under each schedule seed (-1: natural order) and returns the outputs."""
    outs = []
    try:
        for s in seeds:
            lib.kb_sim_set_schedule_seed(s)
            outs.append(fn())
    finally:
        lib.kb_sim_set_schedule_seed(-2)
    return outs


# ---------------------------------------------------------------------------------------------------
# Missing __syncthreads: results vary across schedule seeds; the twin is right under every seed.

def shift_is_right(lib, rng, n, racy):
    """One launch of the shift kernel (y[i] = x[i-1] within blocks of 256) on fresh inputs: right or not."""
    x = rng.standard_normal(n).astype(np.float32)
    y = np.full(n, np.nan, np.float32)
    assert lib.simtest_shift(ptr(y), ptr(x), n, racy) == 0, last_error(lib)
    ref = np.where(np.arange(n) % 256 == 0, 0.0, np.roll(x, 1)).astype(np.float32)
    return np.array_equal(y, ref)


@pytest.mark.parametrize("n", [1, 127, 1000])
def test_shift_missing_barrier_caught_by_seeds(lib, rng, n):
    # fresh inputs for every run: static __shared__ keeps the previous launch's values (as on a GPU)
    def run(racy):
        return lambda: shift_is_right(lib, rng, n, racy)

    assert all(run_seeds(lib, run(0)))
    racy = run_seeds(lib, run(1))
    if n > 1:
        # the natural order happens to hide this race (thread t-1 runs before t); the seeds expose it
        assert racy[0], "natural order"
        assert not all(racy[1:]), "a missing barrier went unnoticed"


def test_block_sum_missing_barrier_caught(lib, rng):
    n = 129 + 256 * 3
    nb = (n + 255) // 256

    def run(racy):
        def f():
            x = rng.standard_normal(n).astype(np.float32)
            ref = np.array([x[i:i + 256].astype(np.float64).sum() for i in range(0, n, 256)])
            out = np.full(nb, np.nan, np.float32)
            assert lib.simtest_block_sum(ptr(out), ptr(x), n, racy) == 0, last_error(lib)
            return np.allclose(out, ref, rtol=1e-5, atol=1e-4)
        return f

    assert all(run_seeds(lib, run(0)))
    assert not any(run_seeds(lib, run(1)))


# ---------------------------------------------------------------------------------------------------
# Warp shuffles follow the lane rules of the CUDA programming guide; a wrong source lane is caught.

def shuffle_model(op: str, arg: int, width: int) -> np.ndarray:
    lanes = np.arange(32)
    src = np.empty(32, int)
    for lane in lanes:
        seg = (lane // width) * width
        if op == "idx":
            s = seg + (arg + lane // 2) % width
        elif op == "up":
            s = lane - arg if lane % width >= arg else lane
        elif op == "down":
            s = lane + arg if lane % width + arg < width else lane
        else:  # xor: earlier groups may be read, a later group gives the lane's own value
            s = lane ^ (arg & 31)
            s = s if s < seg + width else lane
        src[lane] = s
    return 100 + src


@pytest.mark.parametrize("arg", [0, 1, 3, 6, 17])
def test_shuffle_lane_semantics(lib, arg):
    out = np.full(4 * 6 * 32 + 128, -1, np.int32)
    assert lib.simtest_lanes(ptr(out), arg) == 0, last_error(lib)
    for oi, op in enumerate(("idx", "up", "down", "xor")):
        for wi, width in enumerate((32, 16, 8, 4, 2, 1)):
            got = out[(oi * 6 + wi) * 32:(oi * 6 + wi + 1) * 32]
            np.testing.assert_array_equal(got, shuffle_model(op, arg, width), err_msg=f"{op} width {width}")
    base = 4 * 6 * 32
    lanes = np.arange(32)
    ballot = sum(1 << int(l) for l in lanes if l % 3 == 0)
    assert (out[base:base + 32].astype(np.uint32) == ballot).all()
    assert (out[base + 32:base + 64] == (1 if arg < 32 else 0) + 2).all()
    half = np.where(lanes < 16, (lanes ^ 1) * 10, (lanes ^ 2) * 10)
    np.testing.assert_array_equal(out[base + 64:base + 96], half)
    np.testing.assert_array_equal(out[base + 96:base + 128], 1 + 2 * np.minimum(lanes + 1, 31))


@pytest.mark.parametrize("rows", [1, 7, 130])
def test_wrong_shuffle_lane_caught(lib, rng, rows):
    x = rng.standard_normal((rows, 32)).astype(np.float32)
    x[::2, 0] += 10.0  # lane 0 holds the maximum of every other row: only lane 0 ends with it
    ref = np.repeat(x.max(axis=1, keepdims=True), 32, axis=1)

    def run(wrong):
        y = np.full((rows, 32), np.nan, np.float32)
        assert lib.simtest_row_max(ptr(y), ptr(x), rows, wrong) == 0, last_error(lib)
        return y

    np.testing.assert_array_equal(run(0), ref)
    assert not np.array_equal(run(1), ref), "a broadcast from the wrong lane went unnoticed"


# ---------------------------------------------------------------------------------------------------
# Tensor cores: the PTX ISA fragment layouts of mma.m16n8k16 and ldmatrix; a wrong fragment index fails.

def to_16bit(a: np.ndarray, dtype: int) -> tuple[np.ndarray, np.ndarray]:
    """(raw 16-bit bits, the values they hold as float64) for bf16 (1) or fp16 (2)."""
    if dtype == 2:
        h = a.astype(np.float16)
        return h.view(np.uint16), h.astype(np.float64)
    u = a.astype(np.float32).view(np.uint32)
    bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
    vals = (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return bits, vals


@pytest.mark.parametrize("dtype", [1, 2], ids=["bf16", "f16"])
@pytest.mark.parametrize("mode", [0, 2], ids=["fragments", "ldmatrix"])
def test_mma_fragment_layouts(lib, rng, dtype, mode):
    tiles = 3
    a_bits, a = to_16bit(rng.standard_normal((tiles, 16, 16)), dtype)
    b_bits, b = to_16bit(rng.standard_normal((tiles, 16, 8)), dtype)
    c = rng.standard_normal((tiles, 16, 8)).astype(np.float32)
    ref = a @ b + c

    def run(m):
        d = np.full((tiles, 16, 8), np.nan, np.float32)
        assert lib.simtest_mma(ptr(d), ptr(a_bits), ptr(b_bits), ptr(c), tiles, dtype, m) == 0, last_error(lib)
        return d

    np.testing.assert_allclose(run(mode), ref, rtol=1e-6, atol=1e-5)
    if mode == 0:
        bad = run(1)  # a1 and a2 swapped
        assert np.abs(bad - ref).max() > 0.1, "a wrong mma fragment register went unnoticed"


# ---------------------------------------------------------------------------------------------------
# cp.async: copies land at the wait that covers them.

@pytest.mark.parametrize("ntiles", [1, 2, 5])
def test_cp_async_wait_count(lib, rng, ntiles):
    x = rng.standard_normal(64 * ntiles).astype(np.float32)

    def run(bug):
        y = np.full(64 * ntiles, np.nan, np.float32)
        assert lib.simtest_pipeline(ptr(y), ptr(x), ntiles, bug) == 0, last_error(lib)
        return y

    for y in run_seeds(lib, lambda: run(0), seeds=(-1, 1, 2)):
        np.testing.assert_array_equal(y, 2 * x)
    assert not np.array_equal(run(1), 2 * x), "consuming a tile before its cp.async wait went unnoticed"


# ---------------------------------------------------------------------------------------------------
# Divergent barriers and warp collectives: reported with the kernel's name, not a hang.

@pytest.mark.parametrize("mode,expect", [
    (1, ["divergent __syncthreads", "threads 64-127 have exited", "threads 0-63 wait at __syncthreads"]),
    (2, ["divergent __syncthreads", "divergence.cu:11", "divergence.cu:12"]),
    (3, ["divergent warp collective", "__shfl_xor_sync", "waits for threads 16-31", "exited"]),
    (4, ["mask 0x0000000f, which does not include the calling lane"]),
])
def test_divergence_reported(lib, mode, expect):
    y = np.full(256, np.nan, np.float32)
    assert lib.simtest_divergence(ptr(y), 0) == 0, last_error(lib)
    assert np.isfinite(y).all()
    rc = lib.simtest_divergence(ptr(y), mode)
    msg = last_error(lib)
    assert rc == ERR_LAUNCH, msg
    assert "early_exit_kernel" in msg
    for e in expect:
        assert e in msg, msg
    # the error is per launch: the next good launch succeeds
    assert lib.simtest_divergence(ptr(y), 0) == 0


def test_partial_warp_shuffle_reported(lib):
    y = np.full(48, np.nan, np.float32)
    assert lib.simtest_partial_warp(ptr(y), 1) == 0, last_error(lib)
    np.testing.assert_array_equal(y, np.arange(48) + (np.arange(48) ^ 1))
    assert lib.simtest_partial_warp(ptr(y), 16) == ERR_LAUNCH
    assert "reads lane 16, which does not exist" in last_error(lib)


def run_isolated(code: str, env_extra: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env_extra or {}))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=str(ROOT))


def test_divergent_barrier_does_not_hang(lib_paths):
    """In a fresh process with a hard timeout: every divergence mode returns an error quickly."""
    code = f"""
        import ctypes, numpy as np
        lib = ctypes.CDLL({str(lib_paths[0])!r})
        y = np.zeros(256, np.float32)
        for mode in (1, 2, 3, 4):
            for seed in (-1, 7):
                lib.kb_sim_set_schedule_seed(ctypes.c_longlong(seed))
                assert lib.simtest_divergence(y.ctypes.data_as(ctypes.c_void_p), mode) == 719
        print("ok")
    """
    r = run_isolated(code, timeout=60)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


# ---------------------------------------------------------------------------------------------------
# Launches: indices, limits, errors, many blocks on the OS thread pool.

@pytest.mark.parametrize("grid,block", [((3, 2, 2), (4, 3, 2)), ((1, 1, 1), (1, 1, 1)), ((5, 1, 1), (33, 1, 1))])
def test_launch_indices(lib, grid, block):
    nthr = int(np.prod(grid) * np.prod(block))
    out = np.full((nthr, 12), -1, np.int32)
    assert lib.simtest_index(ptr(out), *grid, *block) == 0, last_error(lib)
    rows = []
    for bz in range(grid[2]):
        for by in range(grid[1]):
            for bx in range(grid[0]):
                for tz in range(block[2]):
                    for ty in range(block[1]):
                        for tx in range(block[0]):
                            rows.append([bx, by, bz, tx, ty, tz, *block, *grid])
    np.testing.assert_array_equal(out, np.array(rows))


def test_launch_errors(lib):
    out = np.zeros(12 * 2048, np.int32)
    assert lib.simtest_index(ptr(out), 1, 1, 1, 2048, 1, 1) == ERR_CONFIG
    assert "at most 1024 threads" in last_error(lib)
    y = np.zeros(1, np.float32)
    assert lib.simtest_big_smem(ptr(y), 0) == ERR_VALUE
    assert "KB_SET_MAX_DYNAMIC_SMEM" in last_error(lib)
    assert lib.simtest_big_smem(ptr(y), 1) == 0, last_error(lib)
    assert y[0] == pytest.approx(16383 * 16384 / 2, rel=1e-6)
    t = np.zeros(32, np.int32)
    assert lib.simtest_trap(ptr(t)) == ERR_LAUNCH
    assert "__trap() called" in last_error(lib) and "trap_kernel" in last_error(lib)


def test_many_blocks_atomics(lib, rng):
    n = 100_003
    x = rng.integers(0, 1 << 20, n).astype(np.int32)
    bins = np.zeros(16, np.int32)
    lib.kb_sim_set_threads(2)
    try:
        assert lib.simtest_histogram(ptr(bins), ptr(x), n, 97) == 0, last_error(lib)
    finally:
        lib.kb_sim_set_threads(0)
    np.testing.assert_array_equal(bins, np.bincount(x & 15, minlength=16))


def test_switch_speed(lib, rng):
    """A 256-thread block with 8 barrier rounds: fiber switches stay cheap (no syscall per switch)."""
    import time
    n = 256 * 64
    x = rng.standard_normal(n).astype(np.float32)
    out = np.zeros(64, np.float32)
    st0 = (ctypes.c_ulonglong * 4)()
    st1 = (ctypes.c_ulonglong * 4)()
    lib.kb_sim_stats(st0)
    t = time.perf_counter()
    assert lib.simtest_block_sum(ptr(out), ptr(x), n, 0) == 0
    dt = time.perf_counter() - t
    lib.kb_sim_stats(st1)
    switches = st1[2] - st0[2]
    assert switches >= 64 * 256 * 9
    assert dt / switches < 2e-6, f"{dt / switches * 1e9:.0f} ns per switch"


# ---------------------------------------------------------------------------------------------------
# Out-of-bounds accesses under AddressSanitizer (a fresh process with the ASan runtime preloaded).

ASAN_SNIPPET = """
    import ctypes, sys, numpy as np
    lib = ctypes.CDLL({path!r})
    P = lambda a: a.ctypes.data_as(ctypes.c_void_p)
    n = 1000
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    y = np.full(n, np.nan, np.float32)
    what = sys.argv[1] if len(sys.argv) > 1 else {what!r}
    if what == "twins":
        for static in (0, 1):
            assert lib.simtest_reverse(P(y), P(x), n, 0, static) == 0
            src = (np.arange(n) // 128) * 128 + 127 - np.arange(n) % 128
            assert np.array_equal(y, np.where(src < n, x[np.minimum(src, n - 1)], 0).astype(np.float32))
        assert lib.simtest_copy(P(y), P(x), n, 0) == 0 and np.array_equal(y, x)
        for dt in (1, 2):
            for mode in (0, 2):
                a = np.zeros((2, 16, 16), np.uint16); b = np.zeros((2, 16, 8), np.uint16)
                c = np.zeros((2, 16, 8), np.float32); d = np.zeros_like(c)
                assert lib.simtest_mma(P(d), P(a), P(b), P(c), 2, dt, mode) == 0
        z = np.zeros(64 * 3, np.float32)
        assert lib.simtest_pipeline(P(z), P(x), 3, 0) == 0
        assert lib.simtest_divergence(P(np.zeros(256, np.float32)), 1) == 719  # aborted fibers, then reuse
        assert lib.simtest_divergence(P(np.zeros(256, np.float32)), 0) == 0
        print("clean")
    elif what == "dynamic":
        lib.simtest_reverse(P(y), P(x), n, 1, 0)
    elif what == "static":
        lib.simtest_reverse(P(y), P(x), n, 1, 1)
    elif what == "global":
        lib.simtest_copy(P(y), P(x), n, 1)
    print("no report")
"""


@pytest.fixture(scope="module")
def asan_env():
    rt = asan_runtime()
    if rt is None:
        pytest.skip("libasan.so not found (g++ -print-file-name=libasan.so)")
    return {"LD_PRELOAD": rt, "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0",
            "UBSAN_OPTIONS": "print_stacktrace=1"}


def test_asan_twins_clean(lib_paths, asan_env):
    r = run_isolated(ASAN_SNIPPET.format(path=str(lib_paths[1]), what="twins"), asan_env)
    assert r.returncode == 0 and "clean" in r.stdout, r.stdout + r.stderr[-4000:]
    assert "AddressSanitizer" not in r.stderr


@pytest.mark.parametrize("what,expect", [
    ("dynamic", ["AddressSanitizer", "use-after-poison", "reverse_kernel"]),
    ("static", ["runtime error: index 128 out of bounds for type 'float [128]'", "reverse_static_kernel"]),
    ("global", ["AddressSanitizer", "heap-buffer-overflow", "copy_kernel"]),
])
def test_asan_catches_out_of_bounds(lib_paths, asan_env, what, expect):
    r = run_isolated(ASAN_SNIPPET.format(path=str(lib_paths[1]), what=what), asan_env)
    assert r.returncode != 0 and "no report" not in r.stdout, r.stdout + r.stderr[-3000:]
    for e in expect:
        assert e in r.stderr, r.stderr[-4000:]


# ---------------------------------------------------------------------------------------------------
# What the simulation cannot run stops the build of that kernel with a message naming the feature.

@pytest.mark.parametrize("body,expect", [
    ('__global__ void k(float* y) { asm volatile("membar.gl;"); }', "inline PTX asm is not simulated"),
    ("__global__ void k(float* y) { nvcuda::wmma::fragment<int> f; }", "nvcuda::wmma is not simulated"),
    ("__global__ void k(float* y) { y[0] = __shfl_xor(y[0], 1); }", "__shfl without _sync is not simulated"),
    ("__global__ void k(float* y) { y[0] = __activemask(); }", "__activemask() is not simulated"),
])
def test_unsupported_feature_stops_build(tmp_path, body, expect):
    src = tmp_path / "k.cu"
    src.write_text('#include "kb_cuda.h"\n' + body + "\n")
    r = subprocess.run(["g++", "-std=c++17", "-fsyntax-only", "-x", "c++", "-DKB_CUDA_SIM",
                        f"-I{ROOT / 'kernels' / 'cuda' / 'include'}", str(src)], capture_output=True, text=True)
    assert r.returncode != 0
    assert expect in r.stderr, r.stderr[-2000:]


def test_unsupported_source_listed_as_not_simulated(tmp_path):
    """The configure step leaves out, and lists, a kernel source that uses an unsimulated feature; a new
    source is picked up without being listed anywhere (the sources are globbed)."""
    cuda = tmp_path / "kernels" / "cuda"
    (cuda / "include").mkdir(parents=True)
    (tmp_path / "kernels" / "cuda" / "sim").symlink_to(ROOT / "kernels" / "cuda" / "sim")
    (cuda / "include" / "kb_cuda.h").write_text((ROOT / "kernels/cuda/include/kb_cuda.h").read_text())
    (cuda / "softmax.cu").write_text('#include "include/kb_cuda.h"\n'
                                     '__global__ void k(float* y) { asm volatile("membar.gl;"); }\n')
    (cuda / "extra.cu").write_text('#include "include/kb_cuda.h"\n__global__ void k2(float* y) { y[0] = 1; }\n')
    r = subprocess.run(["cmake", "-S", str(cuda / "sim"), "-B", str(tmp_path / "b")], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert "kernels/cuda/softmax.cu is NOT SIMULATED: it uses inline PTX asm" in r.stderr
    assert "extra.cu" not in r.stderr
    m = (tmp_path / "b" / "lib" / "kb_cuda_sim_manifest.txt").read_text()
    assert "softmax.cu not-simulated inline PTX asm" in m and "extra.cu simulated" in m


# ---------------------------------------------------------------------------------------------------
# The race checker (kb_sim_race.cpp, libraries *_race): a conflicting access in the same barrier interval is
# reported deterministically, under the natural order, with both threads and source lines. Planted races of
# tests/sim_kernels/race.cu give right results under every seed and schedule; only the checker sees them.

SCHEDULES = {"lockstep": 0, "drift": 1, "random": 2}


@pytest.fixture(scope="module")
def race_lib():
    try:
        so = ctypes.CDLL(str(sim_library("kb_sim_tests_race")[0]))
    except SimBuildError as e:
        pytest.fail(str(e))
    so.kb_sim_last_error.restype = ctypes.c_char_p
    so.kb_sim_set_schedule_seed.argtypes = [ctypes.c_longlong]
    assert so.kb_sim_racecheck() == 1
    return so


def run_schedules(lib, fn):
    """fn() under every schedule with seeds -1, 1, 2 (drift permutes warps, random picks threads)."""
    outs = []
    try:
        for mode in SCHEDULES.values():
            lib.kb_sim_set_schedule(mode)
            outs += run_seeds(lib, fn, seeds=(-1, 1, 2))
    finally:
        lib.kb_sim_set_schedule(-1)
    return outs


def _counter(lib, racy, nb=3):
    out = np.full(nb, -1, np.int32)
    rc = lib.simtest_counter(ptr(out), nb, racy)
    return rc, out


def _reuse(lib, x, ntiles, racy):
    y = np.full(64 * ntiles, np.nan, np.float32)
    rc = lib.simtest_reuse(ptr(y), ptr(x), ntiles, racy)
    i = np.arange(64)
    src = (i // 4 * 4 + 4 * (i % 4) + 5) % 64   # y[64k + 4t + j] = 3 * tile_k[(4t + 4j + 5) % 64]
    ref = 3 * x[:64 * ntiles].reshape(ntiles, 64)[:, src].reshape(-1)
    return rc, y, ref


def _swap(lib, x, racy):
    y = np.full(32, np.nan, np.float32)
    rc = lib.simtest_swap(ptr(y), ptr(x), racy)
    return rc, y


def test_planted_races_invisible_without_the_checker(lib, rng):
    """The racy kernels give the right answer under every seed and schedule of the plain simulation."""
    x = rng.standard_normal(64 * 3).astype(np.float32)
    for rc, out in run_schedules(lib, lambda: _counter(lib, 1)):
        assert rc == 0 and (out == 128).all()
    for rc, y, ref in run_schedules(lib, lambda: _reuse(lib, x, 3, 1)):
        assert rc == 0 and np.array_equal(y, ref)
    assert lib.kb_sim_racecheck() == 0


@pytest.mark.parametrize("kernel,expect", [
    ("counter", ["race (read after write) on static __shared__ memory", "race.cu:12", "counter_kernel<true>"]),
    ("reuse", ["race (write after read)", "issues a cp.async to it at race.cu:29", "read it at race.cu:33"]),
    ("swap", ["race (write after read) on static __shared__ memory", "writes it at race.cu:45", "race.cu:47",
              "no __syncthreads or __syncwarp"]),
    ("shift", ["race (read after write)", "barrier_race.cu:12", "barrier_race.cu:10"]),
    ("block_sum", ["race (", "barrier_race.cu:23"]),
    ("pipeline", ["race (read after write)", "a cp.async to it at cp_async.cu:10 that has not landed",
                  "reads it at cp_async.cu:19"]),
])
def test_racecheck_reports_planted_race(race_lib, rng, kernel, expect):
    x = rng.standard_normal(64 * 5).astype(np.float32)
    out = np.full(64 * 5, np.nan, np.float32)
    rc = {"counter": lambda: _counter(race_lib, 1)[0], "reuse": lambda: _reuse(race_lib, x, 3, 1)[0],
          "swap": lambda: _swap(race_lib, x, 1)[0],
          "shift": lambda: race_lib.simtest_shift(ptr(out), ptr(x), 300, 1),
          "block_sum": lambda: race_lib.simtest_block_sum(ptr(out), ptr(x), 300, 1),
          "pipeline": lambda: race_lib.simtest_pipeline(ptr(out), ptr(x), 3, 1)}[kernel]()
    msg = last_error(race_lib)
    assert rc == ERR_LAUNCH, f"race not reported: {msg!r}"
    for e in expect:
        assert e in msg, f"{e!r} not in {msg!r}"
    assert "thread " in msg and "(warp " in msg and "racecheck" in msg


def test_racecheck_twins_clean(race_lib, rng):
    """The correct twin of every planted bug: no report, right results, under every schedule."""
    x = rng.standard_normal(64 * 5).astype(np.float32)

    def all_twins():
        rc, out = _counter(race_lib, 0)
        assert rc == 0 and (out == 128).all(), last_error(race_lib)
        rc, y, ref = _reuse(race_lib, x, 3, 0)
        assert rc == 0 and np.array_equal(y, ref), last_error(race_lib)
        rc, y = _swap(race_lib, x[:32], 0)
        assert rc == 0 and np.array_equal(y, x[:32].reshape(16, 2)[:, ::-1].reshape(-1)), last_error(race_lib)
        y = np.full(300, np.nan, np.float32)
        assert race_lib.simtest_shift(ptr(y), ptr(x), 300, 0) == 0, last_error(race_lib)
        assert race_lib.simtest_block_sum(ptr(y), ptr(x), 300, 0) == 0, last_error(race_lib)
        y = np.full(64 * 5, np.nan, np.float32)
        assert race_lib.simtest_pipeline(ptr(y), ptr(x), 5, 0) == 0, last_error(race_lib)
        np.testing.assert_array_equal(y, 2 * x)
        return True

    assert all(run_schedules(race_lib, all_twins))


@pytest.mark.parametrize("n", [300, 1000])
def test_drift_schedule_exposes_missing_barrier(lib, rng, n):
    """Warps that drift apart (one warp runs to its barrier before the next starts, in permuted warp order)
    expose the shift kernel's missing barrier at warp boundaries; the natural lockstep order hides it."""
    def run(racy):
        return lambda: shift_is_right(lib, rng, n, racy)
    try:
        lib.kb_sim_set_schedule(SCHEDULES["drift"])
        assert all(run_seeds(lib, run(0), seeds=(-1, 1, 2, 3)))
        racy = run_seeds(lib, run(1), seeds=(-1, 1, 2, 3))
    finally:
        lib.kb_sim_set_schedule(-1)
    assert racy[0], "natural warp order"
    assert not all(racy[1:]), "drifting warps in permuted order did not expose the missing barrier"


# ---------------------------------------------------------------------------------------------------
# kb_common.h's block reductions as helpers (tests/sim_kernels/block_reduce.cu, tests/sim_helpers.py): two in a
# row through one scratch, so each one's entry barrier matters (the softmax kernel calls block_max first, so no
# real kernel needs block_max's). scripts/mutants.py runs the same check on its mutated header.

def test_block_reductions_twice_through_one_scratch(lib, race_lib, rng):
    for mode in SCHEDULES.values():
        lib.kb_sim_set_schedule(mode)
        try:
            for seed in (-1, 1, 2):
                lib.kb_sim_set_schedule_seed(seed)
                assert check_block_reduce(lib, rng) == 12
        finally:
            lib.kb_sim_set_schedule_seed(-2)
            lib.kb_sim_set_schedule(-1)
    assert check_block_reduce(race_lib, rng) == 12    # and no race report
