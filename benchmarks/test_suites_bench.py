"""The softmax, RMSNorm and LayerNorm suites as pytest-benchmark tests: an example of harness.pytest_bench.

    pytest benchmarks/ --benchmark-autosave                          # store a run in .benchmarks/
    pytest benchmarks/ --benchmark-compare --benchmark-compare-fail=median:5%   # fail on a 5% slowdown

Every case is checked against the float64 reference before it is timed (an incorrect variant fails the
test); `--kb-mode test|quick|full` and `--kb-device cpu|cuda` choose the cases.
"""
import pytest

from harness.pytest_bench import bench_params, run_case


@pytest.mark.parametrize("item", bench_params("softmax"))
def test_softmax(benchmark, item):
    run_case(benchmark, item)


@pytest.mark.parametrize("item", bench_params("rmsnorm"))
def test_rmsnorm(benchmark, item):
    run_case(benchmark, item)


@pytest.mark.parametrize("item", bench_params("layernorm"))
def test_layernorm(benchmark, item):
    run_case(benchmark, item)
