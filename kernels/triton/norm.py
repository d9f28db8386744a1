"""The norm suite's Triton variant: one registration for the two kernels, chosen by the case's `norm`
parameter ("rms" -> kernels/triton/rmsnorm.py, "layer" -> kernels/triton/layernorm.py)."""
from __future__ import annotations

from kernels.triton import layernorm, rmsnorm
from kernels.triton.common import Skip, config, missing_reason  # noqa: F401  (the registration uses them)


def setup(case, x, weight, bias=None, eps=None, **_):
    """Triton RMSNorm / LayerNorm (one row per program; looped past 16384 columns)"""
    if case.norm == "rms":
        return rmsnorm.setup(case, x, weight, eps)
    if case.norm == "layer":
        return layernorm.setup(case, x, weight, bias, eps)
    raise Skip(f"no Triton kernel for norm={case.norm!r}")
