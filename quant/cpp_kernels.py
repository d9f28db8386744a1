"""Our C++ kernels inside a quantized model (methods `w8a8_cpp`, `int4_g64_cpp`): the layers of w8a8_dynamic.py and
int4_weight_only.py with the same grids and storage, computed by kernels/cpp/quant_int8_gemm_v3.cpp (AVX512-VNNI)
and quant_int4_dp.cpp (v3, AVX512-BF16; quant_int4_gemv.cpp, v2, on CPUs without it) instead of torch.
Activations of w8a8_cpp are quantized per token in torch (one pass over x), then the integer product and both
scales are one C call. CPU only, float32 or bfloat16 activations.
"""
from __future__ import annotations

import torch
from torch import nn

from quant.common import QuantError, replace_linears
from quant.int4_weight_only import Int4WeightOnlyLinear
from quant.int4_weight_only import check as check_int4
from quant.w8a8_dynamic import W8A8DynamicLinear, quantize_rows


class _Group:
    def __init__(self, group: int):
        self.params = {"group": group}

    def get(self, key, default=None):
        return self.params.get(key, default)


def missing(device: str, vnni: bool = False) -> str | None:
    from kernels.cpp import lib as cpp
    if device != "cpu":
        return "the C++ kernels run on the CPU"
    return cpp.vnni_available() if vnni else cpp.avx512_available()


class W8A8CppLinear(W8A8DynamicLinear):
    method = "w8a8_cpp"
    kernel = "GEMM_W8A8"         # the declaration in kernels/cpp/lib.py (v3); GEMM_W8A8_V2 takes the same arguments

    def __init__(self, lin: nn.Linear):
        from kernels.cpp import lib as cpp
        super().__init__(lin)
        self.register_buffer("packed", cpp.pack_w8_vnni(self.qweight), persistent=False)   # the kernel's copy

    def storage_bytes(self) -> int:      # the packed copy replaces qweight in a deployment: count one of them
        return self.packed.numel() + self.scale.numel() * 4

    def forward(self, x):
        from kernels.cpp import lib as cpp
        shape = x.shape
        xq, sx = quantize_rows(x.reshape(-1, shape[-1]))
        odt = x.dtype if x.dtype == torch.bfloat16 else torch.float32
        out = torch.empty(xq.shape[0], self.out_features, dtype=odt)
        getattr(cpp, self.kernel)(a=xq, sa=sx, w=self.packed, sw=self.scale.float(), out=out)
        y = out.to(x.dtype).reshape(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)


class Int4CppLinear(Int4WeightOnlyLinear):
    """The int4 layer on our kernel: v3 (quant_int4_dp.cpp, its channel-block copy `w4p` packed once here) where the
    CPU has AVX512-BF16, else v2 (quant_int4_gemv.cpp) on the layer's own storage."""
    method = "int4_cpp"

    def __init__(self, lin: nn.Linear, group: int):
        from kernels.cpp import lib as cpp
        super().__init__(lin, group)
        w4p = None if cpp.w4_dp_reason() else cpp.pack_w4_dp(self.packed, self.scale, self.zero, group)
        self.register_buffer("w4p", w4p, persistent=False)

    def storage_bytes(self) -> int:      # v3's copy replaces packed/scale/zero in a deployment: count one of them
        return super().storage_bytes() if self.w4p is None else self.w4p.numel()

    def forward(self, x):
        from kernels.cpp import lib as cpp
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x2.dtype not in (torch.float32, torch.bfloat16):
            x2 = x2.float()
        out = torch.empty(x2.shape[0], self.out_features, dtype=x2.dtype)
        args = dict(x=x2, packed=self.packed, scale=self.scale.float(), zero=self.zero, out=out,
                    case=_Group(self.group))
        if self.w4p is None:
            cpp.GEMM_W4A16(**args)
        else:
            cpp.GEMM_W4A16_DP(w4p=self.w4p, **args)
        y = out.to(x.dtype).reshape(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)


def apply_w8a8(model: nn.Module) -> nn.Module:
    why = missing("cpu", vnni=True)
    if why:
        raise QuantError(f"w8a8_cpp: {why}")
    replace_linears(model, lambda name, lin: W8A8CppLinear(lin))
    return model


def apply_int4(model: nn.Module, group: int = 64) -> nn.Module:
    check_int4(model, group, 4, f"int4_g{group}_cpp")
    why = missing("cpu")
    if why:
        raise QuantError(f"int4_g{group}_cpp: {why}")
    replace_linears(model, lambda name, lin: Int4CppLinear(lin, group))
    return model
