"""PyTorch's own CPU int8/int4 paths as baselines, each a method:
- `quantize_dynamic`: torch.ao.quantization.quantize_dynamic with per-channel int8 weights and per-batch dynamic
  int8 activations (the x86 engine: FBGEMM/oneDNN); float32 activations only.
- `_weight_int8pack_mm`: int8 weights per channel (the int8_weight_only grid) through aten's weight-only int8
  CPU GEMM (torchao's Int8WeightOnly on CPU uses the same op).
- `_weight_int4pack_mm_for_cpu`: int4 groups (the int4_weight_only RTN grid, exactly) through aten's CPU int4
  kernel, whose weights are [N, K/2] nibbles in its own order (`_convert_weight_to_int4pack_for_cpu`) and whose
  dequantization is (q - 8) * scale + offset: our zero point z maps to offset = (8 - z) * scale.
"""
from __future__ import annotations

import torch
from torch import nn

from quant.common import PerChannelLinear, QuantError, QuantLinear, decoder_linears, replace_linears
from quant.int4_weight_only import check as check_int4
from quant.int4_weight_only import group_params, quantize_with
from quant.int8_weight_only import quantize_per_channel


class Int8PackLinear(PerChannelLinear):
    method = "torch_int8pack"

    @staticmethod
    def quantize_weight(w):
        return quantize_per_channel(w)          # looked up per call: a test may patch the module's function

    def __init__(self, lin: nn.Linear):
        super().__init__(lin)
        self._scale_as: dict[torch.dtype, torch.Tensor] = {}

    def forward(self, x):
        shape = x.shape
        s = self._scale_as.get(x.dtype)
        if s is None:
            s = self._scale_as[x.dtype] = self.scale.to(x.dtype)
        y = torch._weight_int8pack_mm(x.reshape(-1, shape[-1]).contiguous(), self.qweight, s)
        y = y.reshape(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)


class Int4PackLinear(QuantLinear):
    method = "torch_int4pack"

    def __init__(self, lin: nn.Linear, group: int):
        super().__init__(lin.in_features, lin.out_features, lin.bias)
        self.group = group
        scale, zero = group_params(lin.weight, group)
        q = quantize_with(lin.weight, scale, zero, group)
        self.register_buffer("packed", torch._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1))
        offset = (8.0 - zero) * scale                               # (q - 8) s + offset == (q - z) s
        self.register_buffer("scale_zeros", torch.stack([scale.t(), offset.t()], -1).contiguous())  # [K/G, N, 2]
        self._q, self._s, self._z = q, scale, zero                  # for dequantize() (tests); not counted
        self._sz_as: dict[torch.dtype, torch.Tensor] = {}

    def dequantize(self, dtype=torch.float32):
        s = self._s.double().repeat_interleave(self.group, 1)
        z = self._z.double().repeat_interleave(self.group, 1)
        return (s * (self._q.double() - z)).to(dtype)

    def forward(self, x):
        shape = x.shape
        sz = self._sz_as.get(x.dtype)
        if sz is None:
            sz = self._sz_as[x.dtype] = self.scale_zeros.to(x.dtype)
        y = torch._weight_int4pack_mm_for_cpu(x.reshape(-1, shape[-1]).contiguous(), self.packed, self.group, sz)
        y = y.reshape(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)


def cpu_only(device: str) -> str | None:
    return None if device == "cpu" else "aten's packed int8/int4 weight-only ops here are the CPU kernels"


def apply_int8pack(model: nn.Module) -> nn.Module:
    replace_linears(model, lambda name, lin: Int8PackLinear(lin))
    return model


def apply_int4pack(model: nn.Module, group: int = 64) -> nn.Module:
    check_int4(model, group, 4, f"_weight_int4pack_mm_for_cpu g{group}")
    for name, lin in decoder_linears(model):
        if lin.out_features % 16:
            raise QuantError(f"_weight_int4pack_mm_for_cpu: layer {name!r} has {lin.out_features} outputs; "
                             f"its packing needs a multiple of 16")
    replace_linears(model, lambda name, lin: Int4PackLinear(lin, group))
    return model


def apply_quantize_dynamic(model: nn.Module) -> nn.Module:
    """torch.ao dynamic quantization of the decoder linears (per-channel int8 weights, x86 engine)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    if "x86" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "x86"
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise QuantError("quantize_dynamic takes float32 models only")
    names = {name: per_channel_dynamic_qconfig for name, _ in decoder_linears(model)}
    return quantize_dynamic(model, names, inplace=True)


def dynamic_storage_bytes(mod: nn.Module) -> int | None:
    """Bytes held by a torch.ao dynamic quantized Linear (int8 weight + per-channel scales and zero points)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynLinear
    if not isinstance(mod, DynLinear):
        return None
    w = mod.weight()
    n = w.numel()
    ch = w.q_per_channel_scales().numel() if w.qscheme() in (torch.per_channel_affine,
                                                               torch.per_channel_symmetric) else 1
    return n + ch * (8 + 8)          # float64 scales, int64 zero points as torch keeps them
