"""The distillation losses.

- `kd_loss` (Hinton, Vinyals & Dean 2015): alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y).
  The T^2 keeps the soft term's gradient scale independent of T (its gradient scales as 1/T^2). Rows without
  a label (y == -100, the fractional-label regime) take the soft term only.
- `feature_loss` (FitNets / TinyBERT's hidden-state loss): MSE between a learned linear projection of the
  student's hidden states and the teacher's, so students of another width can match the teacher's features.
Costs per row: two log-softmaxes and a KL over the classes (3 x vocab exps); negligible beside the models.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE = -100


class DistillError(ValueError):
    """Bad distillation input (one line for the command line, exit 2)."""


def check_hyper(temperature: float, alpha: float) -> None:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise DistillError(f"temperature must be a finite number > 0, got {temperature!r}")
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise DistillError(f"alpha (the soft-target weight) must be in [0, 1], got {alpha!r}")


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher/T || student/T), averaged over rows (the last dimension is the classes)."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)
    return kl.mean() * temperature * temperature


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
            temperature: float = 2.0, alpha: float = 0.5) -> torch.Tensor:
    """alpha * soft-target loss + (1 - alpha) * cross-entropy on the labelled rows; `teacher_logits` None
    (the no-teacher ablation) is the plain cross-entropy."""
    c = student_logits.shape[-1]
    s2, y = student_logits.reshape(-1, c), labels.reshape(-1)
    labelled = y != IGNORE
    hard = F.cross_entropy(s2[labelled], y[labelled]) if labelled.any() else s2.sum() * 0.0
    if teacher_logits is None:
        return hard
    soft = soft_target_loss(s2, teacher_logits.reshape(-1, c), temperature)
    return alpha * soft + (1.0 - alpha) * hard


def feature_loss(projection: torch.nn.Module, student_hidden: torch.Tensor,
                 teacher_hidden: torch.Tensor) -> torch.Tensor:
    """Mean squared error between projection(student hidden) and the teacher's hidden states, normalised by
    the teacher's mean square so the weight means the same for any width or scale."""
    p = projection(student_hidden.float())
    t = teacher_hidden.float().detach()
    return F.mse_loss(p, t) / t.pow(2).mean().clamp_min(1e-12)
