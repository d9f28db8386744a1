"""--shape: command-line cases validated against the suite's parameters; attention's causal alignment."""
from __future__ import annotations

import pytest
import torch

from harness import shapes
from harness.check import check_variant
from harness.registry import Case, Skip, UsageError, all_suites
from tests.helpers import bench


def test_shape_becomes_a_case_with_declared_types_and_defaults():
    s = all_suites()["softmax"]
    assert shapes.cases(s, [shapes.parse("rows=8,cols=393216")]) == [dict(rows=8, cols=393216)]
    att = all_suites()["attention"]
    (case,) = shapes.cases(att, [shapes.parse("sq=64,sk=128,causal=T,causal_align=bottom-right")])
    assert case["causal"] is True and case["causal_align"] == "bottom-right"
    assert case["d"] == att.cases("quick")[0].d             # the rest from the first quick case


@pytest.mark.parametrize("text,message", [
    ("rows=8,colz=3", "suite softmax has no parameter 'colz'; valid: rows, cols"),
    ("rows=8,cols=x", "wants a non-negative int for cols"),
    ("rows=-1", "wants a non-negative int for rows"),
    ("rows", "expected name=value pairs"),
    ("", "needs name=value pairs"),
])
def test_bad_shapes_are_usage_errors(text, message):
    with pytest.raises(UsageError, match=message):
        shapes.cases(all_suites()["softmax"], [shapes.parse(text)])


def test_causal_align_values_are_checked():
    with pytest.raises(UsageError, match="causal_align in top-left, bottom-right"):
        shapes.cases(all_suites()["attention"], [shapes.parse("causal_align=diag")])


def test_bench_runs_a_shape_and_rejects_a_bad_one_with_exit_2(tmp_path):
    r = bench("--suite", "softmax", "--shape", "rows=3,cols=393", "--shape", "rows=1,cols=7", "--variant",
              "torch_eager", "--budget", "0.05", "--no-progress", "--device", "cpu", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    import pandas as pd
    df = pd.read_csv(tmp_path / "results.csv")
    assert list(df["case"]) == ["3x393", "1x7"] and (df["status"] == "ok").all()
    r = bench("--suite", "gemm", "--shape", "rows=3", "--no-progress", "--device", "cpu")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == ["bench.py: error: --shape: suite gemm has no parameter 'rows'; "
                                             "valid: m, n, k"]


def _case(sq, sk, align):
    p = dict(b=1, h=2, hkv=1, sq=sq, sk=sk, d=64, causal=True, causal_align=align)
    return Case("attention", p, "cpu", "float32", all_suites()["attention"].case_name(p))


@pytest.mark.parametrize("sq,sk", [(5, 9), (9, 5)])
def test_bottom_right_reference_is_sdpa_causal_lower_right(sq, sk):
    """The reference follows SDPA's causal_lower_right (a query that sees no key gives 0), and differs from
    top-left: a variant ignoring the alignment would fail the check."""
    from torch.nn.attention.bias import causal_lower_right
    att = all_suites()["attention"]
    case = _case(sq, sk, "bottom-right")
    inputs = att.make_inputs(case, 1)
    ref = att.compute_reference(case, inputs)
    q, k, v = (inputs[n].double() for n in "qkv")
    k, v = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    with pytest.warns(UserWarning) if sq > sk else _nullcontext():
        mask = causal_lower_right(sq, sk)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).nan_to_num(0.0)
    torch.testing.assert_close(ref, want)
    top_left = att.compute_reference(_case(sq, sk, "top-left"), inputs)
    assert not torch.allclose(ref, top_left)


def _nullcontext():
    import contextlib
    return contextlib.nullcontext()


@pytest.mark.parametrize("variant", ["eager", "sdpa_math", "sdpa_flash"])
def test_torch_variants_honour_bottom_right(variant):
    att = all_suites()["attention"]
    for sq, sk in ((5, 9), (9, 5)):
        assert check_variant(att, _case(sq, sk, "bottom-right"), att.variants[variant]).ok


def test_top_left_kernels_skip_bottom_right_with_the_reason():
    att = all_suites()["attention"]
    case = _case(5, 9, "bottom-right")
    inputs = att.make_inputs(case, 1)
    for name in ("cpp", "cuda_flash", "triton"):
        with pytest.raises(Skip, match="top-left causal alignment only"):
            att.variants[name].setup(case, **inputs)
    # sq == sk: the two alignments are the same mask, so nothing is skipped
    square = _case(7, 7, "bottom-right")
    assert not att.variants["cpp"].kernel.unsupported(square, **att.make_inputs(square, 1))
