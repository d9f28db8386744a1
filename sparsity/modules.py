"""Pruned linear layers executed by sparse kernels, so a pruned model runs (and is timed) sparse.

`sparsify(model, report)` replaces every pruned `nn.Linear` of a model (sparsity.prune.PruneReport) with a
`SparseLinear` holding only the compressed weight (sparsity/formats.py) and calling:
- 2:4 layers: the project's C++ 2:4 kernel (kernels/cpp/sparse_24.cpp, values + 2-bit indices);
- block layers: the project's C++ BSR kernel (kernels/cpp/sparse_bsr.cpp; blocks 16/32);
- unstructured layers: torch.sparse CSR (F.linear on `to_sparse_csr()`, MKL sparse BLAS; fp32 only on a CPU).
Layers the pattern skipped stay `nn.Linear` (dense). `missing_reason(pattern, dtype)` says why a pattern
cannot run sparse here (library not built, a dtype torch's CSR lacks), for a `skipped` row.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from sparsity import formats
from sparsity.masks import Pattern


def missing_reason(pattern: Pattern, dtype: torch.dtype, device: str = "cpu") -> str | None:
    if device != "cpu":
        return "the sparse model runs the C++ CPU kernels (kernels/cpp/sparse_*.cpp); no GPU path in the model yet"
    if pattern.kind == "unstructured":
        if dtype != torch.float32:
            return f"torch's CPU CSR matmul has no {dtype} kernel (unstructured layers run on torch.sparse CSR)"
        return None
    from kernels.cpp import lib as cpp
    return cpp.missing_reason()


class SparseLinear(nn.Module):
    """y = x @ W^T (+ bias) with W stored compressed; the kernel is chosen by the pattern."""

    def __init__(self, linear: nn.Linear, pattern: Pattern, mask: torch.Tensor):
        super().__init__()
        w = linear.weight.detach()
        self.kind, self.block = pattern.kind, pattern.block
        self.out_features, self.in_features = w.shape
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.shape_ref = torch.empty(self.out_features, 0, dtype=w.dtype)        # N for the kernel's size("w", 0)
        if self.kind == "2:4":
            p = formats.pack_24(w, mask)
            self.packed = {"v24_vals": p["vals"], "v24_meta": p["meta"]}
        elif self.kind == "block":
            p = formats.bsr_pack(w, self.block, mask)
            self.packed = {"bsr_rowptr": p["rowptr"], "bsr_cols": p["cols"], "bsr_vals": p["vals"]}
        else:
            with warnings.catch_warnings():           # "Sparse CSR tensor support is in beta state"
                warnings.simplefilter("ignore", UserWarning)
                self.csr = (w * mask.to(w.dtype)).to_sparse_csr()

    def stored_bytes(self) -> int:
        if self.kind == "unstructured":
            return sum(t.numel() * t.element_size() for t in (self.csr.values(), self.csr.col_indices(),
                                                                 self.csr.crow_indices()))
        return sum(t.numel() * t.element_size() for t in self.packed.values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.kind == "unstructured":
            y = torch.nn.functional.linear(x2, self.csr)
        else:
            from kernels.cpp import lib as cpp
            y = torch.empty(x2.shape[0], self.out_features, dtype=x.dtype)
            if self.kind == "2:4":
                cpp.GEMM_24(x=x2, w=self.shape_ref, out=y, **self.packed)
            else:
                cpp.BSR_GEMM(x=x2, w=self.shape_ref, out=y, block=self.block, **self.packed)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)


def sparsify(model: nn.Module, report) -> nn.Module:
    """Replace the pruned linear layers of `model` (in place) by SparseLinear; returns the model."""
    mods = dict(model.named_modules())
    for name, mask in report.masks.items():
        parent_name, _, child = name.rpartition(".")
        parent = mods[parent_name] if parent_name else model
        setattr(parent, child, SparseLinear(mods[name], report.pattern, mask))
    return model
