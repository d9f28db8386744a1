"""GPTQ (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers"): int4 weights in the int4_weight_only layout (groups of G, asymmetric, two per byte), chosen
column by column to minimise the layer's output error on calibration text rather than each weight's own
rounding error.

For a layer y = W x with calibration inputs X [tokens, K], the Hessian of the squared output error is
H = 2 X^T X / tokens. Columns are quantized in order; after column i is rounded, its error e_i / [H^-1]_ii
is spread over the columns not yet quantized through row i of the upper Cholesky factor of H^-1
(the OBS update), lazily in blocks of G columns (one block = one group, so each group's grid is fitted on
weights that already carry every earlier update). Dampening: 1% of the mean diagonal added to H.

Calibration: `CALIB_WINDOWS` windows of the model's context from the *training* split (never the held-out
text the quality is scored on), seeded. `act_order` (the `gptq_g*_act` methods): columns in order of decreasing
H_ii with static groups (AutoGPTQ's desc_act + static_groups). By default all Hessians come from one pass of the
unquantized model. `sequential` (the `gptq_g*_seq` methods; AutoGPTQ's true_sequential): the layers are quantized
in the order the forward calls them, in groups of layers that read the same input tensor (q/k/v, then o, then
gate/up, then down, block after block), and each group's Hessian is collected by a fresh calibration pass through
the model whose earlier layers are already quantized, so each layer's GPTQ corrects for the inputs it will see.
Cost: one forward over the calibration text (plain) or one per group (sequential: 4 per decoder block) plus
O(K^3 + N K^2) per layer (milliseconds on the tiny model).
"""
from __future__ import annotations

import torch
from torch import nn

from quant.common import QuantError, calibration_statistics, decoder_linears, replace_linears
from quant.int4_weight_only import QMAX, Int4WeightOnlyLinear, check, group_params

CALIB_WINDOWS = 128
DAMP = 0.01


def calibration_ids(lm, windows: int = CALIB_WINDOWS, seed: int = 0) -> torch.Tensor:
    """[windows, context] token ids from the training split at seeded offsets."""
    from models import data
    train = lm.encode_bytes(data.split()[0])
    ctx = lm.context
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(train) - ctx - 1, (windows,), generator=g)
    return train[starts[:, None] + torch.arange(ctx)]


def hessians(model: nn.Module, calibrate, names=None) -> dict[str, tuple[torch.Tensor, int]]:
    """For every decoder linear (or those in `names`): (sum of x x^T over the calibration tokens in float64 [K, K],
    token count). `calibrate(model)` runs the model over the calibration data (ids [windows, context] for an LM)."""
    return {k: (h, n) for k, (h, _, n) in calibration_statistics(model, calibrate, names).items()}


def lm_calibration(ids: torch.Tensor, batch: int = 16):
    """A `calibrate` running an LM over ids [windows, context] in batches."""
    def run(model):
        dev = next(model.parameters()).device
        for i in range(0, len(ids), batch):
            model(input_ids=ids[i:i + batch].to(dev))
    return run


def gptq_quantize(w: torch.Tensor, xtx: torch.Tensor, count: int, group: int, damp: float = DAMP,
                  act_order: bool = False):
    """GPTQ on one weight [N, K] with sum x x^T [K, K]: (q uint8 [N, K], scale [N, K/G], zero [N, K/G]).
    act_order: columns in order of decreasing H_ii (the loudest inputs first, while the most columns remain to
    absorb their error), with static groups (each group's grid fitted on the original weights, so a group's
    columns may come at any point of the order and the storage stays the int4 layout)."""
    W = w.detach().to(torch.float64).clone()
    n, k = W.shape
    H = 2.0 * xtx / max(count, 1)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    if act_order:
        return _gptq_act_order(W, H, group, damp)
    H += damp * torch.mean(torch.diag(H)) * torch.eye(k, dtype=torch.float64)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros(n, k, dtype=torch.uint8)
    scales = torch.zeros(n, k // group, dtype=torch.float32)
    zeros = torch.zeros(n, k // group, dtype=torch.float32)
    for i1 in range(0, k, group):                       # one block = one group
        i2 = i1 + group
        W1 = W[:, i1:i2].clone()
        Hinv1 = Hinv[i1:i2, i1:i2]
        err1 = torch.zeros_like(W1)
        s, z = group_params(W1.float(), group)          # the grid of this group, on its updated weights
        s64, z64 = s[:, 0].double(), z[:, 0].double()
        scales[:, i1 // group], zeros[:, i1 // group] = s[:, 0], z[:, 0]
        for i in range(group):
            col = W1[:, i]
            q = torch.clamp(torch.round(col / s64) + z64, 0, QMAX)
            Q[:, i1 + i] = q.to(torch.uint8)
            e = (col - s64 * (q - z64)) / Hinv1[i, i]
            W1[:, i:] -= e[:, None] * Hinv1[i, i:][None, :]
            err1[:, i] = e
        W[:, i2:] -= err1 @ Hinv[i1:i2, i2:]
    return Q, scales, zeros


def _gptq_act_order(W: torch.Tensor, H: torch.Tensor, group: int, damp: float):
    n, k = W.shape
    scales, zeros = group_params(W.float(), group)      # static groups: fitted before any update
    perm = torch.argsort(torch.diag(H), descending=True)
    W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.mean(torch.diag(H)) * torch.eye(k, dtype=torch.float64)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    gidx = perm // group                                 # the group of each permuted column
    s_col, z_col = scales.double()[:, gidx], zeros.double()[:, gidx]
    Qp = torch.zeros(n, k, dtype=torch.uint8)
    for i1 in range(0, k, group):                       # lazy batches of G columns (not groups now)
        i2 = min(i1 + group, k)
        W1 = W[:, i1:i2].clone()
        Hinv1 = Hinv[i1:i2, i1:i2]
        err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col, s64, z64 = W1[:, i], s_col[:, i1 + i], z_col[:, i1 + i]
            q = torch.clamp(torch.round(col / s64) + z64, 0, QMAX)
            Qp[:, i1 + i] = q.to(torch.uint8)
            e = (col - s64 * (q - z64)) / Hinv1[i, i]
            W1[:, i:] -= e[:, None] * Hinv1[i, i:][None, :]
            err1[:, i] = e
        W[:, i2:] -= err1 @ Hinv[i1:i2, i2:]
    Q = torch.empty_like(Qp)
    Q[:, perm] = Qp                                      # back to the original column order
    return Q, scales, zeros


class _FirstForwardDone(Exception):
    pass


def sequential_groups(model: nn.Module, calibrate) -> list[list[str]]:
    """The decoder linears in the order the first forward of `calibrate(model)` calls them, consecutive layers that
    read the same input tensor (q/k/v of an attention block, gate/up of a Llama MLP) in one group. The pass stops
    when a layer is called a second time (the second batch). A layer never called: QuantError (before any layer is
    quantized)."""
    groups: list[list[str]] = []
    last: list = [None]                                  # the input tensor of the last call (held, compared by `is`)
    seen: set[str] = set()

    def hook(mod, inp, name):
        if name in seen:
            raise _FirstForwardDone
        seen.add(name)
        x = inp[0] if inp else None
        if groups and x is not None and x is last[0]:
            groups[-1].append(name)
        else:
            groups.append([name])
        last[0] = x
    lins = list(decoder_linears(model))
    hooks = [lin.register_forward_pre_hook(lambda mod, inp, name=name: hook(mod, inp, name)) for name, lin in lins]
    try:
        calibrate(model)
    except _FirstForwardDone:
        pass
    finally:
        for h in hooks:
            h.remove()
    missed = [name for name, _ in lins if name not in seen]
    if missed:
        raise QuantError(f"GPTQ: layer {missed[0]!r} saw no calibration input")
    return groups


def apply(model: nn.Module, lm=None, group: int = 64, bits: int = 4, calibrate=None,
          act_order: bool = False, sequential: bool = False) -> nn.Module:
    """Quantize `model` with GPTQ. Calibration: `calibrate(model)` (runs the model over calibration inputs), or
    by default CALIB_WINDOWS windows of `lm`'s training text. `sequential`: true-sequential (module docstring)."""
    check(model, group, bits, f"GPTQ int4 g{group}")
    if calibrate is None:
        if lm is None:
            raise QuantError("GPTQ needs calibration data: an LM (its training text) or a calibrate function")
        calibrate = lm_calibration(calibration_ids(lm))

    def make(hs):
        def quantize(name, lin):
            if name not in hs:
                return None
            xtx, count = hs[name]
            if count == 0:                                # H = 0: every column dead, the layer would be all zeros
                raise QuantError(f"GPTQ: layer {name!r} saw no calibration input")
            q, s, z = gptq_quantize(lin.weight, xtx, count, group, act_order=act_order)
            return Int4WeightOnlyLinear(lin, group, q=q, scale=s, zero=z)
        return quantize
    if not sequential:
        replace_linears(model, make(hessians(model, calibrate)))
        return model
    for names in sequential_groups(model, calibrate):    # each group's inputs through the quantized layers before it
        replace_linears(model, make(hessians(model, calibrate, names=set(names))))
    return model
