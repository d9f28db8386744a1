"""Our serving engine: a Llama-architecture model (models.zoo) run over the paged KV cache with continuous batching.

`PagedLlama` is the forward over the HF model's own weights (its embedding, RMSNorm, projection and MLP
modules; the rotary table of its `rotary_emb`), one flat batch of tokens per step (vLLM's varlen layout: every
scheduled sequence's chunk concatenated), so the projections and the MLP run as one [T, hidden] GEMM for all
sequences. Per layer: RMSNorm -> q/k/v -> RoPE at each token's own position -> K, V written into the pages
(`cache.write`, vLLM's reshape_and_cache) -> attention:
  - decode rows (one new token): the paged decode kernel of suites/decode over every such sequence at once
    (kernels/cpp/decode_paged.cpp where built and the head dim fits, else `inference.paged`'s torch path:
    gather the pages, SDPA with the length mask);
  - prefill chunks (n > 1 tokens at positions start..start+n-1): causal over the chunk AND the sequence's
    earlier pages (its pages gathered, SDPA with the bottom-right causal mask);
-> o_proj, residual, MLP, residual; final norm and lm_head only on the rows that sample (the last token of
each sequence whose chunk completes it). Cost of one step: 2 * params FLOPs per token for the weights, plus
attention over the cache: each decode row reads its sequence's whole K and V once per layer.

`Engine` owns the model, the cache and the scheduler (inference/scheduler.py) and runs them in one background
thread; `submit`/`cancel` are thread-safe (an inbox queue), tokens go out through each request's callback as
they are produced. tests/test_engine.py checks the forward against the HF forward and the engine's greedy
output under any interleaving against each request run alone.
"""
from __future__ import annotations

import itertools
import queue
import threading
import time
from typing import Callable

import torch
import torch.nn.functional as F

from inference.kv_cache import PagedKVCache
from inference.metrics import EngineMetrics
from inference.paged import sdpa_gathered
from inference.requests import (Detokenizer, Event, Handle, QueueFull, RequestError, SamplingParams,
                                check_context)
from inference.scheduler import Request, Scheduled, Scheduler

DECODE_KERNELS = ("auto", "cpp", "torch")
PHASES = ("drain", "schedule", "forward_decode", "forward_mixed", "sample", "emit", "handoff")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def cpp_decode_reason(head_dim: int, heads: int, kv_heads: int) -> str | None:
    """None when kernels/cpp/decode_paged.cpp can serve this model's decode steps, else why not."""
    from kernels.cpp import lib as cpp
    why = cpp.LIB.reason()
    if why:
        return why
    if head_dim % 16 or head_dim > 256:
        return f"head dim {head_dim}: the C++ decode kernel takes multiples of 16 up to 256"
    if heads // kv_heads > 64:
        return "more than 64 query heads per kv head"
    return None


def _fuse(*linears) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of the linears stacked on the output dimension: one GEMM for all of them."""
    w = torch.cat([m.weight for m in linears]).contiguous()
    bias = None if all(m.bias is None for m in linears) else torch.cat(
        [m.bias if m.bias is not None else torch.zeros(m.out_features, dtype=w.dtype) for m in linears])
    return w, bias


class PagedLlama:
    """The forward of a transformers Llama-architecture causal LM over a `PagedKVCache`."""

    def __init__(self, model, num_blocks: int, block_size: int = 16, decode: str = "auto",
                 kv_format: str = "float32"):
        if decode not in DECODE_KERNELS:
            raise ValueError(f"decode kernel must be one of {DECODE_KERNELS}, got {decode!r}")
        inner = getattr(model, "model", None)
        needed = ("embed_tokens", "layers", "norm", "rotary_emb")
        if inner is None or not all(hasattr(inner, a) for a in needed) or not hasattr(model, "lm_head"):
            raise ValueError(f"{type(model).__name__}: the paged engine runs Llama-architecture models "
                             "(model.embed_tokens, layers, norm, rotary_emb, lm_head)")
        cfg = model.config
        self.model, self.cfg = model, cfg
        self.embed, self.layers, self.norm, self.rotary = inner.embed_tokens, inner.layers, inner.norm, inner.rotary_emb
        self.lm_head = model.lm_head
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.vocab = cfg.vocab_size
        self.dtype = next(model.parameters()).dtype
        self.cache = PagedKVCache(num_blocks, self.kv_heads, self.head_dim, block_size=block_size,
                                  num_layers=len(self.layers), kv_format=kv_format)
        self.decode_reason = None
        if decode == "torch":
            self.decode_kernel = "torch"
        else:
            self.decode_reason = cpp_decode_reason(self.head_dim, self.heads, self.kv_heads)
            if self.decode_reason and decode == "cpp":
                raise RuntimeError(f"C++ decode kernel unavailable: {self.decode_reason}")
            self.decode_kernel = "torch" if self.decode_reason else "cpp"
        # fused projections (one GEMM for q, k, v and one for gate, up: 9 instead of 15 linear calls per step
        # on the 2-layer tiny model, whose steps are short enough that the calls' overhead shows); copies of
        # the weights, made once: q/k/v and gate/up of every layer stored twice
        self.qkv = [_fuse(l.self_attn.q_proj, l.self_attn.k_proj, l.self_attn.v_proj) for l in self.layers]
        self.gate_up = [_fuse(l.mlp.gate_proj, l.mlp.up_proj) if all(hasattr(l.mlp, a) for a in
                        ("gate_proj", "up_proj", "down_proj", "act_fn")) else None for l in self.layers]
        self.in_norm = [self._norm(l.input_layernorm) for l in self.layers]
        self.post_norm = [self._norm(l.post_attention_layernorm) for l in self.layers]
        self.final_norm = self._norm(self.norm)
        silu = getattr(cfg, "hidden_act", None) == "silu"
        self.act = [F.silu if silu else getattr(l.mlp, "act_fn", None) for l in self.layers]
        self._rope_table: tuple[torch.Tensor, torch.Tensor] | None = None
        # the cache as [slots, kv_heads, head_dim] views (float formats: K and V stored as they are)
        self._k_flat = [k.view(-1, self.kv_heads, self.head_dim) for k in self.cache.k]
        self._v_flat = [v.view(-1, self.kv_heads, self.head_dim) for v in self.cache.v]
        # the C++ decode kernel: the library loaded once, calls bound per (layer, batch, width) on these buffers
        self._lib = None
        if self.decode_kernel == "cpp":
            from kernels.cpp import lib as cpp
            self._lib = cpp.LIB.require()
        self._bound: dict[tuple[int, int, int], tuple] = {}
        self._tbuf = torch.empty(0, dtype=torch.int32)
        self._lbuf = torch.empty(0, dtype=torch.int32)
        self._qbuf = self._obuf = torch.empty(0, dtype=self.dtype)
        self.prefill_attn_s = 0.0          # CPU seconds in the prefill chunks' attention (gather + SDPA), cumulative

    def _norm(self, mod) -> Callable[[torch.Tensor], torch.Tensor]:
        """An RMSNorm module as one fused op (`F.rms_norm`, the same formula as LlamaRMSNorm's five ops; the
        tests hold its logits to the HF forward's); any other norm module is called as it is."""
        w, eps = getattr(mod, "weight", None), getattr(mod, "variance_epsilon", None)
        if w is None or eps is None or type(mod).__name__ != "LlamaRMSNorm":
            return mod
        shape = (w.shape[-1],)
        return lambda x: F.rms_norm(x, shape, w, eps)

    def _rope(self, pos: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, 1, D] at the positions: rows of a table made once by the model's own `rotary_emb`
        (the same values: the rotary embedding is elementwise in the position), doubled when outgrown."""
        if getattr(self.rotary, "rope_type", "default") != "default":       # scaled variants may depend on length
            cos, sin = self.rotary(torch.zeros(1, dtype=self.dtype), torch.tensor([pos]))
            return cos[0, :, None, :], sin[0, :, None, :]
        top = max(pos) + 1
        if self._rope_table is None or self._rope_table[0].shape[0] < top:
            n = max(top, 2 * (0 if self._rope_table is None else self._rope_table[0].shape[0]),
                    int(getattr(self.cfg, "max_position_embeddings", 0) or 0), 64)
            probe = torch.zeros(1, dtype=self.dtype)
            cos, sin = self.rotary(probe, torch.arange(n)[None])                # [1, n, D]
            self._rope_table = (cos[0].contiguous(), sin[0].contiguous())
        idx = torch.tensor(pos, dtype=torch.long)
        return self._rope_table[0][idx][:, None, :], self._rope_table[1][idx][:, None, :]

    @torch.no_grad()
    def forward(self, plan: list[Scheduled], all_logits: bool = False) -> torch.Tensor:
        """Compute the planned chunks (their slots already reserved). Returns the logits [rows, vocab] of the
        sampling rows in plan order (`Scheduled.samples`), or of every token when `all_logits`.

        The step's inputs are built as Python lists and turned into tensors once per step (token ids, positions,
        slots, the decode rows' block tables and lengths): per-sequence tensors were a third of a 32-sequence
        decode step of the tiny model (docs/streaming.md, "Where a step's time goes")."""
        ids_l: list[int] = []
        pos_l: list[int] = []
        slot_l: list[int] = []
        lens = []
        for s in plan:
            n = len(s.ids)
            ids_l.extend(s.ids)
            pos_l.extend(range(s.start, s.start + n))
            slot_l.extend(s.slots if isinstance(s.slots, list) else s.slots.tolist())
            lens.append(n)
        T, H, Hk, D = len(ids_l), self.heads, self.kv_heads, self.head_dim
        ids = torch.tensor(ids_l, dtype=torch.long)
        slots = torch.tensor(slot_l, dtype=torch.long)
        pre = [i for i, n in enumerate(lens) if n > 1]
        dec = [i for i, n in enumerate(lens) if n == 1] if pre else list(range(len(plan)))
        offs = list(itertools.accumulate([0] + lens))
        seqs = [s.req.seq_id for s in plan]
        if dec:
            dec_seqs = [self.cache.manager.seqs[seqs[i]] for i in dec]
            width = max(len(q.blocks) for q in dec_seqs)
            dec_tables = torch.tensor([q.blocks + [-1] * (width - len(q.blocks)) for q in dec_seqs], dtype=torch.int32)
            dec_lens = torch.tensor([q.length for q in dec_seqs], dtype=torch.int32)
            dec_rows = torch.tensor([offs[i] for i in dec], dtype=torch.long) if pre else None
            if self.decode_kernel == "cpp":
                self._stage_decode(dec_tables, dec_lens)
        x = F.embedding(ids, self.embed.weight)                                 # [T, hidden]
        cos, sin = self._rope(pos_l)                                           # [T, 1, D]
        for li, layer in enumerate(self.layers):
            h = self.in_norm[li](x)
            qkv = F.linear(h, *self.qkv[li])                                   # [T, (H + 2 Hk) D]
            qk = qkv[:, :(H + Hk) * D].view(T, H + Hk, D)
            qk = qk * cos + _rotate_half(qk) * sin                              # RoPE on q and k at once
            q, k = qk[:, :H], qk[:, H:]
            v = qkv[:, (H + Hk) * D:].view(T, Hk, D)
            if self.cache.quantized:
                self.cache.write(li, slots, k, v)
            else:                                                              # reshape_and_cache: slots are ours
                kf, vf = self._k_flat[li], self._v_flat[li]
                kf.index_copy_(0, slots, k.to(kf.dtype))
                vf.index_copy_(0, slots, v.to(vf.dtype))
            if not pre:                                                       # decode rows only (steady state)
                o = self._decode(li, q, dec_tables, dec_lens)
            else:
                o = torch.empty(T, H, D, dtype=q.dtype)
            if dec and pre:
                o[dec_rows] = self._decode(li, q[dec_rows], dec_tables, dec_lens)
            tp = time.thread_time() if pre else 0.0
            for i in pre:                                                     # chunk + earlier pages, causal
                a, b = offs[i], offs[i + 1]
                kk, vv = self.cache.gather(li, seqs[i], dtype=q.dtype)       # [L, Hk, D], L = start + n
                L = kk.shape[0]
                o[a:b] = sdpa_gathered(q[None, a:b], kk.transpose(0, 1)[None], vv.transpose(0, 1)[None],
                                       torch.tensor([L]))[0]
            if pre:
                self.prefill_attn_s += time.thread_time() - tp
            att = layer.self_attn
            x = x + F.linear(o.reshape(T, H * D), att.o_proj.weight, att.o_proj.bias)
            h = self.post_norm[li](x)
            if self.gate_up[li] is None:
                x = x + layer.mlp(h)
            else:
                gu = F.linear(h, *self.gate_up[li])
                gate, up = gu.chunk(2, dim=-1)
                down = layer.mlp.down_proj
                x = x + F.linear(self.act[li](gate) * up, down.weight, down.bias)
        if not all_logits:
            rows = [offs[i + 1] - 1 for i, s in enumerate(plan) if s.samples]
            if len(rows) != T:
                x = x[torch.tensor(rows, dtype=torch.long)]
        return self.lm_head(self.final_norm(x))

    def _stage_decode(self, tables: torch.Tensor, lens: torch.Tensor) -> None:
        """Copy the step's decode block tables and lengths into the persistent buffers the bound C++ calls read."""
        b, w = tables.shape
        if b * w > self._tbuf.numel() or b > self._lbuf.numel():
            cap_b = max(b, 2 * self._lbuf.numel())
            self._tbuf = torch.empty(max(b * w, 2 * self._tbuf.numel()), dtype=torch.int32)
            self._lbuf = torch.empty(cap_b, dtype=torch.int32)
            self._qbuf = torch.empty(cap_b * self.heads * self.head_dim, dtype=self.dtype)
            self._obuf = torch.empty_like(self._qbuf)
            self._bound.clear()
        self._tbuf[:b * w].view(b, w).copy_(tables)
        self._lbuf[:b].copy_(lens)

    def _decode(self, layer: int, q: torch.Tensor, tables: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """q [b, H, D] (one new token per sequence) over the pages -> [b, H, D]: the C++ split-K kernel or torch
        (gather + masked SDPA)."""
        kc, vc = self.cache.k[layer], self.cache.v[layer]
        if self.decode_kernel == "cpp":
            # one C call through a call bound once per (layer, batch, table width) on persistent buffers: binding
            # (checking and converting ~35 arguments) cost as much as the kernel itself at 32 sequences
            b, w = tables.shape
            key = (layer, b, w)
            bound = self._bound.get(key)
            if bound is None:
                from kernels.cpp import lib as cpp
                n = b * self.heads * self.head_dim
                qv = self._qbuf[:n].view(b, 1, self.heads, self.head_dim)
                ov = self._obuf[:n].view(b, 1, self.heads, self.head_dim)
                call = cpp.DECODE_PAGED.bind(self._lib, None, dict(
                    q=qv, k_cache=kc, v_cache=vc, block_tables=self._tbuf[:b * w].view(b, w),
                    seq_lens=self._lbuf[:b], k_scale=None, v_scale=None), ov)
                bound = self._bound[key] = (call, qv, ov)
            call, qv, ov = bound
            qv[:, 0].copy_(q)
            call()
            return ov[:, 0]                   # a view of the buffer: consumed before the next layer's call
        from inference.paged import gather
        k, v = gather(kc, vc, tables, lens, dtype=q.dtype)
        return sdpa_gathered(q[:, None], k, v, lens)[:, 0]


class Engine:
    """Continuous batching over `PagedLlama` in one background thread (or stepped by hand: `step()`)."""

    name = "ours"

    def __init__(self, lm, *, num_blocks: int = 1024, block_size: int = 16, max_num_seqs: int = 32,
                 max_tokens_per_step: int = 512, max_queue: int = 256, preemption: str = "recompute",
                 decode: str = "auto", max_model_len: int | None = None):
        self.lm = lm
        self.model = PagedLlama(lm.model, num_blocks, block_size, decode=decode)
        self.cache = self.model.cache
        self.scheduler = Scheduler(self.cache, max_num_seqs, max_tokens_per_step, preemption)
        self.max_model_len = int(max_model_len or lm.context)
        self.max_queue = max_queue
        self.eos = None
        eos = getattr(lm.model.config, "eos_token_id", None)
        if eos is not None:
            self.eos = {eos} if isinstance(eos, int) else set(eos)
        self.metrics = EngineMetrics(self.stats, self.phases)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._ids = itertools.count()
        self._reqs: dict[int, Request] = {}
        self._waiting_n = 0                 # scheduler.waiting, as last seen by the engine thread
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.steps = 0
        self._preempted_seen = 0
        self.error: str | None = None       # the last step failure (the engine keeps serving)
        # called by the engine thread after each step that produced events (the server: wait until its event
        # loop has written them to the sockets, so that a step's tokens leave before the next step's compute)
        self.step_done: Callable[[], None] | None = None
        self._emitted = False
        # where the engine thread's time goes (docs/streaming.md, "Where ours' time goes"): its CPU seconds per
        # phase (time.thread_time: neither other processes on the core nor the GIL held by the server's thread
        # count; ~8 clock reads a step, ~3 us). forward_mixed: steps carrying a prefill chunk; handoff (wall
        # seconds): the engine waiting for the server's event loop to write the step's tokens. kind_s: wall
        # seconds of steps by kind, "decode" (every chunk one token) or "mixed". `trace`: a list to get one
        # (kind, wall seconds, tokens, sequences) tuple per step.
        self.phase_s = dict.fromkeys(PHASES, 0.0)
        self.kind_steps = {"decode": 0, "mixed": 0}
        self.kind_s = {"decode": 0.0, "mixed": 0.0}
        self.trace: list[tuple[str, float, int, int]] | None = None

    # ---- the submitter's side (any thread) --------------------------------------------------------------------
    @property
    def warning(self) -> str | None:
        """One line when `decode="auto"` fell back to torch decode (no native build, an unsupported head dim...):
        the server prints it at start and `bench.py serve` puts it in every row's `note` (its figures are not
        those of the C++ kernel's engine)."""
        if self.model.decode_kernel == "torch" and self.model.decode_reason:
            return (f"{self.name} decodes with torch, not the C++ paged decode kernel ({self.model.decode_reason}): "
                    "its figures are not the native engine's")
        return None

    def describe(self) -> dict:
        return {"engine": self.name, "decode_kernel": self.model.decode_kernel,
                "decode_reason": self.model.decode_reason,
                "num_blocks": self.cache.num_blocks, "block_size": self.cache.block_size,
                "max_num_seqs": self.scheduler.max_num_seqs, "max_tokens_per_step": self.scheduler.budget,
                "preemption": self.scheduler.preemption, "max_model_len": self.max_model_len}

    def check(self, prompt_len: int, params: SamplingParams) -> None:
        """RequestError for a request this engine can never serve."""
        total = check_context(prompt_len, params.max_tokens, self.max_model_len)
        cap = self.cache.num_blocks * self.cache.block_size
        if total > cap:
            raise RequestError(f"the request needs {total} tokens of KV cache, the pool holds {cap}")

    def submit(self, prompt: list[int], params: SamplingParams, on_event: Callable[[Event], None]) -> Handle:
        self.check(len(prompt), params)
        if self._inbox.qsize() + self._waiting_n >= self.max_queue:
            self.metrics.count("rejected")
            raise QueueFull(f"the queue is full ({self.max_queue} requests waiting)")
        handle = Handle(next(self._ids), len(prompt), params, on_event)
        self._inbox.put(("add", handle, list(prompt)))
        self._wake.set()
        return handle

    def cancel(self, handle: Handle) -> None:
        handle.cancelled = True
        self._inbox.put(("cancel", handle, None))
        self._wake.set()

    def phases(self) -> dict:
        """Cumulative seconds per phase of the engine thread and steps by kind (the metrics' `_Phases`)."""
        return {"phase_s": {**self.phase_s, "prefill_attention": self.model.prefill_attn_s},
                "kind_steps": dict(self.kind_steps), "kind_s": dict(self.kind_s)}

    def stats(self) -> dict:
        return {"requests_running": len(self.scheduler.running), "requests_waiting": self._waiting_n,
                "kv_blocks_used": self.scheduler.blocks_used, "kv_blocks_total": self.cache.num_blocks}

    # ---- the engine's thread ----------------------------------------------------------------------------------
    def start(self) -> "Engine":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"kbench-engine-{self.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while not self._stop.is_set():
            if not self.scheduler.has_work() and self._inbox.empty():
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            self._emitted = False
            self.step()
            if self._emitted and self.step_done is not None:
                t = time.perf_counter()
                self.step_done()
                self.phase_s["handoff"] += time.perf_counter() - t
        self._drain()
        for req in list(self._reqs.values()):                     # shutting down: end every request
            self._finish(req, "cancelled", status="cancelled")

    def _drain(self) -> None:
        while True:
            try:
                kind, handle, prompt = self._inbox.get_nowait()
            except queue.Empty:
                break
            if kind == "add":
                if handle.cancelled:
                    self.metrics.count("cancelled")
                    continue
                gen = None
                if handle.params.temperature > 0:
                    gen = torch.Generator().manual_seed(handle.params.seed if handle.params.seed is not None
                                                        else int(torch.randint(2 ** 62, ()).item()))
                decode_ids = None if self.lm.byte_level else self.lm.decode
                req = Request(handle, prompt, Detokenizer(handle.params.stop, decode_ids), generator=gen)
                self._reqs[handle.rid] = req
                self.scheduler.add(req)
            else:
                req = self._reqs.get(handle.rid)
                if req is not None:
                    self._finish(req, "cancelled", status="cancelled")
        self._waiting_n = len(self.scheduler.waiting)

    def step(self) -> bool:
        """One iteration: take in submissions and cancellations, plan, compute, sample, emit. False if idle."""
        ph, cpu = self.phase_s, time.thread_time
        tq = cpu()
        self._drain()
        c0, t0 = cpu(), time.perf_counter()
        plan = self.scheduler.schedule()
        if self.scheduler.preempted_total > self._preempted_seen:
            self.metrics.preemptions.inc(self.scheduler.preempted_total - self._preempted_seen)
            self._preempted_seen = self.scheduler.preempted_total
        self._waiting_n = len(self.scheduler.waiting)
        c1 = cpu()
        ph["drain"] += c0 - tq
        ph["schedule"] += c1 - c0
        if not plan:
            return False
        ntok = sum(len(s.ids) for s in plan)
        kind = "decode" if ntok == len(plan) else "mixed"
        try:
            logits = self.model.forward(plan)
        except Exception as exc:                                   # a failing step ends its requests, not us
            self.error = f"{type(exc).__name__}: {exc}"
            for s in plan:
                self._finish(s.req, "error", status="error", error=self.error)
            return True
        c2 = cpu()
        ph["forward_" + kind] += c2 - c1
        row = 0
        greedy = logits.argmax(-1).tolist() if len(logits) else []     # one argmax for the batch
        self.metrics.generated.inc(len(greedy))                         # one increment per step, not per token
        c3 = cpu()
        ph["sample"] += c3 - c2
        prompt_tokens = 0
        for s in plan:
            req = s.req
            prompt_tokens += max(0, min(s.start + len(s.ids), len(req.prompt)) - s.start)
            if not s.samples:
                continue
            tok = greedy[row] if req.handle.params.temperature <= 0 else self._sample(logits[row], req)
            row += 1
            self._emit(req, tok)
        self.metrics.prompt.inc(prompt_tokens)
        self.steps += 1
        t4 = time.perf_counter()
        ph["emit"] += cpu() - c3
        self.kind_steps[kind] += 1
        self.kind_s[kind] += t4 - t0
        if self.trace is not None:
            self.trace.append((kind, t4 - t0, ntok, len(plan)))
        self.metrics.step.observe(t4 - t0)
        self.metrics.step_tokens.observe(ntok)
        return True

    def _sample(self, logits: torch.Tensor, req: Request) -> int:
        t = req.handle.params.temperature
        if t <= 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.float() / t, -1)
        return int(torch.multinomial(probs, 1, generator=req.generator))

    def _emit(self, req: Request, tok: int) -> None:
        req.output.append(tok)
        text = req.detok.push(tok)
        p = req.handle.params
        reason = None
        if req.detok.stopped:
            reason = "stop"
        elif self.eos is not None and tok in self.eos and not p.ignore_eos:
            reason = "stop"
        elif len(req.output) >= p.max_tokens:
            reason = "length"
        if reason is None:
            self._send(req, Event(tok, text, len(req.output) - 1, prompt_tokens=len(req.prompt)))
            return
        if reason == "length":
            text += req.detok.flush()
        self._finish(req, reason, status="finished", token=tok, text=text)

    def _finish(self, req: Request, reason: str, *, status: str, token: int | None = None, text: str = "",
                error: str | None = None) -> None:
        self.scheduler.drop(req)
        self._reqs.pop(req.handle.rid, None)
        self.metrics.count(status)
        self._send(req, Event(token, text, len(req.output) - 1, finished=True, finish_reason=reason,
                              prompt_tokens=len(req.prompt), error=error))

    def _send(self, req: Request, ev: Event) -> None:
        self._emitted = True
        try:
            req.handle.on_event(ev)
        except Exception:                                          # a broken sink must not stop the engine
            pass

    # ---- synchronous use (tests, scripts) ---------------------------------------------------------------------
    def run_until_idle(self, max_steps: int = 1_000_000) -> int:
        n = 0
        while n < max_steps and (self.scheduler.has_work() or not self._inbox.empty()):
            self.step()
            n += 1
        return n

    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]) -> list[list[int]]:
        """Submit every prompt, step until done (in this thread), return each request's generated tokens."""
        plist = params if isinstance(params, list) else [params] * len(prompts)
        outs: list[list[int]] = [[] for _ in prompts]

        def sink(i):
            return lambda ev: ev.token is not None and outs[i].append(ev.token)
        for i, (p, sp) in enumerate(zip(prompts, plist)):
            self.submit(p, sp, sink(i))
        self.run_until_idle()
        return outs
