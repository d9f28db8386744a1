"""Compressed storage of pruned weights W [N, K] (y = x @ W^T), as the project's kernels read them.

BSR (block compressed sparse rows), block b:
- `rowptr` int32 [N/b + 1]: blocks of block-row i are rowptr[i] .. rowptr[i+1]-1;
- `cols` int32 [nnzb]: the block column of each stored block;
- `vals` [nnzb, b, b] in the weight's dtype, each block stored TRANSPOSED (vals[j, kk, nn] = W[i*b + nn, c*b + kk]):
  the kernel walks a block input by input and adds x[k] * (a row of b outputs), one contiguous vector.
  Bytes: nnzb * b^2 * itemsize + 4 * nnzb + 4 * (N/b + 1): the values and indices stored, nothing else.

2:4 compressed: every group of 4 inputs of a row keeps 2 values (the ones the mask kept, in increasing
input order):
- `vals` [N, K/2] in the weight's dtype: half the weight bytes;
- `meta` int32 [N, ceil(K/32)]: the position (0..3) inside its group of each kept value, 2 bits per value,
  value j of a row in bits 2*(j % 16) of word j // 16 (16 values = 8 groups = 32 inputs per word).
  Bytes: N*K/2 * itemsize + N*K/16 (1/8 of a byte per input): 0.5625x the dense bf16 weight, 0.53x fp32.
"""
from __future__ import annotations

import torch

from sparsity.masks import PatternError


def bsr_pack(w: torch.Tensor, block: int, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """BSR of w (blocks kept: those with any True in `mask`, or any nonzero weight when no mask is given)."""
    n, k = w.shape
    if n % block or k % block:
        raise PatternError(f"block {block} needs both dimensions divisible by {block} (N={n}, K={k})")
    nb_o, nb_i = n // block, k // block
    blocks = w.reshape(nb_o, block, nb_i, block).permute(0, 2, 3, 1)          # [i, c, kk, nn]: transposed blocks
    src = (mask if mask is not None else (w != 0)).reshape(nb_o, block, nb_i, block)
    kept = src.any(dim=3).any(dim=1)                                          # [nb_o, nb_i]
    counts = kept.sum(1)
    rowptr = torch.zeros(nb_o + 1, dtype=torch.int32, device=w.device)
    rowptr[1:] = torch.cumsum(counts, 0).to(torch.int32)
    bi, bc = kept.nonzero(as_tuple=True)                                      # row-major order
    vals = blocks[bi, bc].contiguous()
    return {"rowptr": rowptr, "cols": bc.to(torch.int32).contiguous(), "vals": vals}


def bsr_unpack(rowptr: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape) -> torch.Tensor:
    n, k = shape
    b = vals.shape[-1]
    w = torch.zeros(n // b, k // b, b, b, dtype=vals.dtype, device=vals.device)
    rows = torch.repeat_interleave(torch.arange(n // b, device=vals.device), (rowptr[1:] - rowptr[:-1]).long())
    w[rows, cols.long()] = vals.transpose(1, 2)                               # back to [nn, kk]
    return w.permute(0, 2, 1, 3).reshape(n, k)


def bsr_bytes(nnzb: int, block: int, n: int, itemsize: int) -> int:
    return nnzb * block * block * itemsize + 4 * nnzb + 4 * (n // block + 1)


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """Unsigned 32-bit words held in int64 -> int32 with the same bits."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def pack_24(w: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """2:4 compressed values and 2-bit indices. Without a mask, the 2 largest |w| of each group are kept and
    the other 2 must be zero (PatternError otherwise: the weight is not 2:4)."""
    n, k = w.shape
    if k % 4:
        raise PatternError(f"2:4 needs K divisible by 4 (K={k})")
    g = w.reshape(n, k // 4, 4)
    if mask is None:
        pos = torch.topk(g.abs().float(), 2, dim=-1).indices
        keep = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, pos, True)
        if bool((g[~keep] != 0).any()):
            raise PatternError("the weight is not 2:4 sparse (a group of 4 has more than 2 nonzeros)")
    else:
        keep = mask.reshape(n, k // 4, 4)
        if not bool((keep.sum(-1) == 2).all()):
            raise PatternError("a 2:4 mask keeps exactly 2 of every 4")
    pos = keep.nonzero(as_tuple=True)[2].reshape(n, k // 4, 2)                 # increasing within each group
    vals = torch.gather(g, 2, pos).reshape(n, k // 2).contiguous()
    idx = pos.reshape(n, k // 2).long()
    per_word = 16
    pad = (-idx.shape[1]) % per_word
    idx = torch.nn.functional.pad(idx, (0, pad))
    shifts = 2 * torch.arange(per_word, device=w.device, dtype=torch.long)
    words = (idx.reshape(n, -1, per_word) << shifts).sum(-1)
    return {"vals": vals, "meta": _to_int32(words).contiguous()}


def unpack_24(vals: torch.Tensor, meta: torch.Tensor, k: int) -> torch.Tensor:
    n = vals.shape[0]
    words = meta.long() & 0xFFFFFFFF
    shifts = 2 * torch.arange(16, device=vals.device, dtype=torch.long)
    idx = ((words[:, :, None] >> shifts) & 3).reshape(n, -1)[:, : k // 2]
    col = 4 * (torch.arange(k // 2, device=vals.device) // 2)[None, :] + idx
    w = torch.zeros(n, k, dtype=vals.dtype, device=vals.device)
    return w.scatter_(1, col, vals)


def bytes_24(n: int, k: int, itemsize: int) -> int:
    return n * (k // 2) * itemsize + n * ((k // 2 + 15) // 16) * 4
