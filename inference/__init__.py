"""Inference machinery shared by the decode suite and the streaming engine: the paged KV cache (block
allocator, per-sequence block tables, copy-on-write forks, quantized formats) and decode attention over it.

    from inference import PagedKVCache
    cache = PagedKVCache(num_blocks=1024, kv_heads=8, head_dim=128, num_layers=2, kv_format="bf16")
    sid = cache.add(); cache.append(sid, k, v)      # k, v [num_layers, n, kv_heads, head_dim]
    child = cache.fork(sid)                         # shares the prompt's blocks; copies on its first write
    cache.free(sid)

Layouts and the engine's call sequence: inference/kv_cache.py; decode arguments: inference/paged.py.
"""
from inference.allocator import BlockAllocator, BlockManager, OutOfBlocks
from inference.kv_cache import PagedKVCache
from inference.paged import DecodeArgumentError, gather, reference, validate

__all__ = ["BlockAllocator", "BlockManager", "OutOfBlocks", "PagedKVCache", "DecodeArgumentError", "gather",
           "reference", "validate"]
