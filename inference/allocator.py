"""Block allocator and per-sequence block tables of the paged KV cache (the vLLM block manager's design:
Kwon et al. 2023, "Efficient Memory Management for Large Language Model Serving with PagedAttention").

The cache is `num_blocks` fixed-size blocks of `block_size` token slots. A sequence owns an ordered list of
blocks (its block table); token i of a sequence lives in slot `blocks[i // block_size] * block_size +
i % block_size`. Blocks are reference-counted: `fork` makes a child that shares every block of its parent
(prefix sharing: a prompt is stored once for all its samples); the first append into a shared, partly
filled last block copies it (copy-on-write), full shared blocks stay shared for ever. A block whose count
drops to 0 returns to the free list.

Nothing here touches K or V: `reserve` returns the slots to write and the (src, dst) block copies the
cache storage must make first (inference/kv_cache.py applies them to every layer).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


class OutOfBlocks(RuntimeError):
    """The free list cannot cover a request; nothing was changed."""


class BlockAllocator:
    """A free list of block ids with reference counts. `allocate` pops a free block (count 1), `incref`
    shares it, `decref` releases one reference and returns the block to the free list at 0."""

    def __init__(self, num_blocks: int):
        if not isinstance(num_blocks, int) or num_blocks < 1:
            raise ValueError(f"num_blocks must be a positive int, got {num_blocks!r}")
        self.num_blocks = num_blocks
        # popped from the end: block 0 first, so a fresh cache fills in order (tests shuffle on purpose)
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._ref: list[int] = [0] * num_blocks

    @property
    def num_free(self) -> int:
        return len(self._free)

    def refcount(self, block: int) -> int:
        return self._ref[block]

    def allocate(self) -> int:
        if not self._free:
            raise OutOfBlocks(f"all {self.num_blocks} blocks are in use")
        b = self._free.pop()
        assert self._ref[b] == 0, f"block {b} on the free list with {self._ref[b]} references"
        self._ref[b] = 1
        return b

    def incref(self, block: int) -> None:
        if self._ref[block] < 1:
            raise ValueError(f"block {block} is free: it cannot be shared")
        self._ref[block] += 1

    def decref(self, block: int) -> bool:
        """Release one reference; True when the block went back to the free list."""
        if self._ref[block] < 1:
            raise ValueError(f"block {block} is already free (double free)")
        self._ref[block] -= 1
        if self._ref[block] == 0:
            self._free.append(block)
            return True
        return False

    def shuffle(self, generator: torch.Generator | None = None) -> None:
        """Randomize the order of the free list (benchmarks: block tables that are not the identity)."""
        perm = torch.randperm(len(self._free), generator=generator).tolist()
        self._free = [self._free[i] for i in perm]


@dataclass
class Sequence:
    seq_id: int
    blocks: list[int] = field(default_factory=list)
    length: int = 0                 # tokens stored


class BlockManager:
    """Sequences, their block tables and lengths, over one `BlockAllocator`.

    - `add()` -> a new empty sequence id;
    - `reserve(seq, n)` -> (slots [n] int64, copies [(src, dst)]): room for n more tokens (copy-on-write of a
      shared partly filled last block, then new blocks), all or nothing (`OutOfBlocks` changes nothing);
    - `fork(seq)` -> a child sharing every block; `free(seq)` releases its blocks;
    - `block_tables(ids)` / `seq_lens(ids)`: vLLM's padded table [n, max_blocks] int32 (pad -1) and lengths;
      `csr(ids)`: FlashInfer's page table (indptr, indices, last_page_len);
    - `audit()`: every reference accounted for, no block both free and owned (raises AssertionError).
    """

    def __init__(self, num_blocks: int, block_size: int = 16):
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive int, got {block_size!r}")
        self.block_size = block_size
        self.allocator = BlockAllocator(num_blocks)
        self.seqs: dict[int, Sequence] = {}
        self._next_id = 0

    @property
    def num_blocks(self) -> int:
        return self.allocator.num_blocks

    def _seq(self, seq_id: int) -> Sequence:
        try:
            return self.seqs[seq_id]
        except KeyError:
            raise KeyError(f"no sequence {seq_id} (freed, or never added)") from None

    def add(self) -> int:
        sid = self._next_id
        self._next_id += 1
        self.seqs[sid] = Sequence(sid)
        return sid

    def length(self, seq_id: int) -> int:
        return self._seq(seq_id).length

    def blocks_needed(self, seq_id: int, n: int) -> int:
        """Blocks `reserve(seq_id, n)` would take from the free list (new ones plus a copy-on-write)."""
        s = self._seq(seq_id)
        have = len(s.blocks) * self.block_size
        new = max(0, -(-(s.length + n - have) // self.block_size))
        cow = int(n > 0 and s.length % self.block_size != 0 and self.allocator.refcount(s.blocks[-1]) > 1)
        return new + cow

    def reserve(self, seq_id: int, n: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        slots, copies = self.reserve_list(seq_id, n)
        return torch.tensor(slots, dtype=torch.int64), copies

    def reserve_list(self, seq_id: int, n: int) -> tuple[list[int], list[tuple[int, int]]]:
        """`reserve` with the slots as a Python list (the engine builds one tensor for a whole step)."""
        s = self.seqs.get(seq_id)
        bs = self.block_size
        if n == 1 and s is not None and s.length % bs and self.allocator._ref[s.blocks[-1]] == 1:
            s.length += 1                          # a decode step into its own, partly filled last block
            return [s.blocks[-1] * bs + (s.length - 1) % bs], []
        if n < 0:
            raise ValueError(f"cannot reserve {n} tokens")
        s = self._seq(seq_id)
        need = self.blocks_needed(seq_id, n)
        if need > self.allocator.num_free:
            raise OutOfBlocks(f"sequence {seq_id} needs {need} blocks for {n} tokens, {self.allocator.num_free} free")
        copies: list[tuple[int, int]] = []
        bs = self.block_size
        if n > 0 and s.length % bs != 0 and self.allocator.refcount(s.blocks[-1]) > 1:
            old = s.blocks[-1]                    # shared, partly filled: the writer gets its own copy
            new = self.allocator.allocate()
            self.allocator.decref(old)
            s.blocks[-1] = new
            copies.append((old, new))
        while len(s.blocks) * bs < s.length + n:
            s.blocks.append(self.allocator.allocate())
        # a list: the streaming engine reserves every sequence's slots every step and makes one tensor of them
        blocks = s.blocks
        slots = [blocks[p // bs] * bs + p % bs for p in range(s.length, s.length + n)]
        s.length += n
        return slots, copies

    def fork(self, seq_id: int) -> int:
        parent = self._seq(seq_id)
        child = self.add()
        for b in parent.blocks:
            self.allocator.incref(b)
        self.seqs[child].blocks = list(parent.blocks)
        self.seqs[child].length = parent.length
        return child

    def free(self, seq_id: int) -> None:
        s = self.seqs.pop(seq_id, None)
        if s is None:
            raise KeyError(f"no sequence {seq_id} to free (freed twice, or never added)")
        for b in s.blocks:
            self.allocator.decref(b)

    # ---- views for the kernels -------------------------------------------------------------------------
    def block_tables(self, seq_ids, pad: int = -1, width: int | None = None) -> torch.Tensor:
        """vLLM's block table: [len(seq_ids), max blocks] int32, row i = the blocks of seq_ids[i], padded."""
        rows = [self._seq(i).blocks for i in seq_ids]
        w = max([len(r) for r in rows] + [1]) if width is None else width
        out = torch.full((len(rows), w), pad, dtype=torch.int32)
        for i, r in enumerate(rows):
            out[i, :len(r)] = torch.tensor(r, dtype=torch.int32)
        return out

    def seq_lens(self, seq_ids) -> torch.Tensor:
        return torch.tensor([self._seq(i).length for i in seq_ids], dtype=torch.int32)

    def csr(self, seq_ids) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """FlashInfer's paged layout: kv_indptr [n+1], kv_indices [nnz pages], kv_last_page_len [n] (int32);
        sequence i's pages are kv_indices[kv_indptr[i]:kv_indptr[i+1]]; only the pages holding tokens."""
        bs = self.block_size
        pages = [self._seq(i).blocks[:-(-self._seq(i).length // bs)] for i in seq_ids]
        indptr = torch.tensor([0] + [len(p) for p in pages], dtype=torch.int32).cumsum(0, dtype=torch.int32)
        indices = torch.tensor([b for p in pages for b in p], dtype=torch.int32)
        last = torch.tensor([(self._seq(i).length - 1) % bs + 1 if self._seq(i).length else 0 for i in seq_ids],
                            dtype=torch.int32)
        return indptr, indices, last

    # ---- accounting ----------------------------------------------------------------------------------------
    def audit(self) -> None:
        """Every block's reference count equals the number of sequences holding it; free blocks are exactly the
        unreferenced ones, each on the free list once; no sequence holds a block twice or too few blocks."""
        held = [0] * self.num_blocks
        for s in self.seqs.values():
            assert len(set(s.blocks)) == len(s.blocks), f"sequence {s.seq_id} holds a block twice: {s.blocks}"
            assert len(s.blocks) == -(-s.length // self.block_size) or \
                (len(s.blocks) * self.block_size >= s.length), f"sequence {s.seq_id}: {s.length} tokens in {s.blocks}"
            for b in s.blocks:
                held[b] += 1
        a = self.allocator
        free = a._free
        assert len(set(free)) == len(free), "a block is on the free list twice"
        for b in range(self.num_blocks):
            assert a._ref[b] == held[b], f"block {b}: refcount {a._ref[b]}, held by {held[b]} sequences"
        assert set(free) == {b for b in range(self.num_blocks) if held[b] == 0}, \
            "free list differs from the unreferenced blocks (leak or double ownership)"
