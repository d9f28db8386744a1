"""Knowledge distillation, measured: what a student keeps of its teacher's quality, what it gains over the
same student trained without the teacher, and how much faster it runs (distill/, docs/distill.md).

A case is one model of a task at one measurement, so its work (FLOPs, bytes) and its float64 reference are
that model's own:
- `model`: `teacher`, or `<student>/<mode>` with mode `kd` (Hinton's loss), `kd_feat` (plus the feature
  loss) or `alone` (the no-teacher ablation: same initialisation, data and steps); the seed-0 model is timed.
- `kind`: `classify-b{b}` (digits: b images), `prefill-b{b}-p{p}` / `decode-b{b}-ctx{c}` (the language model,
  KV-cached as in suites/model.py), or `quality` (a forward over held-out data; the row's quality columns
  hold the mean over the seeds, its spread, the teacher's figure and the ablation's).
Speed is compared as teacher / student medians of the same run (`distill.report.speedups`: the
`bench.py distill` table and the HTML report's retention-versus-speedup plot).

Training happens on first use (distill/experiment.py caches every run; `python bench.py distill` runs the
same experiments with progress bars). Quick mode: digits (both regimes: all labels, and 5% of them) and
the half-depth-narrow language-model student (one layer of width 64), 3 seeds; --full adds `half-depth`
and `narrow`.
"""
from __future__ import annotations

import copy
from typing import Any

import torch

from distill import experiment, report, tasks
from distill.train import Hyper
from harness.registry import Suite
from suites import _lm

MODE_NAMES = {"kd": "kd", "kd_feat": "kd+feat", "alone": "alone"}
# The language model learns from the teacher's whole next-byte distribution at T = 1 with no hard labels:
# measured 2026-11-30 (3 seeds of the half-depth student): at 300 steps 3.07 bits per byte against T = 2,
# alpha = 0.5's 3.40 (and 3.20 alone); at 1,000 steps 2.10 +- 0.03 against 2.14 +- 0.10 alone (README).
HYPER = {"digits": dict(temperature=4.0, alpha=0.9), "lm": dict(temperature=1.0, alpha=1.0),
         "lm-test": dict(temperature=1.0, alpha=1.0)}


def _kind_name(p: dict) -> str:
    k = p["kind"]
    if k in ("quality", "classify"):
        return k if k == "quality" else f"classify-b{p['b']}"
    return _lm.kind_label(p)


def _name(p: dict) -> str:
    lab = f"@{p['labels']:g}labels" if p.get("labels", 1.0) < 1.0 else ""
    return f"{p['task']}:{p['model']}{lab}:{_kind_name(p)}"


SUITE = Suite(
    name="distill",
    description="distilled students against their teachers and the no-teacher ablation: quality kept, speed",
    baseline="eager",
    dtypes=("float32",),
    # each case's float64 reference is the same model in float64: float32 rounding only
    tolerances={"float32": (2e-3, 2e-3)},
    compute_class="matmul",
    case_name=_name,
)


def _kind(text: str) -> dict:
    """"decode-b8-ctx128" -> {kind: decode, b: 8, n: 128} (sizes as integer case parameters)."""
    parts = text.split("-")
    out = dict(kind=parts[0], b=int(parts[1][1:]))
    if len(parts) > 2:
        out["n"] = int(parts[2][3:] if parts[2].startswith("ctx") else parts[2][1:])
    return out


def _speed(task, models, kinds, **kw):
    return [dict(task=task, model=m, **_kind(k), **kw) for m in models for k in kinds]


def _quality(task, student, modes, labels=1.0):
    return [dict(task=task, model=f"{student}/{m}", kind="quality", labels=labels) for m in modes] + \
        ([dict(task=task, model="teacher", kind="quality")] if labels == 1.0 else [])


_ALL = ("kd", "kd_feat", "alone")
SUITE.add_cases("test", _speed("digits", ("teacher", "mlp32/kd"), ("classify-b3",), steps="test") +
                [dict(q, steps="test") for q in _quality("digits", "mlp32", ("kd", "alone"), 0.05)] +
                _speed("lm-test", ("teacher", "half-depth/kd"), ("decode-b3-ctx9",)) +
                _quality("lm-test", "half-depth", ("kd", "alone")))
def _unique(cases: list[dict]) -> list[dict]:
    """Each case once (every student's quality list names the teacher's quality case)."""
    seen: dict[str, dict] = {}
    for c in cases:
        seen.setdefault(_name(c), c)
    return list(seen.values())


_DIGITS = (_speed("digits", ("teacher", "mlp64/kd", "mlp32/kd"), ("classify-b1", "classify-b256")) +
           _quality("digits", "mlp64", _ALL) + _quality("digits", "mlp32", _ALL) +
           _quality("digits", "mlp64", ("kd", "alone"), 0.05) + _quality("digits", "mlp32", ("kd", "alone"), 0.05))
_LM_KINDS = ("prefill-b1-p128", "decode-b1-ctx128", "decode-b8-ctx128")
# quick: the half-depth student that meets both of issue 16's language-model targets (one layer of width 64)
SUITE.add_cases("quick", _unique(_DIGITS + _speed("lm", ("teacher", "half-depth-narrow/kd"), _LM_KINDS) +
                _quality("lm", "half-depth-narrow", _ALL)))
_LM_STUDENTS = ("half-depth", "narrow", "half-depth-narrow")
SUITE.add_cases("full", _unique(_DIGITS + _speed("lm", ("teacher",) + tuple(f"{s}/kd" for s in _LM_STUDENTS), _LM_KINDS)
                                + [q for s in _LM_STUDENTS for q in _quality("lm", s, _ALL)]))


# ---- the models, trained on first use and cached ---------------------------------------------------------
_TASKS: dict[str, tasks.Task] = {}
_MODELS: dict[tuple, torch.nn.Module] = {}


def task_of(case) -> tasks.Task:
    if case.task not in _TASKS:
        _TASKS[case.task] = tasks.get(case.task)
    return _TASKS[case.task]


def hyper_of(case) -> Hyper:
    return Hyper(labels=case.params.get("labels", 1.0), **HYPER[case.task])


def result_of(case, mode: str) -> experiment.Result:
    """The ablation record of the case's student in one mode (trained now if not cached)."""
    t = task_of(case)
    student = case.model.split("/")[0]
    steps = t.steps["test" if case.task == "lm-test" or _is_test(case) else "quick"]
    seeds = (0, 1) if _is_test(case) else experiment.SEEDS
    return experiment.run(t, student, seeds=seeds, steps=steps, hyper=hyper_of(case), modes=(MODE_NAMES[mode],))


def _is_test(case) -> bool:
    return case.task == "lm-test" or case.params.get("steps") == "test"


def model_of(case) -> torch.nn.Module:
    """The case's model in eval mode: the teacher, or the seed-0 student of its mode."""
    key = (case.task, case.model, case.params.get("labels", 1.0))
    if key not in _MODELS:
        t = task_of(case)
        if case.model == "teacher":
            _MODELS[key] = t.teacher()
        else:
            mode = case.model.split("/")[1]
            res = result_of(case, mode)
            _MODELS[key] = experiment.load_student(t, res, MODE_NAMES[mode], seed=0)
    return _MODELS[key]


def _parse(case) -> tuple[str, int, int]:
    """("classify"|"prefill"|"decode"|"quality", batch, tokens)."""
    p = case.params
    return p["kind"], int(p.get("b", 0)), int(p.get("n", 0))


@SUITE.inputs
def make_inputs(case, rng):
    from models import data
    what, b, n = _parse(case)
    g = _lm.generator(rng)
    if case.task == "digits":
        x = data.digits()[2]
        rows = 64 if what == "quality" else b
        return {"x": x[torch.randint(0, len(x), (rows,), generator=g)].to(case.device)}
    if what == "quality":
        b, n = 4, task_of(case).recipe.context
    return {"x": _lm.held_out_windows(g, b, n + (1 if what == "decode" else 0)).to(case.device)}


@SUITE.flops
def flops(case):
    """2 FLOPs per weight per row or token (the embedding of a language model counts once, as the output
    projection; digits convolutions: their multiply-adds per image), plus causal attention."""
    model = model_of(case)
    what, b, n = _parse(case)
    if case.task == "digits":
        rows = 64 if what == "quality" else b
        return rows * report.digits_flops_per_image(model)
    if what == "quality":
        b, n = 4, task_of(case).recipe.context
    return _lm.flops(_lm.shape(model), tasks.n_params(model), what, b, n)


@SUITE.bytes
def nbytes(case):
    """Every weight read once per call, plus the inputs and logits (digits) or the KV cache (decode)."""
    model = model_of(case)
    what, b, n = _parse(case)
    w = tasks.weight_bytes(model)
    if case.task == "digits":
        rows = 64 if what == "quality" else b
        return w + rows * (64 + 10) * 4
    if what == "quality":
        b, n = 4, task_of(case).recipe.context
    return w + _lm.kv_bytes(_lm.shape(model), b, n, 4)


@SUITE.reference
def reference(case, x):
    """The case's own model in float64: logits (decode: the uncached forward's last position)."""
    model = copy.deepcopy(model_of(case)).double()
    if case.task == "digits":
        return model(x.double())
    return _lm.last_if_decode(_parse(case)[0], model(input_ids=x).logits)


@SUITE.variant("eager")
def eager(case, x):
    """the model in eager PyTorch (float32); language models with a DynamicCache"""
    model = model_of(case)
    what, b, n = _parse(case)
    if case.task == "digits":
        return _lm.Launcher(lambda: model(x))
    with torch.no_grad():                    # decode: the cache is filled here, outside the timing
        return _lm.Launcher(_lm.runner(model, what, x, n))


@SUITE.model_columns
def model_columns(case, launcher, row: dict[str, Any]) -> dict[str, Any]:
    model = model_of(case)
    t = task_of(case)
    what, b, n = _parse(case)
    sec = row["median_ms"] / 1e3
    cols: dict[str, Any] = dict(model=f"{case.task}:{case.model}", params=tasks.n_params(model),
                                weight_bytes=tasks.weight_bytes(model))
    if what in ("prefill", "decode"):
        cols["tokens_per_s"] = _lm.tokens(what, b, n) / sec
        if what == "decode":
            cols["ms_per_token"] = row["median_ms"]
    elif what == "classify":
        cols["images_per_s"] = b / sec
    if what == "quality":
        teacher_q = t.teacher_quality()
        cols.update(quality_metric=t.quality_metric, quality_ref=teacher_q)
        if case.model == "teacher":
            cols.update(quality_value=teacher_q, quality_delta=0.0)
            return cols
        mode = case.model.split("/")[1]
        res = result_of(case, mode)
        alone = result_of(case, "alone") if mode != "alone" else res
        both = experiment.merge(res, alone)
        m = MODE_NAMES[mode]
        mean, sd = both.stats(m)
        cols.update(quality_value=mean, quality_delta=mean - teacher_q, quality_sd=sd, n_seeds=len(both.values(m)),
                    retained_pct=t.retained(mean, teacher_q), labels=hyper_of(case).labels,
                    train_s=sum(r.train_s for r in both.runs if r.mode == m) / max(1, len(both.values(m))),
                    teacher_params=both.teacher_params)
        if m != "alone":
            pm, psd = both.paired(m)
            cols.update(ablation_value=both.stats("alone")[0], ablation_sd=both.stats("alone")[1],
                        kd_gain=both.gain(m), kd_gain_sigmas=both.gain_sigmas(m), paired_gain=pm, paired_gain_sd=psd)
    return cols
