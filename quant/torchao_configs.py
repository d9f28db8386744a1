"""torchao `quantize_` configurations as baselines (torchao 0.18), each a method. On this CPU:
Int8WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig, IntxWeightOnlyConfig (int4, groups of 64,
asymmetric: the int4_weight_only grid; torchao stores the values unpacked in int8 on the CPU) and
Float8WeightOnlyConfig. Int4WeightOnlyConfig and Float8DynamicActivationFloat8WeightConfig need CUDA (and fp8
tensor cores: compute capability >= 8.9) and are skipped elsewhere with that reason.

Only the decoder linears are quantized (`filter_fn`), as for every method here. A group that does not divide a
layer's input size is a QuantError (one line) before torchao sees the model (torchao itself raises an AssertionError).
"""
from __future__ import annotations

import importlib.util
import logging

import torch
from torch import nn

from quant.common import check_group, decoder_linears


def available() -> str | None:
    if importlib.util.find_spec("torchao") is None:
        return "package 'torchao' is not installed (pip install torchao)"
    return None


def _ao():
    logging.getLogger("torchao").setLevel(logging.ERROR)   # its CUDA-only extensions fail to load on a CPU
    import torchao.quantization as q
    return q


def cuda_needed(min_cc: tuple[int, int] | None = None):
    def check(device: str) -> str | None:
        why = available()
        if why:
            return why
        if device != "cuda" or not torch.cuda.is_available():
            need = f"a CUDA GPU of compute capability >= {min_cc[0]}.{min_cc[1]}" if min_cc else "a CUDA GPU"
            return f"torchao's kernels for this config need {need} (none here)"
        if min_cc and torch.cuda.get_device_capability() < min_cc:
            return f"needs compute capability >= {min_cc[0]}.{min_cc[1]}"
        return None
    return check


def config(name: str):
    q = _ao()
    if name == "int8_wo":
        return q.Int8WeightOnlyConfig()
    if name == "w8a8":
        return q.Int8DynamicActivationInt8WeightConfig()
    if name == "intx_int4_g64":
        from torchao.quantization.granularity import PerGroup
        from torchao.quantization.quant_primitives import MappingType
        return q.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(64),
                                      mapping_type=MappingType.ASYMMETRIC)
    if name == "fp8_wo":
        return q.Float8WeightOnlyConfig()
    if name == "int4_wo":
        return q.Int4WeightOnlyConfig(group_size=64)
    if name == "fp8_dynamic":
        from torchao.quantization.granularity import PerRow
        return q.Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    raise KeyError(name)


GROUPS = {"intx_int4_g64": 64, "int4_wo": 64}           # the configs with groups along K


def apply(model: nn.Module, name: str) -> nn.Module:
    for n, lin in decoder_linears(model):      # torchao asserts on a group that does not divide K: one line first
        if name in GROUPS:
            check_group(GROUPS[name], lin.in_features, n, f"torchao_{name}")
    q = _ao()
    names = {n for n, _ in decoder_linears(model)}
    q.quantize_(model, config(name), filter_fn=lambda mod, fqn: fqn in names)
    return model
