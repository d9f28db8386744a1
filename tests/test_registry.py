import pytest
import torch

from harness.registry import Case, Requires, Suite, all_suites, get_suite, get_suites, UsageError


def test_every_suite_is_complete_and_has_odd_test_shapes():
    suites = all_suites()
    assert {"attention", "softmax", "rmsnorm", "layernorm", "gemm", "peak"} <= set(suites)
    for s in suites.values():
        s.check_complete()
        cases = s.cases("test", "cpu", "float32")
        assert cases, f"{s.name} has no test cases"
        assert s.cases("quick", "cpu", "float32"), f"{s.name} has no quick cases"
        sizes = {v for c in cases for v in c.params.values() if isinstance(v, int) and not isinstance(v, bool)}
        # test shapes must include a size that is not a multiple of any common tile (odd, > 1)
        assert any(v % 2 == 1 and v > 1 for v in sizes), f"{s.name}: no odd test size in {sizes}"
        for c in cases:
            f, b = s.work(c)
            assert f >= 0 and b > 0


def test_case_attributes_and_poisoned_buffers():
    c = Case("x", {"rows": 3, "cols": 5}, "cpu", "bfloat16")
    assert (c.rows, c.cols, c.itemsize, c.dtype) == (3, 5, 2, torch.bfloat16)
    assert c.name == "rows=3,cols=5"
    buf = c.poisoned((3, 5))
    assert buf.dtype == torch.bfloat16 and torch.isnan(buf).all()
    with pytest.raises(AttributeError):
        c.nope


def test_requires_reasons():
    cpu = Case("x", {}, "cpu", "float32")
    assert Requires(devices=("cuda",)).missing(cpu) == "runs on cuda only"
    assert "compute capability" in Requires(min_cc=(8, 0)).missing(cpu)
    assert "not installed" in Requires(packages=("no_such_package_xyz",)).missing(cpu)
    assert "dtypes bfloat16" in Requires(dtypes=("bfloat16",)).missing(cpu)
    assert Requires(check=lambda c: "library missing").missing(cpu) == "library missing"
    assert "availability check failed" in Requires(check=lambda c: 1 / 0).missing(cpu)
    assert Requires().missing(cpu) is None


def test_duplicate_variant_and_unknown_suite():
    s = Suite("t", "t", baseline="a")
    s.variant("a")(lambda case: (lambda: None))
    with pytest.raises(ValueError):
        s.variant("a")(lambda case: (lambda: None))
    with pytest.raises(UsageError, match="unknown suite 'nope'; choose from: .*attention"):
        get_suite("nope")


def test_incomplete_suite_is_refused():
    s = Suite("t", "t", baseline="a")
    with pytest.raises(TypeError, match="declares no inputs, flops, bytes, reference"):
        s.check_complete()


def test_norm_is_an_alias_of_the_two_norm_suites():
    assert [s.name for s in get_suites("norm")] == ["rmsnorm", "layernorm"]
    assert [s.name for s in get_suites("softmax")] == ["softmax"]
    with pytest.raises(UsageError, match="norm"):
        get_suites("nope")
