"""`bench.py ab`: slowdown injection, the worker protocol on a real tree, crashes and broken rows, bad input."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from harness import ab as AB
from harness import ab_trees as T
from harness import inject as I
from harness.gate_verdicts import GateConfig, decide
from harness.registry import Suite
from harness.result_sets import ROOT, BadInput


def _fake_suite(call_s=0.002):
    s = Suite("fake", "a fake suite", baseline="v")

    @s.variant("v")
    def v(case, **inputs):
        def run():
            end = time.perf_counter() + call_s
            while time.perf_counter() < end:
                pass
            return 1
        return run
    return s


class _Case:
    device = "cpu"


# ------------------------------------------------------------------------------------------------ injection

def test_inject_adds_calibrated_copies(monkeypatch):
    launch = _fake_suite().variants["v"].setup(_Case())
    assert I.one_call_s(launch, "cpu") >= 0.002                  # a busy-wait of 2 ms takes at least 2 ms
    monkeypatch.setattr(I, "one_call_s", lambda launch, device: 0.002)     # the machine's load out of the way
    suites = {"fake": _fake_suite()}
    added = I.apply(suites, "fake/v=slow50:0.5,same:0")
    assert added == ["fake/v_slow50", "fake/v_same"]
    slow = suites["fake"].variants["v_slow50"].setup(_Case())
    assert slow() == 1 and slow.delay_s == pytest.approx(0.001)  # half of one call
    t0 = time.perf_counter()
    slow()
    assert time.perf_counter() - t0 >= 0.003                     # the call (2 ms) and the wait (1 ms)
    assert suites["fake"].variants["v_same"].setup(_Case()).delay_s == 0
    assert I.apply(suites, "fake/v=slow50:0.5") == []            # idempotent (all_suites() is cached)
    assert suites["fake"].variants["v_slow50"].setup is not suites["fake"].variants["v"].setup
    base = {"fake": _fake_suite()}
    I.apply(base, "fake/v=slow50:0.5", delays=False)             # the baseline side: same rows, no delay
    assert base["fake"].variants["v_slow50"].setup(_Case()).delay_s == 0


@pytest.mark.parametrize("spec,msg", [("fake/v=slow", "bad copy"), ("fake=slow:0.1", "bad spec"),
                                      ("nope/v=s:0.1", "unknown suite"), ("fake/w=s:0.1", "no variant")])
def test_inject_bad_spec(spec, msg):
    with pytest.raises(ValueError, match=msg):
        I.apply({"fake": _fake_suite()}, spec)


# --------------------------------------------------------------------------------------------- measure_row

class _FakeSide:
    def __init__(self, answers):
        self.answers = answers
        self.ops: list[str] = []

    def ask(self, req):
        self.ops.append(req["op"])
        a = self.answers.get(req["op"], {"status": "ok"})
        if isinstance(a, Exception):
            raise a
        return a() if callable(a) else a


def _row(base, cur, rounds=4, sides=None):
    slots = []
    sides = sides or {"base": [_FakeSide(base)], "current": [_FakeSide(cur)]}
    res = AB.measure_row({"base": 0, "current": 0}, 0, {"suite": "s"}, sides, rounds, 0.01, 0, slots)
    return res, slots


def test_measure_row_outcomes():
    rng = np.random.default_rng(0)
    ok = {"prepare": {"status": "ok"}, "measure": lambda: {"status": "ok", "median_ms": 1 + rng.random() / 100, "n": 5}}
    res, slots = _row(ok, ok)
    assert res["_stats"].df == 3 and len(slots) == 8 and {s["order"] for s in slots} == {0, 1}
    assert [s["side"] for s in slots[:4]] == ["base", "current", "current", "base"]     # ABBA
    sides = {"base": [_FakeSide(ok)], "current": [_FakeSide(ok)]}
    _row(ok, ok, sides=sides)
    for pool in sides.values():                      # checked once, then a fresh launcher every later round
        assert pool[0].ops == ["prepare", "measure"] + ["rebuild", "measure"] * 3 + ["release"]
    pools = {"base": [_FakeSide(ok) for _ in range(3)], "current": [_FakeSide(ok) for _ in range(3)]}
    _row(ok, ok, rounds=6, sides=pools)              # round r in worker r % 3: process state sampled per round
    for pool in pools.values():
        assert [w.ops.count("measure") for w in pool] == [2, 2, 2]
        assert all(w.ops[0] == "prepare" and w.ops.count("prepare") == 1 for w in pool)
    died = AB.WorkerDied("current worker died (exit -11)")
    assert _row(ok, {**ok, "measure": died})[0]["verdict"] == "broken"
    assert "died" in _row(ok, {**ok, "prepare": died})[0]["note"]
    assert _row({**ok, "measure": died}, ok)[0]["verdict"] == "not compared"
    assert _row(ok, {**ok, "prepare": {"status": "incorrect", "reason": "3/9 elements"}})[0]["verdict"] == "broken"
    for bad in (float("nan"), 0.0, -2.0):
        res, _ = _row(ok, {**ok, "measure": {"status": "ok", "median_ms": bad, "n": 5}})
        assert res["verdict"] == "broken" and "non-positive" in res["note"]
    assert _row(ok, {**ok, "prepare": {"status": "skipped", "reason": "GPU"}})[0]["verdict"] == "skipped"
    assert _row({**ok, "prepare": {"status": "error", "reason": "x"}}, ok)[0]["verdict"] == "fixed"


def test_paired_rows_decide_with_family_wise_control():
    rng = np.random.default_rng(1)
    rows = []
    for i in range(30):
        b = 1 + 0.02 * rng.standard_normal(6)
        c = b * np.exp(0.02 * rng.standard_normal(6)) * (1.15 if i == 0 else 1.0)
        from harness import gate_stats as S
        rows.append(dict(suite="s", case=str(i), variant="v", dtype="f", device="cpu", verdict=None, note="",
                         n_base=6, n_cur=6, base_ms=1.0, cur_ms=1.0, _stats=S.paired(np.log(c / b))))
    v, summary = decide(rows, GateConfig())
    assert v[v["verdict"] == "regression"]["case"].tolist() == ["0"] and summary["compared"] == 30


# ------------------------------------------------------------------------------------- a real worker process

def test_worker_on_this_tree_plans_checks_measures_and_survives_a_crash(tmp_path):
    tree = T.working_tree()
    side = AB.Side(tree, "current", AB.worker_env(tree), tmp_path / "w.log")
    plan = dict(op="plan", suites=["softmax", "nosuch"], device="cpu", mode="test", dtypes=None, filters=[],
                variants=["torch_eager", "torch_eager_x"], inject="softmax/torch_eager=x:0.5", threads=1)
    side.plan_req = plan
    try:
        ans = side.ask(plan)
        assert Path(ans["env"]["harness"]) == ROOT / "harness"                # the tree's code, not another's
        assert ans["unknown"] == ["nosuch"]
        names = {r["variant"] for r in ans["rows"]}
        assert names == {"torch_eager", "torch_eager_x"} and len(ans["rows"]) % 2 == 0
        assert side.ask({"op": "prepare", "row": 0, "seed": 0})["status"] == "ok"
        m = side.ask({"op": "measure", "budget": 0.02})
        assert m["status"] == "ok" and m["median_ms"] > 0 and m["n"] >= 3
        assert side.ask({"op": "prepare", "row": 10_000})["status"] == "error"      # an answer, not a death
        os.killpg(side.proc.pid, signal.SIGKILL)                                     # a segfaulting kernel
        side.proc.wait()
        assert side.ask({"op": "prepare", "row": 0, "seed": 0})["status"] == "ok"  # restarted, plan replayed
    finally:
        side.stop()


def test_workers_run_under_the_allocator_asked_for(tmp_path):
    tree = T.working_tree()
    try:
        name = AB.choose_allocator("tcmalloc")
    except Exception as exc:                                  # noqa: BLE001 - not installed here
        pytest.skip(str(exc))
    assert AB.choose_allocator("auto") == "tcmalloc"
    plan = dict(op="plan", suites=["softmax"], device="cpu", mode="test", dtypes=None, filters=[],
                variants=["torch_eager"], inject="", threads=1)
    for alloc in (name, "system"):
        side = AB.Side(tree, "current", AB.worker_env(tree, alloc), tmp_path / f"{alloc}.log")
        side.plan_req = plan
        try:
            assert side.ask(plan)["env"]["allocator"] == alloc
        finally:
            side.stop()


def test_suite_aliases_expand_before_the_workers_plan():
    # the workers look suites up by name: `norm` unexpanded selected no row, silently (gate evidence, 2026-11-30)
    assert AB.expand_suites(["softmax", "norm", "rmsnorm"]) == ["softmax", "rmsnorm", "layernorm"]


def test_worker_dying_inside_a_request_is_reported(tmp_path, monkeypatch):
    dies = tmp_path / "dies.py"
    dies.write_text("import sys\nsys.stdin.readline()\nsys.exit(7)\n")
    monkeypatch.setattr(AB, "WORKER", dies)
    tree = T.working_tree()
    side = AB.Side(tree, "current", AB.worker_env(tree), tmp_path / "w.log")
    with pytest.raises(AB.WorkerDied, match="exit 7"):
        side.ask({"op": "prepare", "row": 0})


# -------------------------------------------------------------------------------------------- bad input

def _bench(*args, env=None):
    return subprocess.run([sys.executable, str(ROOT / "bench.py"), "ab", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)


@pytest.mark.parametrize("args,env,msg", [
    (["--baseline-ref", "no-such-ref-xyz"], {}, "unknown git ref"),
    (["--baseline-ref", "HEAD", "--rounds", "2"], {}, "--rounds"),
    (["--baseline-ref", "HEAD"], {"KB_GATE_INJECT": "softmax/torch_eager"}, "KB_GATE_INJECT"),
    (["--suite"], {}, "expected one argument"),
    (["--baseline-ref", "HEAD", "--no-build", "--allocator", "hoard"], {}, "unknown allocator 'hoard'"),
    (["--baseline-ref", "HEAD", "--no-build", "--suite", "nosuch"], {}, "unknown suite nosuch (in neither tree)"),
])
def test_ab_bad_input_one_line_exit_2(args, env, msg):
    r = _bench(*args, env=env)
    assert r.returncode == 2 and msg in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_tree_that_does_not_build_is_bad_input(tmp_path):
    (tmp_path / "CMakeLists.txt").write_text("cmake_minimum_required(VERSION 3.16)\nproject(x)\n"
                                             "message(FATAL_ERROR \"boom: this tree is broken\")\n")
    with pytest.raises(BadInput, match=r"does not build: .*boom.*full log"):
        T.build(T.Tree("baseline", "old", "0" * 40, tmp_path), [], 1)


def test_ab_defaults_to_the_stricter_family_wise_rate():
    """ab's goal is no false alarm in 20 runs, so its default alpha is 0.01; the stored gate keeps 0.05."""
    from harness import gate as G
    ab_args = AB._parser().parse_args(["--baseline-ref", "HEAD"])
    assert ab_args.alpha == AB.AB_ALPHA == 0.01
    assert AB._parser().parse_args(["--baseline-ref", "HEAD", "--alpha", "0.05"]).alpha == 0.05
    gate_args = G._parser().parse_args(["--baseline", "a", "--current", "b"])
    assert gate_args.alpha == 0.05
