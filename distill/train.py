"""One training loop for every student, with and without its teacher: deterministic, resumable, DDP-ready.

`fit(task, spec, mode, seed, steps)`:
- mode "kd": Hinton's loss (losses.kd_loss, T and alpha); "kd+feat": plus the feature loss (weight beta) of
  the student's last hidden state through a learned projection onto the teacher's; "alone": the no-teacher
  ablation, plain cross-entropy on the same labelled rows. Every mode starts from the same initialisation
  (the student is built from `seed`), sees the same batches in the same order and takes the same steps.
- AdamW, linear warm-up (5% of the steps) then cosine decay to 10%, gradient clipping 1.0, float32.
- Deterministic for a seed: the batch generator's state is part of the checkpoint, so a resumed run draws
  the batches an uninterrupted one would. A checkpoint (student, projection, optimizer, generator, step,
  loss curve) is written atomically every `ckpt_every` steps to `ckpt`; `fit` resumes from it.
- Under torchrun (torch.distributed initialised, world size W > 1) the student is wrapped in
  DistributedDataParallel and each rank takes its 1/W of every global batch's rows; DDP averages the
  gradients, so the step equals the single-process one up to summation order. Rank 0 writes checkpoints.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from distill.losses import DistillError, check_hyper, feature_loss, kd_loss
from distill.tasks import Task, check_student, model_forward

MODES = ("kd", "kd+feat", "alone")


@dataclass
class Hyper:
    temperature: float = 2.0
    alpha: float = 0.5          # weight of the soft-target term
    beta: float = 1.0           # weight of the feature loss (kd+feat)
    labels: float = 1.0         # share of the training inputs whose labels the student sees (digits)

    def check(self) -> None:
        check_hyper(self.temperature, self.alpha)
        if not (0.0 < self.labels <= 1.0):
            raise DistillError(f"the labelled share must be in (0, 1], got {self.labels!r}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise DistillError(f"beta (the feature-loss weight) must be >= 0, got {self.beta!r}")


@dataclass
class Fitted:
    student: nn.Module
    curve: list[float] = field(default_factory=list)
    train_s: float = 0.0
    resumed_at: int = 0


class _Pair(nn.Module):
    """The student and its feature projection as one module (one DDP wrapper, one optimizer)."""

    def __init__(self, student: nn.Module, proj: nn.Module | None):
        super().__init__()
        self.student, self.proj = student, proj

    def forward(self, x):
        return model_forward(self.student, x, self.proj is not None)


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _lr(base: float, step: int, steps: int) -> float:
    warm = max(1, steps // 20)
    if step < warm:
        return base * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


@torch.enable_grad()        # a suite's reference or setup may run under no_grad and train on first use
def fit(task: Task, spec: Any, mode: str, seed: int, steps: int, hyper: Hyper | None = None,
        ckpt: Path | None = None, ckpt_every: int = 50, progress: Callable[[int, float], None] | None = None,
        stop_after: int | None = None) -> Fitted:
    """Train one student (see the module docstring). `stop_after` ends the run early after that many steps
    (with a checkpoint): the interruption the resume test needs."""
    hyper = hyper or Hyper()
    hyper.check()
    if mode not in MODES:
        raise DistillError(f"unknown mode {mode!r}: choose from {', '.join(MODES)}")
    rank, world = _dist()
    teacher = task.teacher() if mode != "alone" else None
    student = task.make_student(spec, seed)
    check_student(task, student, task.teacher())
    proj = None
    if mode == "kd+feat":
        torch.manual_seed(seed + 1)
        hs, ht = task.hidden_sizes(student)
        proj = nn.Linear(hs, ht, bias=False)
    pair = _Pair(student, proj)
    decay = [p for p in pair.parameters() if p.ndim >= 2]
    rest = [p for p in pair.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1 if task.name == "lm" else 0.0},
                             {"params": rest, "weight_decay": 0.0}], lr=task.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(seed)
    labelled = task.labelled_mask(hyper.labels, seed) if hasattr(task, "labelled_mask") else None
    curve: list[float] = []
    start = 0
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        pair.load_state_dict(state["pair"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        curve, start = list(state["curve"]), int(state["step"])
    model = pair
    if world > 1:
        model = nn.parallel.DistributedDataParallel(pair)
    if teacher is not None:
        teacher.eval()
    pair.train()
    t0 = time.perf_counter()
    fixed: tuple | None = None                  # a task whose batch never changes (digits: the whole split)
    for step in range(start, steps):
        if fixed is not None:
            x, y, t_logits, t_hidden = fixed
        else:
            x, y = task.batch_for(step, gen, labelled)
            if world > 1:                       # this rank's share of the global batch's rows
                if len(x) % world:
                    raise DistillError(f"a batch of {len(x)} rows does not split over {world} ranks")
                share = len(x) // world
                x, y = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]
            t_logits = t_hidden = None
            if teacher is not None:             # the frozen teacher's targets for this batch
                with torch.no_grad():
                    t_logits, t_hidden = model_forward(teacher, x, proj is not None)
            if task.fixed_batch:
                fixed = (x, y, t_logits, t_hidden)
        for g in opt.param_groups:
            g["lr"] = _lr(task.lr, step, steps)
        logits, hidden = model(x)
        loss = kd_loss(logits, t_logits, y, hyper.temperature, hyper.alpha)
        if proj is not None:
            loss = loss + hyper.beta * feature_loss(pair.proj, hidden, t_hidden)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(pair.parameters(), 1.0)
        opt.step()
        logged = loss.detach()
        if world > 1:                           # the global batch's loss, as one process would log it
            torch.distributed.all_reduce(logged)
            logged = logged / world
        curve.append(float(logged))
        if progress is not None:
            progress(step, curve[-1])
        done = step + 1
        if ckpt is not None and rank == 0 and (done % ckpt_every == 0 or done == steps or done == stop_after):
            _save(ckpt, dict(pair=pair.state_dict(), opt=opt.state_dict(), gen=gen.get_state(), curve=curve,
                             step=done))
        if stop_after is not None and done >= stop_after:
            break
    student.eval()
    return Fitted(student, curve, time.perf_counter() - t0, start)


def _save(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)
