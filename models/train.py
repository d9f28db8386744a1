"""Train a byte-level Llama on the training split of pydoc_data.topics (models/data.py).

Recipe (models/configs.py): AdamW (betas 0.9/0.95, weight decay on matrices only), linear warm-up then
cosine decay to 10% of the peak learning rate, gradient clipping at 1.0, random windows of `context + 1`
bytes drawn with a seeded generator, float32. Deterministic for a given recipe, torch build and thread count.

Work, counted as in the PaLM paper (appendix B): per trained token 6 * N FLOPs for the N parameters that
take part in matmuls (the tied embedding counts once, as the output projection) plus 12 * layers * context
* hidden for attention's scores and weighted values (forward + backward, causal masking not subtracted).
MFU = those FLOPs / training wall time / the fp32 matmul peak that `bench.py --suite peak` measured here
(harness/peaks.py), so the figure is against this machine, not a datasheet.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any

import torch

from models import data
from models.configs import Recipe


def flops_per_token(recipe: Recipe, n_params: int) -> float:
    return 6.0 * n_params + 12.0 * recipe.layers * recipe.context * recipe.hidden


def _lr(recipe: Recipe, step: int) -> float:
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    t = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def _measured_peak(device: str, probe: bool = True) -> tuple[float | None, str]:
    """fp32 TFLOP/s measured on this device, and where it came from. With nothing stored and `probe`, the
    runner's first-run probe (harness/autopeak.py, seconds) measures it now, so MFU is never blank on a first
    training run; a figure from `bench.py --suite peak` replaces the probe's as soon as it is stored."""
    from harness import env, peaks
    name = env.device_name(device)
    measured = peaks.load_measured(name)
    if not (measured and measured.get("float32")) and probe:
        from harness import autopeak
        autopeak.probe(device, name)
        measured = peaks.load_measured(name)
    if measured and measured.get("float32"):
        return float(measured["float32"]), f"measured ({peaks.measured_path(name).name})"
    return None, "no measured peak: run `python bench.py --suite peak`"


EVAL_BYTES = 8192          # held-out bytes scored every `eval_every` steps (the held-out curve)


@torch.enable_grad()        # trained on first use, possibly inside a suite's no_grad reference or setup
def train(recipe: Recipe, device: str = "cpu", progress: bool = True, eval_every: int = 0) -> tuple[Any, dict]:
    """Train `recipe` from its seed; returns (model in eval mode, metadata: loss curve, time, FLOPs, MFU).
    `eval_every` > 0 also records held-out bits per byte (first EVAL_BYTES bytes) every that many steps;
    that time is excluded from `train_seconds`."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(recipe.seed)
    model = LlamaForCausalLM(recipe.config("sdpa")).to(device)
    model.train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, betas=(0.9, 0.95))
    train_ids = data.as_tensor(data.split()[0])
    gen = torch.Generator().manual_seed(recipe.seed)
    offsets = torch.arange(recipe.context + 1)
    n_params = sum(p.numel() for p in model.parameters())
    curve: list[float] = []
    evals: list[tuple[int, float]] = []
    eval_s = 0.0
    load_before = os.getloadavg()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    from harness.ui import loss_bar
    with loss_bar(progress, f"training {recipe.name}", recipe.steps, remaining=True,
                  describe=lambda loss: f"loss {loss / math.log(2):.3f} bits/byte") as advance:
        for step in range(recipe.steps):
            start = torch.randint(0, len(train_ids) - recipe.context - 1, (recipe.batch,), generator=gen)
            batch = train_ids[start[:, None] + offsets].to(device)
            for g in opt.param_groups:
                g["lr"] = _lr(recipe, step)
            logits = model(input_ids=batch[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            curve.append(float(loss.detach()))     # nats per byte on the training batch
            advance(step, curve[-1])
            if eval_every and (step + 1) % eval_every == 0:
                e0 = time.perf_counter()
                evals.append((step + 1, _heldout_bpb(model, recipe)))
                model.train()
                eval_s += time.perf_counter() - e0
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0 - eval_s
    cpu_seconds = time.process_time() - cpu0
    model.eval()
    tokens = recipe.steps * recipe.tokens_per_step
    flops = flops_per_token(recipe, n_params) * tokens
    peak, peak_source = _measured_peak(device, probe=recipe.name != "test")   # seconds; not in unit tests
    achieved = flops / seconds / 1e12
    meta = dict(recipe=recipe.as_dict(), corpus=data.corpus_digest(), n_params=n_params, device=device,
                threads=torch.get_num_threads() if device == "cpu" else None,
                train_seconds=seconds, cpu_seconds=cpu_seconds, eval_curve=evals, tokens=tokens, tokens_per_s=tokens / seconds, train_flops=flops,
                train_tflops=achieved, mfu=achieved / peak if peak else None, peak_tflops=peak,
                peak_source=peak_source, loadavg_before=list(load_before), loadavg_after=list(os.getloadavg()),
                loss_curve=curve, torch=torch.__version__)
    return model, meta


def _heldout_bpb(model, recipe: Recipe) -> float:
    from models import evaluate
    from models.zoo import LM
    model.eval()
    return evaluate.bits_per_byte(LM(recipe.name, model, recipe.context), limit=EVAL_BYTES)
