"""quant/: quantization of the models of models/ (one file per method), measured by suites/quant.py (model
quality and speed) and suites/quant_gemm.py (the kernels).

    from quant import METHODS, quantize
    qmodel = quantize(lm, "int4_g64")            # a quantized copy of lm.model (lm: models.zoo.LM)
    quant.weight_bytes(qmodel)                    # storage as held, at each tensor's width

Methods (`METHODS`, name -> Method): ours -- int8_wo (int8_weight_only.py), int4_g32/g64/g128 (RTN,
int4_weight_only.py), gptq_g64/g128, gptq_g64_act/g128_act and gptq_g64_seq/g128_seq (gptq.py, calibrated),
awq_g64/g128 (awq.py, calibrated), w8a8 (w8a8_dynamic.py), fp8_wo / fp8_dynamic (fp8.py), w8a8_cpp /
int4_g64_cpp (cpp_kernels.py: the same grids on our C++ kernels); PyTorch's -- torch_dynamic_int8,
torch_int8pack, torch_int4pack_g64 (torch_native.py); torchao's -- torchao_* (torchao_configs.py). Bad input (an
unknown method, a bit width or group size a method does not have, a group that does not divide a layer's input
size) raises QuantError with one line.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from quant.common import QuantError, QuantLinear, decoder_linears, weight_bytes  # noqa: F401


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    apply: Callable[..., nn.Module]        # apply(model, lm, calibrate) -> the quantized model (in place or new)
    bits: float                            # nominal bits per quantized weight (storage: weight_bytes)
    family: str = "ours"                   # "ours" | "torch" | "torchao" | "none"
    calibrated: bool = False
    missing: Callable[[str], str | None] | None = None    # (device) -> why it cannot run there

    def why_not(self, device: str) -> str | None:
        return self.missing(device) if self.missing else None


def _ours():
    from quant import awq, cpp_kernels, fp8, gptq, int4_weight_only, int8_weight_only, w8a8_dynamic
    ms = [Method("none", "unquantized (the reference)", lambda m, lm, cal: m, 32, "none"),
          Method("int8_wo", "int8 weight-only, per channel, symmetric",
                 lambda m, lm, cal: int8_weight_only.apply(m), 8)]
    for g in int4_weight_only.GROUPS:
        ms.append(Method(f"int4_g{g}", f"int4 weight-only RTN, groups of {g}, asymmetric, 2 per byte",
                         lambda m, lm, cal, g=g: int4_weight_only.apply(m, group=g), 4))
    for g in (64, 128):
        ms.append(Method(f"gptq_g{g}", f"int4 GPTQ (Hessian from {gptq.CALIB_WINDOWS} windows of training text), "
                         f"groups of {g}", lambda m, lm, cal, g=g: gptq.apply(m, lm, group=g, calibrate=cal), 4,
                         calibrated=True))
    for g in (64, 128):
        ms.append(Method(f"gptq_g{g}_act", f"int4 GPTQ with act-order (columns by decreasing H_ii, static groups), "
                         f"groups of {g}", lambda m, lm, cal, g=g: gptq.apply(m, lm, group=g, calibrate=cal,
                                                                              act_order=True), 4, calibrated=True))
    for g in (64, 128):
        ms.append(Method(f"gptq_g{g}_seq", f"int4 GPTQ true-sequential (each layer's Hessian from the outputs of the "
                         f"already-quantized layers before it), groups of {g}",
                         lambda m, lm, cal, g=g: gptq.apply(m, lm, group=g, calibrate=cal, sequential=True), 4,
                         calibrated=True))
    for g in (64, 128):
        ms.append(Method(f"awq_g{g}", f"int4 AWQ (activation-aware input-channel scales and clipping from "
                         f"{gptq.CALIB_WINDOWS} windows of training text), groups of {g}",
                         lambda m, lm, cal, g=g: awq.apply(m, lm, group=g, calibrate=cal), 4, calibrated=True))
    ms += [Method("w8a8", "W8A8 dynamic: int8 per-token activations, int8 per-channel weights, int32 GEMM",
                  lambda m, lm, cal: w8a8_dynamic.apply(m), 8),
           Method("fp8_wo", "float8 e4m3 weight-only, per channel (upcast on the CPU)",
                  lambda m, lm, cal: fp8.apply(m), 8),
           Method("w8a8_cpp", "W8A8 dynamic on our AVX512-VNNI GEMM (kernels/cpp/quant_int8_gemm_v3.cpp)",
                  lambda m, lm, cal: cpp_kernels.apply_w8a8(m), 8, missing=lambda d: cpp_kernels.missing(d, True)),
           Method("int4_g64_cpp",
                  "int4 g64 RTN on our int4 GEMV (kernels/cpp/quant_int4_dp.cpp, else quant_int4_gemv.cpp)",
                  lambda m, lm, cal: cpp_kernels.apply_int4(m, 64), 4, missing=cpp_kernels.missing),
           Method("fp8_dynamic", "float8 e4m3 weights and per-token activations (torch._scaled_mm on sm_89+)",
                  lambda m, lm, cal: fp8.apply(m, dynamic=True), 8)]
    return ms


def _libraries():
    from quant import torch_native, torchao_configs as ao
    ms = [Method("torch_dynamic_int8", "torch.ao.quantization.quantize_dynamic (x86 engine, per-channel int8)",
                 lambda m, lm, cal: torch_native.apply_quantize_dynamic(m), 8, "torch",
                 missing=lambda d: None if d == "cpu" else "torch.ao dynamic quantization runs on the CPU"),
          Method("torch_int8pack", "aten _weight_int8pack_mm (int8 weight-only, per channel)",
                 lambda m, lm, cal: torch_native.apply_int8pack(m), 8, "torch", missing=torch_native.cpu_only),
          Method("torch_int4pack_g64", "aten _weight_int4pack_mm_for_cpu (the int4_g64 grid)",
                 lambda m, lm, cal: torch_native.apply_int4pack(m, 64), 4, "torch", missing=torch_native.cpu_only)]
    for key, desc, bits, missing in (
            ("int8_wo", "Int8WeightOnlyConfig", 8, None),
            ("w8a8", "Int8DynamicActivationInt8WeightConfig", 8, None),
            ("intx_int4_g64", "IntxWeightOnlyConfig(int4, PerGroup(64), asymmetric)", 4, None),
            ("fp8_wo", "Float8WeightOnlyConfig", 8, None),
            ("int4_wo", "Int4WeightOnlyConfig(group_size=64)", 4, ao.cuda_needed()),
            ("fp8_dynamic", "Float8DynamicActivationFloat8WeightConfig(PerRow)", 8, ao.cuda_needed((8, 9)))):
        ms.append(Method(f"torchao_{key}", f"torchao quantize_ {desc}", lambda m, lm, cal, key=key: ao.apply(m, key),
                         bits, "torchao", missing=missing or (lambda d: ao.available())))
    return ms


METHODS: dict[str, Method] = {m.name: m for m in _ours() + _libraries()}


def get(name: str) -> Method:
    if name not in METHODS:
        raise QuantError(f"unknown quantization method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


def quantize(lm_or_model: Any, name: str, device: str | None = None, calibrate=None) -> nn.Module:
    """A quantized deep copy of `lm.model` (or of a model), with method `name`; QuantError on bad input.
    `calibrate(model)` runs calibration inputs through the model (calibrated methods; default for an LM: its
    training text)."""
    method = get(name)
    lm = lm_or_model if hasattr(lm_or_model, "model") else None
    model = lm.model if lm is not None else lm_or_model
    dev = device or next(model.parameters()).device.type
    why = method.why_not(dev)
    if why:
        raise QuantError(f"{name}: {why}")
    qmodel = copy.deepcopy(model)
    with torch.no_grad():
        return method.apply(qmodel, lm, calibrate).eval()
