"""Pruning a whole causal LM (models.zoo): every linear layer of its decoder blocks, one pattern.

    from models import load
    from sparsity import prune, masks
    lm = load("tiny")
    norms = prune.calibrate(lm)                                   # ||X_j||_2 per input feature, per layer
    report = prune.prune_model(lm.model, masks.Pattern("2:4", score="wanda"), norms)
    report.skipped                                                # [(layer, reason)] left dense

Layers: the `nn.Linear` modules inside the decoder blocks (attention q/k/v/o, MLP gate/up/down). The tied
embedding / output head stays dense (pruning a 256-symbol vocabulary's embedding is not what 2:4 is for).

Calibration (Wanda): CALIB_SEQS windows of the model's context from the TRAINING split (never the held-out
text the quality is measured on), one forward of the dense model; each layer's input x [tokens, in] adds up
sum_t x_tj^2. One shot on the dense model's activations (the paper's one-shot variant; it does not re-run the
calibration after each pruned layer).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from models import data
from sparsity.masks import Pattern, PatternError, mask_for

CALIB_SEQS = 32
CALIB_SEED = 1234


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The prunable linear layers: inside the decoder blocks (`layers.<i>.`), not the output head."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in f".{n}"]


def calibration_ids(context: int, seqs: int = CALIB_SEQS, seed: int = CALIB_SEED) -> torch.Tensor:
    train = data.as_tensor(data.split()[0])
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(train) - context - 1, (seqs,), generator=g)
    return train[starts[:, None] + torch.arange(context)]


@torch.no_grad()
def calibrate(lm, seqs: int = CALIB_SEQS, seed: int = CALIB_SEED) -> dict[str, torch.Tensor]:
    """L2 norm of each input feature of every prunable layer over calibration tokens of the training split."""
    sums: dict[str, torch.Tensor] = {}
    hooks = []
    for name, mod in linear_layers(lm.model):
        def hook(_m, args, _out, name=name):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            sums[name] = sums.get(name, 0) + (x * x).sum(0)
        hooks.append(mod.register_forward_hook(hook))
    try:
        ids = calibration_ids(lm.context, seqs, seed).to(lm.device)
        for i in range(0, len(ids), 8):
            lm.model(input_ids=ids[i:i + 8])
    finally:
        for h in hooks:
            h.remove()
    return {k: v.sqrt() for k, v in sums.items()}


@dataclass
class PruneReport:
    pattern: Pattern
    masks: dict[str, torch.Tensor] = field(default_factory=dict)     # layer -> keep-mask (pruned layers)
    skipped: list[tuple[str, str]] = field(default_factory=list)     # (layer, why it was left dense)
    kept: int = 0                                                     # weights kept in the pruned layers
    total: int = 0                                                    # weights in the pruned layers

    @property
    def density(self) -> float:
        return self.kept / self.total if self.total else 1.0


@torch.no_grad()
def prune_model(model: nn.Module, pattern: Pattern, act_norms: dict[str, torch.Tensor] | None = None) -> PruneReport:
    """Zero the weights `pattern` drops in every prunable layer, in place; layers it does not fit stay dense."""
    report = PruneReport(pattern)
    for name, mod in linear_layers(model):
        try:
            mask = mask_for(mod.weight, pattern, (act_norms or {}).get(name))
        except PatternError as exc:
            report.skipped.append((name, str(exc)))
            continue
        mod.weight.mul_(mask.to(mod.weight.dtype))
        report.masks[name] = mask
        report.kept += int(mask.sum())
        report.total += mask.numel()
    return report


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Re-zero the pruned weights (after an optimizer step of the recovery fine-tuning)."""
    mods = dict(model.named_modules())
    with torch.no_grad():
        for name, mask in masks.items():
            mods[name].weight.mul_(mask.to(mods[name].weight.dtype))


def planned(model: nn.Module, pattern: Pattern | None) -> dict[str, tuple[int, int]]:
    """{layer: (weights kept, stored units)} that `pattern` will give each prunable layer it fits, computed from
    the shapes alone (no pruning): the counts are fixed by the pattern (2:4: half; blocks and unstructured:
    masks.n_kept of the blocks / weights). `stored units` is the block count for block patterns."""
    from sparsity.masks import n_kept
    out: dict[str, tuple[int, int]] = {}
    if pattern is None:
        return out
    for name, mod in linear_layers(model):
        n, k = mod.weight.shape
        if pattern.fits((n, k)):
            continue
        if pattern.kind == "2:4":
            out[name] = (n * k // 2, n * k // 2)
        elif pattern.kind == "block":
            nb = n_kept((n // pattern.block) * (k // pattern.block), pattern.density)
            out[name] = (nb * pattern.block ** 2, nb)
        else:
            kept = n_kept(n * k, pattern.density)
            out[name] = (kept, kept)
    return out


def weight_bytes(model: nn.Module, report: PruneReport | None, itemsize: int) -> int:
    """Bytes of the weights as the pattern's compressed format stores them (sparsity.formats): dense layers
    and parameters in full; 2:4 layers values + 2-bit indices; block layers values + int32 block indices;
    unstructured layers as CSR (values + int32 column index per value + int32 row pointers)."""
    masks = report.masks if report else {}
    units = {}
    for layer, m in masks.items():
        if report.pattern.kind == "block":
            b = report.pattern.block
            units[layer] = int(m.reshape(m.shape[0] // b, b, m.shape[1] // b, b).any(3).any(1).sum())
        else:
            units[layer] = int(m.sum())
    return stored_bytes(model, report.pattern if report else None, units, itemsize)


def stored_bytes(model: nn.Module, pattern: Pattern | None, units: dict[str, int], itemsize: int) -> int:
    """Bytes of all parameters when the layers in `units` (layer -> kept weights, or kept blocks for block
    patterns) are stored in `pattern`'s compressed format and everything else densely."""
    from sparsity.formats import bsr_bytes, bytes_24
    mods = dict(model.named_modules())
    total = 0
    seen = set()
    for pname, p in model.named_parameters():
        if id(p) in seen:          # tied embedding counted once
            continue
        seen.add(id(p))
        layer = pname.rsplit(".", 1)[0]
        if pname.endswith(".weight") and layer in units and isinstance(mods.get(layer), nn.Linear):
            n, k = p.shape
            if pattern.kind == "2:4":
                total += bytes_24(n, k, itemsize)
            elif pattern.kind == "block":
                total += bsr_bytes(units[layer], pattern.block, n, itemsize)
            else:
                total += units[layer] * (itemsize + 4) + 4 * (n + 1)
        else:
            total += p.numel() * itemsize
    return total
