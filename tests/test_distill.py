"""distill/: the losses against their formulas, determinism and resume, the ablation's bookkeeping, the
fractional-label regime, bad input, DDP under torchrun, and the suite's rows.

Digits runs use the test step count (40 full-batch steps, well under a second each); the language model
is the `test` teacher (models/: 20 training steps) with a one-layer student. The quality claims (KD beats
the ablation by > 2 sd) are measured figures in README and docs/distill.md, not asserted here.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from distill import experiment, losses, tasks
from distill.losses import DistillError
from distill.train import fit

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def caches(tmp_path_factory):
    old = {k: os.environ.get(k) for k in ("KB_DISTILL_CACHE", "KB_MODELS_CACHE")}
    os.environ["KB_DISTILL_CACHE"] = str(tmp_path_factory.mktemp("distill"))
    os.environ["KB_MODELS_CACHE"] = str(tmp_path_factory.mktemp("models"))
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# ---- losses ------------------------------------------------------------------------------------------------
def test_kd_loss_matches_its_formula_in_float64():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(37, 11, generator=g), torch.randn(37, 11, generator=g) * 3
    y = torch.randint(0, 11, (37,), generator=g)
    y[::5] = losses.IGNORE                                      # unlabelled rows: soft term only
    T, a = 2.5, 0.7
    ps, pt = F.log_softmax(s.double() / T, -1), F.softmax(t.double() / T, -1)
    kl = (pt * (pt.log() - ps)).sum(-1).mean() * T * T
    ce = F.cross_entropy(s.double()[y != -100], y[y != -100])
    got = losses.kd_loss(s, t, y, T, a)
    assert float(got) == pytest.approx(float(a * kl + (1 - a) * ce), rel=1e-5)
    assert float(losses.kd_loss(s, None, y)) == pytest.approx(float(ce), rel=1e-5)   # the ablation: plain CE
    assert float(losses.soft_target_loss(t, t, T)) == pytest.approx(0.0, abs=1e-6)   # identical: no loss


def test_soft_term_gradient_keeps_its_scale_across_temperatures():
    """The T^2 factor (Hinton et al. 2015, section 2.1): at high T the gradient of T^2 KL(./T) tends to
    (s - t) / classes, independent of T; without the factor it would shrink as 1/T^2 (64x from T=4 to 32)."""
    g = torch.Generator().manual_seed(2)
    t = torch.randn(64, 10, generator=g)
    noise = torch.randn(64, 10, generator=g) * 0.5
    norms = []
    for T in (4.0, 8.0, 16.0, 32.0):
        s = (t + noise).requires_grad_()
        losses.soft_target_loss(s, t, T).backward()
        norms.append(float(s.grad.norm()))
    assert max(norms) / min(norms) < 1.5


def test_feature_loss_is_zero_for_a_perfect_projection():
    h = torch.randn(5, 7, 16)
    proj = torch.nn.Linear(16, 16, bias=False)
    torch.nn.init.eye_(proj.weight)
    with torch.no_grad():
        assert float(losses.feature_loss(proj, h, h)) == pytest.approx(0.0, abs=1e-10)
        assert float(losses.feature_loss(proj, h, h * 2)) == pytest.approx(0.25, rel=1e-4)  # (h-2h)^2/(2h)^2


# ---- bad input -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T,a", [(0.0, 0.5), (-1.0, 0.5), (float("nan"), 0.5), (2.0, 1.5), (2.0, -0.1)])
def test_bad_hyper_parameters_are_refused(T, a):
    with pytest.raises(DistillError):
        losses.check_hyper(T, a)


def test_a_student_larger_than_its_teacher_is_refused():
    task = tasks.get("digits")
    big = tasks.DigitsMLP(2048)                                  # 153k parameters against the CNN's 38k
    with pytest.raises(DistillError, match="not fewer than its teacher"):
        tasks.check_student(task, big, task.teacher())
    with pytest.raises(DistillError, match="not fewer"):
        fit(task, 2048, "kd", 0, 1)


@pytest.mark.parametrize("args,msg", [(["--task", "nope"], "unknown task"),
                                      (["--temperature", "0"], "temperature must be"),
                                      (["--student", "nobody"], "unknown student"),
                                      (["--labels", "0"], "labelled share"),
                                      (["--modes", "kd,magic"], "unknown mode")])
def test_cli_bad_input_is_one_line_and_exit_2(args, msg):
    p = subprocess.run([sys.executable, "bench.py", "distill", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("bench.py distill")]
    assert len(lines) == 1 and msg in lines[0] and "Traceback" not in p.stderr


# ---- training: determinism, same initialisation, resume ----------------------------------------------------------
def _weights(m):
    return torch.cat([p.detach().flatten() for p in m.parameters()])


def test_training_is_deterministic_and_modes_share_the_initialisation():
    task = tasks.get("digits")
    a = fit(task, 32, "kd", seed=3, steps=5)
    b = fit(task, 32, "kd", seed=3, steps=5)
    assert torch.equal(_weights(a.student), _weights(b.student)) and a.curve == b.curve
    init_kd = _weights(task.make_student(32, 3))
    init_alone = _weights(task.make_student(32, 3))
    assert torch.equal(init_kd, init_alone)
    c = fit(task, 32, "alone", seed=3, steps=5)
    assert not torch.equal(_weights(c.student), _weights(a.student))   # the teacher changed the training


def test_training_on_first_use_works_inside_no_grad():
    """A suite computes its reference under no_grad and trains the models it needs on first use there."""
    with torch.no_grad():
        f = fit(tasks.get("digits"), 32, "kd", seed=0, steps=2)
        teacher = tasks._train_digits_teacher(steps=2)
    torch.manual_seed(0)
    init = tasks.DigitsCNN()                                   # the teacher's seed-0 initialisation
    assert len(f.curve) == 2 and not torch.equal(_weights(teacher), _weights(init))


@pytest.mark.parametrize("task_name,spec,mode", [("digits", 32, "kd+feat"), ("lm-test", {"layers": 1}, "kd")])
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, task_name, spec, mode):
    task = tasks.get(task_name)
    whole = fit(task, spec, mode, seed=1, steps=8, ckpt=tmp_path / "a.pt", ckpt_every=3)
    part = fit(task, spec, mode, seed=1, steps=8, ckpt=tmp_path / "b.pt", ckpt_every=3, stop_after=5)
    assert len(part.curve) == 5
    rest = fit(task, spec, mode, seed=1, steps=8, ckpt=tmp_path / "b.pt", ckpt_every=3)
    assert rest.resumed_at == 5 and rest.curve == whole.curve       # the batches drawn after the resume match
    assert torch.equal(_weights(rest.student), _weights(whole.student))


# ---- the fractional-label regime ---------------------------------------------------------------------------
def test_labelled_share_is_stratified_and_the_ablation_sees_only_those_labels():
    task = tasks.get("digits")
    mask = task.labelled_mask(0.05, seed=0)
    _, y, _, _ = __import__("models.data", fromlist=["digits"]).digits()
    per_class = torch.bincount(y[mask], minlength=10)
    assert int(mask.sum()) == pytest.approx(0.05 * len(y), abs=10) and int(per_class.min()) >= 1
    assert not torch.equal(mask, task.labelled_mask(0.05, seed=1))
    x, yy = task.batch_for(0, None, mask)
    assert bool((yy[~mask] == losses.IGNORE).all()) and torch.equal(yy[mask], y[mask])


# ---- the experiment's bookkeeping ------------------------------------------------------------------------------
def test_experiment_statistics_and_cache(monkeypatch):
    task = tasks.get("digits")
    res = experiment.run(task, "mlp32", seeds=(0, 1), steps=10, modes=("kd", "alone"))
    assert {(r.mode, r.seed) for r in res.runs} == {("kd", 0), ("kd", 1), ("alone", 0), ("alone", 1)}
    kd, alone = res.values("kd"), res.values("alone")
    assert res.stats("kd")[0] == pytest.approx(sum(kd) / 2)
    assert res.gain("kd") == pytest.approx(sum(kd) / 2 - sum(alone) / 2)          # accuracy: higher is better
    # cached: a second call trains nothing
    monkeypatch.setattr(experiment, "fit", lambda *a, **k: pytest.fail("a cached run was retrained"))
    again = experiment.run(task, "mlp32", seeds=(0, 1), steps=10, modes=("kd", "alone"))
    assert [r.quality for r in again.runs] == [r.quality for r in res.runs]
    student = experiment.load_student(task, res, "kd", seed=0)
    assert task.quality(student) == pytest.approx(res.values("kd")[0])            # the stored weights


def test_bpb_gain_is_positive_when_the_student_has_fewer_bits():
    r = experiment.Result("lm", "s", "t", 1, {}, 2.0, 1, 2, 4, 8, False, "heldout_bpb",
                          runs=[experiment.Run("kd", 0, 2.1, 1.0), experiment.Run("kd", 1, 2.2, 1.0),
                                experiment.Run("alone", 0, 2.4, 1.0), experiment.Run("alone", 1, 2.5, 1.0)])
    assert r.gain("kd") == pytest.approx(0.3) and r.paired("kd") == (pytest.approx(0.3), pytest.approx(0.0))
    assert r.gain_sigmas("kd") == pytest.approx(0.3 / 0.0707107, rel=1e-4)
    assert r.retained("kd") == pytest.approx(100 * 2.0 / 2.15)


# ---- DDP under torchrun ------------------------------------------------------------------------------------------
DDP_SCRIPT = """
import json, os, sys, torch
torch.set_num_threads(1)
import torch.distributed as dist
if os.environ.get("WORLD_SIZE", "1") != "1":
    dist.init_process_group("gloo")
from distill import tasks
from distill.train import fit
f = fit(tasks.get("lm-test"), {"layers": 1}, "kd", seed=0, steps=6)
q = tasks.get("lm-test").quality(f.student)
if int(os.environ.get("RANK", "0")) == 0:
    print("RESULT", json.dumps({"curve": f.curve, "bpb": q}))
if dist.is_initialized():
    dist.destroy_process_group()
"""


def test_ddp_on_two_processes_matches_one_process(tmp_path):
    """The same global batches split over 2 gloo ranks: DDP averages the gradients, so the run matches the
    single process up to summation order."""
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    tasks.get("lm-test").teacher()                                   # train the teacher once, before the ranks

    def result(cmd):
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-2000:]
        line = next(ln for ln in p.stdout.splitlines() if ln.startswith("RESULT"))
        return json.loads(line.split(" ", 1)[1])
    one = result([sys.executable, str(script)])
    two = result([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                  str(script)])
    assert two["curve"][0] != pytest.approx(0.0)
    assert two["bpb"] == pytest.approx(one["bpb"], rel=2e-3)
    assert two["curve"][-1] == pytest.approx(one["curve"][-1], rel=2e-3)


# ---- the suite ---------------------------------------------------------------------------------------------------
def test_suite_rows_carry_the_ablation_and_the_speedups(tmp_path):
    """The distill suite's test cases through the runner (the bench.py path): every row checked against its
    own model in float64; quality rows hold the seeds' mean, the teacher's figure and the ablation's; the
    speedup table pairs each student with the teacher timed in the same run; the report draws the plot."""
    import pandas as pd

    from distill import report
    from harness.registry import get_suite
    from harness.runner import Plan, RunOptions, Runner
    from harness.timing import TimingConfig
    suite = get_suite("distill")
    runner = Runner(RunOptions(suites=[suite], device="cpu", dtypes=None, mode="test", out=tmp_path,
                               timing=TimingConfig(budget_s=0.01, min_samples=2), progress=False, isolate=False), [])
    try:
        rows = [runner.run_one(Plan(suite, c, suite.variants["eager"])) for c in suite.cases("test", "cpu")]
    finally:
        runner.close()
    assert {r["status"] for r in rows} == {"ok"}, [(r["case"], r["reason"]) for r in rows if r["status"] != "ok"]
    by = {r["case"]: r for r in rows}
    kd, alone = by["digits:mlp32/kd@0.05labels:quality"], by["digits:mlp32/alone@0.05labels:quality"]
    assert kd["n_seeds"] == 2 and kd["labels"] == 0.05 and kd["quality_metric"] == "digits_accuracy"
    assert kd["ablation_value"] == pytest.approx(alone["quality_value"])
    assert kd["kd_gain"] == pytest.approx(kd["quality_value"] - alone["quality_value"])
    assert kd["retained_pct"] == pytest.approx(100 * kd["quality_value"] / kd["quality_ref"])
    lm = by["lm-test:half-depth/kd:quality"]
    assert lm["quality_ref"] == pytest.approx(by["lm-test:teacher:quality"]["quality_value"])
    assert lm["kd_gain"] == pytest.approx(lm["ablation_value"] - lm["quality_value"])     # bits: lower is better
    assert by["digits:teacher:classify-b3"]["params"] > by["digits:mlp32/kd:classify-b3"]["params"]
    assert by["lm-test:half-depth/kd:decode-b3-ctx9"]["tokens_per_s"] > 0
    df = pd.DataFrame(rows)
    sp = report.speedups(df)
    assert set(zip(sp["task"], sp["student"])) == {("digits", "mlp32"), ("lm-test", "half-depth")}
    t = by["digits:teacher:classify-b3"]["median_ms"] / by["digits:mlp32/kd:classify-b3"]["median_ms"]
    assert float(sp[sp["task"] == "digits"]["speedup"].iloc[0]) == pytest.approx(t)
