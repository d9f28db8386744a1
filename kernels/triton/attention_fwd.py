"""Attention forward in Triton, FlashAttention-2 style (Dao 2023, "FlashAttention-2: Faster Attention with
Better Parallelism and Work Partitioning").

out = softmax(q k^T / sqrt(d) [+ causal mask]) v with q [b, h, sq, d], k and v [b, hkv, sk, d],
out [b, h, sq, d]; h % hkv == 0 (grouped query heads: query head i reads kv head i // (h / hkv)).
Causal is top-left aligned, as torch's scaled_dot_product_attention(is_causal=True): query i sees keys
j <= i, whatever sq and sk are.

Algorithm: one program per (BLOCK_M query rows, head, batch): grid (query tiles, h, b), so up to 65,535
heads and 65,535 sequences (y and z), and the query tiles of one head run next to each other (x). The
program keeps its q tile in registers and streams K and V in BLOCK_N-key tiles. For each tile: S = q k^T
(tensor cores), an online softmax (running row max m and row sum l in fp32, exp2 with log2(e) folded into
the scale), rescale the fp32 output accumulator by exp2(m_old - m_new), then acc += P v (P rounded to the
input dtype, tensor cores). The division by l happens once at the end. S and P never touch memory: bytes
are q, k, v read and out written once per query tile: (b*h*sq*d*2 + b*h*sk*d*2*ceil(sq/BLOCK_M)) *
itemsize, with K/V re-reads served from L2 since the programs of one head run next to each other; FLOPs
4*b*h*sq*sk*d (halved when causal).
Causal: the key loop stops at the diagonal (tiles entirely above it are skipped, not masked), and is
split in two: tiles wholly below the diagonal run without any mask, only the few tiles that cross it
(or the ragged end of the keys) pay for the mask. Query tiles are launched last-first when causal, so
the longest programs start first and the tail of the grid is short.
The two key loops are written out inline rather than as a shared @triton.jit helper: the interpreter
mode of kernels/triton/common.py has to call the kernel's own Python function.

What it improves on: the Triton rung of the attention ladder; against a naive attention it moves
O(sq*sk) fewer bytes (no S/P in memory).
Measured: not yet measured on a GPU. Target: >= 0.8x scaled_dot_product_attention's flash backend on
the same GPU at sequence 4096, head dim 128.
"""
from __future__ import annotations

import math

import torch

from kernels.native import top_left_causal_only
from kernels.triton.common import declare
from kernels.triton.common import (HAS_TRITON, Launcher, Skip, TritonKernel, config,  # noqa: F401
                                   dot_precision, missing_reason, triton, tl)

HEAD_DIMS = (16, 32, 64, 128)  # powers of two (tl.arange), >= 16 (tl.dot); the suite uses 64 and 128
LOG2E = 1.4426950408889634

if HAS_TRITON:

    @triton.jit
    def attn_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr,
                        stride_qb, stride_qh, stride_qm,
                        stride_kb, stride_kh, stride_kn,
                        stride_vb, stride_vh, stride_vn,
                        stride_ob, stride_oh, stride_om,
                        GROUP, SQ, SK, qk_scale,
                        HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr):
        if CAUSAL:  # the last query tiles see the most keys: launch them first
            start_m = tl.num_programs(0) - 1 - tl.program_id(0)
        else:
            start_m = tl.program_id(0)
        h = tl.program_id(1)                         # grid (query tiles, h, b): y and z allow 65,535 each
        b = tl.program_id(2)
        hk = h // GROUP                              # grouped query heads share one kv head
        # Addressing: every base that grows with a program id or a loop index is a 64-bit scalar (this tile's
        # first row); the per-element offsets inside a tile stay 32-bit (at most BLOCK x stride + HEAD_D), so
        # no product wraps past 2**31 and the pointer tensors cost no more registers than 32-bit offsets do.
        row0 = start_m * BLOCK_M
        q_base = q_ptr + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
        k_base = k_ptr + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
        v_base = v_ptr + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh
        o_base = o_ptr + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh

        offs_m = row0 + tl.arange(0, BLOCK_M)        # query index, for the masks only
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_D)
        q_tile = tl.arange(0, BLOCK_M)[:, None] * stride_qm + offs_d[None, :]     # in-tile offsets, i32
        o_tile = tl.arange(0, BLOCK_M)[:, None] * stride_om + offs_d[None, :]
        k_tile = offs_n[:, None] * stride_kn + offs_d[None, :]
        v_tile = offs_n[:, None] * stride_vn + offs_d[None, :]
        q = tl.load(q_base + row0.to(tl.int64) * stride_qm + q_tile, mask=offs_m[:, None] < SQ, other=0.0)

        m_i = tl.full([BLOCK_M], -float("inf"), dtype=tl.float32)   # running row max (log2 domain)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)                 # running row sum of exp2(s - m)
        acc = tl.zeros([BLOCK_M, HEAD_D], dtype=tl.float32)

        # key range: [0, full_end) needs no mask; [full_end, end) is masked (diagonal / ragged end)
        if CAUSAL:
            end = tl.minimum(SK, (start_m + 1) * BLOCK_M)           # keys past the last row's diagonal: skipped
            full_end = (tl.minimum(start_m * BLOCK_M, SK) // BLOCK_N) * BLOCK_N
        else:
            end = SK
            full_end = (SK // BLOCK_N) * BLOCK_N

        # tiles wholly below the diagonal and inside sk: no mask at all. kp, vp: the current key tile's first
        # row, advanced by BLOCK_N rows per tile (64-bit pointers; the step BLOCK_N x stride is small)
        kp = k_base
        vp = v_base
        for start_n in range(0, full_end, BLOCK_N):
            k = tl.load(kp + k_tile)                                                      # [BLOCK_N, D]
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale    # 2*BM*BN*D FLOPs
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            p = tl.exp2(s - m_new[:, None])
            alpha = tl.exp2(m_i - m_new)             # rescale what was summed under the old max
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(vp + v_tile)
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
            m_i = m_new
            kp += BLOCK_N * stride_kn
            vp += BLOCK_N * stride_vn

        # tiles crossing the diagonal or the end of the keys: mask j >= sk and (causal) j > i with -inf.
        # Every row saw key 0 in the first tile it processed, so m_i is finite and exp2(-inf - m) = 0.
        for start_n in range(full_end, end, BLOCK_N):
            keys = start_n + offs_n
            kmask = keys < SK
            k = tl.load(kp + k_tile, mask=kmask[:, None], other=0.0)     # kp, vp: continued from the first loop
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
            valid = kmask[None, :]
            if CAUSAL:
                valid = valid & (keys[None, :] <= offs_m[:, None])
            s = tl.where(valid, s, -float("inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            p = tl.exp2(s - m_new[:, None])
            alpha = tl.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(vp + v_tile, mask=kmask[:, None], other=0.0)
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
            m_i = m_new
            kp += BLOCK_N * stride_kn
            vp += BLOCK_N * stride_vn

        out = acc / l_i[:, None]                     # one division per output element, at the end
        tl.store(o_base + row0.to(tl.int64) * stride_om + o_tile, out.to(o_ptr.dtype.element_ty),
                 mask=offs_m[:, None] < SQ)

    def _cfg(bm, bn, warps, stages):
        return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)

    # GPU autotuning lists per head dim (16-bit inputs), each config spill-free on sm_80 and sm_90a
    # (tests/test_triton_aot.py). 128 query rows x 8 warps is the FlashAttention-2 shape on A100/H100;
    # 64-row tiles help short sequences fill the SMs. At d=128 a 128 x 128 tile (or 128 rows on 4 warps)
    # spills on sm_80 (the fp32 accumulator alone is 128*128/128 = 128 registers a thread). Causal tiles sit
    # at sm_80's 255-register limit: with the 64-bit addressing above, 64 x 64 on 4 warps (d=128) and 128 x 64
    # on 4 warps (d=64) spilled 4 and 12 bytes when causal, so those shapes run on 8 warps.
    CONFIGS_BY_D = {
        64: [_cfg(128, 128, 8, 3), _cfg(128, 64, 8, 3), _cfg(128, 64, 8, 2), _cfg(128, 32, 4, 4),
             _cfg(64, 64, 4, 3), _cfg(64, 32, 4, 4)],
        128: [_cfg(128, 64, 8, 3), _cfg(128, 32, 8, 4), _cfg(64, 64, 8, 3), _cfg(64, 32, 4, 4)],
    }
    # exact fp32 (input_precision="ieee", the FMA path) needs small tiles. Under triton 3.7.1 every tile
    # tried at d=128 still spills on sm_90a (~400 bytes); fp32 at d > 64 is therefore skipped on sm_90. On
    # sm_80, d=128: 32 x 32 (4 or 8 warps) and 16 x 32 spill 8-48 bytes; 32 x 16 and 16 x 16 do not.
    FP32_CONFIGS_BY_D = {
        64: [_cfg(32, 32, 4, 2), _cfg(64, 32, 8, 2)],
        128: [_cfg(32, 16, 4, 2), _cfg(16, 16, 4, 2)],
    }
    CONFIGS = [c for by_d in (CONFIGS_BY_D, FP32_CONFIGS_BY_D) for cs in by_d.values() for c in cs]

    def _configs_for(d, fp32=False):
        return (FP32_CONFIGS_BY_D if fp32 else CONFIGS_BY_D)[64 if d <= 64 else 128]

    def _prune(configs, named_args, **kwargs):
        """The list of this head dim and dtype (configs may repeat across lists: keep each once)."""
        mine = _configs_for(kwargs["HEAD_D"], named_args["q_ptr"].element_size() == 4)
        return [c for c in configs if any(c is m for m in mine)]

    # under the interpreter: BLOCK_M != BLOCK_N so the masked causal band spans several key tiles
    KERNEL = TritonKernel(attn_fwd_kernel, CONFIGS, key=["SQ", "SK", "HEAD_D", "CAUSAL"],
                          interpret=triton.Config({"BLOCK_M": 32, "BLOCK_N": 16}),
                          prune_configs_by={"early_config_prune": _prune})


def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                  causal: bool = False, scale: float | None = None):
    """out = softmax(q k^T * scale, causal top-left) v; q, out [b, h, sq, d]; k, v [b, hkv, sk, d].
    Returns the Config used."""
    b, h, sq, d = q.shape
    _, hkv, sk, _ = k.shape
    assert k.shape == v.shape == (b, hkv, sk, d) and out.shape == q.shape and h % hkv == 0
    assert q.stride(3) == k.stride(3) == v.stride(3) == out.stride(3) == 1
    if d not in HEAD_DIMS:
        raise Skip(f"head dim {d} not supported by the Triton kernel (supported: {HEAD_DIMS})")
    if q.dtype == torch.float32 and d > 64 and q.is_cuda and torch.cuda.get_device_capability(q.device)[0] == 9:
        raise Skip("exact-fp32 attention at head dim > 64 spills on sm_90 (triton 3.7.1); use bf16/fp16")
    scale = 1.0 / math.sqrt(d) if scale is None else scale

    def grid(meta):
        return (triton.cdiv(sq, meta["BLOCK_M"]), h, b)

    return KERNEL(grid, q, k, v, out, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1),
                  k.stride(2), v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1),
                  out.stride(2), h // hkv, sq, sk, scale * LOG2E,
                  HEAD_D=d, CAUSAL=bool(causal), DOT_PRECISION=dot_precision(q.dtype))


def setup(case, q, k, v, causal=None, **_):
    """Triton FlashAttention-2 forward (online softmax, causal tiles skipped, grouped query heads)

    Registry setup; `causal` from the inputs, else the case's `causal` parameter (default False)."""
    causal = bool(causal if causal is not None else case.get("causal", False))
    if top_left_causal_only(case):
        raise Skip(top_left_causal_only(case))
    d = q.shape[-1]
    if d not in HEAD_DIMS:
        raise Skip(f"head dim {d} not supported by the Triton kernel (supported: {HEAD_DIMS})")
    if q.dtype == torch.float32 and d > 64 and q.is_cuda and torch.cuda.get_device_capability(q.device)[0] == 9:
        raise Skip("exact-fp32 attention at head dim > 64 spills on sm_90 (triton 3.7.1); use bf16/fp16")
    out = case.poisoned(tuple(q.shape))
    return Launcher(lambda: attention_fwd(q, k, v, out, causal), out)


VARIANT = declare(setup, __file__)   # SUITE.add("triton", VARIANT)


def aot_specs():
    """What kernels/triton/aot.py compiles: every GPU config at head dims 64 and 128, causal and not,
    in bf16, and the fp32 lists in fp32 (d=128 fp32 on sm_80 only: it is skipped on sm_90); contiguous
    [b, h, s, d] tensors (unit last stride), sizes divisible by 16. Yields (label, fn, signature,
    constexprs, config[, archs])."""
    const_names = ("HEAD_D", "BLOCK_M", "BLOCK_N", "CAUSAL", "DOT_PRECISION")
    for dt, prec in (("bf16", "tf32"), ("fp32", "ieee")):
        sig = {n: f"*{dt}" if n.endswith("_ptr") else "fp32" if n == "qk_scale" else
               "constexpr" if n in const_names else "i32" for n in attn_fwd_kernel.arg_names}
        for d in (64, 128):
            archs = ("sm_80",) if dt == "fp32" and d > 64 else None
            for causal in (False, True):
                for cfg in _configs_for(d, dt == "fp32"):
                    const = {**cfg.kwargs, "HEAD_D": d, "CAUSAL": causal, "DOT_PRECISION": prec}
                    label = f"{'fp32,' if dt == 'fp32' else ''}d{d}{',causal' if causal else ''}"
                    yield (label, attn_fwd_kernel, sig, const, cfg) + ((archs,) if archs else ())
