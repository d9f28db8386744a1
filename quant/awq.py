"""AWQ (Lin et al., 2023, "AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration"):
int4 weights in the int4_weight_only layout (groups of G, asymmetric, two per byte), made activation-aware by a
per-input-channel scale searched on calibration text, then a per-group clipping search.

1. Scale search. For a layer y = x W^T with calibration inputs X [tokens, K]: a = mean |X| per input channel;
   for alpha in 0, 0.05, ..., 1: s = a^alpha (normalized by sqrt(max * min)), W' = W diag(s) rounded to the int4
   grid (RTN), computing y = (x / s) Q(W')^T. Salient input channels (large |x|) get a larger s, so their
   weights are rounded on a finer relative grid. The alpha kept minimises the output error on the calibration
   text, ||X (W - Q(W diag s) diag(1/s))^T||^2 = sum_n dw_n H dw_n^T with H = X^T X (one pass, float64: the
   Hessian GPTQ uses, no activations stored). alpha = 0 is plain RTN, so AWQ's calibration error is never
   worse than RTN's.
2. Clip search (AWQ's auto_clip). Per row and group, the grid's range is shrunk to r * [min, max] for
   r in 1, 0.95, ..., 0.5 and the r with the smallest output error of that group (the group's diagonal block
   of H) is kept: outlier weights clipped, the rest rounded on a finer grid.

Storage: the int4 layout (4 + 40/G bits per weight) plus 1/s as K fp32 per layer (32/N bits per weight: 0.08-0.25
on tiny's 128-384 wide layers). The paper folds 1/s into the preceding RMSNorm or linear layer so it costs
nothing at run time; here it is applied to x per call (one elementwise multiply of M*K), which keeps the method a
per-layer module that works on any model (the digits MLP too) -- folding is not done.
Calibration: the 128 training-text windows GPTQ uses (gptq.calibration_ids), one pass of the unquantized model
(not layer by layer through the already-quantized layers). Cost: 21 + 11 RTN passes per layer (milliseconds).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from quant.common import QuantError, calibration_statistics, replace_linears
from quant.int4_weight_only import QMAX, Int4WeightOnlyLinear, check, quantize_with

ALPHAS = tuple(i / 20 for i in range(21))
CLIP_RATIOS = tuple(1.0 - i / 20 for i in range(11))        # 1.0 .. 0.5


def statistics(model: nn.Module, calibrate) -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
    """For every decoder linear: (sum of x x^T [K, K] float64, sum of |x| [K] float64, token count), from one
    `calibrate(model)` pass (quant.common.calibration_statistics)."""
    return calibration_statistics(model, calibrate)


def clipped_params(w: torch.Tensor, group: int, ratio: torch.Tensor | float = 1.0):
    """(scale [N, K/G], zero [N, K/G]) of the asymmetric grid over ratio * [min, max] of each group (the range
    always includes 0); `ratio` a float or [N, K/G]. ratio = 1 is int4_weight_only.group_params."""
    n, k = w.shape
    g = w.detach().double().reshape(n, k // group, group)
    lo = g.amin(-1).clamp(max=0.0) * ratio
    hi = g.amax(-1).clamp(min=0.0) * ratio
    scale = (hi - lo) / QMAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale)).float()
    zero = torch.clamp(torch.round(-lo / scale.double()), 0, QMAX).float()
    return scale, zero


def _fake_quant(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int) -> torch.Tensor:
    q = quantize_with(w.float(), scale, zero, group).double()
    s = scale.double().repeat_interleave(group, dim=1)
    z = zero.double().repeat_interleave(group, dim=1)
    return s * (q - z)


def _output_error(dw: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """sum_n dw_n H dw_n^T: the squared output error over the calibration tokens, for dw [N, K]."""
    return ((dw @ h) * dw).sum()


def search_scale(w: torch.Tensor, h: torch.Tensor, mean_abs: torch.Tensor, group: int) -> tuple[torch.Tensor, float]:
    """(s [K] float64, alpha): the activation-aware input-channel scale of smallest output error."""
    w64 = w.detach().double()
    a = mean_abs.double().clamp(min=1e-8)
    best = (None, None, float("inf"))
    for alpha in ALPHAS:
        s = a ** alpha
        s = s / (s.max() * s.min()).sqrt()
        ws = w64 * s[None, :]
        sc, z = clipped_params(ws, group)
        err = float(_output_error(_fake_quant(ws, sc, z, group) / s[None, :] - w64, h))
        if err < best[2]:
            best = (s, alpha, err)
    return best[0], best[1]


def search_clip(ws: torch.Tensor, h: torch.Tensor, group: int) -> torch.Tensor:
    """ratio [N, K/G]: per row and group, the clipping of smallest output error over that group's inputs (the
    diagonal block of H, in the scaled input space of `ws`)."""
    n, k = ws.shape
    j = k // group
    hb = torch.stack([h[i * group:(i + 1) * group, i * group:(i + 1) * group] for i in range(j)])   # [J, G, G]
    best_err = torch.full((n, j), float("inf"), dtype=torch.float64)
    best_r = torch.ones(n, j, dtype=torch.float64)
    for r in CLIP_RATIOS:
        sc, z = clipped_params(ws, group, r)
        d = (_fake_quant(ws, sc, z, group) - ws).reshape(n, j, group)
        err = torch.einsum("njg,jgh,njh->nj", d, hb, d)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_r = torch.where(better, torch.full_like(best_r, r), best_r)
    return best_r


def awq_quantize(w: torch.Tensor, xtx: torch.Tensor, abs_sum: torch.Tensor, count: int, group: int):
    """AWQ on one weight [N, K]: (q uint8 [N, K] of W diag(s), scale [N, K/G], zero [N, K/G], 1/s [K] fp32)."""
    h = xtx / max(count, 1)
    s, _ = search_scale(w, h, abs_sum / max(count, 1), group)
    # the error is measured in the scaled space: x/s times W s, so H scales to diag(1/s) H diag(1/s)
    hs = h / s[:, None] / s[None, :]
    ws = w.detach().double() * s[None, :]
    ratio = search_clip(ws, hs, group)
    scale, zero = clipped_params(ws, group, ratio)
    q = quantize_with(ws.float(), scale, zero, group)
    return q, scale, zero, (1.0 / s).float()


class AWQLinear(Int4WeightOnlyLinear):
    """Int4 weight-only (the int4_weight_only layout) of W diag(s), computing y = (x * inv_scale) Q^T + b."""
    method = "awq"

    def __init__(self, lin: nn.Linear, group: int, q, scale, zero, inv_scale: torch.Tensor):
        super().__init__(lin, group, q=q, scale=scale, zero=zero)
        self.register_buffer("inv_scale", inv_scale.float().contiguous())

    def dequantize(self, dtype=torch.float32):
        # the effective weight: Q diag(1/s) (x diag(1/s) Q^T == x (Q diag(1/s))^T)
        w = super().dequantize(torch.float64) * self.inv_scale.to(torch.float64)[None, :]
        return w.to(dtype)

    def forward(self, x):
        w = super().dequantize(torch.float32).to(x.dtype)
        return F.linear(x * self.inv_scale.to(x.dtype), w, None if self.bias is None else self.bias.to(x.dtype))


def apply(model: nn.Module, lm=None, group: int = 64, bits: int = 4, calibrate=None) -> nn.Module:
    """Quantize `model` with AWQ. Calibration: `calibrate(model)`, or by default gptq.CALIB_WINDOWS windows of
    `lm`'s training text."""
    from quant import gptq
    check(model, group, bits, f"AWQ int4 g{group}")
    if calibrate is None:
        if lm is None:
            raise QuantError("AWQ needs calibration data: an LM (its training text) or a calibrate function")
        calibrate = gptq.lm_calibration(gptq.calibration_ids(lm))
    stats = statistics(model, calibrate)

    def make(name, lin):
        xtx, abs_sum, count = stats[name]
        if count == 0:
            raise QuantError(f"AWQ: layer {name!r} saw no calibration input")
        q, s, z, inv = awq_quantize(lin.weight, xtx, abs_sum, count, group)
        return AWQLinear(lin, group, q, s, z, inv)
    replace_linears(model, make)
    return model
