"""W8A8 dynamic: int8 weights per output channel (symmetric, as int8_weight_only) and int8 activations with a
scale per token computed at run time (absmax of the row / 127, symmetric): y = (xq @ wq^T) * sx[m] * sw[n],
the product in int32 (torch._int_mm on the CPU: oneDNN's u8s8/s8s8 GEMM with VNNI; our kernel:
kernels/cpp/quant_int8_gemm_v3.cpp). SmoothQuant's W8A8 without the smoothing; torchao's
Int8DynamicActivationInt8WeightConfig.

Storage as int8_weight_only (8 + 32/K bits per weight). Per call: one pass over x for the scales and the
rounding (M*K), the integer GEMM (2MNK integer ops), the scaling epilogue (M*N).
"""
from __future__ import annotations

import torch
from torch import nn

from quant.common import PerChannelLinear, check_bits, replace_linears
from quant.int8_weight_only import QMAX, quantize_per_channel


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(xq int8 [M, K], scale fp32 [M]) per row, symmetric; a zero row gets scale 1."""
    x = x.float()
    amax = x.abs().amax(dim=-1)
    scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    return torch.clamp(torch.round(x / scale[..., None]), -QMAX, QMAX).to(torch.int8), scale


def int_mm(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """int32 [M, N] = a int8 [M, K] @ b_t.T (b_t int8 [N, K]); exact."""
    try:
        return torch._int_mm(a, b_t.t())
    except RuntimeError:          # shapes oneDNN's int8 GEMM refuses: exact in float64 (|sum| < 2^53)
        return (a.double() @ b_t.double().t()).to(torch.int32)


class W8A8DynamicLinear(PerChannelLinear):
    method = "w8a8_dynamic"

    @staticmethod
    def quantize_weight(w):
        return quantize_per_channel(w)          # looked up per call: a test may patch the module's function

    def forward(self, x):
        shape = x.shape
        xq, sx = quantize_rows(x.reshape(-1, shape[-1]))
        acc = int_mm(xq, self.qweight)
        y = (acc.float() * sx[:, None] * self.scale[None, :]).to(x.dtype).reshape(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)


def apply(model: nn.Module, bits: int = 8) -> nn.Module:
    check_bits(bits, (8,), "W8A8 dynamic")
    replace_linears(model, lambda name, lin: W8A8DynamicLinear(lin))
    return model
