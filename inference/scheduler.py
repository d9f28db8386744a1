"""Iteration-level scheduling over the paged KV cache (Orca: Yu et al., OSDI 2022; vLLM's scheduler: Kwon et al.,
SOSP 2023; chunked prefill: Agrawal et al., "Sarathi-Serve", OSDI 2024).

Every engine step asks `schedule()` for the tokens to compute now; requests join and leave the running batch
between any two steps. A step's plan, under a budget of `max_tokens_per_step` tokens:
1. decode: every running sequence with one token left to compute (its last sampled token) gets 1 token,
   oldest first; when its next KV slot needs a block and none is free, the newest running sequence not yet
   planned this step is preempted (itself, if it is the newest);
2. running prefills (oldest first): the next chunk of the prompt, as much as the budget and the free blocks
   allow; with no room at all, newer unplanned sequences are preempted for it;
3. admission, first come first served, while fewer than `max_num_seqs` run: the waiting queue's head gets a
   prompt chunk (again budget and free blocks); a head that does not fit stops admission (no overtaking);
   no admission in a step that preempted (vLLM V1's rule: the victim is not readmitted at once).
The budget is never exceeded; the oldest running sequence can always make progress (it may preempt every
newer one and requests larger than the pool are refused at submission), so nothing deadlocks.

Preemption (the victim goes back to the FRONT of the waiting queue):
- "recompute": its blocks are freed; on readmission its prompt plus the tokens generated so far are prefilled
  again (greedy output is unchanged: the same tokens at the same positions);
- "swap": its K/V (the computed tokens, every layer) is copied out to host tensors and its blocks freed; on
  readmission blocks are taken again and the K/V copied back, then it decodes on. On this CPU the "device"
  and the host are the same memory, so swap costs a copy each way instead of a forward over the prefix.

Block accounting: a sequence's blocks are freed exactly once, when it finishes, is cancelled or is preempted;
`cache.manager.audit()` after any run shows no leak (tests/test_engine.py).
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import torch

from inference.kv_cache import PagedKVCache
from inference.requests import Detokenizer, Handle

PREEMPTION = ("recompute", "swap")


@dataclass(eq=False)
class Request:
    """The engine's state of one request: tokens (prompt then generated), how many have K/V in the cache."""
    handle: Handle
    prompt: list[int]
    detok: Detokenizer
    output: list[int] = field(default_factory=list)
    seq_id: int | None = None
    computed: int = 0                   # tokens whose K/V are in the cache (or in `swapped`)
    swapped: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
    generator: torch.Generator | None = None
    arrival: float = field(default_factory=time.perf_counter)
    preemptions: int = 0

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.output)

    @property
    def remaining(self) -> int:
        """Tokens still to compute before the next sample (1 while decoding)."""
        return self.num_tokens - self.computed


@dataclass
class Scheduled:
    """One sequence's share of a step: tokens [start, start + n) with their cache slots."""
    req: Request
    start: int
    ids: list[int]
    slots: list[int] | torch.Tensor      # the scheduler's: a list (the engine makes one tensor per step)

    @property
    def samples(self) -> bool:
        """True when this chunk reaches the end of the sequence: its last logits give the next token."""
        return self.start + len(self.ids) == self.req.num_tokens


class Scheduler:
    def __init__(self, cache: PagedKVCache, max_num_seqs: int = 32, max_tokens_per_step: int = 512,
                 preemption: str = "recompute"):
        if preemption not in PREEMPTION:
            raise ValueError(f"preemption must be one of {PREEMPTION}, got {preemption!r}")
        if max_num_seqs < 1 or max_tokens_per_step < 1:
            raise ValueError("max_num_seqs and max_tokens_per_step must be >= 1")
        self.cache, self.bs = cache, cache.block_size
        self.max_num_seqs, self.budget, self.preemption = max_num_seqs, max_tokens_per_step, preemption
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []          # admission order: the last is the newest
        self.preempted_total = 0

    # ---- queue ------------------------------------------------------------------------------------------------
    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def drop(self, req: Request) -> None:
        """Remove a request wherever it is (finished, cancelled, failed) and free its blocks."""
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        self._release(req)
        req.swapped = None

    def _release(self, req: Request) -> None:
        if req.seq_id is not None:
            self.cache.free(req.seq_id)
            req.seq_id = None

    @property
    def blocks_used(self) -> int:
        return self.cache.num_blocks - self.cache.manager.allocator.num_free

    # ---- the plan of one step ---------------------------------------------------------------------------------
    def schedule(self) -> list[Scheduled]:
        budget = self.budget
        before = self.preempted_total
        plan: list[Scheduled] = []
        planned: set[int] = set()
        for req in list(self.running):                            # 1. decodes, oldest first
            if budget < 1:
                break
            if req not in self.running or req.remaining != 1:
                continue
            if self._make_room(req, 1, planned, allow_self=True):
                plan.append(self._take(req, 1, planned))
                budget -= 1
        for req in list(self.running):                            # 2. running prefills, oldest first
            if budget < 1:
                break
            if id(req) in planned or req not in self.running or req.remaining < 2:
                continue
            n = min(req.remaining, budget, self._room(req))
            if n < 1 and self._make_room(req, 1, planned, allow_self=False):
                n = min(req.remaining, budget, self._room(req))
            if n >= 1:
                plan.append(self._take(req, n, planned))
                budget -= n
        # 3. admission, FCFS; none in a step that preempted (vLLM V1: no readmission of the victim at once)
        while self.waiting and budget >= 1 and len(self.running) < self.max_num_seqs and self.preempted_total == before:
            req = self.waiting[0]
            if req.swapped is not None:
                if self._free_tokens() < req.computed + 1:
                    break
                self.waiting.popleft()
                self._swap_in(req)
                self.running.append(req)
                plan.append(self._take(req, 1, planned))
                budget -= 1
                continue
            n = min(req.remaining, budget, self._free_tokens())
            if n < 1:
                break
            self.waiting.popleft()
            req.seq_id = self.cache.add()
            self.running.append(req)
            plan.append(self._take(req, n, planned))
            budget -= n
        return plan

    def _free_tokens(self) -> int:
        return self.cache.manager.allocator.num_free * self.bs

    def _room(self, req: Request) -> int:
        """Tokens the sequence can still store: the rest of its last block plus every free block."""
        s = self.cache.manager.seqs[req.seq_id]
        return len(s.blocks) * self.bs - s.length + self._free_tokens()

    def _make_room(self, req: Request, n: int, planned: set[int], allow_self: bool) -> bool:
        """Preempt the newest unplanned running sequences until `req` can store n more tokens. False when it
        cannot (then `req` itself was preempted if allow_self)."""
        if n == 1 and self.cache.manager.allocator.num_free >= 1:   # one token needs at most one block
            return True
        while self.cache.manager.blocks_needed(req.seq_id, n) > self.cache.manager.allocator.num_free:
            victim = next((r for r in reversed(self.running) if r is not req and id(r) not in planned), None)
            if victim is None:
                if allow_self:
                    self.preempt(req)
                return False
            self.preempt(victim)
        return True

    def _take(self, req: Request, n: int, planned: set[int]) -> Scheduled:
        slots = self.cache.reserve(req.seq_id, n, as_list=True)
        start = req.computed
        req.computed += n
        planned.add(id(req))
        p = len(req.prompt)
        ids = req.output[start - p:start - p + n] if start >= p else req.tokens[start:start + n]
        return Scheduled(req, start, ids, slots)

    # ---- preemption -------------------------------------------------------------------------------------------
    def preempt(self, req: Request) -> None:
        self.running.remove(req)
        if self.preemption == "swap" and req.computed > 0:
            ks, vs = [], []
            for layer in range(self.cache.num_layers):
                k, v = self.cache.gather(layer, req.seq_id, dtype=self.cache.k[layer].dtype)
                ks.append(k.clone())
                vs.append(v.clone())
            req.swapped = (ks, vs)
        else:
            req.computed = 0
        self._release(req)
        req.preemptions += 1
        self.preempted_total += 1
        self.waiting.appendleft(req)

    def _swap_in(self, req: Request) -> None:
        ks, vs = req.swapped
        req.seq_id = self.cache.add()
        slots = self.cache.reserve(req.seq_id, req.computed)
        for layer in range(self.cache.num_layers):
            self.cache.write(layer, slots, ks[layer], vs[layer])
        req.swapped = None
