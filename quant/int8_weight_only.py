"""Weight-only int8, per output channel, symmetric (LLM.int8's absmax without outliers; torchao's
Int8WeightOnlyConfig): W[n, :] ~= s[n] * q[n, :], q = round(W / s) in [-127, 127], s[n] = max|W[n, :]| / 127.

Storage: N*K bytes of int8 + N fp32 scales (8.0 + 32/K bits per weight). Compute: activations in their dtype,
W dequantized by upcast per call (x @ q^T then the per-channel scale on the output: (x q^T) * s == x (s q)^T).
"""
from __future__ import annotations

import torch
from torch import nn

from quant.common import PerChannelLinear, check_bits, replace_linears

QMAX = 127


def quantize_per_channel(w: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 [N, K], scale fp32 [N]): symmetric, per row; an all-zero row gets scale 1 (q = 0)."""
    check_bits(bits, (8,), "int8 weight-only")
    w = w.detach().float()
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    q = torch.clamp(torch.round(w / scale[:, None]), -QMAX, QMAX).to(torch.int8)
    return q, scale


class Int8WeightOnlyLinear(PerChannelLinear):
    method = "int8_wo"

    @staticmethod
    def quantize_weight(w):
        return quantize_per_channel(w)          # looked up per call: a test may patch the module's function


def apply(model: nn.Module, bits: int = 8) -> nn.Module:
    check_bits(bits, (8,), "int8 weight-only")
    replace_linears(model, lambda name, lin: Int8WeightOnlyLinear(lin))
    return model
