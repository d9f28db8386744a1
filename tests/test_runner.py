"""The run loop on a small suite built for the test: every outcome becomes the right row."""
import math

import pandas as pd
import pytest
import torch

from harness.registry import Requires, Skip, Suite
from harness.results import COLUMNS, load
from harness.runner import RunOptions, Runner, build_plan
from harness.timing import TimingConfig


def make_suite():
    s = Suite("toy", "x + 1", baseline="good", tolerances={"float32": (1e-6, 1e-6), "bfloat16": (1e-2, 1e-2)},
              dtypes=("float32", "bfloat16"))
    s.add_cases("test", [dict(n=127), dict(n=1000)])
    s.inputs(lambda case, rng: {"x": torch.randn(case.n, generator=rng).to(case.dtype)})
    s.flops(lambda case: case.n)
    s.bytes(lambda case: 2 * case.n * case.itemsize)
    s.reference(lambda case, x: x + 1)
    seen = {"inputs": []}

    @s.variant("good")
    def good(case, x):
        seen["inputs"].append(x.clone())
        return lambda: x + 1

    @s.variant("wrong")
    def wrong(case, x):
        return lambda: x + 1.01

    @s.variant("unwritten")
    def unwritten(case, x):
        out = case.poisoned(x.shape)
        def run():
            out[:-1] = x[:-1] + 1          # forgets the last element
            return out
        return run

    @s.variant("raises")
    def raises(case, x):
        def run():
            raise RuntimeError("kernel exploded\nsecond line")
        return run

    @s.variant("skips")
    def skips(case, x):
        if case.n > 500:
            raise Skip("n > 500 not supported")
        return lambda: x + 1

    s.variant("needs_gpu", requires=Requires(devices=("cuda",)))(lambda case, x: (lambda: x + 1))
    s.variant("fast", config=lambda launcher: "BLOCK=64")(lambda case, x: (lambda: torch.add(x, 1)))
    s.check_complete()
    return s, seen


@pytest.fixture
def toy_run(tmp_path):
    suite, seen = make_suite()
    opts = RunOptions(suites=[suite], device="cpu", dtypes=["float32"], mode="test", out=tmp_path / "run",
                      timing=TimingConfig(budget_s=0.05, min_samples=3), progress=False, isolate=False)
    runner = Runner(opts, ["--suite", "toy"])
    assert runner.run(build_plan(opts)) == 0
    return runner, seen, tmp_path / "run"


def test_every_outcome_is_a_row(toy_run):
    runner, _, out = toy_run
    df = load(out)
    assert len(df) == 2 * 7
    by = df.set_index(["case", "variant"])
    assert (by.xs("good", level="variant")["status"] == "ok").all()
    w = by.loc[("n=127", "wrong")]
    assert w.status == "incorrect" and "elements outside" in w.reason
    assert math.isnan(w.median_ms) and math.isnan(w.speedup)          # never reported as fast
    u = by.loc[("n=1000", "unwritten")]
    assert u.status == "incorrect" and "1 unwritten (NaN)" in u.reason
    e = by.loc[("n=127", "raises")]
    assert e.status == "error" and e.reason == "RuntimeError: kernel exploded"
    assert "kernel exploded" in (out / "errors.log").read_text()
    assert by.loc[("n=127", "skips")].status == "ok"
    sk = by.loc[("n=1000", "skips")]
    assert sk.status == "skipped" and sk.reason == "n > 500 not supported"
    g = by.loc[("n=127", "needs_gpu")]
    assert g.status == "skipped" and g.reason == "runs on cuda only"
    assert by.loc[("n=127", "fast")].config == "BLOCK=64"


def test_ok_rows_have_statistics_rates_and_speedup(toy_run):
    _, _, out = toy_run
    df = load(out)
    ok = df[df.status == "ok"]
    for _, r in ok.iterrows():
        assert r.n >= 3 and len(r.samples_ms) == r.n
        assert r.p20_ms <= r.median_ms <= r.p80_ms
        assert math.isclose(r.gbps, r.bytes / (r.median_ms / 1e3) / 1e9)
        assert math.isclose(r.tflops, r.flops / (r.median_ms / 1e3) / 1e12)
        assert r.speedup > 0 and r.threads == torch.get_num_threads()
    assert (ok[ok.variant == "good"].speedup == 1.0).all()
    assert list(df.columns[:len(COLUMNS)]) == COLUMNS and "n" in df.columns   # case param (collides: p_n)
    assert "p_n" in df.columns and set(df.p_n) == {127, 1000}


def test_check_inputs_are_fresh_per_case_and_not_the_timing_inputs(toy_run):
    _, seen, _ = toy_run
    xs = seen["inputs"]        # good's setup ran for check and timing, for both cases
    assert len(xs) == 4
    assert not torch.equal(xs[0], xs[1])                      # check vs timing inputs differ
    assert all(x.abs().sum() > 0 for x in xs)                  # never zeros


def test_same_seed_reproduces_inputs_other_seed_does_not(tmp_path):
    suite, _ = make_suite()
    c = suite.cases("test")[0]
    assert torch.equal(suite.make_inputs(c, 1)["x"], suite.make_inputs(c, 1)["x"])
    assert not torch.equal(suite.make_inputs(c, 1)["x"], suite.make_inputs(c, 2)["x"])


def test_filters_and_variant_selection():
    suite, _ = make_suite()
    opts = RunOptions(suites=[suite], device="cpu", dtypes=None, mode="test", filters=["n=1000"])
    plan = build_plan(opts)
    assert {p.case.name for p in plan} == {"n=1000"} and plan[0].variant.name == "good"
    opts = RunOptions(suites=[suite], device="cpu", dtypes=["float32", "bfloat16"], mode="test",
                      variants=["wrong"])
    assert {(p.variant.name, p.case.dtype_name) for p in build_plan(opts)} == {("wrong", "float32"),
                                                                                ("wrong", "bfloat16")}
    opts = RunOptions(suites=[suite], device="cpu", dtypes=None, mode="test", filters=["fa*"])
    assert {p.variant.name for p in build_plan(opts)} == {"fast"}


def test_compiled_variants_never_fall_back_silently(toy_run):
    import torch._dynamo.config as dcfg
    assert dcfg.recompile_limit >= 512 and dcfg.fail_on_recompile_limit_hit is True


def test_ctrl_c_inside_a_write_keeps_that_row(tmp_path):
    """SIGINT landing in writer.add, after the row joined the list but before the files were replaced."""
    suite, _ = make_suite()
    opts = RunOptions(suites=[suite], device="cpu", dtypes=["float32"], mode="test", out=tmp_path,
                      variants=["good", "fast"], timing=TimingConfig(budget_s=0.02, min_samples=2), progress=False,
                      isolate=False)
    runner = Runner(opts, [])
    real_flush, calls = runner.writer.flush, []

    def flush_cut_by_ctrl_c():
        calls.append(1)
        if len(calls) == 2:            # the second row's write is interrupted
            raise KeyboardInterrupt
        real_flush()
    runner.writer.flush = flush_cut_by_ctrl_c
    assert runner.run(build_plan(opts)) == 130
    assert len(runner.writer.rows) == 2
    assert len(load(tmp_path)) == 2 and runner.writer.manifest["rows"] == 2
