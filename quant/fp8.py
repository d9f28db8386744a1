"""float8 e4m3 (OCP FP8, torch.float8_e4m3fn: 4 exponent bits, 3 mantissa bits, max 448, no infinities):
- weight-only: W[n, :] ~= s[n] * f8(W[n, :] / s[n]), s[n] = max|W[n, :]| / 448 (per output channel). On the CPU
  stored as float8 and computed by upcast to the activation dtype per call (the CPU has no fp8 arithmetic).
- dynamic row-wise: the activations too, one scale per token computed at run time, so both operands of the
  product are float8 (torchao's Float8DynamicActivationFloat8WeightConfig with PerRow). On GPUs of compute
  capability >= 8.9 the product is `torch._scaled_mm` (fp8 tensor cores); elsewhere the quantized operands are
  upcast and multiplied, which computes the same rounding of the inputs.

Storage: N*K bytes + N fp32 scales (8 + 32/K bits per weight).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from quant.common import PerChannelLinear, QuantError, check_bits, replace_linears

F8 = getattr(torch, "float8_e4m3fn", None)
F8_MAX = 448.0


def _require_f8():
    if F8 is None:
        raise QuantError(f"fp8: this torch ({torch.__version__}) has no float8_e4m3fn")


def quantize_rows_f8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(float8 [N, K], scale fp32 [N]): per row, the row's absmax mapped to 448."""
    _require_f8()
    w = w.detach().float()
    amax = w.abs().amax(dim=-1)
    scale = torch.where(amax > 0, amax / F8_MAX, torch.ones_like(amax))
    return (w / scale[..., None]).clamp(-F8_MAX, F8_MAX).to(F8), scale


def _scaled_mm_ok(x: torch.Tensor) -> bool:
    return x.is_cuda and torch.cuda.get_device_capability(x.device) >= (8, 9) and hasattr(torch, "_scaled_mm")


class Fp8WeightOnlyLinear(PerChannelLinear):
    method = "fp8_wo"

    @staticmethod
    def quantize_weight(w):
        return quantize_rows_f8(w)          # looked up per call: a test may patch the module's function


class Fp8DynamicLinear(Fp8WeightOnlyLinear):
    method = "fp8_dynamic"

    def forward(self, x):
        shape = x.shape
        xq, sx = quantize_rows_f8(x.reshape(-1, shape[-1]))
        if _scaled_mm_ok(x) and self.in_features % 16 == 0 and self.out_features % 16 == 0:
            y = torch._scaled_mm(xq, self.qweight.t(), scale_a=sx[:, None].float(), scale_b=self.scale[None, :],
                                 out_dtype=x.dtype if x.dtype != torch.float32 else torch.bfloat16).to(x.dtype)
        else:
            y = (F.linear(xq.to(torch.float32), self.qweight.to(torch.float32)) * sx[:, None] * self.scale).to(x.dtype)
        y = y.reshape(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)


def apply(model: nn.Module, bits: int = 8, dynamic: bool = False) -> nn.Module:
    check_bits(bits, (8,), "fp8 e4m3")
    _require_f8()
    cls = Fp8DynamicLinear if dynamic else Fp8WeightOnlyLinear
    replace_linears(model, lambda name, lin: cls(lin))
    return model
