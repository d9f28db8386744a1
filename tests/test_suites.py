"""Every variant of every suite against the suite's float64 reference at its odd test shapes, on the CPU.

The same path the benchmark takes (harness.runner), so the reference tested here is the one bench.py uses.
"""
import pytest

from harness.registry import all_suites
from harness.runner import Plan, RunOptions, Runner
from harness.timing import TimingConfig

SUITES = all_suites()
PARAMS = [(s, v, d) for s in SUITES.values() for v in s.variants for d in ("float32", "bfloat16")
          if d in s.dtypes]


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    opts = RunOptions(suites=list(SUITES.values()), device="cpu", dtypes=None, mode="test",
                      out=tmp_path_factory.mktemp("suites"), timing=TimingConfig(budget_s=0.01, min_samples=2),
                      progress=False)             # isolated (the default): rows measured in a worker, as bench.py does
    runner = Runner(opts, [])
    yield runner
    runner.close()


@pytest.mark.parametrize("suite,variant,dtype", PARAMS, ids=[f"{s.name}-{v}-{d}" for s, v, d in PARAMS])
def test_variant_matches_reference_at_odd_shapes(runner, suite, variant, dtype):
    v = suite.variants[variant]
    cases = [c for c in suite.cases("test", "cpu", dtype) if suite.applies is None or suite.applies(c, variant)]
    if not cases:
        pytest.skip(f"no {dtype} test case of {suite.name} applies to {variant}")
    rows = [runner.run_one(Plan(suite, c, v)) for c in cases]
    statuses = {r["status"] for r in rows}
    bad = [r for r in rows if r["status"] in ("incorrect", "error")]
    assert not bad, "; ".join(f"{r['case']}: {r['status']}: {r['reason']}" for r in bad)
    if statuses == {"skipped"}:
        pytest.skip(rows[0]["reason"])
    for r in rows:
        if r["status"] == "ok":
            assert r["max_abs_err"] == r["max_abs_err"]      # not NaN: every element written
            assert r["median_ms"] > 0
