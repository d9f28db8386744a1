"""The ablation: every student trained with its teacher (kd, kd+feat) and without (alone), same seeds, same
initialisation, same batches, same steps; mean and standard deviation over the seeds.

Each (task, teacher, student, mode, seed, steps, hyper-parameters) run is cached as JSON (its quality, curve
and training time) beside its checkpoint under `.cache/distill/` (`$KB_DISTILL_CACHE`), so the suite and
the command line reuse it, and an interrupted run resumes from its checkpoint.

The decision rule for "distillation helps": the KD mean beats the ablation mean by more than two pooled
standard deviations, gain > 2 * sqrt((sd_kd^2 + sd_alone^2) / 2), in the task's better direction. The paired
per-seed differences (same initialisation) are reported beside it.
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import torch

from distill import tasks as _tasks
from distill.train import MODES, Hyper, fit

SEEDS = (0, 1, 2)


@dataclass
class Run:
    mode: str
    seed: int
    quality: float
    train_s: float
    curve: list[float] = field(default_factory=list)


@dataclass
class Result:
    task: str
    student: str
    teacher: str
    steps: int
    hyper: dict
    teacher_quality: float
    params: int
    teacher_params: int
    weight_bytes: int
    teacher_weight_bytes: int
    higher_is_better: bool
    metric: str
    runs: list[Run] = field(default_factory=list)

    def values(self, mode: str) -> list[float]:
        return [r.quality for r in self.runs if r.mode == mode]

    def stats(self, mode: str) -> tuple[float, float]:
        v = self.values(mode)
        return (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0) if v else (float("nan"), 0.0)

    def gain(self, mode: str = "kd") -> float:
        """How much better `mode` is than the ablation, in the metric's units (positive = better)."""
        g = self.stats(mode)[0] - self.stats("alone")[0]
        return g if self.higher_is_better else -g

    def pooled_sd(self, mode: str = "kd") -> float:
        return ((self.stats(mode)[1] ** 2 + self.stats("alone")[1] ** 2) / 2) ** 0.5

    def gain_sigmas(self, mode: str = "kd") -> float:
        sd = self.pooled_sd(mode)
        return self.gain(mode) / sd if sd > 0 else float("inf") if self.gain(mode) > 0 else 0.0

    def paired(self, mode: str = "kd") -> tuple[float, float]:
        a = {r.seed: r.quality for r in self.runs if r.mode == mode}
        b = {r.seed: r.quality for r in self.runs if r.mode == "alone"}
        d = [(a[s] - b[s]) * (1 if self.higher_is_better else -1) for s in sorted(a) if s in b]
        return (statistics.fmean(d), statistics.stdev(d) if len(d) > 1 else 0.0) if d else (float("nan"), 0.0)

    def retained(self, mode: str = "kd") -> float:
        t = _tasks.get(self.task) if self.task in _tasks.TASKS else None
        q = self.stats(mode)[0]
        if t is None:
            return float("nan")
        return t.retained(q, self.teacher_quality)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(task=self.task, student=self.student, teacher=self.teacher, steps=self.steps,
                                   params=self.params, teacher_params=self.teacher_params, metric=self.metric,
                                   teacher_quality=self.teacher_quality, **self.hyper)
        for m in sorted({r.mode for r in self.runs}):
            mean, sd = self.stats(m)
            out[f"{m}_mean"], out[f"{m}_sd"] = mean, sd
            out[f"{m}_train_s"] = statistics.fmean(r.train_s for r in self.runs if r.mode == m)
            if m != "alone":
                out[f"{m}_gain"], out[f"{m}_gain_sigmas"] = self.gain(m), self.gain_sigmas(m)
                out[f"{m}_retained_pct"] = self.retained(m)
        return out


def _key(task: _tasks.Task, student: str, mode: str, seed: int, steps: int, hyper: Hyper) -> str:
    blob = json.dumps(dict(task=task.name, teacher=task.teacher_name, student=student,
                           spec=task.students[student], mode=mode, seed=seed, steps=steps, hyper=asdict(hyper),
                           lr=task.lr, batch=task.batch, v=1), sort_keys=True)
    return f"{task.name}-{task.teacher_name}-{student}-{mode}-s{seed}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def run_one(task: _tasks.Task, student: str, mode: str, seed: int, steps: int, hyper: Hyper,
            progress=None, stop_after: int | None = None) -> Run | None:
    """One cached run; None when `stop_after` interrupted it (its checkpoint is kept for the resume)."""
    root = _tasks.cache_root() / "runs"
    key = _key(task, student, mode, seed, steps, hyper)
    done = root / f"{key}.json"
    if done.is_file() and (root / f"{key}.student.pt").is_file():
        try:
            return Run(**json.loads(done.read_text()))
        except (ValueError, TypeError):
            pass                                  # a corrupt record is recomputed, never used
    fitted = fit(task, task.students[student], mode, seed, steps, hyper, ckpt=root / f"{key}.pt",
                 progress=progress, stop_after=stop_after)
    if stop_after is not None and len(fitted.curve) < steps:
        return None
    run = Run(mode, seed, task.quality(fitted.student), fitted.train_s, fitted.curve)
    root.mkdir(parents=True, exist_ok=True)
    weights = root / f"{key}.student.pt"          # the trained student, for the suite to time and check
    tmp = weights.with_name(f".{weights.name}.tmp{os.getpid()}")
    torch.save(fitted.student.state_dict(), tmp)
    os.replace(tmp, weights)
    tmp = done.with_name(f".{done.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(asdict(run)))
    os.replace(tmp, done)
    (root / f"{key}.pt").unlink(missing_ok=True)  # finished: the record replaces the checkpoint
    return run


def run(task: _tasks.Task, student: str, seeds: Iterable[int] = SEEDS, steps: int | None = None,
        hyper: Hyper | None = None, modes: Iterable[str] = MODES, mode_name: str = "quick",
        progress: bool = False) -> Result:
    """The ablation of one student: `modes` x `seeds`, cached."""
    hyper = hyper or Hyper()
    hyper.check()
    if student not in task.students:
        raise _tasks.DistillError(f"unknown student {student!r} for {task.name}: choose from "
                                  f"{', '.join(task.students)}")
    steps = steps or task.steps[mode_name]
    teacher = task.teacher()
    probe = task.make_student(task.students[student], 0)
    _tasks.check_student(task, probe, teacher)
    res = Result(task.name, student, task.teacher_name, steps,
                 dict(temperature=hyper.temperature, alpha=hyper.alpha, beta=hyper.beta, labels=hyper.labels),
                 task.teacher_quality(), _tasks.n_params(probe), _tasks.n_params(teacher),
                 _tasks.weight_bytes(probe), _tasks.weight_bytes(teacher), task.higher_is_better,
                 task.quality_metric)
    jobs = [(m, s) for m in modes for s in seeds]
    from harness.ui import loss_bar
    with loss_bar(progress, f"distill {task.name}/{student}", len(jobs) * steps) as advance:
        for m, s in jobs:
            res.runs.append(run_one(task, student, m, s, steps, hyper, progress=advance))
    return res


def load_student(task: _tasks.Task, res: Result, mode: str, seed: int = 0) -> torch.nn.Module:
    """The trained student of one run of `res` (eval mode)."""
    key = _key(task, res.student, mode, seed, res.steps, Hyper(**res.hyper))
    model = task.make_student(task.students[res.student], seed)
    model.load_state_dict(torch.load(_tasks.cache_root() / "runs" / f"{key}.student.pt", weights_only=True))
    return model.eval()


def merge(*results: Result) -> Result:
    """One record holding the runs of several records of the same student (e.g. kd and alone)."""
    out = Result(**{**asdict(results[0]), "runs": []})
    for r in results:
        if (r.task, r.student, r.steps, r.hyper) != (out.task, out.student, out.steps, out.hyper):
            raise ValueError("merge: the records are not of the same student and settings")
        out.runs.extend(x for x in r.runs if (x.mode, x.seed) not in {(y.mode, y.seed) for y in out.runs})
    return out
