"""Softmax over the last dimension of x [rows, cols].

Work per element: max, subtract, exp, sum, divide -> 5 FLOPs (exp counted as one). Bytes: read x once and
write y once (2 * rows * cols * itemsize): the floor a one-pass (online) kernel reaches when a row fits in
cache; a three-pass kernel reads x up to three times. Memory-bound: the roofline fraction is GB/s against
the device's bandwidth.
"""
from __future__ import annotations

import torch

from harness.registry import Requires, Suite
from kernels.cpp import lib as cpp
from kernels.cuda import lib as cuda_lib
from kernels.triton import softmax as triton_softmax

SUITE = Suite(
    name="softmax",
    description="softmax over the last dimension (memory-bound)",
    baseline="torch_eager",
    dtypes=("float32", "bfloat16", "float16"),
    # Outputs lie in [0, 1]: relative error dominates; bf16 keeps 8 bits of mantissa (2^-8 = 3.9e-3).
    tolerances={"float32": (1e-7, 1e-5), "bfloat16": (1e-5, 1.6e-2), "float16": (1e-6, 2e-3)},
    case_name=lambda p: f"{p['rows']}x{p['cols']}",
)
SUITE.add_cases("test", [dict(rows=1, cols=127), dict(rows=129, cols=1000), dict(rows=127, cols=4099),
                         dict(rows=1000, cols=129), dict(rows=3, cols=1),
                         dict(rows=3, cols=25000)])  # past every row-cache threshold (24,576 fp32 columns)
SUITE.add_cases("quick", [dict(rows=4096, cols=1024), dict(rows=1024, cols=4096)])
SUITE.add_cases("full", [dict(rows=8192, cols=4096), dict(rows=4096, cols=16384), dict(rows=32768, cols=1024)])
SUITE.add_cases("full", [dict(rows=16384, cols=32768), dict(rows=131072, cols=4096)], devices=("cuda",))


@SUITE.inputs
def make_inputs(case, rng):
    # Scaled so rows have a real spread (exp over a range of ~ +-10), not near-uniform outputs.
    x = 3.0 * torch.randn(case.rows, case.cols, generator=rng, device=case.device, dtype=torch.float32)
    return {"x": x.to(case.dtype)}


@SUITE.flops
def flops(case):
    return 5 * case.rows * case.cols


@SUITE.bytes
def nbytes(case):
    return 2 * case.rows * case.cols * case.itemsize


def softmax(x):
    return torch.softmax(x, dim=-1)


@SUITE.reference
def reference(case, x):
    return softmax(x)


@SUITE.variant("torch_eager")
def torch_eager(case, x):
    """torch.softmax (ATen's vectorized kernel)"""
    return lambda: softmax(x)


@SUITE.variant("torch_compile", compiled=True)
def torch_compile(case, x):
    """torch.compile of torch.softmax (inductor's generated kernel)"""
    fn = torch.compile(softmax, dynamic=False)
    return lambda: fn(x)

SUITE.variant("cpp", requires=Requires(devices=("cpu",), check=cpp.missing_reason))(cpp.softmax_setup)
SUITE.variant("cuda_rowcache", requires=Requires(devices=("cuda",), min_cc=(8, 0), check=cuda_lib.missing_reason))(cuda_lib.softmax_setup)
SUITE.variant("triton", requires=Requires(check=triton_softmax.missing_reason), compiled=True,
              config=triton_softmax.config)(triton_softmax.setup)
