"""The helper-level check of kb_common.h's block reductions (tests/sim_kernels/block_reduce.cu), shared by
tests/test_cuda_sim.py and scripts/mutants.py (which runs it on its mutated copy of the header).

Each block runs two reductions in a row through one scratch (max/max, sum/max, max/sum, sum/sum) at 1, 3 and
32 warps, on fresh inputs; every thread's result is compared with numpy's (max exactly; sums within fp32
summation error). The first half of each row is offset by +50, so a thread that reads the first reduction's
partial in the second (a missing entry barrier) gets a visibly wrong answer.
"""
from __future__ import annotations

import ctypes

import numpy as np

ERR_LAUNCH = 719
THREADS = (32, 96, 1024)
OPS = {0: ("max", "max"), 1: ("sum", "max"), 2: ("max", "sum"), 3: ("sum", "sum")}


def _ptr(a: np.ndarray) -> ctypes.c_void_p:
    return a.ctypes.data_as(ctypes.c_void_p)


def check_block_reduce(lib, rng: np.random.Generator, blocks: int = 3) -> int:
    """Runs every (threads, ops) case on `lib` (a kb_sim_tests library); raises AssertionError naming the case
    (with the simulation's message when the launch failed, e.g. a race report); returns the cases checked."""
    lib.kb_sim_last_error.restype = ctypes.c_char_p
    n_checked = 0
    for threads in THREADS:
        n = 3 * threads + 5                      # a tail in every thread's strided loop
        for ops, names in OPS.items():
            x = rng.standard_normal((blocks, 2, n)).astype(np.float32)
            x[:, 0] += 50.0
            out = np.full((blocks, 2, threads), np.nan, np.float32)   # poisoned: an unwritten result shows
            what = f"block_reduce threads={threads} {names[0]} then {names[1]}"
            rc = lib.simtest_block_reduce(_ptr(out), _ptr(x), blocks, threads, n, ops)
            assert rc == 0, f"{what}: launch failed ({rc}): {lib.kb_sim_last_error().decode()}"
            for k, name in enumerate(names):
                got = out[:, k, :]
                if name == "max":
                    ref = x[:, k].max(axis=1)
                    bad = got != ref[:, None]
                else:
                    x64 = x[:, k].astype(np.float64)
                    ref = x64.sum(axis=1)
                    bound = 4 * np.finfo(np.float32).eps * np.log2(n) * np.abs(x64).sum(axis=1)
                    bad = ~(np.abs(got - ref[:, None]) <= bound[:, None])
                if bad.any():
                    b, t = map(int, np.argwhere(bad)[0])
                    raise AssertionError(f"{what}: reduction {k + 1} ({name}) wrong in {int(bad.sum())} of "
                                         f"{bad.size} threads, e.g. block {b} thread {t}: {got[b, t]} "
                                         f"instead of {ref[b]}")
            n_checked += 1
    return n_checked
