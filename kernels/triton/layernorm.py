"""LayerNorm forward in Triton: y = (x - mean) * rsqrt(var + eps) * w + b over the last dimension of
x [rows, cols] (biased variance, as torch.nn.functional.layer_norm).

Algorithm (Ba, Kiros & Hinton 2016): one program per row.
- Fused (cols <= MAX_FUSED): the row stays in registers: mean, then the variance of the centred values
  (two reductions over registers, no cancellation), one write. Bytes: 2 * rows * cols * itemsize
  (+ w and b, which stay in L2); FLOPs ~7 per element.
- Looped (longer rows): pass 1 keeps a Welford mean/M2 per lane while streaming x, and merges the lanes
  with Chan et al.'s pairwise formula at the end (stable, unlike sum(x^2) - sum(x)^2/n); pass 2 reads x
  again and writes y: 2 reads + 1 write per element, against 3 reads for mean / variance / write passes.
Statistics in float32 whatever the storage dtype; y is rounded once at the store.

What it improves on: the one-pass row against torch's eager layer_norm, nothing in bytes (both read and
write once); it is the Triton rung of the ladder, comparable with the CUDA one.
Measured: not yet measured on a GPU. Target: >= 80% of the GPU's copy bandwidth. Under the CPU
interpreter it is checked, never timed.
"""
from __future__ import annotations

import torch

from kernels.triton.common import declare
from kernels.triton.common import (HAS_TRITON, Launcher, TritonKernel, config, missing_reason,  # noqa: F401
                                   next_pow2, prune_row_configs, row_kernels, triton, tl)

MAX_FUSED = 16384
DEFAULT_EPS = 1e-5  # torch.nn.functional.layer_norm's default

if HAS_TRITON:

    @triton.jit
    def layernorm_kernel(x_ptr, w_ptr, b_ptr, y_ptr, n_cols, stride_x, stride_y, eps,
                         BLOCK_N: tl.constexpr, LOOPED: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        x_row = x_ptr + row * stride_x
        y_row = y_ptr + row * stride_y
        cols = tl.arange(0, BLOCK_N)
        if not LOOPED:
            mask = cols < n_cols
            x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
            mean = tl.sum(x, axis=0) / n_cols
            xc = tl.where(mask, x - mean, 0.0)                 # padding must not add mean^2 to the variance
            rstd = tl.rsqrt(tl.sum(xc * xc, axis=0) / n_cols + eps)
            w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
            b = tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(y_row + cols, (xc * rstd * w + b).to(y_ptr.dtype.element_ty), mask=mask)
        else:
            # pass 1: Welford per lane (count, mean, M2); a lane past the row's end keeps count 0
            cnt = tl.zeros([BLOCK_N], dtype=tl.float32)
            avg = tl.zeros([BLOCK_N], dtype=tl.float32)
            m2 = tl.zeros([BLOCK_N], dtype=tl.float32)
            for start in range(0, n_cols, BLOCK_N):
                c = start + cols
                mask = c < n_cols
                x = tl.load(x_row + c, mask=mask, other=0.0).to(tl.float32)
                cnt += mask.to(tl.float32)
                delta = tl.where(mask, x - avg, 0.0)
                avg += delta / tl.maximum(cnt, 1.0)
                m2 += delta * tl.where(mask, x - avg, 0.0)
            # merge the lanes (Chan, Golub & LeVeque): M2 = sum(M2_i + n_i * (mean_i - mean)^2)
            mean = tl.sum(cnt * avg, axis=0) / n_cols
            d = avg - mean
            var = tl.sum(m2 + cnt * d * d, axis=0) / n_cols
            rstd = tl.rsqrt(var + eps)
            # pass 2: second read of x, one write
            for start in range(0, n_cols, BLOCK_N):
                c = start + cols
                mask = c < n_cols
                x = tl.load(x_row + c, mask=mask, other=0.0).to(tl.float32)
                w = tl.load(w_ptr + c, mask=mask, other=0.0).to(tl.float32)
                b = tl.load(b_ptr + c, mask=mask, other=0.0).to(tl.float32)
                tl.store(y_row + c, ((x - mean) * rstd * w + b).to(y_ptr.dtype.element_ty), mask=mask)

    FUSED_CONFIGS, LOOPED_CONFIGS, FUSED, LOOPED = row_kernels(layernorm_kernel)


def layernorm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, out: torch.Tensor,
              eps: float = DEFAULT_EPS, looped: bool | None = None):
    """out = (x - mean) * rsqrt(var + eps) * w + b for x, out [rows, cols], w, b [cols]. Returns the Config."""
    assert x.shape == out.shape and x.dim() == 2 and w.shape == b.shape == (x.shape[1],)
    assert x.stride(1) == 1 and out.stride(1) == 1 and w.is_contiguous() and b.is_contiguous()
    rows, cols = x.shape
    if looped is None:
        looped = cols > MAX_FUSED
    args = (x, w, b, out, cols, x.stride(0), out.stride(0), float(eps))
    if looped:
        return LOOPED((rows,), *args, LOOPED=True)
    return FUSED((rows,), *args, BLOCK_N=next_pow2(cols), LOOPED=False)


def setup(case, x, weight, bias, eps=None, **_):
    """Triton LayerNorm (one row per program)

    Registry setup (the norm suite's inputs x, weight, bias, eps); eps defaults to the case's `eps`
    parameter, else DEFAULT_EPS."""
    eps = float(eps if eps is not None else case.get("eps", DEFAULT_EPS))
    x2 = x.reshape(-1, x.shape[-1])
    out = case.poisoned(tuple(x.shape))
    out2 = out.view(-1, x.shape[-1])
    return Launcher(lambda: layernorm(x2, weight, bias, out2, eps), out)


VARIANT = declare(setup, __file__)   # SUITE.add("triton", VARIANT)


def aot_specs():
    """What kernels/triton/aot.py compiles (bf16): the fused kernel at 4096 and MAX_FUSED columns with
    every config autotuning may pick there, and every looped config."""
    sig = {"x_ptr": "*bf16", "w_ptr": "*bf16", "b_ptr": "*bf16", "y_ptr": "*bf16", "n_cols": "i32",
           "stride_x": "i32", "stride_y": "i32", "eps": "fp32", "BLOCK_N": "constexpr", "LOOPED": "constexpr"}
    for block in (4096, MAX_FUSED):
        for cfg in prune_row_configs(FUSED_CONFIGS, {"BLOCK_N": block}):
            yield f"fused_n{block}", layernorm_kernel, sig, {"BLOCK_N": block, "LOOPED": False}, cfg
    for cfg in LOOPED_CONFIGS:
        yield "looped", layernorm_kernel, sig, {**cfg.kwargs, "LOOPED": True}, cfg
