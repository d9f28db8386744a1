"""Special-value inputs (-inf rows, +inf, NaN) for the row and attention suites, and the check that a
variant puts NaN and +-inf exactly where torch's own eager op does (tests/test_special_values.py for the
C++, simulated CUDA and torch variants; tests/test_triton_kernels.py's interpreter child for Triton).

Rows of the row kernels (softmax, RMSNorm, LayerNorm), `cols` columns each:
  0  all -inf (a fully masked row: softmax 0/0 = NaN everywhere)
  1  -inf in the first 300 columns, finite after (the looped softmax's first tiles are all -inf)
  2  one +inf (softmax: NaN row; RMSNorm: 0 except NaN at the inf; LayerNorm: NaN row)
  3  one NaN (NaN row for all three)
  4  +inf and -inf
  5  finite (must stay finite and right)
Attention: one key row of K is NaN (key 70 of batch 0, kv head 0): with causal masking, queries before key 70
never see it and must stay finite (a kernel that multiplies masked scores by 0 instead of skipping them turns
them NaN), later ones are NaN; without masking every query of that head is NaN. One query row of the last head is
NaN (query 3): only its output row is NaN. (No inf in V: torch's P @ V gives 0 * inf = NaN for masked keys.)
GEMM: A[1, 0] = +inf (row 1 of C is +-inf; a kernel that reads one element past row 0's K end, A[0, K] =
A[1, 0], into a tile whose B row is masked to 0 turns row 0 NaN), A[5, 3] = NaN (row 5 NaN) and B[2, 7] = -inf
(column 7 +-inf, NaN on rows 1 and 5).
"""
from __future__ import annotations

import torch

ROW_SUITES = ("softmax", "norm", "rmsnorm", "layernorm")
# GEMM shapes: K not a multiple of 8 (the CUDA kernel's scalar tile loads) and K, N multiples of 8 (cp.async),
# each with a K tail inside the last tile
GEMM_SHAPES = (dict(m=33, n=40, k=37), dict(m=65, n=136, k=72))


def row_inputs(suite, case, seed: int = 11) -> dict:
    inputs = suite.make_inputs(case, seed)
    x = inputs["x"]
    assert x.shape[0] >= 6 and x.shape[1] >= 400, "special rows need >= 6 rows of >= 400 columns"
    inf = float("inf")
    x[0] = -inf
    x[1, :300] = -inf
    x[2, 17] = inf
    x[3, 123] = float("nan")
    x[4, 5] = inf
    x[4, 250] = -inf
    return inputs


def attention_inputs(suite, case, seed: int = 11) -> dict:
    inputs = suite.make_inputs(case, seed)
    inputs["k"][0, 0, 70] = float("nan")
    inputs["q"][0, -1, 3] = float("nan")
    return inputs


def gemm_inputs(suite, case, seed: int = 11) -> dict:
    inputs = suite.make_inputs(case, seed)
    a, b = inputs["a"], inputs["b"]
    assert a.shape[0] >= 6 and a.shape[1] >= 4 and b.shape[1] >= 8, "special GEMM values need m >= 6, k >= 4, n >= 8"
    a[1, 0] = float("inf")
    a[5, 3] = float("nan")
    b[2, 7] = -float("inf")
    return inputs


def special_inputs(suite_name: str, suite, case) -> dict:
    """The special-value inputs of `suite_name`'s case: attention, GEMM, or the row suites'."""
    if suite_name == "attention":
        return attention_inputs(suite, case)
    return gemm_inputs(suite, case) if suite_name == "gemm" else row_inputs(suite, case)


def torch_expected(suite, case, inputs) -> torch.Tensor:
    """torch's eager op (the suite's baseline variant) on the same inputs: where NaN and inf must be."""
    baseline = suite.variants[suite.baseline]
    return baseline.setup(case, **inputs)().detach().to(torch.float64)


def assert_same_specials(out: torch.Tensor, want: torch.Tensor, what: str, atol: float, rtol: float) -> None:
    o = out.detach().to("cpu", torch.float64)
    w = want.to("cpu", torch.float64)
    for name, f in (("NaN", torch.isnan), ("+inf", lambda t: torch.isposinf(t)), ("-inf", torch.isneginf)):
        got, exp = f(o), f(w)
        if not torch.equal(got, exp):
            diff = (got != exp).nonzero()[:5].tolist()
            raise AssertionError(f"{what}: {name} positions differ from torch's at {int((got != exp).sum())} "
                                 f"elements, e.g. {diff} (got {[o[tuple(i)].item() for i in diff]}, torch "
                                 f"{[w[tuple(i)].item() for i in diff]})")
    fin = torch.isfinite(w)
    err = (o[fin] - w[fin]).abs()
    bound = 2 * (atol + rtol * w[fin].abs())  # torch's own result is itself within tolerance of float64
    assert bool((err <= bound).all()), f"{what}: finite elements differ from torch's by {float(err.max()):g}"
