"""GEMM: C[M, N] = A[M, K] @ B[K, N], row-major.

Work: 2*M*N*K FLOPs (a multiply and an add per term). Bytes: A, B read once and C written once,
(MK + KN + MN) * itemsize: the compulsory traffic; at large sizes GEMM is compute-bound and the roofline
fraction is TFLOP/s against the dtype's matrix peak (tensor cores on a GPU, AMX/AVX-512 on this CPU).
"""
from __future__ import annotations

import math

import torch

from deploy import cupy_launch
from harness.registry import Suite
from kernels.cpp import lib as cpp
from kernels.cuda import lib as cuda
from kernels.triton import gemm as triton_gemm


def _tolerances(case):
    # A dot product of K terms of O(1) magnitude is O(sqrt(K)); rounding of the output and of the fp32
    # accumulation grows with it. bf16/fp16 outputs round to 2^-8 / 2^-11 of that magnitude.
    s = math.sqrt(case.k)
    return {"float32": (2e-5 * s, 1e-4), "bfloat16": (1e-2 * s, 1.6e-2), "float16": (2e-3 * s, 2e-3)}


SUITE = Suite(
    name="gemm",
    description="matrix multiply C = A @ B (compute-bound at size)",
    baseline="torch_matmul",
    dtypes=("float32", "bfloat16", "float16"),
    tolerances=_tolerances,
    compute_class="matmul",
    case_name=lambda p: f"{p['m']}x{p['n']}x{p['k']}",
)
SUITE.add_cases("test", [dict(m=1, n=127, k=129), dict(m=127, n=129, k=1000), dict(m=129, n=1000, k=127),
                         dict(m=1000, n=1, k=129), dict(m=65, n=33, k=17),
                         # tails of the C++ 14x32 micro-kernel, an empty K (C = 0)
                         dict(m=1, n=1, k=1), dict(m=14, n=32, k=256), dict(m=15, n=33, k=257),
                         dict(m=300, n=70, k=600), dict(m=129, n=129, k=0),
                         dict(m=65, n=136, k=72)])  # K, N multiples of 8: the CUDA cp.async path
SUITE.add_cases("quick", [dict(m=1024, n=1024, k=1024), dict(m=512, n=2048, k=1024)])
SUITE.add_cases("full", [dict(m=2048, n=2048, k=2048), dict(m=4096, n=4096, k=1024), dict(m=1000, n=4096, k=4096)],
                devices=("cpu",))
SUITE.add_cases("full", [dict(m=4096, n=4096, k=4096), dict(m=8192, n=8192, k=8192), dict(m=16, n=8192, k=8192)],
                devices=("cuda",))


@SUITE.inputs
def make_inputs(case, rng):
    def randn(*shape):
        return torch.randn(*shape, generator=rng, device=case.device, dtype=torch.float32).to(case.dtype)
    return {"a": randn(case.m, case.k), "b": randn(case.k, case.n)}


@SUITE.flops
def flops(case):
    return 2 * case.m * case.n * case.k


@SUITE.bytes
def nbytes(case):
    return (case.m * case.k + case.k * case.n + case.m * case.n) * case.itemsize


@SUITE.reference
def reference(case, a, b):
    return a @ b


@SUITE.variant("torch_matmul")
def torch_matmul(case, a, b):
    """torch.matmul (MKL/oneDNN on the CPU, cuBLAS on a GPU)"""
    return lambda: torch.matmul(a, b)

SUITE.add("cpp", cpp.GEMM)
SUITE.add("cpp_v1", cpp.GEMM_V1)          # the ladder: the bf16 rungs gemm_bf16_dp.cpp's header quotes
SUITE.add("cpp_kc512", cpp.GEMM_KC512)
SUITE.add("cuda_mma", cuda.GEMM)
SUITE.add("cupy_mma", cupy_launch.variant(cuda.GEMM))    # the same .cu, NVRTC via CuPy
SUITE.add("triton", triton_gemm.VARIANT)
