"""LayerNorm forward over the last dimension of x [rows, cols], with a weight and a bias (Ba et al. 2016):
    y = (x - mean) * rsqrt(var + eps) * w + b    ~8 FLOPs/element (mean, var, normalize, affine)
Bytes: read x, write y, read w and b once: (2 * rows * cols + 2 * cols) * itemsize. Memory-bound.
Setups get eps, the weight and the bias with the inputs. (`--suite norm` runs this suite and suites/rmsnorm.py.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from deploy import cupy_launch
from kernels.cpp import lib as cpp
from kernels.cuda import lib as cuda
from kernels.triton import layernorm as triton_layernorm
from suites._norm import norm_suite

EPS = 1e-5

SUITE = norm_suite("layernorm", "LayerNorm forward (memory-bound)")


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
SUITE.add("cupy_rowcache", cupy_launch.variant(cuda.LAYERNORM))    # the same .cu, NVRTC via CuPy
SUITE.add("triton", triton_layernorm.VARIANT)
