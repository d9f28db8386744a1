"""The two transformers baselines behind our engine's interface (`submit`, `cancel`, `start`, `stop`, `stats`,
`metrics`, `describe`: inference/engine.py), so the same server and load generator measure them.

- `hf-static` (`HFStaticEngine`): static batching with `model.generate`. The engine thread waits for a first
  request, then up to `batch_timeout_s` for more (at most `max_num_seqs`), left-pads the batch, and generates
  `max(max_tokens)` tokens for all of it; a `BaseStreamer` subclass receives the batch's [b] new tokens each
  step and hands each request its own. A row that is done (its max_tokens, a stop string, cancelled) is
  finished at once for its client, and a per-row `StoppingCriteria` tells `generate` so, but the batch runs
  until its longest row ends and nothing joins it meanwhile: what continuous batching removes.
- `hf-cb` (`HFContinuousEngine`): transformers' own paged continuous batching (`init_continuous_batching`,
  transformers 5.x's ContinuousBatchingManager, its own scheduler, paged cache and generation thread), its
  streaming outputs (cumulative token lists) turned into one event per new token by a dispatcher thread.

Both are greedy only (transformers' batch-wide generation config: per-request temperatures would need one
batch per temperature); a request with temperature > 0 is refused (HTTP 400) with the reason.
"""
from __future__ import annotations

import itertools
import queue
import threading
import time
from typing import Callable

import torch

from inference.metrics import EngineMetrics
from inference.requests import (Detokenizer, Event, Handle, QueueFull, RequestError, SamplingParams,
                                check_context)


class _Row:
    """One request's progress inside a baseline engine."""

    def __init__(self, handle: Handle, prompt: list[int], detok: Detokenizer):
        self.handle, self.prompt, self.detok = handle, prompt, detok
        self.count = 0
        self.done = False


class _BaseHF:
    name = "hf"

    def __init__(self, lm, *, max_num_seqs: int = 32, max_queue: int = 256, max_model_len: int | None = None):
        self.lm = lm
        self.max_num_seqs, self.max_queue = max_num_seqs, max_queue
        self.max_model_len = int(max_model_len or lm.context)
        self.metrics = EngineMetrics(self.stats)
        self._ids = itertools.count()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running = 0
        self._waiting = 0
        self.steps = 0
        self.step_done: Callable[[], None] | None = None    # as Engine.step_done (hf-static calls it per step)

    def describe(self) -> dict:
        return {"engine": self.name, "max_num_seqs": self.max_num_seqs, "max_model_len": self.max_model_len}

    def stats(self) -> dict:
        return {"requests_running": self._running, "requests_waiting": self._waiting,
                "kv_blocks_used": 0, "kv_blocks_total": 0}

    def check(self, prompt_len: int, params: SamplingParams) -> None:
        check_context(prompt_len, params.max_tokens, self.max_model_len)
        if params.temperature > 0:
            raise RequestError(f"engine {self.name} serves greedy requests only (temperature 0): transformers' "
                               "generation config is batch-wide")

    def _row(self, handle: Handle, prompt: list[int]) -> _Row:
        return _Row(handle, prompt, Detokenizer(handle.params.stop, None if self.lm.byte_level else self.lm.decode))

    def _token(self, row: _Row, tok: int) -> None:
        """Hand one generated token to its request; finish it on its max_tokens or a stop string."""
        if row.done:
            return
        row.count += 1
        self.metrics.generated.inc()
        text = row.detok.push(tok)
        reason = "stop" if row.detok.stopped else ("length" if row.count >= row.handle.params.max_tokens else None)
        if reason == "length":
            text += row.detok.flush()
        self._send(row, Event(tok, text, row.count - 1, finished=reason is not None, finish_reason=reason,
                              prompt_tokens=len(row.prompt)))
        if reason is not None:
            row.done = True
            self.metrics.count("finished")

    def _end(self, row: _Row, reason: str, status: str, error: str | None = None) -> None:
        if row.done:
            return
        row.done = True
        self.metrics.count(status)
        self._send(row, Event(None, "", row.count - 1, finished=True, finish_reason=reason,
                              prompt_tokens=len(row.prompt), error=error))

    @staticmethod
    def _send(row: _Row, ev: Event) -> None:
        try:
            row.handle.on_event(ev)
        except Exception:
            pass

    def start(self):
        raise NotImplementedError

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        self._threads = []


class HFStaticEngine(_BaseHF):
    name = "hf-static"

    def __init__(self, lm, *, max_num_seqs: int = 32, max_queue: int = 256, batch_timeout_s: float = 0.05,
                 max_model_len: int | None = None):
        super().__init__(lm, max_num_seqs=max_num_seqs, max_queue=max_queue, max_model_len=max_model_len)
        self.batch_timeout_s = batch_timeout_s
        self._inbox: queue.Queue = queue.Queue()
        # how full the static batches stay (what continuous batching can win back): each generate step counted by
        # whether fewer than half of its rows still generate, and its row-steps as generating or done (a done row
        # is still computed: `generate` pads it until the batch's longest row ends)
        from prometheus_client import Counter
        r = self.metrics.registry
        self.static_steps = Counter("kbench_static_steps", "hf-static generate steps by the share of rows still "
                                    "generating", ["alive"], registry=r)
        self.static_rows = Counter("kbench_static_row_steps", "hf-static rows computed per step: generating, or "
                                   "done and padded", ["row"], registry=r)
        for k in ("under_half", "half_or_more"):
            self.static_steps.labels(alive=k)
        for k in ("generating", "done"):
            self.static_rows.labels(row=k)

    def count_step(self, alive: int, rows: int) -> None:
        """One generate step of a batch of `rows` rows of which `alive` still generate."""
        self.static_steps.labels(alive="under_half" if 2 * alive < rows else "half_or_more").inc()
        self.static_rows.labels(row="generating").inc(alive)
        self.static_rows.labels(row="done").inc(rows - alive)

    def describe(self) -> dict:
        return {**super().describe(), "batch_timeout_s": self.batch_timeout_s}

    def submit(self, prompt: list[int], params: SamplingParams, on_event: Callable[[Event], None]) -> Handle:
        self.check(len(prompt), params)
        if self._inbox.qsize() >= self.max_queue:
            self.metrics.count("rejected")
            raise QueueFull(f"the queue is full ({self.max_queue} requests waiting)")
        handle = Handle(next(self._ids), len(prompt), params, on_event)
        handle.extra["row"] = self._row(handle, list(prompt))
        self._inbox.put(handle.extra["row"])
        self._waiting = self._inbox.qsize()
        return handle

    def cancel(self, handle: Handle) -> None:
        handle.cancelled = True            # the streamer ends it at the next step (or the batcher skips it)

    def start(self) -> "HFStaticEngine":
        if not self._threads:
            t = threading.Thread(target=self._loop, name="kbench-engine-hf-static", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _collect(self) -> list[_Row]:
        try:
            first = self._inbox.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.perf_counter() + self.batch_timeout_s
        while len(batch) < self.max_num_seqs:
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            try:
                batch.append(self._inbox.get(timeout=left))
            except queue.Empty:
                break
        self._waiting = self._inbox.qsize()
        live = []
        for row in batch:
            if row.handle.cancelled:
                self._end(row, "cancelled", "cancelled")
            else:
                live.append(row)
        return live

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while not self._stop.is_set():
            batch = self._collect()
            if batch:
                self._running = len(batch)
                try:
                    self.run_batch(batch)
                except Exception as exc:
                    for row in batch:
                        self._end(row, "error", "error", f"{type(exc).__name__}: {exc}")
                self._running = 0
        while True:                                               # shutting down: end what is queued
            try:
                self._end(self._inbox.get_nowait(), "cancelled", "cancelled")
            except queue.Empty:
                break

    def run_batch(self, batch: list[_Row]) -> None:
        """One static batch: left-padded prompts, `generate` for the longest max_tokens, tokens streamed."""
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer
        width = max(len(r.prompt) for r in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for i, r in enumerate(batch):
            ids[i, width - len(r.prompt):] = torch.tensor(r.prompt)
            mask[i, width - len(r.prompt):] = 1
        engine = self

        class Streamer(BaseStreamer):
            def __init__(self):
                self.prompt_seen = False

            def put(self, value):
                if not self.prompt_seen:                           # generate() first puts the prompt ids
                    self.prompt_seen = True
                    return
                engine.steps += 1
                engine.count_step(sum(1 for r in batch if not (r.done or r.handle.cancelled)), len(batch))
                for r, tok in zip(batch, value.reshape(-1).tolist()):
                    if r.handle.cancelled:
                        engine._end(r, "cancelled", "cancelled")
                    else:
                        engine._token(r, int(tok))
                if engine.step_done is not None:
                    engine.step_done()

            def end(self):
                pass

        class RowsDone(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.tensor([r.done or r.handle.cancelled or engine._stop.is_set() for r in batch])

        self.lm.model.generate(ids, attention_mask=mask, max_new_tokens=max(r.handle.params.max_tokens for r in batch),
                               do_sample=False, pad_token_id=0, eos_token_id=None, streamer=Streamer(),
                               stopping_criteria=StoppingCriteriaList([RowsDone()]))
        for r in batch:                                            # stopped by shutdown
            self._end(r, "cancelled", "cancelled")


class HFContinuousEngine(_BaseHF):
    name = "hf-cb"

    def __init__(self, lm, *, max_num_seqs: int = 32, max_queue: int = 256, num_blocks: int = 1024,
                 block_size: int = 16, max_tokens_per_step: int = 512, max_model_len: int | None = None):
        super().__init__(lm, max_num_seqs=max_num_seqs, max_queue=max_queue, max_model_len=max_model_len)
        self.num_blocks, self.block_size, self.max_tokens_per_step = num_blocks, block_size, max_tokens_per_step
        self._rows: dict[str, _Row] = {}
        self._lock = threading.Lock()
        self.manager = None

    def describe(self) -> dict:
        return {**super().describe(), "num_blocks": self.num_blocks, "block_size": self.block_size,
                "max_tokens_per_step": self.max_tokens_per_step}

    def stats(self) -> dict:
        n = len(self._rows)
        return {"requests_running": min(n, self.max_num_seqs), "requests_waiting": max(0, n - self.max_num_seqs),
                "kv_blocks_used": 0, "kv_blocks_total": self.num_blocks}

    def start(self) -> "HFContinuousEngine":
        if self.manager is not None:
            return self
        import logging

        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig
        logging.getLogger("ContinuousBatchingLogger").setLevel(logging.CRITICAL)   # "no psutil" noise
        gc = GenerationConfig(do_sample=False, eos_token_id=None, pad_token_id=0, max_new_tokens=16)
        cb = ContinuousBatchingConfig(page_size=self.block_size, num_blocks=self.num_blocks,
                                      max_batch_tokens=self.max_tokens_per_step,
                                      max_requests_per_batch=self.max_num_seqs, use_cuda_graph=False)
        self.manager = self.lm.model.init_continuous_batching(generation_config=gc, continuous_batching_config=cb)
        self.manager.start()
        t = threading.Thread(target=self._dispatch, name="kbench-engine-hf-cb", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def submit(self, prompt: list[int], params: SamplingParams, on_event: Callable[[Event], None]) -> Handle:
        self.check(len(prompt), params)
        if len(self._rows) >= self.max_queue + self.max_num_seqs:
            self.metrics.count("rejected")
            raise QueueFull(f"the queue is full ({self.max_queue} requests waiting)")
        handle = Handle(next(self._ids), len(prompt), params, on_event)
        row = self._row(handle, list(prompt))
        key = f"kb{handle.rid}"
        handle.extra["key"] = key
        with self._lock:
            self._rows[key] = row
        self.manager.add_request(list(prompt), request_id=key, max_new_tokens=params.max_tokens, streaming=True)
        return handle

    def cancel(self, handle: Handle) -> None:
        handle.cancelled = True
        key = handle.extra["key"]
        with self._lock:
            row = self._rows.pop(key, None)
        if row is not None:
            self.manager.cancel_request(key)
            self._end(row, "cancelled", "cancelled")

    def _dispatch(self) -> None:
        """The manager's outputs (cumulative token lists per request) -> one event per new token."""
        while not self._stop.is_set():
            out = self.manager.get_result(timeout=0.2)
            if out is None:
                continue
            with self._lock:
                row = self._rows.get(out.request_id)
            if row is None:
                continue
            for tok in out.generated_tokens[row.count:]:
                self._token(row, int(tok))
            if out.error:
                self._end(row, "error", "error", str(out.error))
            elif out.is_finished() and not row.done:
                self._end(row, "length", "finished")
            if row.done:
                with self._lock:
                    self._rows.pop(out.request_id, None)
                if row.count < row.handle.params.max_tokens and not out.is_finished():
                    self.manager.cancel_request(out.request_id)         # a stop string ended it early

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self.manager is not None:
            self.manager.stop(block=True, timeout=timeout)
        super().stop(timeout)
        with self._lock:
            rows, self._rows = list(self._rows.values()), {}
        for row in rows:
            self._end(row, "cancelled", "cancelled")
        self.manager = None


ENGINES = ("ours", "hf-static", "hf-cb")


def make_engine(kind: str, lm, **opts):
    """The engine named `kind` over `lm` (a models.zoo.LM); options it does not take are dropped."""
    import inspect

    from inference.engine import Engine
    cls = {"ours": Engine, "hf-static": HFStaticEngine, "hf-cb": HFContinuousEngine}.get(kind)
    if cls is None:
        raise ValueError(f"unknown engine {kind!r}: choose from {', '.join(ENGINES)}")
    params = inspect.signature(cls.__init__).parameters
    return cls(lm, **{k: v for k, v in opts.items() if k in params and v is not None})
