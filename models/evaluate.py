"""Evaluation used by every pipeline (quantization, distillation, sparsity, KV cache, streaming).

All deterministic (fixed windows, fixed prompts, eval mode, no sampling) and seconds on the tiny model:
- `bits_per_byte(lm)`: cross-entropy of the held-out text in bits per UTF-8 byte (lower is better), scored
  in non-overlapping windows of the model's context (each window predicts its bytes 2..n from the ones
  before). `perplexity(lm)` is 2 ** (bits per token); for the byte-level models a token is a byte.
- `unigram_bpb()`, `bigram_bpb()`: the baselines the model must beat, fitted on the training split with
  add-one smoothing and scored on the same held-out bytes.
- `greedy_tokens(lm)` / `greedy_agreement(lm, reference)`: greedy continuations of `PROMPTS` (a KV cache, no
  sampling) and the share of positions where a modified model's tokens equal the unmodified model's.
- `accuracy(model, x, y)`: classification accuracy (the digits task, models/digits.py).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from models import data

# Fixed prompts for greedy agreement: text of the kind the model was trained on.
PROMPTS: tuple[str, ...] = (
    "The for statement is used to ",
    "A class definition defines a ",
    "Exceptions are raised by ",
    "The import statement ",
    "Names refer to objects. ",
    "An expression statement ",
    "def f(x):\n    return ",
    "The value of the ",
)


@torch.no_grad()
def _nll(model, ids: torch.Tensor, context: int, batch: int = 16) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) of ids[1:] in windows of `context` tokens, and the count."""
    device = next(model.parameters()).device
    n = (len(ids) - 1) // context
    windows = ids[: n * context + 1]
    total, count = 0.0, 0
    for i in range(0, n, batch):
        rows = torch.stack([windows[j * context: (j + 1) * context + 1] for j in range(i, min(n, i + batch))])
        rows = rows.to(device)
        logits = model(input_ids=rows[:, :-1]).logits.float()
        total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                         rows[:, 1:].reshape(-1), reduction="sum"))
        count += rows.shape[0] * context
    return total, count


def heldout_ids(lm, limit: int | None = None) -> tuple[torch.Tensor, int]:
    """The held-out text as the model's tokens, and how many bytes those tokens cover."""
    text = data.split()[1]
    if limit is not None:
        text = text[:limit]
    ids = lm.encode_bytes(text)
    return ids, len(text)


def bits_per_byte(lm, limit: int | None = None, context: int | None = None) -> float:
    """Held-out bits per byte (the first `limit` bytes of the held-out split, or all 46,080)."""
    ids, nbytes = heldout_ids(lm, limit)
    ctx = min(context or lm.context, len(ids) - 1)
    nats, count = _nll(lm.model, ids, ctx)
    # bytes covered by the scored tokens: all of them for byte-level models, pro rata for tokenizers
    scored_bytes = count if lm.byte_level else nbytes * count / max(1, len(ids) - 1)
    return nats / math.log(2) / scored_bytes


def perplexity(lm, limit: int | None = None) -> float:
    ids, _ = heldout_ids(lm, limit)
    nats, count = _nll(lm.model, ids, min(lm.context, len(ids) - 1))
    return math.exp(nats / count)


def unigram_bpb() -> float:
    train, held = (data.as_tensor(b) for b in data.split())
    counts = torch.bincount(train, minlength=256).double() + 1.0
    logp = torch.log2(counts / counts.sum())
    return float(-logp[held].mean())


def bigram_bpb() -> float:
    train, held = (data.as_tensor(b) for b in data.split())
    counts = torch.zeros(256, 256, dtype=torch.float64)
    counts.index_put_((train[:-1], train[1:]), torch.ones(len(train) - 1, dtype=torch.float64), accumulate=True)
    counts += 1.0
    logp = torch.log2(counts / counts.sum(1, keepdim=True))
    return float(-logp[held[:-1], held[1:]].mean())


def greedy_tokens(lm, prompts: Sequence[str] = PROMPTS, new_tokens: int = 32, cache: str = "dynamic") \
        -> list[list[int]]:
    """Greedy continuations (token ids) of each prompt, one prompt at a time (no padding)."""
    from models.generate import greedy
    device = next(lm.model.parameters()).device
    return [greedy(lm.model, lm.encode(p)[None].to(device), new_tokens, cache=cache)[0].tolist()
            for p in prompts]


def greedy_agreement(lm, reference, prompts: Sequence[str] = PROMPTS, new_tokens: int = 32) -> float:
    """Share of generated positions where `lm`'s greedy tokens equal `reference`'s (an LM, or the output of
    `greedy_tokens` for the unmodified model). Free-running: after a first difference the continuations
    usually part, so the score also says how early they part. 1.0 = identical."""
    ref = reference if isinstance(reference, list) else greedy_tokens(reference, prompts, new_tokens)
    got = greedy_tokens(lm, prompts, new_tokens)
    same = sum(a == b for r, g in zip(ref, got) for a, b in zip(r, g))
    return same / sum(len(r) for r in ref)


@torch.no_grad()
def accuracy(model, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(-1) == y).float().mean())
