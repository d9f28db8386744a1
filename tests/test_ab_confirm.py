"""bench.py ab's second stage (harness/ab_confirm.py): the screen, the confirming test, the final verdicts, the fresh
workers, and the family-wise error of screen-then-confirm on simulated heavy-tailed rounds."""
from __future__ import annotations

import math

import numpy as np
import pytest

from harness import ab as AB
from harness import ab_confirm as C
from harness import gate_stats as S
from harness.gate_verdicts import KEY, GateConfig, blank, decide


def _rows(lrs: dict[str, np.ndarray]) -> list[dict]:
    rows = []
    for case, lr in lrs.items():
        r = blank(dict(suite="s", case=case, variant="v", dtype="f", device="cpu"), threshold=0.05)
        r.update(_stats=S.paired(lr), _lr=np.asarray(lr), n_base=len(lr), n_cur=len(lr), base_ms=1.0, cur_ms=1.0)
        rows.append(r)
    return rows


def _k(case: str) -> tuple:
    return ("s", case, "v", "f", "cpu")


QUIET = np.log([1.01, 0.99, 1.0, 1.02, 0.98, 1.0])


def test_screen_takes_regressions_and_slow_rows_hidden_by_one_wild_round():
    rng = np.random.default_rng(0)
    lrs = {f"null{i}": 0.02 * rng.standard_normal(6) for i in range(20)}
    lrs["clear"] = np.log([1.21, 1.2, 1.22, 1.19, 1.2, 1.21])            # a regression in the first stage already
    lrs["hidden"] = np.log([1.21, 2.61, 1.21, 1.21, 1.2, 1.2])           # mean x1.37, its variance hides it
    lrs["wildlow"] = np.log([1.2, 0.49, 1.21, 1.2, 1.19, 1.2])           # mean below the bar, trimmed mean above
    lrs["twowild"] = np.log([1.116, 0.463, 0.422, 1.108, 1.098, 1.107])  # recorded: mean and trimmed x0.82, median
    lrs["faster"] = np.log([0.8, 0.81, 0.79, 0.8, 0.8, 0.81])
    rows = _rows(lrs)
    decide(rows, GateConfig(alpha=0.01))
    assert {r["case"]: r["verdict"] for r in rows}["hidden"] == "unchanged"   # what the one-stage rule missed
    got = {k[1] for k in C.screen(rows, GateConfig(alpha=0.01))}
    assert {"clear", "hidden", "wildlow", "twowild"} <= got and "faster" not in got
    assert len(got - {"clear", "hidden", "wildlow", "twowild"}) <= 1       # a null row only by chance


def test_confirm_test_is_robust_to_one_wild_round_and_never_below_the_pool():
    slow = np.log([1.2, 1.21, 1.19, 1.2, 2.9, 1.2, 1.21, 1.2, 1.19, 1.2, 1.22, 1.2, 0.5, 1.2, 1.18, 1.21])
    t = C.confirm_test(slow, pool_sd=0.02, alpha=0.01)
    assert 1.18 < t.ratio < 1.23 and t.p < 1e-6
    null = np.log([1.0, 1.01, 0.99, 1.0, 2.9, 1.0, 0.99, 1.01, 1.0, 1.0, 0.98, 1.02, 2.2, 1.0, 1.01, 1.0])
    t = C.confirm_test(null, pool_sd=0.02, alpha=0.01)
    assert 0.99 < t.ratio < 1.02 and t.p > 0.05
    agree = np.full(16, math.log(1.03)) + np.r_[1e-4, -1e-4].repeat(8)    # rounds agreeing by chance: lifted
    t = C.confirm_test(agree, pool_sd=0.05, alpha=0.01)
    lifted = math.sqrt(S.PRIOR_DF / (S.PRIOR_DF + 7)) * 0.05 / math.sqrt(16)    # 4 prior df, 7 of its own
    assert t.sd >= lifted * 0.99 and t.p > 1e-3
    hist = [0.0, 0.08, -0.08, 0.1, -0.1]                                   # with a learned history: gate_noise's
    t2 = C.confirm_test(slow, pool_sd=0.02, alpha=0.01, hist=hist)
    assert t2.sd > 0.03 and t2.floor > 0.05            # the history (sd 8.6%) widens it, the pool (2%) would not


def _first(lrs):
    rows = _rows(lrs)
    v, summary = decide(rows, GateConfig(alpha=0.01))
    return rows, v, summary


def test_decide_confirmed_replaces_only_the_candidates_verdicts():
    rng = np.random.default_rng(2)
    lrs = {f"null{i}": 0.02 * rng.standard_normal(6) for i in range(10)}
    lrs["real"] = np.log([1.21, 2.61, 1.21, 1.21, 1.2, 1.2])
    lrs["fluke"] = np.log([1.15, 1.16, 1.14, 1.15, 1.16, 1.15])           # a first-stage regression ...
    lrs["gone"] = np.log([1.2, 1.2, 1.2, 1.2, 1.2, 1.2])
    lrs["base_died"] = np.log([1.2, 1.21, 1.2, 1.19, 1.2, 1.2])
    rows, v, summary = _first(lrs)
    assert set(v[v["verdict"] == "regression"]["case"]) >= {"fluke", "gone", "base_died"}
    confirm = {_k("real"): np.log(np.r_[np.full(15, 1.2), 0.6]),
               _k("fluke"): np.log(1 + 0.01 * rng.standard_normal(16))}       # ... not seen again: unchanged
    fails = {_k("gone"): "current crashed while timing: worker died (exit -11)",
             _k("base_died"): "baseline error while timing: x"}
    ms = {_k("real"): (1.0, 1.2)}
    out = C.decide_confirmed(v, confirm, GateConfig(alpha=0.01), summary["pooled_sd"], failures=fails, ms=ms)
    by = out.set_index("case")
    assert by.at["real", "verdict"] == "regression" and "confirmed in 16 new rounds" in by.at["real", "note"]
    assert by.at["real", "cur_ms"] == 1.2 and by.at["real", "n_cur"] == 22
    assert by.at["fluke", "verdict"] == "unchanged" and "not confirmed" in by.at["fluke", "note"]
    assert "screened regression" in by.at["fluke", "note"]
    assert by.at["gone", "verdict"] == "broken"                             # a crash in the second stage fails
    assert by.at["base_died", "verdict"] == "regression" and "second stage failed" in by.at["base_died", "note"]
    assert (by.drop(index=["real", "fluke", "gone", "base_died"])["verdict"] != "regression").all()
    assert out["verdict"].tolist()[:3] == ["broken", "regression", "regression"]       # sorted as decide sorts


def test_holm_runs_over_the_candidates():
    """Two candidates each at one-sided p ~ 0.008: one alone passes alpha 0.01; two need p <= 0.005 for the
    first (Holm), so neither fails. Dropping the correction fails this test."""
    rows, v, summary = _first({"a": QUIET, "b": QUIET})
    z = np.array([0.1, 1.2, -0.9, 0.8, 0.2, -1.5, 1.4, -0.3, 0.6, -1.1, 1.0, -0.2, 0.4, -0.6, 0.9, -0.7])
    pool = 0.045
    lo, hi = 0.0, 0.2                   # the shift whose one-sided p is 0.0075, by bisection
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if C.confirm_test(mid + pool * z, pool, 0.01).p > 0.0075 else (lo, mid)
    lr = hi + pool * z
    assert 0.005 < C.confirm_test(lr, pool, 0.01).p < 0.01 and math.exp(lr.mean()) > 1.03
    one = C.decide_confirmed(v, {_k("a"): lr}, GateConfig(alpha=0.01, threshold=0.03), pool)
    two = C.decide_confirmed(v, {_k("a"): lr, _k("b"): lr}, GateConfig(alpha=0.01, threshold=0.03), pool)
    assert one.set_index("case").at["a", "verdict"] == "regression"
    assert (two["verdict"] == "unchanged").all()


class _Side:
    def __init__(self, t):
        self.t, self.ops, self.plan_req = t, [], None

    def ask(self, req):
        self.ops.append(req["op"])
        if req["op"] == "measure":
            return {"status": "ok", "median_ms": self.t, "n": 5}
        return {"status": "ok"}

    def stop(self):
        self.ops.append("stop")


def test_run_confirm_uses_fresh_workers_that_prepare_first(monkeypatch, tmp_path):
    made = []

    def pools(trees, out, workers, rounds, alloc, tag=""):
        assert tag == "-confirm"
        p = {"base": [_Side(1.0) for _ in range(3)], "current": [_Side(1.2) for _ in range(3)]}
        made.append(p)
        return p
    monkeypatch.setattr(AB, "make_pools", pools)
    plans = {n: {"rows": [dict(zip(KEY, _k(c))) for c in ("x", "y")]} for n in ("base", "current")}
    lrs, ms, slots, fails, stopped = AB.run_confirm({}, {}, plans, [_k("y")], 6, 0.01, 0, tmp_path, progress=False)
    assert not stopped and not fails and list(lrs) == [_k("y")]
    assert np.allclose(lrs[_k("y")], math.log(1.2)) and ms[_k("y")] == pytest.approx((1.0, 1.2))
    for pool in made[0].values():
        for w in pool:                                           # new processes: each checks the row first
            assert w.ops[0] == "prepare" and w.ops.count("measure") == 2 and w.ops[-1] == "stop"
    assert len(slots) == 12 and set(slots["case"]) == {"y"}


def _simulate(rng, n_rows: int, slow: dict[int, float], rounds: int = 6, confirm: int = C.CONFIRM_ROUNDS) \
        -> set[int]:
    """One gate run on heavy-tailed rounds (sd 2%, one round in 24 in another speed, x1.3-x2.5 either way: the 80
    recorded A/A runs had 4.2% of rounds more than 25% off their row's median) with a
    per-run side bias on one random row in 10 runs (a state of the run, not of the code): the rows called
    regressions after screen-then-confirm."""
    def rounds_of(i, n, bias):
        x = 0.02 * rng.standard_normal(n) + math.log(slow.get(i, 1.0)) + bias
        wild = rng.random(n) < 1 / 24
        x[wild] += rng.choice([-1, 1], wild.sum()) * np.log(rng.uniform(1.3, 2.5, wild.sum()))
        return x
    biased = rng.integers(n_rows) if rng.random() < 0.1 else -1
    lrs = {str(i): rounds_of(i, rounds, 0.15 if i == biased else 0.0) for i in range(n_rows)}
    rows = _rows(lrs)
    cfg = GateConfig(alpha=0.01)
    v, summary = decide(rows, cfg)
    cands = C.screen(rows, cfg)
    second = {k: rounds_of(int(k[1]), confirm, 0.0) for k in cands}        # fresh workers: the bias is gone
    out = C.decide_confirmed(v, second, cfg, summary["pooled_sd"])
    return {int(c) for c in out[out["verdict"] == "regression"]["case"]}


def test_screen_then_confirm_holds_the_family_wise_rate_and_catches_hidden_slowdowns():
    rng = np.random.default_rng(7)
    runs = 300
    fa = caught = 0
    for _ in range(runs):
        got = _simulate(rng, 30, {0: 1.2})
        fa += bool(got - {0})
        caught += 0 in got
    assert fa / runs <= 0.02, fa                      # alpha 1%, with sampling slack
    assert caught == runs, caught                     # +20% caught in every run
