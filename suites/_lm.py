"""What the model-level suites (suites/model.py, quant.py, sparsity.py, distill.py) share: the causal-LM case
names and builders, the held-out input windows, the prefill / decode / quality launchers and the work formulas.
Modules whose name starts with "_" are not suites (harness.registry.all_suites skips them).

Cases: `prefill-b{b}-p{p}` (one forward over b prompts of p tokens, filling a fresh cache: b * p tokens per call),
`decode-b{b}-ctx{c}` (one KV-cached step for b sequences against c cached tokens, cropped back after the call so
every timed call does the same work: b tokens per call), `quality` (a forward over b held-out windows).
Work (napkin math, as llm.c counts it): 2 FLOPs per weight per token (the tied embedding counts once, as the
output projection) plus attention, 4 * layers * heads * head_dim FLOPs per (query, visible key) pair; bytes:
the weights once per call plus the KV cache, 2 * layers * kv_heads * head_dim values per token.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import torch

from models import data, generate, zoo
from models.measure import peak_memory_bytes


# ---- cases ---------------------------------------------------------------------------------------------------
def model_spec(params: dict) -> str:
    """The case's model: its `model` parameter (the `test` model on test shapes), else $KB_MODEL, else tiny."""
    return params.get("model") or os.environ.get("KB_MODEL", "tiny")


def model_label(spec: str) -> str:
    """A recipe's name, or a checkpoint directory's last component."""
    return spec if spec in zoo.RECIPES else os.path.basename(os.path.normpath(spec))


def kind_label(p: dict) -> str:
    """"prefill-b8-p64" / "decode-b1-ctx128" (the sizes of a prefill or decode case)."""
    return f"{p['kind']}-b{p['b']}-" + ("p" if p["kind"] == "prefill" else "ctx") + str(p["n"])


def case_name(p: dict) -> str:
    """"tiny:prefill-b8-p64", "tiny:decode-b1-ctx128", "tiny:quality"."""
    label = model_label(model_spec(p))
    return f"{label}:quality" if p["kind"] == "quality" else f"{label}:{kind_label(p)}"


def prefill(b: int, n: int, **kw) -> dict:
    return dict(kind="prefill", b=b, n=n, **kw)


def decode(b: int, n: int, **kw) -> dict:
    return dict(kind="decode", b=b, n=n, **kw)


# ---- models --------------------------------------------------------------------------------------------------
def load(cache: dict, spec: str, device: str, dtype: torch.dtype, keep: int | None = None) -> zoo.LM:
    """zoo.load once per (spec, device, dtype) in the suite's own `cache` (emptied past `keep` entries)."""
    key = (spec, device, dtype)
    if key not in cache:
        if keep is not None and len(cache) > keep:
            cache.clear()
        cache[key] = zoo.load(spec, device=device, dtype=dtype, attn="sdpa", progress=False)
    return cache[key]


def shape(model) -> dict[str, int]:
    """layers, attention heads, KV heads and head dimension of a transformers causal LM."""
    c = model.config
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return dict(layers=c.num_hidden_layers, heads=c.num_attention_heads, kv=c.num_key_value_heads, hd=hd)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def scored(lm: zoo.LM, forward) -> zoo.LM:
    """`lm` with its model replaced by `forward` (a variant's model or graph), for models.evaluate."""
    return zoo.LM(lm.name, forward, lm.context, lm.byte_level, lm.tokenizer)


# ---- inputs --------------------------------------------------------------------------------------------------
def generator(rng: torch.Generator) -> torch.Generator:
    """A CPU generator seeded from the harness's per-check generator (fresh inputs per check, on any device)."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=rng, device=rng.device))
    return torch.Generator().manual_seed(seed)


def held_out_windows(g: torch.Generator, b: int, n: int) -> torch.Tensor:
    """b windows of n bytes of the held-out split at random offsets (real text, never zeros): int64 [b, n]."""
    held = data.as_tensor(data.split()[1])
    starts = torch.randint(0, len(held) - n - 1, (b,), generator=g)
    return held[starts[:, None] + torch.arange(n)]


def token_ids(lm: zoo.LM, ids: torch.Tensor) -> torch.Tensor:
    """Byte windows as the model's ids: a user's tokenizer model gets them modulo its vocabulary."""
    return ids if lm.byte_level else ids % lm.model.config.vocab_size


# ---- work ----------------------------------------------------------------------------------------------------
def flops(s: dict[str, int], params: int, kind: str, b: int, n: int) -> int:
    """FLOPs of one call: decode = b tokens against n + 1 keys; otherwise b * n tokens, causal (query i sees
    i + 1 keys)."""
    attn = 4 * s["layers"] * s["heads"] * s["hd"]
    if kind == "decode":
        return b * (2 * params + attn * (n + 1))
    return b * (2 * params * n + attn * n * (n + 1) // 2)


def kv_bytes(s: dict[str, int], b: int, n: int, itemsize: int) -> int:
    """KV-cache bytes of b sequences of n + 1 tokens (read by a decode step, written by a prefill)."""
    return b * (n + 1) * 2 * s["layers"] * s["kv"] * s["hd"] * itemsize


def tokens(kind: str, b: int, n: int) -> int:
    """Tokens per call (the tokens/s numerator): b for a decode step, b * n otherwise."""
    return b if kind == "decode" else b * n


def last_if_decode(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """A decode reference is the uncached forward over all c + 1 tokens: its last position."""
    return logits[:, -1] if kind == "decode" else logits


# ---- launchers -----------------------------------------------------------------------------------------------
def runner(model, kind: str, ids: torch.Tensor, n: int, fwd=None, cache: str = "dynamic") -> Callable:
    """The zero-argument timed call of one case on `model` (through `fwd`, e.g. a compiled model, if given).
    decode: the cache of the first n tokens is filled now (outside the timing; call this inside the variant's
    context), each call runs token n and crops the cache back. prefill: a fresh DynamicCache per call, or a
    StaticCache (cache="static") rewritten from slot 0. quality: a plain forward."""
    fwd = fwd if fwd is not None else model
    b = ids.shape[0]
    if kind == "decode":
        kv = generate.make_cache(model, cache, b, n + 1)
        generate.prefill(fwd, ids[:, :n], kv)
        tok, pos = ids[:, n], torch.tensor([n], device=ids.device)

        def run():
            logits = fwd(input_ids=tok[:, None], cache=kv, cache_position=pos, use_cache=True).logits[:, -1]
            kv.crop(-1)       # back to n tokens (a StaticCache rewinds its length): the same work every call
            return logits
        return run
    if kind == "prefill":
        static = generate.make_cache(model, cache, b, n) if cache == "static" else None
        pos = torch.arange(n, device=ids.device)

        def run():
            kv = static if static is not None else generate.make_cache(model, "dynamic", b, n)
            logits = fwd(input_ids=ids, cache=kv, cache_position=pos, use_cache=True).logits
            if static is not None:
                static.crop(-n)          # the StaticCache is rewritten from slot 0 next call
            return logits
        return run
    return lambda: fwd(input_ids=ids).logits


class Launcher:
    """A zero-argument call for one case, run inside `context()` (default torch.no_grad); the keyword
    attributes carry what the suite's config and model columns read (its model, a config string...)."""

    def __init__(self, run: Callable, context: Callable = torch.no_grad, **attrs: Any):
        self.run, self.context = run, context
        self.__dict__.update(attrs)

    def __call__(self):
        with self.context():
            return self.run()


# ---- model-level columns -------------------------------------------------------------------------------------
def speed_columns(kind: str, median_ms: float, n_tok: int) -> dict[str, Any]:
    """tokens_per_s, and ms_per_token for a decode step (the latency each sequence sees per token)."""
    return dict(tokens_per_s=n_tok / (median_ms / 1e3), ms_per_token=median_ms if kind == "decode" else None)


def peak_mem_mb(launcher, device: str) -> float | None:
    """Peak memory of one call (models.measure), MiB; None where it cannot be read."""
    peak = peak_memory_bytes(launcher, device)
    return peak / 2**20 if peak is not None else None
