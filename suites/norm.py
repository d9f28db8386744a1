"""RMSNorm and LayerNorm forward over the last dimension of x [rows, cols], with a weight (and a bias).

RMSNorm:   y = x * rsqrt(mean(x^2) + eps) * w           ~4 FLOPs/element (square-add, two multiplies)
LayerNorm: y = (x - mean) * rsqrt(var + eps) * w + b    ~8 FLOPs/element (mean, var, normalize, affine)
Bytes: read x, write y, read w (and b) once: (2 * rows * cols + cols * (1 | 2)) * itemsize. Memory-bound.
The case parameter `norm` chooses which ("rms" or "layer"); setups get eps and weights with the inputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.registry import Requires, Suite
from kernels.cpp import lib as cpp
from kernels.cuda import lib as cuda_lib
from kernels.triton import norm as triton_norm

EPS = 1e-5

SUITE = Suite(
    name="norm",
    description="RMSNorm and LayerNorm forward (memory-bound)",
    baseline="torch_eager",
    dtypes=("float32", "bfloat16", "float16"),
    # Outputs are O(1) (normalized, weight ~1): bf16 rounds at 2^-8 relative.
    tolerances={"float32": (1e-5, 1e-5), "bfloat16": (1e-2, 1.6e-2), "float16": (2e-3, 2e-3)},
    case_name=lambda p: f"{p['norm']}-{p['rows']}x{p['cols']}",
)


def _both(shapes):
    return [dict(norm=n, rows=r, cols=c) for n in ("rms", "layer") for r, c in shapes]


SUITE.add_cases("test", _both([(1, 127), (129, 1000), (127, 4099), (1000, 129),
                               (3, 25000)]))  # past every row-cache threshold (24,576 fp32 columns)
SUITE.add_cases("quick", _both([(4096, 1024), (1024, 4096)]))
SUITE.add_cases("full", _both([(8192, 4096), (4096, 16384), (32768, 1024)]))
SUITE.add_cases("full", _both([(65536, 8192)]), devices=("cuda",))


@SUITE.inputs
def make_inputs(case, rng):
    def randn(*shape):
        return torch.randn(*shape, generator=rng, device=case.device, dtype=torch.float32)
    x = (randn(case.rows, case.cols) * 2 + 0.5).to(case.dtype)     # nonzero mean: LayerNorm must centre
    w = (1 + 0.1 * randn(case.cols)).to(case.dtype)
    b = (0.1 * randn(case.cols)).to(case.dtype) if case.norm == "layer" else None
    return {"x": x, "weight": w, "bias": b, "eps": EPS}


@SUITE.flops
def flops(case):
    return (4 if case.norm == "rms" else 8) * case.rows * case.cols


@SUITE.bytes
def nbytes(case):
    return (2 * case.rows * case.cols + case.cols * (1 if case.norm == "rms" else 2)) * case.itemsize


def norm(x, weight, bias, eps, kind: str):
    if kind == "rms":
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


@SUITE.reference
def reference(case, x, weight, bias, eps):
    if case.norm == "rms":      # written out, so the reference does not lean on the kernel under test
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).pow(2).mean(-1, keepdim=True)
    return (x - mean) * torch.rsqrt(var + eps) * weight + bias


@SUITE.variant("torch_eager")
def torch_eager(case, x, weight, bias, eps):
    """F.rms_norm / F.layer_norm"""
    return lambda: norm(x, weight, bias, eps, case.norm)


@SUITE.variant("torch_compile", compiled=True)
def torch_compile(case, x, weight, bias, eps):
    """torch.compile of F.rms_norm / F.layer_norm"""
    fn = torch.compile(norm, dynamic=False)
    return lambda: fn(x, weight, bias, eps, case.norm)

SUITE.variant("cpp", requires=Requires(devices=("cpu",), check=cpp.missing_reason))(cpp.norm_setup)
SUITE.variant("cuda_rowcache", requires=Requires(devices=("cuda",), min_cc=(8, 0), check=cuda_lib.missing_reason))(cuda_lib.norm_setup)
SUITE.variant("triton", requires=Requires(check=triton_norm.missing_reason), compiled=True,
              config=triton_norm.config)(triton_norm.setup)
