"""What every quantization method shares: the error type, the quantized-linear base class, the layer walk and
the storage count.

A method replaces the `nn.Linear` layers it applies to by a module that holds the weight at its bit width
(`QuantLinear` subclasses: int8 per channel, int4 packed two per byte, float8) and computes with it. The
model's embeddings, norms and tied output head stay in their dtype: they are not `nn.Linear` layers of the
decoder (the tied head shares the embedding's storage; quantizing it would untie it and double its bytes).

`weight_bytes(model)` counts storage as held: a quantized layer's packed weights, scales and zero points at
their own widths, every other parameter at its dtype's width, shared tensors once.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn
from torch.nn import functional as F


class QuantError(ValueError):
    """Bad input to a method (bit width, group size, a layer it cannot take): one line for the user."""


class QuantLinear(nn.Module):
    """A linear layer y = x W^T + b with W stored quantized. Subclasses set the buffers and `dequantize()`."""
    method = "?"

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight [out, in] this layer computes with, in `dtype` (the reference of its tests)."""
        raise NotImplementedError

    def storage_bytes(self) -> int:
        """Bytes of the stored weight, scales and zero points (the bias, if any, is counted with the model)."""
        return sum(b.numel() * b.element_size() for b in self.buffers(recurse=False))

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, method={self.method}"


class PerChannelLinear(QuantLinear):
    """A linear layer whose weight is stored quantized per output channel: `qweight` [out, in] (int8 or float8)
    and one fp32 `scale` per row, W[n, :] ~= scale[n] * qweight[n, :]. Subclasses name the rounding
    (`quantize_weight`: w [out, in] -> (qweight, scale)) and, unless weight-only, their forward.
    Storage: out*in bytes + out fp32 scales (8 + 32/in bits per weight)."""

    @staticmethod
    def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __init__(self, lin: nn.Linear):
        super().__init__(lin.in_features, lin.out_features, lin.bias)
        q, s = self.quantize_weight(lin.weight)
        self.register_buffer("qweight", q)
        self.register_buffer("scale", s)

    def dequantize(self, dtype=torch.float32):
        return (self.qweight.to(torch.float64) * self.scale.to(torch.float64)[:, None]).to(dtype)

    def forward(self, x):
        # weight-only: the stored weight upcast per call, the scale on the output ((x q^T) * s == x (s q)^T)
        y = F.linear(x, self.qweight.to(x.dtype)) * self.scale.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)


def decoder_linears(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    """The `nn.Linear` layers a method quantizes: every one but a tied output head (which is the embedding)."""
    tied = _tied_weights(model)
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and id(mod.weight) not in tied:
            yield name, mod


@torch.no_grad()
def calibration_statistics(model: nn.Module, calibrate,
                           names=None) -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
    """For every decoder linear (or those in `names`), from one `calibrate(model)` pass over the calibration data
    (ids [windows, context] for an LM): (sum of x x^T [K, K], sum of |x| [K], both float64, token count). GPTQ takes
    the first (its Hessian), AWQ all three."""
    acc: dict[str, list] = {}
    hooks = []
    for name, lin in decoder_linears(model):
        if names is not None and name not in names:
            continue
        k = lin.in_features
        acc[name] = [torch.zeros(k, k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64), 0]

        def hook(mod, inp, out, name=name):
            x = inp[0].detach().reshape(-1, inp[0].shape[-1]).to("cpu", torch.float64)
            acc[name][0] += x.t() @ x
            acc[name][1] += x.abs().sum(0)
            acc[name][2] += x.shape[0]
        hooks.append(lin.register_forward_hook(hook))
    try:
        calibrate(model)
    finally:
        for h in hooks:
            h.remove()
    return {k: (v[0], v[1], v[2]) for k, v in acc.items()}


def _tied_weights(model: nn.Module) -> set[int]:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return {id(emb.weight)} if emb is not None else set()


def replace_linears(model: nn.Module, make: Callable[[str, nn.Linear], nn.Module | None]) -> int:
    """Replace each decoder linear by `make(name, linear)` (None keeps it); returns how many were replaced.
    `make` may raise QuantError for a layer it cannot take: nothing is replaced then (checked first)."""
    todo = []
    for name, lin in list(decoder_linears(model)):
        todo.append((name, make(name, lin)))
    for name, new in todo:
        if new is None:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    return sum(new is not None for _, new in todo)


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds; for a tensor subclass (torchao's quantized weights) the sum of its inner tensors."""
    if type(t) in (torch.Tensor, nn.Parameter) or not hasattr(t, "__tensor_flatten__"):
        return t.numel() * t.element_size()
    names, _ = t.__tensor_flatten__()
    return sum(tensor_bytes(getattr(t, n)) for n in names if isinstance(getattr(t, n, None), torch.Tensor))


def weight_bytes(model: nn.Module) -> int:
    """Storage of the model's weights as held: quantized layers at their widths (their buffers, a torchao
    subclass's inner tensors, a torch.ao dynamic layer's packed weight), every other parameter at its dtype's
    width, a tied weight once. Non-weight buffers (rotary frequencies) are not counted."""
    from quant.torch_native import dynamic_storage_bytes
    total = sum(tensor_bytes(p) for p in model.parameters())
    for m in model.modules():
        if isinstance(m, QuantLinear):
            total += m.storage_bytes()
        else:
            total += dynamic_storage_bytes(m) or 0
    return total


def quantized_weight_count(model: nn.Module) -> int:
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, QuantLinear))


def check_bits(bits: int, allowed: tuple[int, ...], method: str) -> None:
    if bits not in allowed:
        raise QuantError(f"{method}: unsupported bit width {bits} (supported: {', '.join(map(str, allowed))})")


def check_group(group: int, k: int, name: str, method: str) -> None:
    if group <= 0 or k % group != 0:
        raise QuantError(f"{method}: group size {group} does not divide the input size {k} of layer {name!r}")


def round_half_even(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x)          # torch.round rounds half to even, as the kernels' conversions do
