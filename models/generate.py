"""Generation with a KV cache: transformers' DynamicCache (grows by concatenation; any attention
implementation) or StaticCache (preallocated to `max_len`, shapes fixed: what torch.compile needs).

`prefill` runs the prompt and fills the cache; `decode_step` appends one token per sequence and returns the
next-token logits; `greedy` is the two in a loop (argmax, no sampling), so it is deterministic.
Cost of one decode step at context L: 2 * N FLOPs per token for the weights plus 4 * layers * L * hidden
for attention over the cache, and reading the whole cache (2 * layers * L * kv_heads * head_dim values).
"""
from __future__ import annotations

import torch

CACHES = ("dynamic", "static")


def make_cache(model, kind: str, batch: int, max_len: int):
    from transformers import DynamicCache, StaticCache
    if kind == "dynamic":
        return DynamicCache(config=model.config)
    if kind == "static":
        cache = StaticCache(config=model.config, max_cache_len=max_len)
        return cache
    raise ValueError(f"unknown cache {kind!r}; choose from {', '.join(CACHES)}")


@torch.no_grad()
def prefill(model, ids: torch.Tensor, cache) -> torch.Tensor:
    """Run the prompt ids [b, L] through the model, filling `cache`; returns logits [b, L, vocab]."""
    pos = torch.arange(ids.shape[1], device=ids.device)
    return model(input_ids=ids, cache=cache, cache_position=pos, use_cache=True).logits


@torch.no_grad()
def decode_step(model, tokens: torch.Tensor, cache, position: int) -> torch.Tensor:
    """One token per sequence (tokens [b]) at `position`; returns next-token logits [b, vocab]."""
    pos = torch.tensor([position], device=tokens.device)
    return model(input_ids=tokens[:, None], cache=cache, cache_position=pos, use_cache=True).logits[:, -1]


@torch.no_grad()
def greedy(model, ids: torch.Tensor, new_tokens: int, cache: str = "dynamic") -> torch.Tensor:
    """Greedy continuation of ids [b, L]: returns the new tokens [b, new_tokens]."""
    b, n = ids.shape
    kv = make_cache(model, cache, b, n + new_tokens)
    tok = prefill(model, ids, kv)[:, -1].argmax(-1)
    out = [tok]
    for i in range(new_tokens - 1):
        tok = decode_step(model, tok, kv, n + i).argmax(-1)
        out.append(tok)
    return torch.stack(out, 1)
