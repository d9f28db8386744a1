"""LayerNorm forward over the last dimension of x [rows, cols], with a weight and a bias (Ba et al. 2016):
    y = (x - mean) * rsqrt(var + eps) * w + b    ~8 FLOPs/element (mean, var, normalize, affine)
Bytes: read x, write y, read w and b once: (2 * rows * cols + 2 * cols) * itemsize. Memory-bound.
Setups get eps, the weight and the bias with the inputs. (`--suite norm` runs this suite and suites/rmsnorm.py.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.registry import Suite
from kernels.cpp import lib as cpp
from kernels.cuda import lib as cuda
from kernels.triton import layernorm as triton_layernorm

EPS = 1e-5

SUITE = Suite(
    name="layernorm",
    description="LayerNorm forward (memory-bound)",
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
    x = (randn(case.rows, case.cols) * 2 + 0.5).to(case.dtype)     # nonzero mean: LayerNorm must centre
    w = (1 + 0.1 * randn(case.cols)).to(case.dtype)
    b = (0.1 * randn(case.cols)).to(case.dtype)
    return {"x": x, "weight": w, "bias": b, "eps": EPS}


@SUITE.flops
def flops(case):
    return 8 * case.rows * case.cols


@SUITE.bytes
def nbytes(case):
    return (2 * case.rows * case.cols + 2 * case.cols) * case.itemsize


def layer_norm(x, weight, bias, eps):
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


@SUITE.reference
def reference(case, x, weight, bias, eps):
    # written out, so the reference does not lean on the kernel under test
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).pow(2).mean(-1, keepdim=True)
    return (x - mean) * torch.rsqrt(var + eps) * weight + bias


@SUITE.variant("torch_eager")
def torch_eager(case, x, weight, bias, eps):
    """F.layer_norm"""
    return lambda: layer_norm(x, weight, bias, eps)


@SUITE.variant("torch_compile", compiled=True)
def torch_compile(case, x, weight, bias, eps):
    """torch.compile of F.layer_norm"""
    fn = torch.compile(layer_norm, dynamic=False)
    return lambda: fn(x, weight, bias, eps)


SUITE.add("cpp", cpp.LAYERNORM)
SUITE.add("cuda_rowcache", cuda.LAYERNORM)
SUITE.add("triton", triton_layernorm.VARIANT)
