"""Correctness: compare a variant's output with the float64 reference, with tolerances per dtype; and
`check_variant`, the one check of a variant that bench.py, harness/pytest_bench.py and the kernel tests run.

An element passes when |out - ref| <= atol + rtol * |ref| (numpy's allclose rule). NaN where the reference
is finite fails: outputs are poisoned with NaN before the run, so an element a kernel never wrote fails.
"""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass
class CheckResult:
    ok: bool
    max_abs_err: float
    max_rel_err: float
    message: str = ""


def compare(out, ref: torch.Tensor, atol: float, rtol: float, worst: int = 3) -> CheckResult:
    if not isinstance(out, torch.Tensor):
        return CheckResult(False, float("nan"), float("nan"), f"returned {type(out).__name__}, not a tensor")
    if tuple(out.shape) != tuple(ref.shape):
        return CheckResult(False, float("nan"), float("nan"),
                           f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}")
    o = out.detach().to("cpu", torch.float64)
    r = ref.detach().to("cpu", torch.float64)
    err = (o - r).abs()
    bound = atol + rtol * r.abs()
    unwritten = torch.isnan(o) & ~torch.isnan(r)
    bad = (err > bound) | unwritten | (torch.isinf(o) != torch.isinf(r))
    finite = torch.isfinite(err)
    max_abs = float(err[finite].max()) if finite.any() else float("nan")
    rel = err / r.abs().clamp_min(atol if atol > 0 else 1e-30)
    max_rel = float(rel[finite].max()) if finite.any() else float("nan")
    if unwritten.any():
        max_abs = max_rel = float("nan")
    nbad = int(bad.sum())
    if nbad == 0:
        return CheckResult(True, max_abs, max_rel)
    # The worst mismatches, NaN (unwritten) first, then by excess over the bound.
    excess = torch.where(unwritten, torch.full_like(err, float("inf")), err - bound).flatten()
    idx = torch.topk(torch.nan_to_num(excess, nan=float("inf")), min(worst, excess.numel())).indices
    shown = []
    for i in idx.tolist():
        pos = tuple(int(p) for p in torch.unravel_index(torch.tensor(i), tuple(o.shape)))
        shown.append(f"{list(pos)}: got {o.flatten()[i].item():.6g}, want {r.flatten()[i].item():.6g}")
    what = f"{int(unwritten.sum())} unwritten (NaN) and " if unwritten.any() else ""
    return CheckResult(False, max_abs, max_rel,
                       f"{what}{nbad}/{o.numel()} elements outside atol={atol:g} rtol={rtol:g}; worst: "
                       + "; ".join(shown))


# ---- the one correctness check of a variant: bench.py, harness/pytest_bench.py and the kernel tests ------------
def derive_seed(seed: int, *parts: Any) -> int:
    """A distinct, reproducible seed per (suite, case, dtype, variant, purpose): fresh inputs for every check."""
    return (seed * 1_000_003 + zlib.crc32("/".join(map(str, parts)).encode())) % (2**63 - 1)


def check_seed(seed: int, suite, case, variant_name: str, purpose: str = "check") -> int:
    return derive_seed(seed, suite.name, case.name, case.dtype_name, variant_name, purpose)


@dataclass
class Checked:
    """What `check_variant` found: the comparison, the first call's wall time, the configuration chosen."""
    result: CheckResult
    first_call_s: float
    config: str | None = None
    seed: int = 0

    @property
    def ok(self) -> bool:
        return self.result.ok


def check_variant(suite, case, variant, seed: int = 0, before_call: Callable[[], Any] | None = None) -> Checked:
    """Run `variant` once on fresh inputs (seeded from (seed, suite, case, dtype, variant, "check"), exactly as
    bench.py checks before timing), its outputs poisoned by the setup, and compare with the suite's float64
    reference under the suite's tolerance. Raises what the setup or the call raises (`Skip` included).
    `before_call` runs between setup and call (a test sets a simulation's schedule seed there)."""
    from harness.timing import sync
    s = check_seed(seed, suite, case, variant.name)
    inputs = suite.make_inputs(case, s)
    ref = suite.compute_reference(case, inputs)
    launcher = variant.setup(case, **inputs)
    if before_call is not None:
        before_call()
    t0 = time.perf_counter()
    out = launcher()
    sync(case.device)
    first_call_s = time.perf_counter() - t0
    atol, rtol = suite.tolerance(case)
    res = compare(out, ref, atol, rtol)
    cfg = variant.config(launcher) if variant.config is not None else None
    return Checked(res, first_call_s, cfg, s)
