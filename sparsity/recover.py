"""Short recovery fine-tuning of a pruned model with its masks kept (the pruned weights stay exactly zero).

AdamW on random windows of the TRAINING split (the held-out text is only for measuring), next-byte
cross-entropy, a constant learning rate after a short warm-up, gradient clipping at 1.0; after every
optimizer step the masks are applied again (`prune.apply_masks`), so the pattern a kernel relies on holds
at every step, not just at the end (AdamW's weight decay and momentum would otherwise revive pruned weights).
Cost: `steps` forward+backward passes of batch x context tokens (the tiny model: about 6N FLOPs per token,
N = 0.43M, so 200 steps of 16 x 64 tokens is ~0.5 TFLOP, seconds to a minute on this CPU).
"""
from __future__ import annotations

import torch

from models import data
from sparsity.prune import apply_masks

STEPS = 200
LR = 1e-3
BATCH = 16
SEED = 4321


@torch.enable_grad()                  # callers may sit under no_grad (a suite's reference, a check)
def finetune(lm, masks: dict[str, torch.Tensor], steps: int = STEPS, lr: float = LR, batch: int = BATCH,
             seed: int = SEED) -> list[float]:
    """Fine-tune `lm.model` in place for `steps` steps with `masks` kept; returns the loss per step (nats)."""
    model = lm.model
    train_ids = data.as_tensor(data.split()[0])
    g = torch.Generator().manual_seed(seed)
    ctx = lm.context
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = max(1, steps // 10)
    losses: list[float] = []
    model.train()
    try:
        for step in range(steps):
            for grp in opt.param_groups:
                grp["lr"] = lr * min(1.0, (step + 1) / warmup)
            starts = torch.randint(0, len(train_ids) - ctx - 1, (batch,), generator=g)
            rows = train_ids[starts[:, None] + torch.arange(ctx + 1)].to(lm.device)
            logits = model(input_ids=rows[:, :-1]).logits.float()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            apply_masks(model, masks)
            losses.append(float(loss.detach()))
    finally:
        model.eval()
    return losses
