"""Which weights to keep: masks for one linear layer's weight W [out, in] (y = x @ W^T).

Patterns (`Pattern`):
- `2:4` semi-structured: in every group of 4 consecutive inputs of a row, the 2 with the highest score are
  kept (NVIDIA Ampere's sparse tensor cores; Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks").
  Density is 50% by construction. Needs in % 4 == 0.
- `block` sparsity: the layer is cut into b x b blocks (b = 16 or 32); the blocks with the highest summed
  score are kept, `density` of them (rounded, at least one). Needs out % b == 0 and in % b == 0.
- `unstructured`: the `density` share of individual weights with the highest score in the layer: the
  quality ceiling of any pattern at the same density (it has the most freedom).

Scores: `magnitude` |W|, or `wanda` |W| * ||X_j||_2 (Sun et al. 2023, "A Simple and Effective Pruning
Approach for Large Language Models"): the weight's magnitude times the L2 norm of its input feature over
calibration activations, so a small weight on a loud input survives. Wanda compares weights within an
output row; the 2:4 groups are inside a row already, blocks and unstructured compare across the layer.

A pattern that does not fit a layer raises `PatternError` with the reason (callers turn it into a
`skipped` row or leave the layer dense and say so); nothing is padded or silently cropped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

KINDS = ("2:4", "block", "unstructured")
SCORES = ("magnitude", "wanda")


class PatternError(ValueError):
    """The pattern does not fit this layer's shape (the message says which dimension and why)."""


@dataclass(frozen=True)
class Pattern:
    kind: str                      # "2:4" | "block" | "unstructured"
    density: float = 0.5           # share of weights kept (2:4: always 0.5)
    block: int = 0                 # block edge for kind "block"
    score: str = "magnitude"       # "magnitude" | "wanda"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown pattern kind {self.kind!r}; choose from {', '.join(KINDS)}")
        if self.score not in SCORES:
            raise ValueError(f"unknown score {self.score!r}; choose from {', '.join(SCORES)}")
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"density {self.density} is not in (0, 1]")
        if self.kind == "2:4" and self.density != 0.5:
            raise ValueError("2:4 keeps exactly half of the weights (density 0.5)")
        if self.kind == "block" and self.block < 1:
            raise ValueError("a block pattern needs a block size >= 1")

    @property
    def name(self) -> str:
        pct = f"d{round(self.density * 100)}"
        base = {"2:4": "2:4", "block": f"block{self.block}-{pct}", "unstructured": f"unstructured-{pct}"}[self.kind]
        return base if self.score == "magnitude" else f"{base}-{self.score}"

    def fits(self, shape) -> str | None:
        """None when the pattern applies to a weight of this [out, in] shape, else why not."""
        out_f, in_f = shape
        if self.kind == "2:4" and in_f % 4:
            return f"2:4 needs in_features divisible by 4 (in_features={in_f})"
        if self.kind == "block":
            bad = [f"{n}={v}" for n, v in (("out_features", out_f), ("in_features", in_f)) if v % self.block]
            if bad:
                return f"block {self.block} needs both dimensions divisible by {self.block} ({', '.join(bad)})"
        return None


def magnitude(w: torch.Tensor) -> torch.Tensor:
    return w.detach().abs().float()


def wanda(w: torch.Tensor, act_norm: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||X_j||_2: act_norm [in] is the L2 norm of each input feature over the calibration tokens."""
    if act_norm.shape != (w.shape[1],):
        raise ValueError(f"activation norms of shape {tuple(act_norm.shape)} for a weight {tuple(w.shape)}")
    return w.detach().abs().float() * act_norm.float().to(w.device)[None, :]


def nm_mask(score: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Keep the n highest-scoring of every m consecutive inputs of each row (ties: the lower index)."""
    out_f, in_f = score.shape
    if in_f % m:
        raise PatternError(f"{n}:{m} needs in_features divisible by {m} (in_features={in_f})")
    groups = score.reshape(out_f, in_f // m, m)
    keep = torch.topk(groups, n, dim=-1, sorted=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(out_f, in_f)


def n_kept(total: int, density: float) -> int:
    return max(1, min(total, int(math.floor(total * density + 0.5))))


def block_mask(score: torch.Tensor, block: int, density: float) -> torch.Tensor:
    """Keep the `density` share of b x b blocks with the largest summed score (the whole block or nothing)."""
    out_f, in_f = score.shape
    why = Pattern("block", density, block).fits(score.shape)
    if why:
        raise PatternError(why)
    nb_o, nb_i = out_f // block, in_f // block
    bscore = score.reshape(nb_o, block, nb_i, block).sum(dim=(1, 3))         # [nb_o, nb_i]
    keep = torch.topk(bscore.flatten(), n_kept(nb_o * nb_i, density)).indices
    bmask = torch.zeros(nb_o * nb_i, dtype=torch.bool, device=score.device)
    bmask[keep] = True
    return bmask.reshape(nb_o, 1, nb_i, 1).expand(nb_o, block, nb_i, block).reshape(out_f, in_f)


def unstructured_mask(score: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the `density` share of individual weights with the largest score in the layer."""
    flat = score.flatten()
    keep = torch.topk(flat, n_kept(flat.numel(), density)).indices
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[keep] = True
    return mask.reshape(score.shape)


def mask_for(w: torch.Tensor, pattern: Pattern, act_norm: torch.Tensor | None = None) -> torch.Tensor:
    """The boolean keep-mask of `pattern` for weight w [out, in]; PatternError when it does not fit."""
    why = pattern.fits(w.shape)
    if why:
        raise PatternError(why)
    if pattern.score == "wanda":
        if act_norm is None:
            raise ValueError("wanda needs the input activation norms (sparsity.prune.calibrate)")
        score = wanda(w, act_norm)
    else:
        score = magnitude(w)
    if pattern.kind == "2:4":
        return nm_mask(score)
    if pattern.kind == "block":
        return block_mask(score, pattern.block, pattern.density)
    return unstructured_mask(score, pattern.density)


def is_2to4(w: torch.Tensor) -> bool:
    """Every group of 4 consecutive inputs of each row has at most 2 nonzeros."""
    if w.shape[-1] % 4:
        return False
    return bool(((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all())
