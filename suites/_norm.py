"""What the two normalisation suites (suites/rmsnorm.py, suites/layernorm.py) share: dtypes, tolerances and
cases. Each is one row reduction over the last dimension of x [rows, cols], memory-bound; they differ in the
statistics (mean of squares, or mean and variance) and in the parameters (weight, or weight and bias).
Modules whose name starts with "_" are not suites (harness.registry.all_suites skips them)."""
from __future__ import annotations

from harness.registry import Suite


def norm_suite(name: str, description: str) -> Suite:
    suite = Suite(
        name=name,
        description=description,
        baseline="torch_eager",
        dtypes=("float32", "bfloat16", "float16"),
        # Outputs are O(1) (normalized, weight ~1): bf16 rounds at 2^-8 relative.
        tolerances={"float32": (1e-5, 1e-5), "bfloat16": (1e-2, 1.6e-2), "float16": (2e-3, 2e-3)},
        case_name=lambda p: f"{p['rows']}x{p['cols']}",
    )
    # Odd sizes, one row, one column, rows past the kernels' cached paths (70001: the C++ long-row path;
    # 20001: the Triton looped path on a GPU, > 16384 columns).
    suite.add_cases("test", _shapes([(1, 127), (129, 1000), (127, 4099), (1000, 129), (1, 1), (1, 4096),
                                     (2, 70001), (33, 15), (3, 20001)]))
    suite.add_cases("quick", _shapes([(4096, 1024), (1024, 4096)]))
    suite.add_cases("full", _shapes([(8192, 4096), (4096, 16384), (32768, 1024)]))
    suite.add_cases("full", _shapes([(65536, 8192)]), devices=("cuda",))
    return suite


def _shapes(shapes):
    return [dict(rows=r, cols=c) for r, c in shapes]
