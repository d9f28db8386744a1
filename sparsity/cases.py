"""What a sparse-weight kernel case is (suites/sparse_gemm.py) and which kernel takes it.

A case has `pattern` ("bsr" with `block` 16/32 and `density`, or "2:4"), and the weight W [n, k]. The weight
is pruned by magnitude to the pattern and packed once per input draw (sparsity/formats.py); a pattern that
does not fit the shape leaves the packed tensors out, and every sparse kernel's row is `skipped` with the
reason (`unsupported_reason`), never a product of a silently cropped weight.
"""
from __future__ import annotations

from sparsity.masks import Pattern

KINDS = {"bsr": "block", "2:4": "2:4"}


def pattern_of(case) -> Pattern:
    if case.pattern == "2:4":
        return Pattern("2:4")
    return Pattern("block", float(case.density), int(case.block))


def fit_reason(case) -> str | None:
    return pattern_of(case).fits((case.n, case.k))


def unsupported_reason(case, kind: str, inputs=None) -> str | None:
    """Why a kernel for `kind` weights ("bsr" | "2:4") cannot run this case, or None."""
    if case.pattern != kind:
        return f"takes {kind} weights; this case is {case.pattern}"
    return fit_reason(case)
