"""Weight-only int4, asymmetric with zero points, in groups of G consecutive input channels (GPTQ's and
torchao's layout; round to nearest, "RTN"): for row n and group j,
    W[n, jG:(j+1)G] ~= s[n, j] * (q - z[n, j]),  q in [0, 15],  s = (max - min) / 15,  z = round(-min / s).
Two values per byte: packed[n, k/2] = q[n, k] | q[n, k+1] << 4 (the even k in the low nibble).

Storage: N*K/2 bytes + N*K/G fp32 scales + N*K/G uint8 zero points (4 + 40/G bits per weight: 5.25 at G=32,
4.63 at G=64, 4.31 at G=128). Compute: unpacked and dequantized by upcast per call (the C++ GEMV of
kernels/cpp/quant_int4_gemv.cpp unpacks nibbles in registers instead).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from quant.common import QuantError, QuantLinear, check_bits, check_group, replace_linears

GROUPS = (32, 64, 128)
QMAX = 15


def group_params(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale fp32 [N, K/G], zero uint8-valued fp32 [N, K/G]) of the asymmetric grid covering each group's range
    (which always includes 0, so a zero weight is exact)."""
    n, k = w.shape
    g = w.detach().float().reshape(n, k // group, group)
    lo = g.amin(-1).clamp(max=0.0)
    hi = g.amax(-1).clamp(min=0.0)
    scale = (hi - lo) / QMAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.clamp(torch.round(-lo / scale), 0, QMAX)
    return scale, zero


def quantize_with(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int) -> torch.Tensor:
    """q (uint8 values 0..15) [N, K] for the given grid."""
    n, k = w.shape
    s = scale.repeat_interleave(group, dim=1)
    z = zero.repeat_interleave(group, dim=1)
    return torch.clamp(torch.round(w.detach().float() / s) + z, 0, QMAX).to(torch.uint8)


def pack(q: torch.Tensor) -> torch.Tensor:
    """[N, K] values 0..15 -> [N, K/2] bytes, even k in the low nibble."""
    if q.shape[-1] % 2:
        raise QuantError(f"int4 packing needs an even input size, got {q.shape[-1]}")
    q = q.to(torch.uint8)
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack(p: torch.Tensor) -> torch.Tensor:
    """[N, K/2] bytes -> [N, K] values 0..15."""
    return torch.stack([p & 0xF, p >> 4], dim=-1).reshape(*p.shape[:-1], p.shape[-1] * 2)


class Int4WeightOnlyLinear(QuantLinear):
    method = "int4_wo"

    def __init__(self, lin: nn.Linear, group: int, q: torch.Tensor | None = None,
                 scale: torch.Tensor | None = None, zero: torch.Tensor | None = None):
        super().__init__(lin.in_features, lin.out_features, lin.bias)
        self.group = group
        if q is None:
            scale, zero = group_params(lin.weight, group)
            q = quantize_with(lin.weight, scale, zero, group)
        self.register_buffer("packed", pack(q))
        self.register_buffer("scale", scale.float().contiguous())
        self.register_buffer("zero", zero.to(torch.uint8).contiguous())

    def dequantize(self, dtype=torch.float32):
        q = unpack(self.packed).to(torch.float64)
        s = self.scale.to(torch.float64).repeat_interleave(self.group, dim=1)
        z = self.zero.to(torch.float64).repeat_interleave(self.group, dim=1)
        return (s * (q - z)).to(dtype)

    def forward(self, x):
        w = self.dequantize(torch.float32).to(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", group={self.group}"


def check(model: nn.Module, group: int, bits: int, method: str) -> None:
    from quant.common import decoder_linears
    check_bits(bits, (4,), method)
    if group not in GROUPS:
        raise QuantError(f"{method}: group size {group} is not one of {', '.join(map(str, GROUPS))}")
    for name, lin in decoder_linears(model):
        check_group(group, lin.in_features, name, method)


def apply(model: nn.Module, group: int = 64, bits: int = 4) -> nn.Module:
    check(model, group, bits, f"int4 weight-only g{group}")
    replace_linears(model, lambda name, lin: Int4WeightOnlyLinear(lin, group))
    return model
