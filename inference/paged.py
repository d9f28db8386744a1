"""Decode attention over the paged cache, in torch: argument validation (run before any kernel), the gather
into a contiguous cache, the float64 reference and the SDPA / flex_attention baselines.

Decode arguments (vLLM's paged-attention layout, see inference/kv_cache.py):
    q            [batch, q_len, heads, head_dim]     q_len = 1 (decode) or a few (speculative decoding)
    k_cache      [num_blocks, block_size, kv_heads, head_dim]   float32 / bfloat16 / float16 / int8 / fp8 e4m3
    v_cache      same shape and dtype
    block_tables [batch, max_blocks] int32           entries past a sequence's pages are ignored (pad -1)
    seq_lens     [batch] int32                       tokens in the cache, the q_len new ones included
    k_scale, v_scale  float32 [num_blocks, kv_heads] (a per-head scale: block stride 0), quantized caches only
    out          [batch, q_len, heads, head_dim]     dtype of q
Query i of a sequence of length L sits at position L - q_len + i and sees keys 0 .. L - q_len + i (causal,
bottom-right aligned). heads % kv_heads == 0: query head h reads kv head h // (heads // kv_heads).
"""
from __future__ import annotations

import math

import torch

from inference import quant

FLOAT_KV = (torch.float32, torch.bfloat16, torch.float16)
QUANT_KV = (torch.int8, torch.float8_e4m3fn)


class DecodeArgumentError(ValueError):
    """Paged decode arguments that do not fit together (raised before any kernel runs)."""


def validate(q, k_cache, v_cache, block_tables, seq_lens, k_scale=None, v_scale=None) -> None:
    """Raise DecodeArgumentError naming the first inconsistency: shapes, head counts, dtypes, a block table
    entry past the cache, a length longer than its pages or shorter than its queries."""
    def bad(msg):
        raise DecodeArgumentError(f"paged decode: {msg}")
    if q.dim() != 4:
        bad(f"q must be [batch, q_len, heads, head_dim], got {tuple(q.shape)}")
    if k_cache.dim() != 4 or tuple(k_cache.shape) != tuple(v_cache.shape):
        bad(f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} must both be "
            "[num_blocks, block_size, kv_heads, head_dim]")
    if k_cache.dtype != v_cache.dtype or k_cache.dtype not in FLOAT_KV + QUANT_KV:
        bad(f"cache dtypes {k_cache.dtype}/{v_cache.dtype}: want one of float32, bfloat16, float16, int8, fp8 e4m3")
    if q.dtype not in FLOAT_KV:
        bad(f"q dtype {q.dtype} not float32/bfloat16/float16")
    b, sq, h, d = q.shape
    nb, bs, hkv, dk = k_cache.shape
    if d != dk:
        bad(f"head_dim of q ({d}) != head_dim of the cache ({dk})")
    if hkv < 1 or h % hkv != 0:
        bad(f"{h} query heads is not a multiple of {hkv} kv heads")
    if block_tables.dim() != 2 or block_tables.shape[0] != b or block_tables.dtype != torch.int32:
        bad(f"block_tables must be int32 [batch={b}, max_blocks], got {block_tables.dtype} {tuple(block_tables.shape)}")
    if seq_lens.dim() != 1 or seq_lens.shape[0] != b or seq_lens.dtype != torch.int32:
        bad(f"seq_lens must be int32 [batch={b}], got {seq_lens.dtype} {tuple(seq_lens.shape)}")
    if b == 0:
        return
    lens = seq_lens.to("cpu", torch.int64)
    if int(lens.min()) < sq:
        i = int(torch.argmin(lens))
        bad(f"sequence {i} has {int(lens[i])} tokens, fewer than its {sq} queries")
    pages = (lens + bs - 1) // bs
    if int(pages.max()) > block_tables.shape[1]:
        i = int(torch.argmax(pages))
        bad(f"sequence {i}: {int(lens[i])} tokens need {int(pages[i])} blocks of {bs}, its block table has "
            f"{block_tables.shape[1]} (length longer than its pages)")
    table = block_tables.to("cpu", torch.int64)
    used = torch.arange(table.shape[1])[None, :] < pages[:, None]
    vals = table[used]
    if vals.numel() and (int(vals.min()) < 0 or int(vals.max()) >= nb):
        row = int(torch.nonzero(used & ((table < 0) | (table >= nb)))[0, 0])
        bad(f"sequence {row}: block table entry outside the cache's {nb} blocks "
            f"({table[row, :int(pages[row])].tolist()[:8]}...)")
    quantized = k_cache.dtype in QUANT_KV
    if quantized != (k_scale is not None) or (k_scale is None) != (v_scale is None):
        bad("quantized caches (int8, fp8) take k_scale and v_scale, float caches none")
    if quantized:
        for name, s in (("k_scale", k_scale), ("v_scale", v_scale)):
            if s.dim() != 2 or tuple(s.shape) != (nb, hkv) or s.dtype != torch.float32 or s.stride(1) != 1:
                bad(f"{name} must be float32 [num_blocks={nb}, kv_heads={hkv}] (unit head stride), "
                    f"got {s.dtype} {tuple(s.shape)}")


def gather_one(k_cache, v_cache, table, length, k_scale=None, v_scale=None, dtype=torch.float32):
    """One sequence's K, V contiguous: [length, kv_heads, head_dim] in `dtype`, dequantized."""
    bs = k_cache.shape[1]
    pages = table[: -(-int(length) // bs)].to(device=k_cache.device, dtype=torch.int64)
    out = []
    for cache, scale in ((k_cache, k_scale), (v_cache, v_scale)):
        x = cache[pages].to(dtype)
        if scale is not None:
            x = x * scale[pages].to(dtype)[:, None, :, None]
        out.append(x.reshape(-1, *cache.shape[2:])[: int(length)])
    return out[0], out[1]


def gather(k_cache, v_cache, block_tables, seq_lens, k_scale=None, v_scale=None, dtype=None):
    """A padded contiguous cache from the pages: K, V [batch, kv_heads, max_len, head_dim] (SDPA's layout) and
    the lengths. Padding positions are zero (masked by the caller). One index_select per tensor."""
    nb, bs, hkv, d = k_cache.shape
    dtype = dtype or (k_cache.dtype if k_cache.dtype.is_floating_point and k_cache.dtype not in QUANT_KV
                      else torch.float32)
    b = block_tables.shape[0]
    maxlen = int(seq_lens.max()) if b else 0
    npages = -(-maxlen // bs)
    table = block_tables[:, :npages].to(torch.int64).clamp_min(0)          # pads read block 0, masked later
    out = []
    for cache, scale in ((k_cache, k_scale), (v_cache, v_scale)):
        x = cache.index_select(0, table.reshape(-1))                           # [b * npages, bs, hkv, d]
        x = x.to(dtype) if x.dtype != dtype else x
        if scale is not None:
            x = x * scale.index_select(0, table.reshape(-1)).to(dtype)[:, None, :, None]
        out.append(x.view(b, npages * bs, hkv, d)[:, :maxlen].transpose(1, 2))
    return out[0], out[1]


def causal_mask(seq_lens, sq: int, maxlen: int, device=None) -> torch.Tensor:
    """[batch, 1, q_len, max_len] bool: query i of sequence b sees key j iff j <= len_b - q_len + i."""
    j = torch.arange(maxlen, device=device)
    last = seq_lens.to(device=device, dtype=torch.int64)[:, None] - sq + torch.arange(sq, device=device)[None, :]
    return (j[None, None, :] <= last[:, :, None])[:, None]


def reference(q, k_cache, v_cache, block_tables, seq_lens, k_scale=None, v_scale=None):
    """Decode attention one sequence at a time in the dtype of q (float64 in the suite's check)."""
    b, sq, h, d = q.shape
    hkv = k_cache.shape[2]
    out = torch.empty_like(q)
    for i in range(b):
        L = int(seq_lens[i])
        k, v = gather_one(k_cache, v_cache, block_tables[i], L, k_scale, v_scale, q.dtype)
        k = k.transpose(0, 1).repeat_interleave(h // hkv, 0)                  # [h, L, d]
        v = v.transpose(0, 1).repeat_interleave(h // hkv, 0)
        s = q[i].transpose(0, 1) @ k.transpose(1, 2) / math.sqrt(d)           # [h, sq, L]
        pos = torch.arange(L, device=q.device)
        visible = pos[None, :] <= (L - sq + torch.arange(sq, device=q.device))[:, None]
        s = s.masked_fill(~visible, float("-inf"))
        out[i] = (torch.softmax(s, -1) @ v).transpose(0, 1)
    return out


def sdpa_gathered(q, k, v, seq_lens):
    """SDPA over a gathered cache (k, v [batch, kv_heads, max_len, d]) with the length/causal mask."""
    b, sq, h, d = q.shape
    mask = causal_mask(seq_lens, sq, k.shape[2], q.device)
    kw = {"enable_gqa": True} if h != k.shape[1] else {}
    o = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask, **kw)
    return o.transpose(1, 2)


def expand_scales(scale, num_blocks):
    return None if scale is None else quant.scales_view(scale, num_blocks)
