"""Quantized GEMMs in Triton (suite quant_gemm): W8A8 and W4A16.

- `w8a8_kernel`: out[M, N] = (a[M, K] int8 @ w[N, K]^T int8) * sa[m] * sw[n]. One program per BLOCK_M x BLOCK_N
  tile; `tl.dot` of int8 tiles with an int32 accumulator (IMMA m16n8k32 on sm_80+), the two scales applied once in
  the epilogue. Work 2MNK integer ops; bytes MK + NK + 4(M + N) + MN * out itemsize.
- `w4a16_kernel`: out[M, N] = x[M, K] @ W^T, W int4 in quant/int4_weight_only.py's layout (packed[N, K/2]: even k
  in the low nibble; per group of G consecutive k an fp32 scale s and a uint8 zero point z: W = s (q - z)). Per
  BLOCK_K = 32 slice (inside one group, as G is a multiple of 32): one [BLOCK_N, 16] load of packed bytes, the low
  and high nibbles dequantized in registers to x's dtype, and two `tl.dot`s against x's even and odd columns (so
  the nibbles are never re-interleaved). Bytes NK/2 + 5NK/G + MK + MN (weights at their width).
Checked under TRITON_INTERPRET=1 against the suite's float64 reference of the dequantized product (fp32, fp16).
Measured: not yet measured on a GPU (no GPU lent to this task).
"""
from __future__ import annotations

import torch

from kernels.triton.common import HAS_TRITON, Launcher, Skip, TritonKernel, declare, dot_precision, triton, tl

if HAS_TRITON:

    @triton.jit
    def w8a8_kernel(a_ptr, w_ptr, sa_ptr, sw_ptr, out_ptr, M, N, K, stride_am, stride_wn, stride_om,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        a_ptrs = a_ptr + rm[:, None].to(tl.int64) * stride_am + rk[None, :]
        w_ptrs = w_ptr + rn[None, :].to(tl.int64) * stride_wn + rk[:, None]      # [BLOCK_K, BLOCK_N] view of w^T
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=(rm[:, None] < M) & (rk[None, :] < k_left), other=0)
            w = tl.load(w_ptrs, mask=(rk[:, None] < k_left) & (rn[None, :] < N), other=0)
            acc = tl.dot(a, w, acc, out_dtype=tl.int32)
            a_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
        sa = tl.load(sa_ptr + rm, mask=rm < M, other=0.0)
        sw = tl.load(sw_ptr + rn, mask=rn < N, other=0.0)
        y = acc.to(tl.float32) * sa[:, None] * sw[None, :]
        o_ptrs = out_ptr + rm[:, None].to(tl.int64) * stride_om + rn[None, :]
        tl.store(o_ptrs, y.to(out_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))

    @triton.jit
    def w4a16_kernel(x_ptr, p_ptr, s_ptr, z_ptr, out_ptr, M, N, K, G, stride_xm, stride_pn, stride_sn, stride_om,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr):
        HALF: tl.constexpr = 16                        # bytes per BLOCK_K = 32 slice
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rj = tl.arange(0, HALF)
        mask_m = rm[:, None] < M
        mask_n = rn < N
        x_even = x_ptr + rm[:, None].to(tl.int64) * stride_xm + 2 * rj[None, :]    # [BLOCK_M, 16]: k = 2j
        p_ptrs = p_ptr + rn[None, :].to(tl.int64) * stride_pn + rj[:, None]        # [16, BLOCK_N]: byte j of row n
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, K // 32):
            g = (k * 32) // G
            s = tl.load(s_ptr + rn.to(tl.int64) * stride_sn + g, mask=mask_n, other=0.0)
            z = tl.load(z_ptr + rn.to(tl.int64) * stride_sn + g, mask=mask_n, other=0).to(tl.float32)
            p = tl.load(p_ptrs, mask=mask_n[None, :], other=0).to(tl.int32)
            lo = ((p & 0xF).to(tl.float32) - z[None, :]) * s[None, :]                # [16, BLOCK_N] even k
            hi = ((p >> 4).to(tl.float32) - z[None, :]) * s[None, :]                 # odd k
            xe = tl.load(x_even, mask=mask_m, other=0.0)
            xo = tl.load(x_even + 1, mask=mask_m, other=0.0)
            acc = tl.dot(xe, lo.to(xe.dtype), acc, input_precision=DOT_PRECISION)
            acc = tl.dot(xo, hi.to(xo.dtype), acc, input_precision=DOT_PRECISION)
            x_even += 32
            p_ptrs += HALF
        o_ptrs = out_ptr + rm[:, None].to(tl.int64) * stride_om + rn[None, :]
        tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m & mask_n[None, :])

    def _cfg(bm, bn, bk=None, warps=4, stages=3):
        kw = {"BLOCK_M": bm, "BLOCK_N": bn}
        if bk is not None:
            kw["BLOCK_K"] = bk
        return triton.Config(kw, num_warps=warps, num_stages=stages)

    # GPU lists: decode (M <= 16) wants narrow M tiles and many N tiles; prefill the GEMM workhorses
    W8_CONFIGS = [_cfg(16, 64, 128), _cfg(32, 64, 128), _cfg(64, 128, 64), _cfg(128, 128, 64, 8), _cfg(128, 256, 64, 8)]
    W4_CONFIGS = [_cfg(16, 64), _cfg(16, 128), _cfg(32, 128), _cfg(64, 128), _cfg(128, 128, warps=8)]
    # under the interpreter: small tiles so the odd test shapes give several tiles with ragged edges
    W8 = TritonKernel(w8a8_kernel, W8_CONFIGS, key=["M", "N", "K"], interpret=_cfg(16, 32, 32, 4, 1))
    W4 = TritonKernel(w4a16_kernel, W4_CONFIGS, key=["M", "N", "K"], interpret=_cfg(16, 32, None, 4, 1))


def w8a8(a, w, sa, sw, out):
    M, K = a.shape
    N = w.shape[0]

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(N, meta["BLOCK_N"]))
    return W8(grid, a, w, sa, sw, out, M, N, K, a.stride(0), w.stride(0), out.stride(0))


def w4a16(x, packed, scale, zero, group, out):
    M, K = x.shape
    N = packed.shape[0]

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(N, meta["BLOCK_N"]))
    return W4(grid, x, packed, scale, zero, out, M, N, K, group, x.stride(0), packed.stride(0), scale.stride(0),
              out.stride(0), DOT_PRECISION=dot_precision(x.dtype))


def setup(case, a=None, sa=None, w=None, sw=None, x=None, packed=None, scale=None, zero=None):
    """Triton W8A8 (int8 tl.dot, int32 accumulation) and W4A16 (nibbles dequantized in registers) GEMMs"""
    if case.scheme == "w8a8":
        a, w = a.contiguous(), w.contiguous()
        out = case.poisoned((a.shape[0], w.shape[0]))
        return Launcher(lambda: w8a8(a, w, sa.contiguous(), sw.contiguous(), out), out)
    if case.group % 32:
        raise Skip(f"group {case.group}: the Triton W4A16 kernel takes groups that are multiples of 32")
    x, packed = x.contiguous(), packed.contiguous()
    out = case.poisoned((x.shape[0], packed.shape[0]))
    return Launcher(lambda: w4a16(x, packed, scale.contiguous(), zero.contiguous(), case.group, out), out)


VARIANT = declare(setup, __file__)   # SUITE.add("triton", VARIANT) in suites/quant_gemm.py


def aot_specs():
    """What kernels/triton/aot.py compiles for the kernels report (registers, spills, occupancy, tensor-core
    instructions per arch): the W8A8 GEMM at the prefill tile (int8 `tl.dot`: IMMA on sm_80, IGMMA on sm_90a) and
    the W4A16 GEMM at its prefill tile, both with bf16 out (the suite's 16-bit path)."""
    w8_types = {"a_ptr": "*i8", "w_ptr": "*i8", "sa_ptr": "*fp32", "sw_ptr": "*fp32", "out_ptr": "*bf16"}
    w8 = {n: w8_types.get(n, "constexpr" if n.startswith("BLOCK") else "i32") for n in w8a8_kernel.arg_names}
    cfg = W8_CONFIGS[2]
    yield "w8a8-bf16", w8a8_kernel, w8, dict(cfg.kwargs), cfg
    w4_types = {"x_ptr": "*bf16", "p_ptr": "*u8", "s_ptr": "*fp32", "z_ptr": "*u8", "out_ptr": "*bf16"}
    w4 = {n: w4_types.get(n, "constexpr" if n.startswith(("BLOCK", "DOT")) else "i32") for n in w4a16_kernel.arg_names}
    cfg = W4_CONFIGS[3]
    yield "w4a16-bf16", w4a16_kernel, w4, {**cfg.kwargs, "DOT_PRECISION": "tf32"}, cfg
