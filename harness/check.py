"""Correctness: compare a variant's output with the float64 reference, with tolerances per dtype.

An element passes when |out - ref| <= atol + rtol * |ref| (numpy's allclose rule). NaN where the reference
is finite fails: outputs are poisoned with NaN before the run, so an element a kernel never wrote fails.
"""
from __future__ import annotations

from dataclasses import dataclass

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
