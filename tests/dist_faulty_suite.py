"""A test-only distributed suite whose rank 1 fails, registered from the tests only
(`KB_EXTRA_SUITES=tests.dist_faulty_suite`). Every variant computes y = x * 2 when it works; its rows run in
lockstep on every rank, in the rank's own process (harness/distributed.py), as the collectives do:
- `good` (the baseline): correct on every rank;
- `rank1_dies`: rank 1's bench.py process is SIGKILLed (a crashed rank: torchrun then ends the others);
- `rank1_hangs`: rank 1 never returns (a rank stuck outside any collective: only rank 0's wait can end it).
"""
import os
import signal
import time

import torch

from harness import distributed
from harness.registry import Suite

SUITE = Suite("dist_faulty", "y = x * 2; rank 1 dies or hangs", baseline="good",
              tolerances={"float32": (1e-6, 1e-6)}, distributed=lambda world: None)
SUITE.add_cases("test", [dict(n=127)])
SUITE.add_cases("quick", [dict(n=127)])
SUITE.inputs(lambda case, rng: {"x": torch.randn(case.n, generator=rng, dtype=case.dtype)})
SUITE.flops(lambda case: case.n)
SUITE.bytes(lambda case: 2 * case.n * case.itemsize)
SUITE.reference(lambda case, x: x * 2)


@SUITE.variant("good")
def good(case, x):
    return lambda: x * 2


@SUITE.variant("rank1_dies")
def rank1_dies(case, x):
    if distributed.world()[0] == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return lambda: x * 2


@SUITE.variant("rank1_hangs")
def rank1_hangs(case, x):
    while distributed.world()[0] == 1:
        time.sleep(1)
    return lambda: x * 2
