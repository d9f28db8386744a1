"""The CUDA kernels of libkb_cuda.so, each declared once (kernels/native.py): entry point, arguments, output.

A suite registers one in one line: `SUITE.add("cuda_rowcache", cuda_lib.SOFTMAX)`. CUDA cases run the real
library (build/lib/libkb_cuda.so, CUDA tensors); CPU cases run the simulated one (build/lib/libkb_cuda_sim.so:
the same .cu sources compiled by the host compiler against kernels/cuda/sim/, CPU tensors), which is how the
tests check every kernel without a GPU. Every entry point takes the current stream last (read at each call,
so CUDA-graph capture sees its own stream) and returns 0 or an error code explained by `kb_cuda_last_error()`.
Never raises on import: a missing library or torch without CUDA shows up as the skip reason.
"""
from __future__ import annotations

import ctypes
import math

import torch

from kernels.native import (Arg, Kernel, Library, NativeError, aligned16, contiguous, dtype, f32, i32, ptr, rows,
                            size, stream, stride, strides, top_left_causal_only, unit_last)

NOT_BUILT = "CUDA kernels not built: run 'make build'"
KbCudaError = NativeError          # the error a failing entry point raises (its message from kb_cuda_last_error)
SIM = Library("kb_cuda_sim", device="cpu", error_symbol="kb_cuda_last_error", simulated=True,
              hint=NOT_BUILT + " (simulation: libkb_cuda_sim.so)")
LIB = Library("kb_cuda", device="cuda", error_symbol="kb_cuda_last_error", hint=NOT_BUILT, simulation=SIM)


def available(case=None) -> str | None:
    """libkb_cuda.so built (make build), a GPU of compute capability 8.0+"""
    if case is not None and case.device != "cuda":
        return None                 # CPU cases run the simulation (tests); the suites register CUDA only
    try:
        if not torch.cuda.is_available():
            return "no CUDA GPU"
        if torch.cuda.get_device_capability() < (8, 0):
            return "CUDA kernels need compute capability 8.0+ (mma.m16n8k16 bf16, cp.async)"
    except Exception as exc:  # a broken driver must not break the suite
        return f"CUDA unusable: {exc}"
    return None


def _cuda(symbol: str, args, out, doc: str, source: str, **kw) -> Kernel:
    return Kernel(LIB, symbol, [*args, stream()], out, doc, backend="cuda", source=f"kernels/cuda/{source}",
                  devices=("cuda",), min_cc=(8, 0), available=available, **kw)


def _like_x(case, x, **_):
    return x.shape


_ROWS = {"x": rows, "out": rows, "weight": contiguous, "bias": contiguous}

SOFTMAX = _cuda("kb_cuda_softmax",
                [ptr("x"), ptr("out"), dtype("x"), size("x", 0), size("x", 1), stride("x", 0), stride("out", 0)],
                _like_x, "one block per row, online max/sum, row cached in shared memory (one read of x)",
                "softmax.cu", layout=_ROWS)

RMSNORM = _cuda("kb_cuda_rmsnorm",
                [ptr("x"), ptr("weight"), ptr("out"), dtype("x"), size("x", 0), size("x", 1), stride("x", 0),
                 stride("out", 0), f32("eps")],
                _like_x, "one block per row, fp32 statistics, row cached in shared memory (one read of x)",
                "rmsnorm.cu", layout=_ROWS)

LAYERNORM = _cuda("kb_cuda_layernorm",
                  [ptr("x"), ptr("weight"), ptr("bias"), ptr("out"), dtype("x"), size("x", 0), size("x", 1),
                   stride("x", 0), stride("out", 0), f32("eps")],
                  _like_x, "one block per row, fp32 statistics, row cached in shared memory (one read of x)",
                  "layernorm.cu", layout=_ROWS)


def _gemm_out(case, a, b, **_):
    return (a.shape[0], b.shape[1])


# out[M, N] = a[M, K] @ b[K, N]; a, b bf16 or fp16; out in a's dtype (the kernel also writes fp32)
GEMM = _cuda("kb_cuda_gemm",
             [ptr("a"), ptr("b"), ptr("out"), dtype("a"), dtype("out"), size("a", 0), size("b", 1), size("a", 1),
              stride("a", 0), stride("b", 0), stride("out", 0)],
             _gemm_out, "128x128x32 tiles, mma.sync m16n8k16, 3-stage cp.async pipeline; output in the input dtype",
             "gemm_tc.cu", dtypes=("bfloat16", "float16"), layout={"a": unit_last, "b": unit_last},
             unsupported=lambda case, **_: None if case.dtype_name in ("bfloat16", "float16") else
             f"tensor-core GEMM takes bf16/fp16 inputs, not {case.dtype_name}")


def _attention_unsupported(case, q, **_):
    if top_left_causal_only(case):
        return top_left_causal_only(case)
    if q.shape[-1] not in (64, 128):
        return f"head dim {q.shape[-1]} not supported (64 or 128)"
    return None


# out[b, h, sq, d] = softmax(q k^T * scale, causal top-left) v; strides of q, k, v, out over (b, h, s)
ATTENTION = _cuda("kb_cuda_attention_fwd",
                  [ptr("q"), ptr("k"), ptr("v"), ptr("out"), dtype("q"), size("q", 0), size("q", 1), size("k", 1),
                   size("q", 2), size("k", 2), size("q", 3), i32(lambda c: bool(c["causal"])),
                   f32(lambda c: 1.0 / math.sqrt(c["q"].shape[-1])),
                   [strides(t, (0, 1, 2)) for t in ("q", "k", "v", "out")]],
                  lambda case, q, **_: q.shape,
                  "FlashAttention-2 style forward: bf16/fp16 on mma.sync tensor cores, fp32 on CUDA cores",
                  "attention_fwd.cu", layout={"q": aligned16, "k": aligned16, "v": aligned16},
                  unsupported=_attention_unsupported)


# ---- paged decode (suites/decode.py; the cache layout of inference/paged.py) ---------------------------------
def _decode_nsplit(c) -> int:
    """Splits of each (sequence, kv head): >= 2 blocks per SM on a GPU; 3 under the simulation (the merge runs)."""
    b, hkv, maxb = c["q"].shape[0], c["k_cache"].shape[2], c["block_tables"].shape[1]
    if c["q"].device.type != "cuda":
        return max(1, min(maxb, 3))
    sms = torch.cuda.get_device_properties(c["q"].device).multi_processor_count
    return max(1, min(maxb, -(-2 * sms // max(1, b * hkv))))


def _decode_workspace(c):
    """fp32 partials (m, l, acc[d]) per (sequence, kv head, split, query row), kept alive with the call."""
    q = c["q"]
    rows = q.shape[2] // c["k_cache"].shape[2] * q.shape[1]
    n = q.shape[0] * c["k_cache"].shape[2] * _decode_nsplit(c) * rows * (q.shape[3] + 2)
    ws = torch.empty(max(1, n), dtype=torch.float32, device=q.device)
    c.tensors["_workspace"] = ws
    return ws


def _decode_kv_code(c) -> int:
    from kernels.cpp.lib import kv_code
    return kv_code(c)


def _decode_unsupported(case, q, k_cache, **inputs):
    from kernels.cpp.lib import decode_unsupported
    decode_unsupported(case, q, k_cache, **inputs)           # raises on inconsistent arguments
    if q.shape[-1] not in (32, 64, 128):
        return f"head dim {q.shape[-1]}: the CUDA kernel takes 32, 64 or 128"
    if q.shape[2] // k_cache.shape[2] * q.shape[1] > 16:
        return "more than 16 query rows per kv head (heads per kv head x query tokens)"
    if k_cache.dtype in (torch.float32, torch.bfloat16, torch.float16) and k_cache.dtype != q.dtype:
        return "a float cache must have q's dtype"
    return None


def _opt(name, get, ctype):
    from kernels.native import Arg
    return Arg(ctype, lambda c: get(c.tensors[name]) if c.tensors.get(name) is not None else (None if ctype is
                                                                                             ctypes.c_void_p else 0))


# q, k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale, out, workspace, workspace_bytes, B, SQ, H, D,
# each tensor's own sizes (the entry point refuses any mismatch), nsplit, scale, q dtype, kv dtype, stream
DECODE_PAGED = _cuda("kb_cuda_decode_paged",
                     [ptr("q"), ptr("k_cache"), ptr("v_cache"), ptr("block_tables"), ptr("seq_lens"),
                      _opt("k_scale", lambda t: t.data_ptr(), ctypes.c_void_p),
                      _opt("v_scale", lambda t: t.data_ptr(), ctypes.c_void_p), ptr("out"),
                      Arg(ctypes.c_void_p, lambda c: _decode_workspace(c).data_ptr()),
                      Arg(ctypes.c_int64, lambda c: c.tensors["_workspace"].numel() * 4),
                      [size("q", i) for i in range(4)], [size("k_cache", i) for i in range(4)],
                      [size("v_cache", i) for i in range(4)], size("block_tables", 0), size("block_tables", 1),
                      size("seq_lens", 0),
                      [_opt(t, f, ctypes.c_int64) for t in ("k_scale", "v_scale")
                       for f in (lambda x: x.shape[0], lambda x: x.shape[1], lambda x: x.stride(0))],
                      Arg(ctypes.c_int64, _decode_nsplit), f32(lambda c: 1.0 / math.sqrt(c["q"].shape[-1])),
                      dtype("q"), Arg(ctypes.c_int, _decode_kv_code)],
                     lambda case, q, **_: q.shape,
                     "paged split-KV decode: GQA rows share each K/V row, warps split tokens, blocks split pages",
                     "decode_paged.cu",
                     layout={"q": contiguous, "k_cache": contiguous, "v_cache": contiguous,
                             "block_tables": contiguous, "seq_lens": contiguous},
                     unsupported=_decode_unsupported)


def bind(path):
    """Load a kb_cuda library (real or simulated, by its file name) from `path`, uncached."""
    from pathlib import Path
    return (SIM if "sim" in Path(path).name else LIB).bind(path)


def load(simulated: bool = False):
    """The library from the build directory, or None (`(SIM if simulated else LIB).reason()` says why)."""
    return (SIM if simulated else LIB).load()


# ---- sparse weights (issue 17, sparsity/formats.py): y = x @ W^T, W [N, K] compressed -----------------------
def _sparse_out(case, x, w, **_):
    return (x.shape[0], w.shape[0])


def _sparse_reason(kind: str):
    def unsupported(case, **inputs) -> str | None:
        from sparsity.cases import unsupported_reason
        if case.dtype_name not in ("bfloat16", "float16"):
            return f"tensor-core kernel: bf16/fp16 inputs, not {case.dtype_name}"
        return unsupported_reason(case, kind, inputs)
    return unsupported


# x, vals, meta, y, M, N, K, ldx, ldy, dtype, stream
GEMM_24 = _cuda("kb_cuda_gemm_24",
                [ptr("x"), ptr("v24_vals"), ptr("v24_meta"), ptr("out"), size("x", 0), size("w", 0), size("x", 1),
                 stride("x", 0), stride("out", 0), dtype("x")],
                _sparse_out, "2:4 sparse tensor cores: mma.sp m16n8k32 on the compressed weight and its 2-bit indices",
                "sparse_24_mma_sp.cu", dtypes=("bfloat16", "float16"), layout={"x": unit_last},
                unsupported=_sparse_reason("2:4"))

# x, rowptr, cols, vals, y, M, N, K, ldx, ldy, block, dtype, stream
BSR_GEMM = _cuda("kb_cuda_bsr_gemm",
                 [ptr("x"), ptr("bsr_rowptr"), ptr("bsr_cols"), ptr("bsr_vals"), ptr("out"), size("x", 0),
                  size("w", 0), size("x", 1), stride("x", 0), stride("out", 0), i32("block"), dtype("x")],
                 _sparse_out, "block-sparse GEMM on mma.m16n8k16: a warp per block row x 32 rows of x",
                 "sparse_bsr.cu", dtypes=("bfloat16", "float16"), layout={"x": unit_last},
                 unsupported=_sparse_reason("bsr"))
# ---- quantized GEMMs (suites/quant_gemm.py) ------------------------------------------------------------------
def _w8a8_only(case, **_):
    return None if case is None or case.get("scheme") == "w8a8" else "the int8 tensor-core GEMM is the w8a8 scheme's"


# out[M, N] = (a[M, K] int8 @ w[N, K]^T int8) * sa[m] * sw[n]; out fp32, bf16 or fp16
GEMM_W8A8 = _cuda("kb_cuda_gemm_w8a8",
                  [ptr("a"), ptr("sa"), ptr("w"), ptr("sw"), ptr("out"), size("a", 0), size("w", 0), size("a", 1),
                   stride("a", 0), stride("w", 0), stride("out", 0), dtype("out")],
                  lambda case, a, w, **_: (a.shape[0], w.shape[0]),
                  "W8A8 on int8 tensor cores (mma.sync m16n8k32 s8, int32 accumulation, scales in the epilogue)",
                  "quant_int8_gemm.cu", layout={"a": unit_last, "w": unit_last, "sa": contiguous, "sw": contiguous},
                  unsupported=_w8a8_only)


def _w4_only(case, **_):
    if case is not None and case.get("scheme") != "w4":
        return "the W4A16 tensor-core GEMM is the w4 scheme's"
    if case is not None and case.dtype_name not in ("bfloat16", "float16"):
        return f"tensor-core kernel: bf16/fp16 inputs, not {case.dtype_name}"
    return None


# out[M, N] = x[M, K] @ W^T, W int4 (packed [N, K/2], scale fp32 / zero uint8 [N, K/group]); x, out bf16 or fp16
GEMM_W4A16 = _cuda("kb_cuda_gemm_w4a16",
                   [ptr("x"), ptr("packed"), ptr("scale"), ptr("zero"), ptr("out"), size("x", 0), size("packed", 0),
                    size("x", 1), i32("group"), stride("x", 0), stride("out", 0), dtype("x")],
                   lambda case, x, packed, **_: (x.shape[0], packed.shape[0]),
                   "W4A16 on tensor cores (nibbles dequantized in registers into mma.sync m16n8k16 B fragments)",
                   "quant_w4a16_gemm.cu", dtypes=("bfloat16", "float16"),
                   layout={"x": unit_last, "packed": contiguous, "scale": contiguous, "zero": contiguous},
                   unsupported=_w4_only)
