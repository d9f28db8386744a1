"""Block-sparse GEMM in Triton: y[M, N] = x[M, K] @ W^T with W [N, K] in BSR (sparsity/formats.py: blocks
of b x b, b = 16 or 32, stored transposed, vals[j][kk][nn] = W[i*b + nn][c*b + kk]; int32 rowptr and cols).

Algorithm: one program per (BLOCK_M rows of x, block row i of W); it walks the stored blocks of block row i
(rowptr[i] .. rowptr[i+1]-1, a loop with run-time bounds) and for each adds x[rows, c*b : (c+1)*b] @ vals[j]
with `tl.dot` (BLOCK_M x b x b: tensor cores on a GPU for 16-bit inputs; exact fp32, input_precision="ieee",
for float32). The b x BLOCK_M output tile stays in registers across the blocks; empty block rows write zeros.
Work: 2 * M * nnzb * b^2 FLOPs; bytes: every stored block once per program row-tile + x panels + y.
What it improves on: the Triton rung beside the C++ BSR kernel (kernels/cpp/sparse_bsr.cpp) and torch's
CSR/BSR path; on a GPU it would be compared with torch's BSR (bsr_dense_mm, Triton-based) there.
Measured: checked under TRITON_INTERPRET=1 only (fp32, fp16); not yet measured on a GPU.
"""
from __future__ import annotations

import torch

from kernels.triton.common import (HAS_TRITON, Launcher, Skip, TritonKernel, declare, dot_precision,  # noqa: F401
                                   triton, tl)

if HAS_TRITON:

    @triton.jit
    def bsr_kernel(x_ptr, rowptr_ptr, cols_ptr, vals_ptr, y_ptr, M, stride_xm, stride_ym,
                   B: tl.constexpr, BLOCK_M: tl.constexpr, DOT_PRECISION: tl.constexpr):
        pid_m = tl.program_id(0)
        i = tl.program_id(1)                                   # block row of W = block column of y
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rb = tl.arange(0, B)
        mask_m = rm[:, None] < M
        start = tl.load(rowptr_ptr + i)
        end = tl.load(rowptr_ptr + i + 1)
        acc = tl.zeros((BLOCK_M, B), dtype=tl.float32)
        v_ptrs = vals_ptr + start.to(tl.int64) * B * B + rb[:, None] * B + rb[None, :]   # 64-bit block offsets
        x_rows = x_ptr + rm[:, None].to(tl.int64) * stride_xm + rb[None, :]
        for j in range(start, end):
            c = tl.load(cols_ptr + j).to(tl.int64)
            # x panel BLOCK_M x B (inputs c*B ..), block j B x B (kk rows, nn columns): contiguous
            xs = tl.load(x_rows + c * B, mask=mask_m, other=0.0)
            vs = tl.load(v_ptrs)
            acc = tl.dot(xs, vs, acc, input_precision=DOT_PRECISION)
            v_ptrs += B * B
        y_ptrs = y_ptr + rm[:, None].to(tl.int64) * stride_ym + i * B + rb[None, :]
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_m)

    CONFIGS = [triton.Config({"BLOCK_M": bm}, num_warps=w, num_stages=s)
               for bm, w, s in ((16, 1, 2), (64, 4, 3), (128, 4, 3))]
    KERNEL = TritonKernel(bsr_kernel, CONFIGS, key=["M", "B"], interpret=triton.Config({"BLOCK_M": 16}),
                          report=("B",))


def bsr_mm(x: torch.Tensor, rowptr: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, out: torch.Tensor):
    """out[M, N] = x[M, K] @ W^T, W in BSR (transposed blocks). Returns the Config used."""
    b = vals.shape[-1]
    m = x.shape[0]
    nbr = rowptr.numel() - 1
    assert x.stride(1) == 1 and out.stride(1) == 1 and vals.is_contiguous()

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]), nbr)

    return KERNEL(grid, x, rowptr, cols, vals, out, m, x.stride(0), out.stride(0), B=b,
                  DOT_PRECISION=dot_precision(x.dtype))


def setup(case, x, w, bsr_rowptr=None, bsr_cols=None, bsr_vals=None, **_):
    """Triton block-sparse GEMM (BSR, one program per row tile x block row, tl.dot per stored block)"""
    from sparsity.cases import unsupported_reason
    why = unsupported_reason(case, "bsr")
    if why:
        raise Skip(why)
    out = case.poisoned((x.shape[0], w.shape[0]))
    xx = x if x.stride(-1) == 1 else x.contiguous()
    return Launcher(lambda: bsr_mm(xx, bsr_rowptr, bsr_cols, bsr_vals, out), out)


VARIANT = declare(setup, __file__)   # SUITE.add("triton_bsr", VARIANT)


def aot_specs():
    """What kernels/triton/aot.py compiles for the kernels report: bf16, blocks of 32, one config (the
    tl.dot path; fp32 would run "ieee" off the tensor cores)."""
    names = bsr_kernel.arg_names
    const_names = ("B", "BLOCK_M", "DOT_PRECISION")
    sig = {n: ("*i32" if n in ("rowptr_ptr", "cols_ptr") else "*bf16") if n.endswith("_ptr")
           else "constexpr" if n in const_names else "i32" for n in names}
    cfg = CONFIGS[1]
    yield "bf16", bsr_kernel, sig, {**cfg.kwargs, "B": 32, "DOT_PRECISION": "tf32"}, cfg
