"""A test-only suite whose variants fail the ways real kernels fail, registered from the tests only.

Loaded through `KB_EXTRA_SUITES=tests.faulty_suite` (harness.registry.all_suites), never by a plain
`bench.py --suite all`. Every variant computes y = x + 1 when it works:
- `good` (the baseline) and `also_good`: correct, cheap;
- `segfault`: reads address 0 (`ctypes.string_at(0)`): SIGSEGV, as a kernel with a wild pointer does;
- `abort`: `os.abort()`: SIGABRT, as a failed C assert or an uncaught C++ exception does;
- `hang`: never returns, as a kernel spinning on a flag or a deadlocked collective does;
- `oom`: allocates (and touches) 3 GiB, more than the tests let a worker have (`--worker-memory 1`);
- `raises`: a Python exception (the in-process kind of failure).
"""
import ctypes
import os
import time

import torch

from harness.registry import Suite

SUITE = Suite("faulty", "y = x + 1, with variants that crash, abort, hang or over-allocate", baseline="good",
              tolerances={"float32": (1e-6, 1e-6)})
SUITE.add_cases("test", [dict(n=127)])
SUITE.add_cases("quick", [dict(n=127), dict(n=129), dict(n=1000), dict(n=4099)])
SUITE.add_cases("full", [dict(n=127), dict(n=129), dict(n=1000), dict(n=4099), dict(n=65537), dict(n=1 << 20)])
SUITE.inputs(lambda case, rng: {"x": torch.randn(case.n, generator=rng, dtype=case.dtype)})
SUITE.flops(lambda case: case.n)                              # one add per element
SUITE.bytes(lambda case: 2 * case.n * case.itemsize)          # read x, write y
SUITE.reference(lambda case, x: x + 1)

OOM_BYTES = 3 << 30


@SUITE.variant("good")
def good(case, x):
    return lambda: x + 1


@SUITE.variant("segfault")
def segfault(case, x):
    def run():
        ctypes.string_at(0)
        return x + 1
    return run


@SUITE.variant("abort")
def abort(case, x):
    def run():
        os.abort()
    return run


@SUITE.variant("hang")
def hang(case, x):
    def run():
        mark = os.environ.get("KB_FAULTY_HANG_MARK")     # tests: "the worker is inside the hang now"
        if mark:
            open(mark, "w").write(str(os.getpid()))
        while True:
            time.sleep(3600)
    return run


@SUITE.variant("oom")
def oom(case, x):
    def run():
        hog = torch.ones(OOM_BYTES // 4, dtype=torch.float32)     # touched: really resident if allowed
        return x + hog[0]
    return run


@SUITE.variant("raises")
def raises(case, x):
    def run():
        raise RuntimeError("kernel exploded")
    return run


@SUITE.variant("also_good")
def also_good(case, x):
    return lambda: torch.add(x, 1)


SUITE.check_complete()
