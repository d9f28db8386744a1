"""Paged decode attention in Triton, split-KV (flash-decoding: Dao, Haziza, Massa, Sizov 2023) and GQA-aware,
over the vLLM-layout cache of inference/paged.py.

q [b, sq, h, d], k_cache / v_cache [num_blocks, bs, hkv, d] (float32 / bfloat16 / float16, int8, fp8 e4m3 read
as bytes and decoded in the kernel), block_tables [b, max_blocks] int32, seq_lens [b] int32, scales float32
[num_blocks, hkv] (block stride 0 for per-head scales); out [b, sq, h, d]. Query s of a sequence of length L
sees keys 0 .. L - sq + s.

Kernel 1, one program per (sequence, kv head, split of the pages): the G x sq query rows of the kv head
(G = h / hkv, padded to ROWS >= 16 for tl.dot) stay in registers; for each page of the split the K and V tiles
[BLOCK_N, d] are loaded once (each KV byte read once for the whole group: the GQA saving), dequantized
(x scale), S = Q K^T (tl.dot, fp32), online softmax in exp2, acc = acc * alpha + P V. It writes (m, l, acc) per
row. Kernel 2, one program per (sequence, kv head): merges the splits (o = sum 2^(m_s - M) acc_s /
sum 2^(m_s - M) l_s) into out. Splits are sized so that b x hkv x splits fills the GPU (>= 2 programs per SM).
Bytes: KV rows once + partials (splits x rows x (d + 2) x 4 x 2) + q + out; FLOPs 4 h d sq len.

Measured: not yet measured on a GPU (checked under TRITON_INTERPRET=1 in fp32 and fp16 at the decode suite's
test cases). Compiled ahead of time for sm_80 / sm_90a (aot_specs, tests/test_triton_aot.py): with 4 warps and 2
stages the split kernel used 255 registers and spilled 160-220 bytes; 8 warps, 1 stage: 48-59 registers, no
spills.
"""
from __future__ import annotations

import math

import torch

from kernels.triton.common import (HAS_TRITON, INTERPRETED, Launcher, Skip, TritonKernel, declare,  # noqa: F401
                                   next_pow2, triton, tl)

LOG2E = 1.4426950408889634
KV_CODES = {torch.float32: 0, torch.bfloat16: 0, torch.float16: 0, torch.int8: 1, torch.float8_e4m3fn: 2}

if HAS_TRITON:

    @triton.jit
    def decode_split_kernel(q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, ks_ptr, vs_ptr, m_ptr, l_ptr, acc_ptr,
                            stride_qb, stride_qs, stride_qh,
                            stride_kb, stride_kt, stride_kh,
                            stride_tb, ks_bstride, vs_bstride,
                            SQ, G, HKV, NSPLIT, PAGES_PER_SPLIT, BS, qk_scale,
                            HEAD_D: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, KV_KIND: tl.constexpr):
        b = tl.program_id(0)
        hk = tl.program_id(1)
        sp = tl.program_id(2)
        L = tl.load(lens_ptr + b)
        rows = tl.arange(0, ROWS)
        s_of = rows // G
        g_of = rows % G
        real = rows < G * SQ
        d = tl.arange(0, HEAD_D)
        q = tl.load(q_ptr + b * stride_qb + s_of[:, None] * stride_qs + (hk * G + g_of)[:, None] * stride_qh
                    + d[None, :], mask=real[:, None], other=0.0).to(tl.float32)
        q = q * qk_scale
        # last key each row sees; padding rows see every key (finite, never stored)
        last = tl.where(real, L - SQ + s_of, L - 1)
        m = tl.full([ROWS], float("-inf"), tl.float32)
        lsum = tl.zeros([ROWS], tl.float32)
        acc = tl.zeros([ROWS, HEAD_D], tl.float32)
        n = tl.arange(0, BLOCK_N)
        p_begin = sp * PAGES_PER_SPLIT
        n_pages = (L + BS - 1) // BS
        p_end = tl.minimum(p_begin + PAGES_PER_SPLIT, n_pages)
        for page in range(p_begin, p_end):
            blk = tl.load(tables_ptr + b * stride_tb + page).to(tl.int64)
            tok = page * BS + n
            valid = (n < BS) & (tok < L)
            off = blk * stride_kb + n[:, None] * stride_kt + hk * stride_kh + d[None, :]
            kraw = tl.load(k_ptr + off, mask=valid[:, None], other=0)
            vraw = tl.load(v_ptr + off, mask=valid[:, None], other=0)
            if KV_KIND == 2:   # fp8 e4m3 bytes: magnitude bits at fp32's exponent/mantissa, x 2^120; sign to bit 31
                ki = kraw.to(tl.int32) & 0xFF
                vi = vraw.to(tl.int32) & 0xFF
                k = (((ki & 0x7F) << 20).to(tl.float32, bitcast=True) * 1.329227995784916e36)
                k = tl.where((ki & 0x80) != 0, -k, k)
                v = (((vi & 0x7F) << 20).to(tl.float32, bitcast=True) * 1.329227995784916e36)
                v = tl.where((vi & 0x80) != 0, -v, v)
            else:
                k = kraw.to(tl.float32)
                v = vraw.to(tl.float32)
            if KV_KIND != 0:
                k = k * tl.load(ks_ptr + blk * ks_bstride + hk)
                v = v * tl.load(vs_ptr + blk * vs_bstride + hk)
            s = tl.dot(q, tl.trans(k), input_precision="ieee")               # [ROWS, BLOCK_N]
            visible = valid[None, :] & (tok[None, :] <= last[:, None])
            s = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)             # rows that saw no key yet
            alpha = tl.exp2(m - m_safe)
            p = tl.exp2(s - m_safe[:, None])
            lsum = lsum * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
            m = m_new
        base = (b * HKV + hk) * NSPLIT + sp
        tl.store(m_ptr + base * ROWS + rows, m)
        tl.store(l_ptr + base * ROWS + rows, lsum)
        tl.store(acc_ptr + (base * ROWS + rows)[:, None] * HEAD_D + d[None, :], acc)

    @triton.jit
    def decode_merge_kernel(m_ptr, l_ptr, acc_ptr, o_ptr, stride_ob, stride_os, stride_oh, SQ, G, HKV, NSPLIT,
                            HEAD_D: tl.constexpr, ROWS: tl.constexpr):
        b = tl.program_id(0)
        hk = tl.program_id(1)
        rows = tl.arange(0, ROWS)
        d = tl.arange(0, HEAD_D)
        big_m = tl.full([ROWS], float("-inf"), tl.float32)
        for sp in range(0, NSPLIT):
            big_m = tl.maximum(big_m, tl.load(m_ptr + ((b * HKV + hk) * NSPLIT + sp) * ROWS + rows))
        big_m = tl.where(big_m == float("-inf"), 0.0, big_m)
        num = tl.zeros([ROWS, HEAD_D], tl.float32)
        den = tl.zeros([ROWS], tl.float32)
        for sp in range(0, NSPLIT):
            base = ((b * HKV + hk) * NSPLIT + sp) * ROWS
            w = tl.exp2(tl.load(m_ptr + base + rows) - big_m)                   # 0 for splits past the length
            den += w * tl.load(l_ptr + base + rows)
            num += w[:, None] * tl.load(acc_ptr + (base + rows)[:, None] * HEAD_D + d[None, :])
        out = num / den[:, None]
        real = rows < G * SQ
        dst = o_ptr + b * stride_ob + (rows // G)[:, None] * stride_os + (hk * G + rows % G)[:, None] * stride_oh \
            + d[None, :]
        tl.store(dst, out.to(o_ptr.dtype.element_ty), mask=real[:, None])

    # one config: the work split is chosen by the wrapper (pages per split), the tiles by the shapes
    SPLIT = TritonKernel(decode_split_kernel, [triton.Config({}, num_warps=8, num_stages=1)], key=["HEAD_D"],
                         interpret=triton.Config({}), report=("ROWS", "BLOCK_N"))
    MERGE = TritonKernel(decode_merge_kernel, [triton.Config({}, num_warps=4, num_stages=1)], key=["HEAD_D"],
                         interpret=triton.Config({}), report=())


def _splits(b: int, hkv: int, max_pages: int, device) -> int:
    """Splits per (sequence, kv head): enough programs for >= 2 per SM on a GPU; 3 under the interpreter (so the
    test cases exercise the merge, ragged splits past a sequence's end included); never more than the pages."""
    if device.type != "cuda":
        return max(1, min(max_pages, 3))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(max_pages, -(-2 * sms // (b * hkv))))


def decode_paged(q, k_cache, v_cache, block_tables, seq_lens, out, k_scale=None, v_scale=None):
    from inference.paged import validate
    validate(q, k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale)
    b, sq, h, d = q.shape
    nb, bs, hkv, _ = k_cache.shape
    g = h // hkv
    rows = max(16, next_pow2(g * sq))
    kind = KV_CODES[k_cache.dtype]
    if kind == 2:                      # fp8 e4m3: bytes, decoded in the kernel
        k_cache, v_cache = k_cache.view(torch.uint8), v_cache.view(torch.uint8)
    if k_scale is None:
        k_scale = v_scale = torch.ones(1, 1, device=q.device)
    max_pages = block_tables.shape[1]
    nsplit = _splits(b, hkv, max_pages, q.device)
    pps = -(-max_pages // nsplit)
    nsplit = -(-max_pages // pps)
    m = torch.empty(b * hkv * nsplit * rows, device=q.device)
    lsum = torch.empty_like(m)
    acc = torch.empty(b * hkv * nsplit * rows * d, device=q.device)
    ksb = k_scale.stride(0) if k_scale.shape[0] > 1 else 0
    vsb = v_scale.stride(0) if v_scale.shape[0] > 1 else 0
    cfg = SPLIT((b, hkv, nsplit), q, k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale, m, lsum, acc,
                q.stride(0), q.stride(1), q.stride(2), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
                block_tables.stride(0), ksb, vsb, sq, g, hkv, nsplit, pps, bs, LOG2E / math.sqrt(d),
                HEAD_D=d, ROWS=rows, BLOCK_N=max(16, next_pow2(bs)), KV_KIND=kind)
    MERGE((b, hkv), m, lsum, acc, out, out.stride(0), out.stride(1), out.stride(2), sq, g, hkv, nsplit,
          HEAD_D=d, ROWS=rows)
    return cfg


def setup(case, q, k_cache, v_cache, block_tables, seq_lens, k_scale=None, v_scale=None, **_):
    """Triton paged decode: split-KV over pages, GQA rows share each K/V tile, int8/fp8 dequantized in-kernel"""
    from inference.paged import validate
    validate(q, k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale)
    d = q.shape[-1]
    if d < 16 or d & (d - 1):
        raise Skip(f"head dim {d}: the Triton kernel takes powers of two >= 16")
    for t in (q, k_cache, v_cache):
        if t.stride(-1) != 1:
            raise Skip("the Triton kernel needs a unit last stride")
    out = case.poisoned(tuple(q.shape))
    return Launcher(lambda: decode_paged(q, k_cache, v_cache, block_tables, seq_lens, out, k_scale, v_scale), out)


VARIANT = declare(setup, __file__)   # SUITE.add("triton", VARIANT)


def aot_specs():
    """What kernels/triton/aot.py compiles for the kernels report and the spill test: the split kernel at head dim
    128 with 16 query rows (G 4 x sq 4, or GQA 16) over 16-token pages, bf16 / int8 / fp8 caches, and the merge."""
    if not HAS_TRITON:
        return
    consts = ("HEAD_D", "ROWS", "BLOCK_N", "KV_KIND")
    for kind, kv in ((0, "*bf16"), (1, "*i8"), (2, "*u8")):
        sig = {n: (kv if n in ("k_ptr", "v_ptr") else "*bf16" if n == "q_ptr" else "*i32" if n in
                   ("tables_ptr", "lens_ptr") else "*fp32" if n.endswith("_ptr") else "fp32" if n == "qk_scale"
                   else "constexpr" if n in consts else "i32") for n in decode_split_kernel.arg_names}
        for cfg in SPLIT.configs:
            yield (f"split,kv{kind},d128", decode_split_kernel, sig,
                   {"HEAD_D": 128, "ROWS": 16, "BLOCK_N": 16, "KV_KIND": kind}, cfg)
    sig = {n: ("*bf16" if n == "o_ptr" else "*fp32" if n.endswith("_ptr") else "constexpr" if n in
               ("HEAD_D", "ROWS") else "i32") for n in decode_merge_kernel.arg_names}
    for cfg in MERGE.configs:
        yield "merge,d128", decode_merge_kernel, sig, {"HEAD_D": 128, "ROWS": 16}, cfg
