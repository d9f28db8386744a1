"""The paged KV cache: storage for K and V per layer, over one block manager (inference/allocator.py).

Layout (vLLM's, the FlashAttention backend's `[num_blocks, block_size, num_kv_heads, head_dim]`):
    k[layer], v[layer]: [num_blocks, block_size, kv_heads, head_dim], storage dtype of the format
    k_scale[layer], v_scale[layer]: float32 [kv_heads] ("head") or [num_blocks, kv_heads] ("block"), quantized
        formats only; value = stored * scale
    block_tables: [num_seqs, max_blocks] int32 (vLLM; padded with -1), seq_lens [num_seqs] int32
A token's K row for head h is k[layer][slot // block_size, slot % block_size, h, :]: one 16-token block of one
head is block_size rows of head_dim contiguous elements at a stride of kv_heads * head_dim. FlashInfer's CSR
page table of the same blocks comes from `manager.csr(ids)`.

The engine's loop: `sid = cache.add()`; `slots = cache.reserve(sid, n)` (allocates blocks, makes the
copy-on-write copies in every layer); `cache.write(layer, slots, k, v)` per layer (k, v: [n, kv_heads,
head_dim]); `cache.fork(sid)` for a sample sharing the prompt; `cache.free(sid)` on completion. `append`
is reserve + write of every layer at once. Kernels read `k[layer]`, `v[layer]`, the scales, and
`block_tables(ids)` / `seq_lens(ids)`.
"""
from __future__ import annotations

import torch

from inference import quant
from inference.allocator import BlockManager


class PagedKVCache:
    def __init__(self, num_blocks: int, kv_heads: int, head_dim: int, *, block_size: int = 16, num_layers: int = 1,
                 kv_format: str | torch.dtype = "bfloat16", scales: str = "block", device: str = "cpu"):
        for name, v in (("kv_heads", kv_heads), ("head_dim", head_dim), ("num_layers", num_layers)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if scales not in quant.GRANULARITIES:
            raise ValueError(f"scales must be one of {quant.GRANULARITIES}, got {scales!r}")
        self.manager = BlockManager(num_blocks, block_size)
        self.kv_heads, self.head_dim, self.num_layers = kv_heads, head_dim, num_layers
        self.block_size, self.num_blocks, self.device = block_size, num_blocks, device
        self.format = quant.format_name(kv_format)
        self.quantized = quant.is_quantized(self.format)
        self.granularity = scales if self.quantized else None
        dt = quant.FORMATS[self.format][0]
        shape = (num_blocks, block_size, kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dt, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dt, device=device) for _ in range(num_layers)]
        self.k_scale = self.v_scale = None
        self._head_scale_set = [False] * num_layers
        if self.quantized:
            sshape = (kv_heads,) if scales == "head" else (num_blocks, kv_heads)
            self.k_scale = [torch.ones(sshape, device=device) for _ in range(num_layers)]
            self.v_scale = [torch.ones(sshape, device=device) for _ in range(num_layers)]
        self.saturated = 0          # elements clipped by a fixed per-head scale

    # ---- the sequence API (the block manager's, plus the copies in the storage) ---------------------------
    def add(self) -> int:
        return self.manager.add()

    def fork(self, seq_id: int) -> int:
        return self.manager.fork(seq_id)

    def free(self, seq_id: int) -> None:
        self.manager.free(seq_id)

    def length(self, seq_id: int) -> int:
        return self.manager.length(seq_id)

    def reserve(self, seq_id: int, n: int, as_list: bool = False) -> torch.Tensor | list[int]:
        """Room for n more tokens of the sequence: their slots (int64 tensor, or a list with `as_list`)."""
        slots, copies = self.manager.reserve_list(seq_id, n)
        for src, dst in copies:
            self.copy_block(src, dst)
        return slots if as_list else torch.tensor(slots, dtype=torch.int64)

    def copy_block(self, src: int, dst: int) -> None:
        for layer in range(self.num_layers):
            self.k[layer][dst].copy_(self.k[layer][src])
            self.v[layer][dst].copy_(self.v[layer][src])
            if self.granularity == "block":
                self.k_scale[layer][dst] = self.k_scale[layer][src]
                self.v_scale[layer][dst] = self.v_scale[layer][src]

    def append(self, seq_id: int, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """k, v: [n, kv_heads, head_dim] (one layer) or [num_layers, n, kv_heads, head_dim]; returns the slots."""
        if k.dim() == 3:
            k, v = k.unsqueeze(0), v.unsqueeze(0)
        if k.shape[0] != self.num_layers:
            raise ValueError(f"append: K for {k.shape[0]} layers, the cache has {self.num_layers}")
        slots = self.reserve(seq_id, k.shape[1])
        for layer in range(self.num_layers):
            self.write(layer, slots, k[layer], v[layer])
        return slots

    # ---- storage ------------------------------------------------------------------------------------------
    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v [n, kv_heads, head_dim] at `slots` (from `reserve`) of `layer` (vLLM's reshape_and_cache)."""
        n = slots.numel()
        want = (n, self.kv_heads, self.head_dim)
        if tuple(k.shape) != want or tuple(v.shape) != want:
            raise ValueError(f"write: k {tuple(k.shape)} and v {tuple(v.shape)} must be {want} "
                             f"(tokens, kv_heads, head_dim)")
        if n and (int(slots.min()) < 0 or int(slots.max()) >= self.num_blocks * self.block_size):
            raise ValueError(f"write: slot out of range [0, {self.num_blocks * self.block_size})")
        slots = slots.to(device=self.device, dtype=torch.int64)
        for cache, scales, x in ((self.k, self.k_scale, k), (self.v, self.v_scale, v)):
            flat = cache[layer].view(-1, self.kv_heads, self.head_dim)
            if not self.quantized:
                flat[slots] = x.to(flat.dtype)
            elif self.granularity == "head":
                flat[slots] = self._write_head(layer, scales, x)
            else:
                self._write_block(cache[layer], scales[layer], slots, x)
        if self.granularity == "head":
            self._head_scale_set[layer] = True

    def _write_head(self, layer, scales, x):
        s = scales[layer]
        if not self._head_scale_set[layer]:          # the first write (the prompt) calibrates the scale
            s.copy_(quant.scale_for(x.float().abs().amax(dim=(0, 2)), self.format))
        lim = s[None, :, None] * quant.qmax(self.format)
        self.saturated += int((x.float().abs() > lim).sum())
        return quant.quantize(x, s[None, :, None], self.format)

    def _write_block(self, cache, scale, slots, x):
        """Per-(block, head) scales: grow a block's scale to cover the new tokens, requantizing the block's old
        values; a block whose first written offset is 0 starts afresh (its old contents are stale)."""
        bs = self.block_size
        blocks = slots // bs
        uniq, inv = torch.unique(blocks, return_inverse=True)
        amax = torch.zeros(len(uniq), self.kv_heads).scatter_reduce(
            0, inv[:, None].expand(-1, self.kv_heads), x.float().abs().amax(dim=2), "amax")
        first = torch.full((len(uniq),), bs, dtype=torch.int64).scatter_reduce(0, inv, slots % bs, "amin")
        old = scale[uniq]
        fresh = first == 0
        need = quant.scale_for(amax, self.format)
        new = torch.where(fresh[:, None], need, torch.maximum(old, torch.where(amax > 0, need, old)))
        grow = (~fresh[:, None]) & (new > old)
        if grow.any():                               # requantize the stored tokens of the grown (block, head)s
            rows = uniq[grow.any(dim=1)]
            ratio = (old / new)[grow.any(dim=1)]     # [r, kv_heads] <= 1
            vals = quant.dequantize(cache[rows], ratio[:, None, :, None])
            cache[rows] = quant.quantize(vals, torch.ones(()), self.format)
        scale[uniq] = new
        flat = cache.view(-1, self.kv_heads, self.head_dim)
        flat[slots] = quant.quantize(x, new[inv][:, :, None], self.format)

    # ---- views --------------------------------------------------------------------------------------------
    def block_tables(self, seq_ids, width: int | None = None) -> torch.Tensor:
        return self.manager.block_tables(seq_ids, width=width).to(self.device)

    def seq_lens(self, seq_ids) -> torch.Tensor:
        return self.manager.seq_lens(seq_ids).to(self.device)

    def gather(self, layer: int, seq_id: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """The sequence's K and V, contiguous and dequantized: [length, kv_heads, head_dim] each."""
        from inference.paged import gather_one
        table = self.block_tables([seq_id])[0]
        ks = vs = None
        if self.quantized:
            ks = quant.scales_view(self.k_scale[layer], self.num_blocks)
            vs = quant.scales_view(self.v_scale[layer], self.num_blocks)
        return gather_one(self.k[layer], self.v[layer], table, self.length(seq_id), ks, vs, dtype)
