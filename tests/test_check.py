import torch

from harness.check import compare


def test_exact_and_within_tolerance_pass():
    ref = torch.randn(7, 129, dtype=torch.float64)
    assert compare(ref.float(), ref, 1e-6, 1e-6).ok
    assert compare(ref + 5e-7, ref, 1e-6, 0).ok


def test_one_unwritten_element_fails_and_is_named():
    ref = torch.randn(127, dtype=torch.float64)
    out = ref.clone().float()
    out[100] = float("nan")
    r = compare(out, ref, 1e-3, 1e-3)
    assert not r.ok and "1 unwritten (NaN)" in r.message and "[100]" in r.message


def test_error_beyond_tolerance_fails_with_worst_first():
    ref = torch.zeros(10, 10, dtype=torch.float64)
    out = torch.zeros(10, 10)
    out[3, 4] = 1.0
    out[5, 6] = 0.5
    r = compare(out, ref, 1e-3, 1e-3)
    assert not r.ok and r.max_abs_err == 1.0
    assert r.message.index("[3, 4]") < r.message.index("[5, 6]")
    assert "2/100 elements" in r.message


def test_shape_mismatch_and_non_tensor():
    ref = torch.zeros(3, 4, dtype=torch.float64)
    assert "shape" in compare(torch.zeros(4, 3), ref, 1, 1).message
    assert not compare(None, ref, 1, 1).ok


def test_inf_where_reference_finite_fails():
    ref = torch.ones(5, dtype=torch.float64)
    out = torch.ones(5)
    out[2] = float("inf")
    assert not compare(out, ref, 1e9, 1e9).ok
