"""The two distillation tasks: their teachers, students, training data and quality figure.

**digits** (scikit-learn's bundled 8x8 digits, models/data.py split): the teacher is a small CNN (conv 1->16
3x3, conv 16->32 3x3, 2x2 max-pool, 512->64->10; 38,282 parameters), trained here once and cached. Students
are MLPs (`mlp64`: 64->64->10, 4,810 parameters; `mlp32`: 64->32->10, 2,410). Batches are the whole
training split (1,347 images; full-batch Adam), so a step is deterministic and needs no sampler state.
Quality: accuracy on the 450 test images. The fractional-label regime (`labels` < 1) keeps the labels of a
seeded, stratified share of the training images; the teacher's soft targets still cover every image.

**lm** (the models/ language model, byte-level text of pydoc_data.topics): the teacher is `tiny` (models/zoo,
trained on first use and cached), or `test` for the unit tests. Students are the teacher's recipe with
fewer layers (`half-depth`), a narrower hidden size (`narrow`: half the width, head dim kept), or both.
Batches are random windows of the training split drawn with a seeded generator (its state is part of a
checkpoint). Quality: held-out bits per byte (lower is better; "retained" = teacher bpb / student bpb).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from distill.losses import IGNORE, DistillError
from models import data, evaluate

ROOT = Path(__file__).resolve().parent.parent


def cache_root() -> Path:
    return Path(os.environ.get("KB_DISTILL_CACHE", ROOT / ".cache" / "distill"))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def weight_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


# ---- digits ----------------------------------------------------------------------------------------------
class DigitsCNN(nn.Module):
    """The digits teacher. FLOPs per image: conv1 64*16*9*2 = 18k, conv2 64*32*16*9*2 = 590k, fc 2*(512*64 +
    64*10) = 67k: about 0.68 MFLOP per image, against 9.5k for `mlp64` and 4.7k for `mlp32` (2 * (64 * w + w * 10))."""

    def __init__(self, c1: int = 16, c2: int = 32, fc: int = 64):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.Conv2d(c1, c2, 3, padding=1),
                                      nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c2 * 16, fc), nn.ReLU(), nn.Linear(fc, 10))

    def forward(self, x: torch.Tensor, hidden: bool = False):
        h = self.head[:3](self.features(x.reshape(-1, 1, 8, 8)))
        out = self.head[3](h)
        return (out, h) if hidden else out


class DigitsMLP(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, width), nn.ReLU())
        self.out = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor, hidden: bool = False):
        h = self.body(x.reshape(-1, 64))
        out = self.out(h)
        return (out, h) if hidden else out


@dataclass
class Task:
    """What the training loop and the experiment need from a task."""
    name: str
    students: dict[str, Any]
    quality_metric: str                     # "digits_accuracy" (higher is better) or "heldout_bpb" (lower)
    higher_is_better: bool
    steps: dict[str, int]                   # per mode: quick / full / test
    lr: float
    batch: int = 0                          # rows per step (lm); digits: the whole training split
    teacher_name: str = ""
    extra: dict = field(default_factory=dict)
    fixed_batch: bool = False               # every step sees the same batch (its teacher targets computed once)

    # what each task defines (DigitsTask, LMTask)
    def teacher(self) -> nn.Module:
        raise NotImplementedError

    def make_student(self, spec: Any, seed: int) -> nn.Module:
        raise NotImplementedError

    def batch_for(self, step: int, gen: torch.Generator | None, labelled: torch.Tensor | None):
        """(inputs, labels) of training step `step`; labels IGNORE where the student may not see them."""
        raise NotImplementedError

    def quality(self, model: nn.Module) -> float:
        raise NotImplementedError

    def teacher_quality(self) -> float:
        raise NotImplementedError

    def hidden_sizes(self, student: nn.Module) -> tuple[int, int]:
        """(student, teacher) widths of the last hidden state: the feature projection's shape."""
        raise NotImplementedError

    def retained(self, student_q: float, teacher_q: float) -> float:
        """Share of the teacher's quality kept, in % (bpb: teacher / student, since lower is better)."""
        return 100.0 * (student_q / teacher_q if self.higher_is_better else teacher_q / student_q)


@dataclass
class DigitsTask(Task):
    def __post_init__(self):
        self._teacher: nn.Module | None = None

    def teacher(self) -> nn.Module:
        if self._teacher is None:
            self._teacher = _cached_digits_teacher()
        return self._teacher

    def make_student(self, spec: int, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return DigitsMLP(spec)

    def labelled_mask(self, share: float, seed: int) -> torch.Tensor | None:
        """Which training images keep their label: a stratified `share` of each class, chosen by `seed`."""
        if share >= 1.0:
            return None
        _, y, _, _ = data.digits()
        g = torch.Generator().manual_seed(10_000 + seed)
        keep = torch.zeros(len(y), dtype=torch.bool)
        for c in range(10):
            idx = (y == c).nonzero().flatten()
            k = max(1, round(share * len(idx)))
            keep[idx[torch.randperm(len(idx), generator=g)[:k]]] = True
        return keep

    def batch_for(self, step, gen, labelled):
        x, y, _, _ = data.digits()
        if labelled is not None:
            y = torch.where(labelled, y, torch.full_like(y, IGNORE))
        return x, y

    def quality(self, model: nn.Module) -> float:
        return evaluate.accuracy(model, *data.digits()[2:])

    def teacher_quality(self) -> float:
        return self.quality(self.teacher())

    def hidden_sizes(self, student):
        return student.out.in_features, self.teacher().head[1].out_features


@torch.enable_grad()        # trained on first use, possibly inside a suite's no_grad reference
def _train_digits_teacher(seed: int = 0, steps: int = 400) -> nn.Module:
    x, y, _, _ = data.digits()
    torch.manual_seed(seed)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):                      # minibatches of 256: 400 steps ~ 76 epochs, a few seconds
        idx = torch.randint(0, len(x), (256,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def _cached_digits_teacher() -> nn.Module:
    path = cache_root() / "digits-teacher-cnn16-32-64-s0.pt"
    model = DigitsCNN()
    if path.is_file():
        try:
            model.load_state_dict(torch.load(path, weights_only=True))
            return model.eval()
        except Exception:                       # a corrupt file is retrained, never used
            pass
    model = _train_digits_teacher()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model


# ---- the language model ----------------------------------------------------------------------------------
@dataclass
class LMTask(Task):
    teacher_spec: str = "tiny"

    def __post_init__(self):
        self._teacher = None

    def lm(self):
        if self._teacher is None:
            from models import zoo
            self._teacher = zoo.load(self.teacher_spec, progress=False)
        return self._teacher

    def teacher(self) -> nn.Module:
        return self.lm().model

    @property
    def recipe(self):
        from models.configs import RECIPES
        return RECIPES[self.teacher_spec]

    def student_recipe(self, spec: dict):
        r = self.recipe
        hidden = spec.get("hidden", r.hidden)
        heads = max(1, hidden // (r.hidden // r.heads))
        kv = max(1, min(r.kv_heads, heads))
        inter = spec.get("intermediate", r.intermediate * hidden // r.hidden)
        return dataclasses.replace(r, name=f"{r.name}-student", layers=spec.get("layers", r.layers), hidden=hidden,
                                   heads=heads, kv_heads=kv, intermediate=inter)

    def make_student(self, spec: dict, seed: int) -> nn.Module:
        from transformers import LlamaForCausalLM
        torch.manual_seed(seed)
        return LlamaForCausalLM(self.student_recipe(spec).config("sdpa"))

    def batch_for(self, step, gen, labelled):
        r = self.recipe
        ids = _train_ids()
        start = torch.randint(0, len(ids) - r.context - 1, (self.batch,), generator=gen)
        b = ids[start[:, None] + torch.arange(r.context + 1)]
        return b[:, :-1], b[:, 1:]

    def quality(self, model: nn.Module) -> float:
        from models.zoo import LM
        model.eval()
        return evaluate.bits_per_byte(LM("student", model, self.recipe.context), limit=self.extra.get("eval_bytes"))

    def teacher_quality(self) -> float:
        return self.quality(self.teacher())

    def hidden_sizes(self, student):
        return student.config.hidden_size, self.teacher().config.hidden_size


_IDS: dict = {}


def _train_ids() -> torch.Tensor:
    if "train" not in _IDS:
        _IDS["train"] = data.as_tensor(data.split()[0])
    return _IDS["train"]


def model_forward(model: nn.Module, x: torch.Tensor, hidden: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits, last hidden state or None) for either task's models."""
    if isinstance(model, (DigitsCNN, DigitsMLP)):
        return model(x, hidden=True) if hidden else (model(x), None)
    out = model(input_ids=x, output_hidden_states=hidden)
    return out.logits, (out.hidden_states[-1] if hidden else None)


# ---- the registry ----------------------------------------------------------------------------------------
LM_STUDENTS = {"half-depth": {"layers": 1}, "narrow": {"hidden": 64}, "half-depth-narrow": {"layers": 1, "hidden": 64}}
TEST_LM_STUDENTS = {"half-depth": {"layers": 1}}


def _digits() -> Task:
    return DigitsTask("digits", students={"mlp64": 64, "mlp32": 32}, quality_metric="digits_accuracy",
                      higher_is_better=True, steps={"quick": 300, "full": 600, "test": 40}, lr=1e-2,
                      teacher_name="cnn16-32-64", fixed_batch=True)


def _lm(teacher: str = "tiny") -> Task:
    test = teacher == "test"
    return LMTask("lm", students=TEST_LM_STUDENTS if test else LM_STUDENTS, quality_metric="heldout_bpb",
                  higher_is_better=False, steps={"quick": 300, "full": 1000, "test": 12}, lr=6e-3,
                  batch=8 if test else 16, teacher_name=teacher, teacher_spec=teacher,
                  extra={"eval_bytes": 4096 if test else None})


TASKS: dict[str, Callable[[], Task]] = {"digits": _digits, "lm": _lm, "lm-test": lambda: _lm("test")}


def get(name: str) -> Task:
    if name not in TASKS:
        raise DistillError(f"unknown task {name!r}: choose from {', '.join(TASKS)}")
    return TASKS[name]()


def check_student(task: Task, student: nn.Module, teacher: nn.Module) -> None:
    """A student must be smaller than its teacher (parameters), or it is not distillation."""
    ns, nt = n_params(student), n_params(teacher)
    if ns >= nt:
        raise DistillError(f"{task.name}: the student has {ns:,} parameters, not fewer than its teacher's {nt:,}")
