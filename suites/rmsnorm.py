"""RMSNorm forward over the last dimension of x [rows, cols], with a weight (Zhang & Sennrich 2019):
    y = x * rsqrt(mean(x^2) + eps) * w           ~4 FLOPs/element (square-add, two multiplies)
Bytes: read x, write y, read w once: (2 * rows * cols + cols) * itemsize. Memory-bound.
Setups get eps and the weight with the inputs. (`--suite norm` runs this suite and suites/layernorm.py.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from deploy import cupy_launch
from kernels.cpp import lib as cpp
from kernels.cuda import lib as cuda
from kernels.triton import rmsnorm as triton_rmsnorm
from suites._norm import norm_suite

EPS = 1e-5

SUITE = norm_suite("rmsnorm", "RMSNorm forward (memory-bound)")


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
SUITE.add("cupy_rowcache", cupy_launch.variant(cuda.RMSNORM))    # the same .cu, NVRTC via CuPy
SUITE.add("triton", triton_rmsnorm.VARIANT)
