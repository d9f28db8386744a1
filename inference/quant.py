"""Quantized KV formats: int8 (symmetric, max 127) and fp8 e4m3 (torch.float8_e4m3fn, max 448), with
float32 scales per KV head ("head": one scale per head for the whole cache, set by the first write or given)
or per block and head ("block": [num_blocks, kv_heads], grown on append: when a new token's |x| exceeds what
the block's scale covers, the block's stored values are requantized to the larger scale).

value = stored * scale. Kernels read the scale of (block, head) at `scale[block * scale_bstride + head]`:
a per-head scale is the same tensor with a block stride of 0 (`scales_view`).
"""
from __future__ import annotations

import torch

FORMATS = {
    # name: (storage dtype, largest magnitude stored, quantized?)
    "float32": (torch.float32, None, False),
    "bfloat16": (torch.bfloat16, None, False),
    "float16": (torch.float16, None, False),
    "int8": (torch.int8, 127.0, True),
    "fp8_e4m3": (torch.float8_e4m3fn, 448.0, True),
}
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "fp8": "fp8_e4m3", "e4m3": "fp8_e4m3"}
GRANULARITIES = ("head", "block")


def format_name(name) -> str:
    if isinstance(name, torch.dtype):
        for k, (dt, _, _) in FORMATS.items():
            if dt == name:
                return k
    name = ALIASES.get(name, name)
    if name not in FORMATS:
        raise ValueError(f"unknown KV format {name!r}; choose from {', '.join(FORMATS)}")
    return name


def is_quantized(fmt: str) -> bool:
    return FORMATS[format_name(fmt)][2]


def qmax(fmt: str) -> float:
    return FORMATS[format_name(fmt)][1]


def quantize(x: torch.Tensor, scale: torch.Tensor, fmt: str) -> torch.Tensor:
    """x / scale rounded to `fmt` (saturating); `scale` broadcasts against x."""
    fmt = format_name(fmt)
    y = x.float() / scale
    m = qmax(fmt)
    if fmt == "int8":
        return y.round().clamp(-m, m).to(torch.int8)
    return y.clamp(-m, m).to(torch.float8_e4m3fn)


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (q.to(dtype) * scale.to(dtype))


def scale_for(amax: torch.Tensor, fmt: str) -> torch.Tensor:
    """The smallest scale that stores |x| <= amax without saturating (1 where amax is 0)."""
    s = amax.float() / qmax(fmt)
    return torch.where(s > 0, s, torch.ones_like(s))


def scales_view(scale: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """[num_blocks, kv_heads] view of a per-head [kv_heads] or per-block [num_blocks, kv_heads] scale tensor
    (per head: block stride 0, no copy)."""
    if scale.dim() == 1:
        return scale.unsqueeze(0).expand(num_blocks, scale.shape[0])
    return scale
