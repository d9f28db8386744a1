"""What every serving engine (ours in inference/engine.py, the transformers baselines in inference/hf_engines.py)
takes and gives: sampling parameters, per-token events, the refusals, and the incremental detokenizer that turns
generated tokens into text (UTF-8 held back until complete, stop strings held back until they cannot match).

An engine is driven through `submit(prompt_ids, params, on_event) -> Handle` and `cancel(handle)`, both
thread-safe; `on_event(Event)` is called from the engine's thread once per generated token, the last event
with `finished=True` and its `finish_reason` (or `error`). The server bridges it to asyncio with
`loop.call_soon_threadsafe`.
"""
from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Callable


class QueueFull(RuntimeError):
    """The engine's queue bound is reached: the request is refused (HTTP 429), nothing is queued."""


class RequestError(ValueError):
    """A request the engine can never serve (prompt + max_tokens beyond the context or the KV pool): HTTP 400."""


def check_context(prompt_len: int, max_tokens: int, max_model_len: int) -> int:
    """The tokens a request needs (prompt + max_tokens), or RequestError when no engine of this model can serve
    it: an empty prompt, or more than the model's context (vLLM's rule, shared by every engine here)."""
    if prompt_len < 1:
        raise RequestError("the prompt is empty: it must hold at least one token")
    total = prompt_len + max_tokens
    if total > max_model_len:
        raise RequestError(f"this model's maximum context length is {max_model_len} tokens; the request "
                           f"needs {total} ({prompt_len} in the prompt, {max_tokens} max_tokens)")
    return total


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 0.0            # 0: greedy (argmax); > 0: softmax(logits / T) sampling
    seed: int | None = None             # per-request generator seed for sampling (None: drawn at random)
    stop: tuple[str, ...] = ()          # generation ends when the text contains one; it is not returned
    ignore_eos: bool = False            # the byte-level models have no EOS token: only max_tokens / stop end them

    def __post_init__(self):
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise RequestError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not (self.temperature >= 0.0):
            raise RequestError(f"temperature must be >= 0, got {self.temperature!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise RequestError("stop strings must be non-empty strings")


@dataclass
class Event:
    """One generated token (`token`), the text it completes (`text`: "" while a UTF-8 sequence or a possible
    stop string is held back), and, on the last event, `finished` with `finish_reason` ("length", "stop",
    "cancelled", "error") and `error` (a message) where it failed."""
    token: int | None
    text: str
    index: int                          # 0-based index of the generated token (the count so far - 1)
    finished: bool = False
    finish_reason: str | None = None
    prompt_tokens: int = 0
    error: str | None = None


@dataclass(eq=False)
class Handle:
    """A submitted request as its submitter sees it (cancel with `engine.cancel(handle)`)."""
    rid: int
    prompt_len: int
    params: SamplingParams
    on_event: Callable[[Event], None]
    cancelled: bool = False
    extra: dict = field(default_factory=dict)


class Detokenizer:
    """Generated tokens -> text deltas. Byte-level models: an incremental UTF-8 decoder (a partial sequence is
    held back until complete; invalid bytes become U+FFFD). Other models: the tokenizer's decode of all tokens
    so far, a trailing U+FFFD held back. Stop strings: the text is searched as it grows; a suffix that could
    still become a stop string is held back, and the text from the stop string on is never returned (OpenAI)."""

    def __init__(self, stop: tuple[str, ...] = (), decode_ids: Callable[[list[int]], str] | None = None):
        self.stop = tuple(stop)
        self._decode_ids = decode_ids
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._ids: list[int] = []
        self.text = ""                  # decoded so far (stop string included once hit)
        self.sent = 0                   # characters of self.text handed out
        self.stopped = False

    def _decode(self, token: int, final: bool) -> str:
        if self._decode_ids is None:
            return self._utf8.decode(bytes([token]) if token is not None else b"", final)
        if token is not None:
            self._ids.append(token)
        full = self._decode_ids(self._ids)
        if not final and full.endswith("\ufffd"):
            full = full[:-1]
        new = full[len(self.text):] if full.startswith(self.text) else ""
        return new

    def push(self, token: int) -> str:
        """The text this token releases ("" if held back); sets `stopped` when a stop string appears."""
        self.text += self._decode(token, final=False)
        return self._release()

    def flush(self) -> str:
        """At the end (length): the held-back rest (an incomplete UTF-8 sequence as U+FFFD)."""
        if not self.stopped:
            self.text += self._decode(None, final=True)
            out, self.sent = self.text[self.sent:], len(self.text)
            return out
        return ""

    def _release(self) -> str:
        if self.stopped:
            return ""
        hit = -1
        for s in self.stop:
            i = self.text.find(s, max(0, self.sent - len(s) + 1))
            if i >= 0 and (hit < 0 or i < hit):
                hit = i
        if hit >= 0:
            self.stopped = True
            out, self.sent = self.text[self.sent:hit], hit
            return out
        hold = 0
        for s in self.stop:                           # longest suffix that is a proper prefix of a stop string
            for k in range(min(len(s) - 1, len(self.text) - self.sent), hold, -1):
                if self.text.endswith(s[:k]):
                    hold = k
                    break
        end = len(self.text) - hold
        out, self.sent = self.text[self.sent:end], end
        return out
