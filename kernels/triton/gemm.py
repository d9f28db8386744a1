"""GEMM in Triton: C[M, N] = A[M, K] @ B[K, N], bf16/fp16 in, fp32 accumulation, C in the input dtype.

Algorithm: one program per BLOCK_M x BLOCK_N tile of C, stepping over K in BLOCK_K slices with `tl.dot`
(the tensor cores: HMMA m16n8k16 on sm_80, warpgroup HGMMA on sm_90, which Triton picks itself) and a
software pipeline of `num_stages` slices in flight (cp.async on sm_80). Tiles are visited in grouped
order: GROUP_M row-tiles sweep the N tiles together, so a B column panel fetched by the first of them is
still in L2 for the next GROUP_M - 1, and the A row panels (GROUP_M of them) stay resident too. With
row-major (plain) order each new row of tiles would re-read all of B from DRAM.

Work: 2*M*N*K FLOPs; bytes at least (M*K + K*N + M*N) * itemsize; at 4096^3 bf16 that is 137 GFLOP over
~100 MB: compute-bound (arithmetic intensity ~1365 FLOP/byte), so the tile shape and pipeline depth decide.
Edges: rows/columns past M/N and the K tail are masked (loads fill 0, stores skip), so any shape works;
masks whose bound is a multiple of 16 stay vectorized (Triton specializes such sizes).
float32 inputs use exact fp32 `tl.dot` (input_precision="ieee"), not TF32, to meet the float32 tolerance.

What it improves on: the Triton rung of the GEMM ladder, to compare with the CUDA rung and cuBLAS.
Measured: not yet measured on a GPU. Target: >= 0.8x torch.matmul (cuBLAS) at 4096^3 bf16.
"""
from __future__ import annotations

import torch

from kernels.triton.common import declare
from kernels.triton.common import (HAS_TRITON, Launcher, TritonKernel, config, dot_precision,  # noqa: F401
                                   missing_reason, triton, tl)

SMEM_FALLBACK = 160 * 1024  # opt-in shared memory per block: A100 163 KiB, H100 227 KiB

if HAS_TRITON:

    @triton.jit
    def gemm_kernel(a_ptr, b_ptr, c_ptr, M, N, K,
                    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    GROUP_M: tl.constexpr, DOT_PRECISION: tl.constexpr):
        # grouped tile order: program ids run down GROUP_M tile rows before moving one tile column right
        pid = tl.program_id(0)
        tiles_m = tl.cdiv(M, BLOCK_M)
        tiles_n = tl.cdiv(N, BLOCK_N)
        per_group = GROUP_M * tiles_n
        first_m = (pid // per_group) * GROUP_M
        group_rows = tl.minimum(tiles_m - first_m, GROUP_M)     # the last group may be short
        pid_m = first_m + (pid % per_group) % group_rows
        pid_n = (pid % per_group) // group_rows

        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        # 64-bit offsets: M * stride_am passes 2**31 for big operands
        a_ptrs = a_ptr + rm[:, None].to(tl.int64) * stride_am + rk[None, :] * stride_ak
        b_ptrs = b_ptr + rk[:, None].to(tl.int64) * stride_bk + rn[None, :] * stride_bn
        mask_m = rm[:, None] < M
        mask_n = rn[None, :] < N

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)   # fp32 accumulator in registers
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            k_left = K - k * BLOCK_K
            # per slice: (BLOCK_M + BLOCK_N) * BLOCK_K elements in, 2 * BLOCK_M * BLOCK_N * BLOCK_K FLOPs
            a = tl.load(a_ptrs, mask=mask_m & (rk[None, :] < k_left), other=0.0)
            b = tl.load(b_ptrs, mask=(rk[:, None] < k_left) & mask_n, other=0.0)
            acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
            a_ptrs += BLOCK_K * stride_ak
            b_ptrs += BLOCK_K * stride_bk

        c_ptrs = c_ptr + rm[:, None].to(tl.int64) * stride_cm + rn[None, :] * stride_cn
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask_m & mask_n)

    def _cfg(bm, bn, bk, warps, stages, group=8):
        return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group},
                             num_warps=warps, num_stages=stages)

    # GPU autotuning list (sm_80 / sm_90, 16-bit inputs): big tiles for the compute-bound shapes, smaller
    # ones for skinny or small problems. Shared memory per config = stages*(BM + BN)*BK*itemsize.
    CONFIGS_16 = [
        _cfg(128, 256, 64, 8, 3),   # 144 KiB smem at bf16; the big-square-GEMM workhorse
        # (256 x 128 x 64, 8 warps spills 20 bytes on sm_80: left out)
        _cfg(128, 128, 64, 8, 4),   # 128 KiB
        _cfg(128, 128, 64, 4, 4),
        _cfg(128, 128, 32, 4, 4),
        _cfg(128, 64, 64, 4, 4),
        _cfg(64, 128, 64, 4, 4),
        _cfg(64, 64, 64, 4, 5),     # small problems / many SMs to fill
    ]
    # exact fp32 (input_precision="ieee") runs on the FMA path with both operand tiles in registers:
    # 128 x 128 x 32 on 4 warps already spills ~400 bytes there, these do not (tests/test_triton_aot.py)
    CONFIGS_32 = [_cfg(64, 64, 32, 4, 3), _cfg(64, 64, 64, 4, 3), _cfg(128, 64, 32, 8, 3), _cfg(64, 128, 32, 8, 3)]
    CONFIGS = CONFIGS_16 + CONFIGS_32

    def _prune(configs, named_args, **kwargs):
        """The dtype's list, without configs whose pipeline does not fit in this GPU's shared memory."""
        a = named_args["a_ptr"]
        item = a.element_size()
        limit = SMEM_FALLBACK
        if a.is_cuda:
            limit = getattr(torch.cuda.get_device_properties(a.device), "shared_memory_per_block_optin", limit)
        mine = CONFIGS_32 if item == 4 else CONFIGS_16
        keep = [c for c in configs if any(c is m for m in mine) and
                c.num_stages * (c.kwargs["BLOCK_M"] + c.kwargs["BLOCK_N"]) * c.kwargs["BLOCK_K"] * item <= limit]
        return keep or [CONFIGS_32[0]]

    # under the interpreter: small tiles and GROUP_M=2 so that odd shapes give several tiles, a short
    # last group, ragged M/N edges and a K tail
    KERNEL = TritonKernel(gemm_kernel, CONFIGS, key=["M", "N", "K"],
                          interpret=_cfg(32, 32, 32, 4, 1, group=2),
                          prune_configs_by={"early_config_prune": _prune})


def gemm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor):
    """out[M, N] = a[M, K] @ b[K, N] (fp32 accumulation). Any strides. Returns the Config used."""
    assert a.dim() == 2 and b.dim() == 2 and a.shape[1] == b.shape[0]
    assert out.shape == (a.shape[0], b.shape[1]) and a.dtype == b.dtype
    M, K = a.shape
    N = b.shape[1]

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    return KERNEL(grid, a, b, out, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
                  out.stride(0), out.stride(1), DOT_PRECISION=dot_precision(a.dtype))


def setup(case, a, b, **_):
    """Triton tl.dot GEMM (grouped tile order, fp32 accumulation, autotuned tiles)

    Registry setup: out from case.poisoned, the launcher writes into it."""
    out = case.poisoned((a.shape[0], b.shape[1]))
    return Launcher(lambda: gemm(a, b, out), out)


VARIANT = declare(setup, __file__)   # SUITE.add("triton", VARIANT)


def aot_specs():
    """What kernels/triton/aot.py compiles: every GPU config, bf16 (and the fp32 list in fp32), row-major
    A, B, C with the strides and sizes divisible by 16 (as at 4096^3, where the JIT specializes them
    the same way)."""
    names = gemm_kernel.arg_names
    const_names = ("stride_ak", "stride_bn", "stride_cn", "BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "DOT_PRECISION")
    for dt, configs, prec in (("bf16", CONFIGS_16, "tf32"), ("fp32", CONFIGS_32, "ieee")):
        sig = {n: f"*{dt}" if n.endswith("_ptr") else "constexpr" if n in const_names else "i32" for n in names}
        for cfg in configs:
            const = {**cfg.kwargs, "stride_ak": 1, "stride_bn": 1, "stride_cn": 1, "DOT_PRECISION": prec}
            yield dt, gemm_kernel, sig, const, cfg
