"""Sparse weights: y[M, N] = x[M, K] @ W^T with W [N, K] pruned to a pattern (issue 17).

Patterns: `bsr` (blocks of 16 or 32, densities 50/25/10%: the blocks with the largest |W| kept) and `2:4`
(two of every four inputs of a row: 50%). The weight is pruned by magnitude (sparsity/masks.py) and packed
(sparsity/formats.py) when the inputs are drawn, outside every timing; the reference is the float64 product
with the PRUNED dense weight, so every variant, dense ones included, computes the same function.

Work (declared once, the same for every variant of a case, so `speedup` is the time ratio and TFLOP/s is
useful work): 2 * M * nnz FLOPs, nnz the stored weights (BSR: kept blocks x b^2; 2:4: N*K/2). Bytes: only the
stored values and indices (BSR: values + int32 block columns + int32 block-row pointers; 2:4: values +
2-bit indices, sparsity/formats.py) plus x and y: what a sparse kernel must move. M = 1 is LLM decode
(memory-bound: bytes are what 2:4 halves), M = 16 a small batch, M = 256 prefill (FMA-bound).

Variants: `dense` (the baseline: F.linear on the dense pruned weight, the same dtype: MKL/oneDNN fp32;
bf16 through oneDNN on AVX512-BF16, this machine has no AMX), `torch_bsr` / `torch_csr` (torch.sparse,
`to_sparse_bsr` / `to_sparse_csr`, fp32 only on the CPU), `cpp_bsr` and `cpp_24` (kernels/cpp/sparse_bsr.cpp,
sparse_24.cpp), `triton_bsr` (kernels/triton/sparse_bsr.py, interpreter-checked on the CPU), `cuda_24_mma_sp`
and `cuda_bsr` (kernels/cuda/sparse_24_mma_sp.cu, sparse_bsr.cu; the CUDA simulation on the CPU),
`torch_semi_structured` (cuSPARSELt/CUTLASS 2:4 on GPUs: the anchor to beat there).
Shapes: Llama-7B's 4096x4096 (attention projections) and 11008x4096 (MLP), M in {1, 16, 256}; quick mode
runs the 4096x4096 set. A shape a pattern does not fit (test cases: K = 129, 36 with block 32, 4000 % 32)
gives `skipped` rows for the sparse kernels, with the reason.
"""
from __future__ import annotations

import math

import torch

from deploy import cupy_launch
from harness.registry import Requires, Skip, Suite
from kernels.cpp import lib as cpp
from kernels.cuda import lib as cuda
from kernels.triton import sparse_bsr as triton_bsr
from sparsity import cases as sc
from sparsity import formats
from sparsity.masks import mask_for, n_kept


def _tolerances(case):
    # a dot product of K/2 (2:4) or density*K terms of O(1) magnitude: O(sqrt(K)); fp32 accumulation in every
    # variant, bf16/f16 outputs round to 2^-8 / 2^-11 of that magnitude (as suites/gemm.py)
    s = math.sqrt(max(1, case.k))
    return {"float32": (2e-5 * s, 1e-4), "bfloat16": (1e-2 * s, 1.6e-2), "float16": (2e-3 * s, 2e-3)}


def _name(p) -> str:
    pat = "2:4" if p["pattern"] == "2:4" else f"bsr{p['block']}-d{round(p['density'] * 100)}"
    return f"{pat}-m{p['m']}-{p['n']}x{p['k']}"


# the weight format each pattern-specific variant takes: a case of the other pattern is not planned at all
# (a case whose shape the pattern does not fit IS planned: its rows are `skipped` with the reason)
TAKES = {"torch_bsr": "bsr", "cpp_bsr": "bsr", "triton_bsr": "bsr", "cuda_bsr": "bsr",
         "cpp_24": "2:4", "cuda_24_mma_sp": "2:4", "torch_semi_structured": "2:4"}


def _applies(case, variant: str) -> bool:
    return TAKES.get(variant, case.pattern) == case.pattern


SUITE = Suite(
    name="sparse_gemm",
    description="sparse weights (BSR blocks 16/32, 2:4) times dense activations, y = x @ W^T",
    baseline="dense",
    dtypes=("float32", "bfloat16", "float16"),
    tolerances=_tolerances,
    compute_class="matmul",
    case_name=_name,
    applies=_applies,
)


def _bsr(m, n, k, block, density):
    return dict(m=m, n=n, k=k, pattern="bsr", block=block, density=density)


def _24(m, n, k):
    return dict(m=m, n=n, k=k, pattern="2:4", block=0, density=0.5)


SUITE.add_cases("test", [_bsr(1, 48, 80, 16, 0.5), _bsr(3, 64, 96, 32, 0.25), _bsr(17, 160, 64, 16, 0.1),
                         _bsr(9, 64, 64, 32, 1.0), _bsr(1, 32, 4000, 32, 0.1),
                         _24(1, 127, 36), _24(5, 33, 100), _24(17, 64, 256), _24(1, 40, 4),
                         # patterns that do not fit: every sparse kernel's row is skipped with the reason
                         _bsr(2, 48, 129, 16, 0.5), _bsr(2, 48, 36, 32, 0.5), _24(2, 48, 129)])
_QUICK = [(4096, 4096)]
_FULL = [(4096, 4096), (11008, 4096)]
for _mode, _shapes, _dens in (("quick", _QUICK, (0.5, 0.1)), ("full", _FULL, (0.5, 0.25, 0.1))):
    SUITE.add_cases(_mode, [c for (n, k) in _shapes for m in (1, 16, 256)
                            for c in [_24(m, n, k)] + [_bsr(m, n, k, b, d) for b in (16, 32) for d in _dens]])


@SUITE.inputs
def make_inputs(case, rng):
    """x, the pruned dense weight w (magnitude, the case's pattern) and its packed forms where the pattern fits."""
    def randn(*shape):
        return torch.randn(*shape, generator=rng, device=case.device, dtype=torch.float32)
    x, w = randn(case.m, case.k).to(case.dtype), randn(case.n, case.k)
    out = {"x": x}
    if sc.fit_reason(case) is not None:
        out["w"] = w.to(case.dtype)              # left dense: the sparse kernels skip this case
        return out
    mask = mask_for(w, sc.pattern_of(case))
    w = (w * mask).to(case.dtype)
    out["w"] = w
    if case.pattern == "2:4":
        packed = formats.pack_24(w, mask)
        out.update(v24_vals=packed["vals"], v24_meta=packed["meta"])
    else:
        packed = formats.bsr_pack(w, case.block, mask)
        out.update(bsr_rowptr=packed["rowptr"], bsr_cols=packed["cols"], bsr_vals=packed["vals"])
    return out


def stored(case) -> int:
    """Weights stored by the case's pattern (the dense weight where the pattern does not fit)."""
    if sc.fit_reason(case) is not None:
        return case.n * case.k
    if case.pattern == "2:4":
        return case.n * case.k // 2
    b = case.block
    return n_kept((case.n // b) * (case.k // b), case.density) * b * b


@SUITE.flops
def flops(case):
    return 2 * case.m * stored(case)


@SUITE.bytes
def nbytes(case):
    act = (case.m * case.k + case.m * case.n) * case.itemsize
    if sc.fit_reason(case) is not None:
        return case.n * case.k * case.itemsize + act
    if case.pattern == "2:4":
        return formats.bytes_24(case.n, case.k, case.itemsize) + act
    return formats.bsr_bytes(stored(case) // case.block**2, case.block, case.n, case.itemsize) + act


@SUITE.reference
def reference(case, x, w, **_):
    return x @ w.T


@SUITE.variant("dense")
def dense(case, x, w, **_):
    """F.linear on the dense (pruned) weight, same dtype (MKL/oneDNN; bf16 without AMX on this CPU)"""
    return lambda: torch.nn.functional.linear(x, w)


def _torch_sparse_reason(case) -> str | None:
    """torch.sparse CSR/BSR matmul: on the CPU fp32 only"""
    if case.device == "cpu" and case.dtype != torch.float32:
        return (f"torch's CPU BSR/CSR matmul has no {case.dtype_name} kernel "
                "(addmm_out_sparse_csr_impl_mkl is not implemented for it)")
    return None


@SUITE.variant("torch_bsr", requires=Requires(check=_torch_sparse_reason))
def torch_bsr(case, x, w, **_):
    """torch.sparse BSR (w.to_sparse_bsr((b, b)), F.linear): MKL sparse BLAS on the CPU"""
    why = sc.unsupported_reason(case, "bsr")
    if why:
        raise Skip(why)
    ws = w.to_sparse_bsr((case.block, case.block))
    return lambda: torch.nn.functional.linear(x, ws)


@SUITE.variant("torch_csr", requires=Requires(check=_torch_sparse_reason))
def torch_csr(case, x, w, **_):
    """torch.sparse CSR (w.to_sparse_csr(), F.linear): MKL sparse BLAS on the CPU, any pattern"""
    if sc.fit_reason(case):
        raise Skip(sc.fit_reason(case))
    ws = w.to_sparse_csr()
    return lambda: torch.nn.functional.linear(x, ws)


def _semi_structured_reason(case) -> str | None:
    """to_sparse_semi_structured: CUDA (cuSPARSELt / CUTLASS), compute capability 8.0+, fp16/bf16"""
    if case.device != "cuda":
        return ("to_sparse_semi_structured (cuSPARSELt/CUTLASS 2:4) runs on CUDA GPUs only: the GPU anchor, "
                "not measured on this CPU")
    if case.dtype == torch.float32:
        return "semi-structured sparse tensors take fp16/bf16 (fp32 is not supported by the 2:4 tensor cores)"
    return None


@SUITE.variant("torch_semi_structured", requires=Requires(devices=("cuda",), min_cc=(8, 0),
                                                         check=_semi_structured_reason))
def torch_semi_structured(case, x, w, **_):
    """torch.sparse.to_sparse_semi_structured (cuSPARSELt/CUTLASS 2:4 sparse tensor cores), F.linear"""
    why = sc.unsupported_reason(case, "2:4")
    if why:
        raise Skip(why)
    from torch.sparse import to_sparse_semi_structured
    try:
        ws = to_sparse_semi_structured(w)
    except RuntimeError as exc:                   # shape minimums of the CUTLASS/cuSPARSELt kernels
        raise Skip(f"to_sparse_semi_structured refuses {tuple(w.shape)}: {str(exc).splitlines()[0][:160]}") from None
    return lambda: torch.nn.functional.linear(x, ws)


SUITE.add("cpp_bsr", cpp.BSR_GEMM)
SUITE.add("cpp_24", cpp.GEMM_24)
SUITE.add("triton_bsr", triton_bsr.VARIANT)
SUITE.add("cuda_24_mma_sp", cuda.GEMM_24)
SUITE.add("cuda_bsr", cuda.BSR_GEMM)
SUITE.add("cupy_24_mma_sp", cupy_launch.variant(cuda.GEMM_24))    # the same .cu files, NVRTC via CuPy
SUITE.add("cupy_bsr", cupy_launch.variant(cuda.BSR_GEMM))
