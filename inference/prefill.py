"""Prefill into the paged cache: the prompt's attention runs on contiguous q, k, v (any kernel of the attention
suite: its [1, heads, tokens, head_dim] layout, causal top-left), and the prompt's K and V go into the
sequence's pages, so the decode kernels continue from the same cache (one cache end to end).

    slots = cache.reserve(sid, n)                       # once per sequence and step, for every layer
    out = prefill(cache, layer, slots, q, k, v, attention=attention_kernel("cpp"))
"""
from __future__ import annotations

from typing import Callable

import torch


def _sdpa(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                            enable_gqa=q.shape[1] != k.shape[1])


def attention_kernel(name: str = "sdpa") -> Callable:
    """A causal prompt attention `fn(q, k, v) -> out` over [1, heads, n, d] tensors: "sdpa" (torch), "cpp"
    (kernels/cpp/attention_fwd.cpp), "cuda" (kernels/cuda/attention_fwd.cu), "triton" (kernels/triton)."""
    if name == "sdpa":
        return _sdpa
    if name in ("cpp", "cuda"):
        from kernels.cpp import lib as cpp
        from kernels.cuda import lib as cuda
        kernel = cpp.ATTENTION if name == "cpp" else cuda.ATTENTION

        def run(q, k, v):
            out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
            return kernel(q=q.contiguous(), k=k.contiguous(), v=v.contiguous(), out=out, causal=True)
        return run
    if name == "triton":
        from kernels.triton.attention_fwd import attention_fwd

        def run(q, k, v):
            out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
            attention_fwd(q.contiguous(), k.contiguous(), v.contiguous(), out, causal=True)
            return out
        return run
    raise ValueError(f"unknown attention kernel {name!r}: sdpa, cpp, cuda, triton")


def prefill(cache, layer: int, slots: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            attention: Callable | None = None) -> torch.Tensor:
    """q [n, heads, d], k, v [n, kv_heads, d] of one sequence's prompt (its first n tokens, `slots` from
    `cache.reserve`). Writes K, V into the pages of `layer` and returns the prompt's causal attention
    [n, heads, d]."""
    n = q.shape[0]
    if slots.numel() != n or k.shape[0] != n or v.shape[0] != n:
        raise ValueError(f"prefill: {n} queries, {k.shape[0]} keys, {v.shape[0]} values, {slots.numel()} slots")
    cache.write(layer, slots, k, v)
    fn = attention or _sdpa
    out = fn(q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0))
    return out[0].transpose(0, 1)
