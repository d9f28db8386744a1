"""RMSNorm forward over the last dimension of x [rows, cols], with a weight (Zhang & Sennrich 2019):
    y = x * rsqrt(mean(x^2) + eps) * w           ~4 FLOPs/element (square-add, two multiplies)
Bytes: read x, write y, read w once: (2 * rows * cols + cols) * itemsize. Memory-bound.
Setups get eps and the weight with the inputs. (`--suite norm` runs this suite and suites/layernorm.py.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.registry import Suite
from kernels.cpp import lib as cpp
from kernels.cuda import lib as cuda
from kernels.triton import rmsnorm as triton_rmsnorm

EPS = 1e-5

SUITE = Suite(
    name="rmsnorm",
    description="RMSNorm forward (memory-bound)",
    baseline="torch_eager",
    dtypes=("float32", "bfloat16", "float16"),
    # Outputs are O(1) (normalized, weight ~1): bf16 rounds at 2^-8 relative.
    tolerances={"float32": (1e-5, 1e-5), "bfloat16": (1e-2, 1.6e-2), "float16": (2e-3, 2e-3)},
    case_name=lambda p: f"{p['rows']}x{p['cols']}",
)


def _shapes(shapes):
    return [dict(rows=r, cols=c) for r, c in shapes]


# Odd sizes, one row, one column, rows past the kernels' cached paths (70001: the C++ long-row path;
# 20001: the Triton looped path on a GPU, > 16384 columns).
SUITE.add_cases("test", _shapes([(1, 127), (129, 1000), (127, 4099), (1000, 129), (1, 1), (1, 4096), (2, 70001),
                                 (33, 15), (3, 20001)]))
SUITE.add_cases("quick", _shapes([(4096, 1024), (1024, 4096)]))
SUITE.add_cases("full", _shapes([(8192, 4096), (4096, 16384), (32768, 1024)]))
SUITE.add_cases("full", _shapes([(65536, 8192)]), devices=("cuda",))


@SUITE.inputs
def make_inputs(case, rng):
    def randn(*shape):
        return torch.randn(*shape, generator=rng, device=case.device, dtype=torch.float32)
    x = (randn(case.rows, case.cols) * 2 + 0.5).to(case.dtype)     # nonzero mean, as the LayerNorm suite
    w = (1 + 0.1 * randn(case.cols)).to(case.dtype)
    return {"x": x, "weight": w, "eps": EPS}


@SUITE.flops
def flops(case):
    return 4 * case.rows * case.cols


@SUITE.bytes
def nbytes(case):
    return (2 * case.rows * case.cols + case.cols) * case.itemsize


def rms_norm(x, weight, eps):
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


@SUITE.reference
def reference(case, x, weight, eps):
    # written out, so the reference does not lean on the kernel under test
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


@SUITE.variant("torch_eager")
def torch_eager(case, x, weight, eps):
    """F.rms_norm"""
    return lambda: rms_norm(x, weight, eps)


@SUITE.variant("torch_compile", compiled=True)
def torch_compile(case, x, weight, eps):
    """torch.compile of F.rms_norm"""
    fn = torch.compile(rms_norm, dynamic=False)
    return lambda: fn(x, weight, eps)


SUITE.add("cpp", cpp.RMSNORM)
SUITE.add("cuda_rowcache", cuda.RMSNORM)
SUITE.add("triton", triton_rmsnorm.VARIANT)
