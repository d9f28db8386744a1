"""suites/model.py through the harness: the model-level columns, correctness against the eager float32
model before timing, and kernel suites leaving the model columns empty. (tests/test_suites.py runs every
variant of the suite at its test shapes.)"""
import math

import pytest

from harness.registry import all_suites
from harness.results import COLUMNS, to_frame
from harness.runner import Plan, RunOptions, Runner
from harness.timing import TimingConfig

MODEL_COLUMNS = ("model", "tokens_per_s", "ms_per_token", "peak_mem_mb", "energy_per_token_j",
                 "quality_metric", "quality_value", "quality_ref", "quality_delta")


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    suites = all_suites()
    opts = RunOptions(suites=[suites["model"], suites["softmax"]], device="cpu", dtypes=None, mode="test",
                      out=tmp_path_factory.mktemp("model-suite"),
                      timing=TimingConfig(budget_s=0.01, min_samples=2), progress=False,
                      isolate=False)          # in this process, so the tests can break a variant on purpose
    runner = Runner(opts, [])
    yield runner
    runner.close()


def _rows(runner, variant, dtype="float32"):
    suite = all_suites()["model"]
    return {c.name.split(":")[1]: runner.run_one(Plan(suite, c, suite.variants[variant]))
            for c in suite.cases("test", "cpu", dtype)}


def test_model_columns_are_in_the_schema():
    assert all(c in COLUMNS for c in MODEL_COLUMNS)


@pytest.mark.parametrize("variant", ["eager", "sdpa"])
def test_rows_carry_tokens_memory_and_quality(runner, variant):
    rows = _rows(runner, variant)
    for name, r in rows.items():
        assert r["status"] == "ok", r["reason"]
        assert r["model"] == "test"
        tokens = 3 if name.startswith("decode") else (2 * 17 if name.startswith("prefill") else 4 * 64)
        assert r["tokens_per_s"] == pytest.approx(tokens / (r["median_ms"] / 1e3))
        assert r["peak_mem_mb"] > 50                     # the whole process's peak RSS: torch alone is more
    assert rows["decode-b3-ctx9"]["ms_per_token"] == rows["decode-b3-ctx9"]["median_ms"]
    q = rows["quality"]
    assert q["quality_metric"] == "heldout_bpb"
    assert 3.0 < q["quality_ref"] < 8.5
    assert q["quality_delta"] == pytest.approx(q["quality_value"] - q["quality_ref"])
    assert abs(q["quality_delta"]) < 1e-4                # same model, another attention implementation


def test_bfloat16_quality_is_measured_against_the_float32_model(runner):
    q = _rows(runner, "sdpa", "bfloat16")["quality"]
    assert q["status"] == "ok"
    assert q["quality_value"] != q["quality_ref"] and abs(q["quality_delta"]) < 0.1


def test_a_variant_with_wrong_logits_is_incorrect_and_not_timed(runner, monkeypatch):
    suite = all_suites()["model"]
    good = suite.variants["sdpa"].setup

    def broken(case, input_ids):
        launcher = good(case, input_ids)
        run = launcher.run
        launcher.run = lambda: run() * 1.01                # 1% off: far outside the float32 tolerance
        return launcher
    monkeypatch.setattr(suite.variants["sdpa"], "setup", broken)
    rows = _rows(runner, "sdpa")
    assert {r["status"] for r in rows.values()} == {"incorrect"}
    assert all(r.get("median_ms") is None and r.get("tokens_per_s") is None for r in rows.values())


def test_a_decode_step_that_ignores_its_cache_is_incorrect(runner, monkeypatch):
    """The decode reference is the uncached forward over all c + 1 tokens, so a step that attends to the new
    token only (its KV cache lost) fails the check."""
    from suites import model as model_suite
    suite = all_suites()["model"]
    good = suite.variants["eager"].setup

    def no_cache(case, input_ids):
        launcher = good(case, input_ids)
        if case.kind == "decode":
            model, tok = model_suite.lm_for(case).model, input_ids[:, -1:]
            launcher.run = lambda: model(input_ids=tok).logits[:, -1]
        return launcher
    monkeypatch.setattr(suite.variants["eager"], "setup", no_cache)
    rows = _rows(runner, "eager")
    assert rows["decode-b3-ctx9"]["status"] == "incorrect"
    assert rows["prefill-b2-p17"]["status"] == "ok"


def test_kernel_suite_rows_leave_the_model_columns_empty(runner):
    suite = all_suites()["softmax"]
    case = suite.cases("test", "cpu", "float32")[0]
    row = runner.run_one(Plan(suite, case, suite.variants[suite.baseline]))
    df = to_frame([row])
    for c in MODEL_COLUMNS:
        v = df[c].iloc[0]
        assert v is None or (isinstance(v, float) and math.isnan(v))
