"""The CPU kernels of libkb_cpp.so, each declared once (kernels/native.py): entry point, arguments, output.

A suite registers one in one line: `SUITE.add("cpp", cpp.SOFTMAX)`. The library is looked up in
`$KB_BUILD_DIR/lib` or `<repo>/build/lib` (`$KB_CPP_LIB` names a library file directly: the ASan test uses
it). Importing this module never raises; when the library is missing, the skip reason says why and how to
build it. Every entry point takes `threads` (torch's thread count at setup) and returns 0 or an error code
explained by `kb_cpp_last_error()`.
"""
from __future__ import annotations

import ctypes
import math

import torch

from kernels.native import (Arg, Kernel, Library, contiguous, dtype, f32, i32, ptr, rows, size, stride, threads,
                            top_left_causal_only, unit_last)

BUILD_HINT = "C++ kernels not built: run 'make build'"
LIB = Library("kb_cpp", device="cpu", error_symbol="kb_cpp_last_error", hint=BUILD_HINT, env_var="KB_CPP_LIB")
ISA_NAMES = {0: "none", 1: "avx2", 2: "avx512", 3: "amx"}


def _isa_code(lib) -> int:
    f = lib.dll.kb_cpp_isa
    f.restype, f.argtypes = ctypes.c_int, []
    return f()


def available(case=None) -> str | None:
    """libkb_cpp.so built (make build), on an AVX2 or AVX-512 CPU."""
    lib = LIB.load()
    if lib is not None and _isa_code(lib) == 0:
        return "C++ kernels need a CPU with AVX2+FMA or AVX-512"
    return None


def missing_reason(case=None) -> str | None:
    """libkb_cpp.so built (make build), on an AVX2 or AVX-512 CPU: None, else why not (for code that drives
    the library without a declaration, e.g. kernels/cpp/probes.py)."""
    if case is not None and getattr(case, "device", "cpu") != "cpu":
        return "C++ kernels run on the CPU only"
    return LIB.reason() or available(case)


def isa() -> str:
    return ISA_NAMES.get(_isa_code(LIB.require()), "?")


def set_isa(name: str | None) -> None:
    """Force 'avx2', 'avx512' or 'amx' (tests run every path); None restores the automatic choice."""
    lib = LIB.require()
    f = lib.dll.kb_cpp_set_isa
    f.restype, f.argtypes = ctypes.c_int, [ctypes.c_int]
    code = -1 if name is None else {v: k for k, v in ISA_NAMES.items()}[name]
    lib.check(f(code), "kb_cpp_set_isa")


def _cpp(symbol: str, args, out, doc: str, source: str, **kw) -> Kernel:
    kw.setdefault("available", available)
    return Kernel(LIB, symbol, args, out, doc, backend="cpp", source=f"kernels/cpp/{source}", **kw)


def _like_x(case, x, **_):
    return x.shape


_ROWS = {"x": rows, "out": rows, "weight": contiguous, "bias": contiguous}

# x, y, rows, cols, x_stride, y_stride, dtype, threads
SOFTMAX = _cpp("kb_cpp_softmax",
               [ptr("x"), ptr("out"), size("x", 0), size("x", 1), stride("x", 0), stride("out", 0), dtype("x"),
                threads()],
               _like_x, "C++ softmax over the last dimension (AVX-512/AVX2, OpenMP over rows)", "softmax.cpp",
               layout=_ROWS)

# x, w, y, rows, cols, x_stride, y_stride, eps, dtype, threads
RMSNORM = _cpp("kb_cpp_rmsnorm",
               [ptr("x"), ptr("weight"), ptr("out"), size("x", 0), size("x", 1), stride("x", 0), stride("out", 0),
                f32("eps"), dtype("x"), threads()],
               _like_x, "C++ fused RMSNorm forward", "rmsnorm.cpp", layout=_ROWS)

# x, w, b, y, rows, cols, x_stride, y_stride, eps, dtype, threads
LAYERNORM = _cpp("kb_cpp_layernorm",
                 [ptr("x"), ptr("weight"), ptr("bias"), ptr("out"), size("x", 0), size("x", 1), stride("x", 0),
                  stride("out", 0), f32("eps"), dtype("x"), threads()],
                 _like_x, "C++ fused LayerNorm forward", "layernorm.cpp", layout=_ROWS)


def _gemm_out(case, a, b, **_):
    return (a.shape[0], b.shape[1])


# a, b, c, M, N, K, lda, ldb, ldc, dtype, threads
GEMM = _cpp("kb_cpp_gemm",
            [ptr("a"), ptr("b"), ptr("out"), size("a", 0), size("b", 1), size("a", 1), stride("a", 0),
             stride("b", 0), stride("out", 0), dtype("a"), threads()],
            _gemm_out, "C++ tiled GEMM (packed panels, 14x32 AVX-512 micro-kernel)", "gemm.cpp",
            layout={"a": unit_last, "b": unit_last})


# The GEMM ladder (issue 11): rungs whose figures gemm_bf16_dp.cpp's header quotes, each its own variant.
def _v1_unsupported(case, a, **_):
    if a.dtype == torch.float32:
        return "float32: v1 is the kernel `cpp` runs (the rungs differ for bf16 only)"
    return None


GEMM_V1 = _cpp("kb_cpp_gemm_v1", GEMM.args, _gemm_out,
               "C++ GEMM v1 for 16-bit inputs: converted to fp32 while packing, fp32 FMAs (the rung before AMX and "
               "AVX512-BF16)", "gemm.cpp", layout=GEMM.layout, unsupported=_v1_unsupported)


def _kc512_unsupported(case, a, **_):
    if a.dtype != torch.bfloat16:
        return f"{a.dtype}: a bf16 kernel"
    code = _tile_code(LIB.require())      # asked at every setup: tests force the ISA (kb_cpp_set_isa) per case
    if code != 1:
        return f"the AVX512-BF16 GEMM's K-slice-512 rung: the tile back end is {TILE_BACKENDS.get(code, '?')} here"
    return None


GEMM_KC512 = _cpp("kb_cpp_gemm_bf16_kc512", GEMM.args, _gemm_out,
                  "C++ bf16 GEMM on AVX512-BF16 with K-slices of 512 (B in L1, C summed in fp32 across slices: "
                  "the rung before the 4096-deep slices)", "gemm.cpp", layout=GEMM.layout,
                  unsupported=_kc512_unsupported)


def _attention_unsupported(case, q, k, v, **_):
    if top_left_causal_only(case):
        return top_left_causal_only(case)
    if q.shape[1] % k.shape[1] != 0:
        return f"heads {q.shape[1]} is not a multiple of kv heads {k.shape[1]}"
    return None


def _scale(c) -> float:
    return 1.0 / math.sqrt(c["q"].shape[-1])


# q, k, v, o, batch, heads, kv_heads, seq_q, seq_k, head_dim, causal, scale, dtype, threads
ATTENTION = _cpp("kb_cpp_attention_fwd",
                 [ptr("q"), ptr("k"), ptr("v"), ptr("out"), size("q", 0), size("q", 1), size("k", 1), size("q", 2),
                  size("k", 2), size("q", 3), i32(lambda c: bool(c["causal"])), f32(_scale), dtype("q"),
                  threads()],
                 lambda case, q, **_: q.shape, "C++ flash-attention forward (online softmax, fp32 accumulation)",
                 "attention_fwd.cpp", layout={"q": contiguous, "k": contiguous, "v": contiguous},
                 unsupported=_attention_unsupported)


# ---- tile kernels (AMX tdpbf16ps / tdpbssd, else the AVX512-BF16 tile model of tiles.h) ---------------------
TILE_BACKENDS = {0: "none", 1: "avx512-bf16", 2: "amx"}   # kb_cpp_tile_backend(): what the tile kernels run on


def _tile_code(lib) -> int:
    f = lib.dll.kb_cpp_tile_backend
    f.restype, f.argtypes = ctypes.c_int, []
    return f()


def bf16_dot_reason() -> str | None:
    """None where vdpbf16ps runs (the tile back end is AMX or the AVX512-BF16 model: exactly where the CPU has
    AVX512-BF16 and kb_cpp_set_isa has not forced AVX2), else why not. Asked at every setup: tests force the ISA
    per case."""
    code = _tile_code(LIB.require())
    return None if code in (1, 2) else f"no AVX512-BF16 here (tile back end {TILE_BACKENDS.get(code, '?')})"


def tile_backend() -> str:
    return TILE_BACKENDS.get(_tile_code(LIB.require()), "?")


def tiles_available(case=None) -> str | None:
    """libkb_cpp.so built, on a CPU with AMX or AVX512-BF16 (the tile kernels' two back ends)."""
    lib = LIB.load()
    if lib is not None and _tile_code(lib) == 0:
        return "tile kernels need a CPU with AMX or AVX512-BF16"
    return available(case)


def tiles_missing_reason(case=None) -> str | None:
    return missing_reason(case) or tiles_available(case)


def _tiles_unsupported(case, q, **_):
    if top_left_causal_only(case):
        return top_left_causal_only(case)
    if q.shape[-1] not in (64, 128):
        return f"head dim {q.shape[-1]}: the tile kernel has 64 and 128"
    return None


# q, k, v, o, batch, heads, kv_heads, seq_q, seq_k, head_dim, causal, scale, threads (bf16 only)
ATTENTION_AMX = _cpp("kb_cpp_attention_fwd_amx",
                     [ptr("q"), ptr("k"), ptr("v"), ptr("out"), size("q", 0), size("q", 1), size("k", 1),
                      size("q", 2), size("k", 2), size("q", 3), i32(lambda c: bool(c["causal"])), f32(_scale),
                      threads()],
                     lambda case, q, **_: q.shape,
                     "C++ bf16 flash-attention forward on tiles (AMX tdpbf16ps, else the AVX512-BF16 tile model)",
                     "attention_fwd_amx.cpp", layout={"q": contiguous, "k": contiguous, "v": contiguous},
                     dtypes=("bfloat16",), available=tiles_available, unsupported=_tiles_unsupported)

# a, b, c, M, N, K, lda, ldb, ldc, threads: out (int32) = a (int8) @ b (int8) on the int8 tile path (tdpbssd)
GEMM_S8S8S32 = _cpp("kb_cpp_gemm_s8s8s32_tiles",
                    [ptr("a"), ptr("b"), ptr("out"), size("a", 0), size("b", 1), size("a", 1), stride("a", 0),
                     stride("b", 0), stride("out", 0), threads()],
                    lambda case, a, b, **_: ((a.shape[0], b.shape[1]), torch.int32),
                    "C++ int8 GEMM on tiles (tdpbssd, int32 accumulation)", "int8_tiles.cpp",
                    layout={"a": unit_last, "b": unit_last}, available=tiles_available)
UNREGISTERED = {GEMM_S8S8S32.symbol: "no int8 GEMM suite yet (issue 22): tested directly"}


def load():
    """The loaded library (cached) or None; `load_error()` says why not."""
    return LIB.load()


def load_error() -> str | None:
    return LIB.reason()


# ---- sparse weights (issue 17, sparsity/formats.py): y = x @ W^T with W [N, K] stored compressed -----------
def _sparse_out(case, x, w, **_):
    return (x.shape[0], w.shape[0])


def _sparse_reason(kind: str):
    def unsupported(case, **inputs) -> str | None:
        from sparsity.cases import unsupported_reason
        return unsupported_reason(case, kind, inputs)
    return unsupported


# x, rowptr, cols, vals, y, M, N, K, x_stride, y_stride, block, dtype, threads
BSR_GEMM = _cpp("kb_cpp_bsr_gemm",
                [ptr("x"), ptr("bsr_rowptr"), ptr("bsr_cols"), ptr("bsr_vals"), ptr("out"), size("x", 0),
                 size("w", 0), size("x", 1), stride("x", 0), stride("out", 0), i32("block"), dtype("x"), threads()],
                _sparse_out, "C++ BSR GEMM/GEMV (b=16/32 transposed blocks, MR x b register tile, fp32 accumulation)",
                "sparse_bsr.cpp", layout={"x": unit_last}, unsupported=_sparse_reason("bsr"))

# x, vals, meta, y, M, N, K, x_stride, y_stride, dtype, threads
GEMM_24 = _cpp("kb_cpp_gemm_24",
               [ptr("x"), ptr("v24_vals"), ptr("v24_meta"), ptr("out"), size("x", 0), size("w", 0), size("x", 1),
                stride("x", 0), stride("out", 0), dtype("x"), threads()],
               _sparse_out, "C++ 2:4 compressed GEMV/GEMM (values + 2-bit indices, AVX-512 2-source permutes)",
               "sparse_24.cpp", layout={"x": unit_last}, unsupported=_sparse_reason("2:4"))
# ---- quantized GEMMs (suites/quant_gemm.py) ------------------------------------------------------------------
def _cpu_flag(flag: str) -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(flag in line.split() for line in f if line.startswith("flags"))
    except OSError:
        return False


def vnni_available(case=None) -> str | None:
    """libkb_cpp.so built, on a CPU with AVX512-VNNI (vpdpbusd)"""
    if not _cpu_flag("avx512_vnni"):
        return "the int8 GEMM needs a CPU with AVX512-VNNI (vpdpbusd)"
    return avx512_available(case)


def avx512_available(case=None) -> str | None:
    """libkb_cpp.so built, on an AVX-512 CPU"""
    lib = LIB.load()
    if lib is not None and _isa_code(lib) < 2:
        return "this kernel needs AVX-512"
    return available(case)


def _needs_avx512(case, **_) -> str | None:
    """The ISA in use (kb_cpp_set_isa may force AVX2) must be AVX-512."""
    return None if isa() in ("avx512", "amx") else f"needs AVX-512; the ISA in use is {isa()}"


def pack_w8_vnni(w: torch.Tensor) -> torch.Tensor:
    """int8 W[N, K] -> the packed VNNI layout + column sums of kb_cpp_gemm_w8a8_vnni (a uint8 tensor); outside the
    timing, once per weight (as an inference engine packs its weights at load). A uint8 tensor is packed already
    (quant/cpp_kernels.py keeps the packed weights) and is returned as it is."""
    if w.dtype == torch.uint8:
        return w
    lib = LIB.require()
    nbytes, pack = lib.dll.kb_cpp_w8_vnni_packed_bytes, lib.dll.kb_cpp_pack_w8_vnni
    nbytes.restype, nbytes.argtypes = ctypes.c_int64, [ctypes.c_int64, ctypes.c_int64]
    pack.restype, pack.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int64] * 3
    w = unit_last(w)
    n, k = w.shape
    out = torch.empty(nbytes(n, k), dtype=torch.uint8)
    lib.check(pack(w.data_ptr(), out.data_ptr(), n, k, w.stride(0)), "kb_cpp_pack_w8_vnni")
    return out


def _i64(get) -> Arg:
    return Arg(ctypes.c_int64, get)


# a (int8), sa, w (packed by pack_w8_vnni), sw, out, M, N, K, lda, ldo, out dtype, threads
GEMM_W8A8 = _cpp("kb_cpp_gemm_w8a8_vnni",
                 [ptr("a"), ptr("sa"), ptr("w"), ptr("sw"), ptr("out"), size("a", 0), size("sw", 0), size("a", 1),
                  stride("a", 0), stride("out", 0), dtype("out"), threads()],
                 lambda case, a, w, **_: (a.shape[0], w.shape[0]),
                 "C++ W8A8 GEMM on AVX512-VNNI, v3 (vpdpbusd, int32 accumulation, 6 x 64 register tile, A packed per "
                 "call into 6-row panels, L2 row blocks, scales in the epilogue)",
                 "quant_int8_gemm_v3.cpp", layout={"a": unit_last, "w": pack_w8_vnni, "sa": contiguous,
                                                   "sw": contiguous},
                 available=vnni_available, unsupported=_needs_avx512, dtypes=("float32", "bfloat16"))
# The int8 GEMM ladder (issue 15): v2, the rung below (quant_int8_gemm.cpp), same arguments and packed weights.
GEMM_W8A8_V2 = _cpp("kb_cpp_gemm_w8a8_vnni_v2", GEMM_W8A8.args, GEMM_W8A8.out,
                    "C++ W8A8 GEMM on AVX512-VNNI, v2 (8 x 48 tile, no row blocking: the rung before v3)",
                    "quant_int8_gemm.cpp", layout=GEMM_W8A8.layout, available=vnni_available,
                    unsupported=_needs_avx512, dtypes=GEMM_W8A8.dtypes)

# x, packed (uint8 [N, K/2]), scale, zero, out, M, N, K, group, ldx, ldo, dtype, threads
GEMM_W4A16 = _cpp("kb_cpp_gemm_w4a16",
                  [ptr("x"), ptr("packed"), ptr("scale"), ptr("zero"), ptr("out"), size("x", 0), size("packed", 0),
                   size("x", 1), _i64(lambda c: c["group"]), stride("x", 0), stride("out", 0), dtype("x"), threads()],
                  lambda case, x, packed, **_: (x.shape[0], packed.shape[0]),
                  "C++ int4 weight-only GEMV/GEMM (nibbles unpacked in registers, AVX-512)", "quant_int4_gemv.cpp",
                  layout={"x": unit_last, "packed": contiguous, "scale": contiguous, "zero": contiguous},
                  available=avx512_available, unsupported=_needs_avx512, dtypes=("float32", "bfloat16"))


# The int4 ladder (issue 15): quant_int4_dp.cpp (v3, variant `cpp_w4`) on AVX512-BF16 in its own packed layout;
# quant_int4_gemv.cpp (v2, `GEMM_W4A16`, variant `cpp_w4_v2`) on quant/'s layout as it is.
def pack_w4_dp(packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int) -> torch.Tensor:
    """quant/'s int4 storage (packed [N, K/2], scale fp32 [N, K/G], zero u8 [N, K/G]) -> the channel-block layout
    of kb_cpp_gemm_w4a16_dp (a uint8 tensor, 8G + 80 bytes per 16 channels and group); once per weight, outside
    the timing, as aten pre-packs for _weight_int4pack_mm_for_cpu."""
    lib = LIB.require()
    nbytes, pack = lib.dll.kb_cpp_w4_dp_packed_bytes, lib.dll.kb_cpp_pack_w4_dp
    nbytes.restype, nbytes.argtypes = ctypes.c_int64, [ctypes.c_int64] * 3
    pack.restype, pack.argtypes = ctypes.c_int, [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3
    packed, zero = packed.contiguous(), zero.contiguous()
    scale = scale.float().contiguous()
    n, k = packed.shape[0], packed.shape[1] * 2
    size = nbytes(n, k, group)
    if size < 0 or scale.shape != zero.shape or scale.shape[0] != n or scale.shape[1] * group != k:
        raise ValueError(f"pack_w4_dp: N={n} K={k} group={group}, scale {tuple(scale.shape)}, zero "
                         f"{tuple(zero.shape)} (the group: a multiple of 32 dividing K, one scale per group)")
    out = torch.empty(size, dtype=torch.uint8)
    lib.check(pack(packed.data_ptr(), scale.data_ptr(), zero.data_ptr(), out.data_ptr(), n, k, group),
              "kb_cpp_pack_w4_dp")
    return out


def w4_dp_reason(case=None, **_) -> str | None:
    """None where GEMM_W4A16_DP runs: AVX-512 in use (kb_cpp_set_isa may force AVX2) and vdpbf16ps (the tile back
    end is AMX or the AVX512-BF16 model exactly where the CPU has AVX512-BF16); else why not."""
    return LIB.reason() or avx512_available(case) or _needs_avx512(case) or bf16_dot_reason()


class _PrepackedW4(Kernel):
    """GEMM_W4A16_DP: `bind` packs (packed, scale, zero) into the kernel's layout once, at setup (outside the
    launcher's timing), unless the caller passes the packed blob as `w4p` (quant/cpp_kernels.py keeps it)."""

    def bind(self, lib, case, tensors, out):
        t = dict(tensors)
        if t.get("w4p") is None:
            t["w4p"] = pack_w4_dp(t["packed"], t["scale"], t["zero"], int(case.get("group")))
        return super().bind(lib, case, t, out)


# x, w4p (packed by pack_w4_dp), out, M, N, K, group, ldx, ldo, dtype, threads
GEMM_W4A16_DP = _PrepackedW4(
    LIB, "kb_cpp_gemm_w4a16_dp",
    [ptr("x"), ptr("w4p"), ptr("out"), size("x", 0), size("packed", 0), size("x", 1), _i64(lambda c: c["group"]),
     stride("x", 0), stride("out", 0), dtype("x"), threads()],
    lambda case, x, packed, **_: (x.shape[0], packed.shape[0]),
    "C++ int4 weight-only GEMV/GEMM v3: nibbles into bf16 1 + q/16 on vdpbf16ps, zero point and scale per group, "
    "channel-block packing", backend="cpp", source="kernels/cpp/quant_int4_dp.cpp",
    layout={"x": unit_last}, available=avx512_available, unsupported=w4_dp_reason,
    dtypes=("float32", "bfloat16"))


# ---- paged decode (suites/decode.py; the cache layout of inference/paged.py) ---------------------------------
KV_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.int8: 3, torch.float8_e4m3fn: 4}


def kv_code(c) -> int:
    dt = c["k_cache"].dtype
    if dt not in KV_DTYPE_CODES:
        raise TypeError(f"paged decode takes a float32/bfloat16/float16/int8/fp8 e4m3 cache, not {dt}")
    return KV_DTYPE_CODES[dt]


def opt_ptr(name: str):
    """A tensor's address, or NULL when the input is None (a float cache has no scales)."""
    return Arg(ctypes.c_void_p, lambda c: c.tensors[name].data_ptr() if c.tensors.get(name) is not None else None)


def opt_stride0(name: str):
    return Arg(ctypes.c_int64, lambda c: c.tensors[name].stride(0) if c.tensors.get(name) is not None else 0)


def opt_size(name: str, dim: int):
    return Arg(ctypes.c_int64, lambda c: c.tensors[name].shape[dim] if c.tensors.get(name) is not None else 0)


def decode_unsupported(case, q, k_cache, v_cache, block_tables, seq_lens, k_scale=None, v_scale=None, **_):
    """Inconsistent arguments raise (inference.paged.validate) before the kernel; its own limits skip."""
    from inference.paged import validate
    validate(q, k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale)
    b, sq, h, d = q.shape
    if d % 16 or d > 256:
        return f"head dim {d}: the kernel takes multiples of 16 up to 256"
    if h // k_cache.shape[2] * sq > 64 or k_cache.shape[1] > 256:
        return "more than 64 query rows per kv head, or blocks of more than 256 tokens"
    return None


def _decode_scale(c) -> float:
    return 1.0 / math.sqrt(c["q"].shape[-1])


# q, k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale, out, B, SQ, H, D, then each tensor's own sizes
# (k_cache, v_cache, block_tables, seq_lens, scales: the entry point refuses any mismatch), scale, dtypes, threads
DECODE_PAGED = _cpp("kb_cpp_decode_paged",
                    [ptr("q"), ptr("k_cache"), ptr("v_cache"), ptr("block_tables"), ptr("seq_lens"),
                     opt_ptr("k_scale"), opt_ptr("v_scale"), ptr("out"), size("q", 0), size("q", 1), size("q", 2),
                     size("q", 3), [size("k_cache", i) for i in range(4)], [size("v_cache", i) for i in range(4)],
                     size("block_tables", 0), size("block_tables", 1), size("seq_lens", 0),
                     opt_size("k_scale", 0), opt_size("k_scale", 1), opt_stride0("k_scale"),
                     opt_size("v_scale", 0), opt_size("v_scale", 1), opt_stride0("v_scale"), f32(_decode_scale),
                     dtype("q"), Arg(ctypes.c_int, kv_code), threads()],
                    lambda case, q, **_: q.shape,
                    "C++ paged decode: split-K over pages (flash-decoding), each KV row read once per GQA group; "
                    "AVX512-BF16/VNNI dot products (v2) for bf16 q with bf16/int8 KV, fp16 q with int8 KV, fp32 "
                    "FMAs on fp32/fp16/bf16 KV rows widened in registers (v2) for the other float pairs",
                    "decode_paged_dp.cpp",
                    layout={"q": contiguous, "k_cache": contiguous, "v_cache": contiguous,
                            "block_tables": contiguous, "seq_lens": contiguous},
                    unsupported=decode_unsupported)


# The decode ladder (issue 18): decode_paged_dp.cpp (v2, what `cpp` runs where it applies) quotes v1's figures.
def decode_v2_reason(q, k_cache) -> str | None:
    """None where kb_cpp_decode_paged runs v2 (decode_paged_dp.cpp), else why it runs v1 (decode_paged.cpp)."""
    if why := bf16_dot_reason():
        return why
    if k_cache.dtype in (torch.float32, torch.bfloat16, torch.float16):
        return None                       # bf16 q + bf16 KV, d % 32 == 0: vdpbf16ps; every other pair: fp32 FMAs
    if k_cache.dtype == torch.int8 and q.dtype in (torch.bfloat16, torch.float16):
        return None if q.shape[-1] % 32 == 0 else f"head dim {q.shape[-1]} is not a multiple of 32 (int8 KV)"
    return f"{q.dtype} q with {k_cache.dtype} KV"


def _decode_v1_unsupported(case, q, k_cache, *args, **kw):
    reason = decode_unsupported(case, q, k_cache, *args, **kw)
    if reason is None and (why_v1 := decode_v2_reason(q, k_cache)) is not None:
        reason = f"v1 is the kernel `cpp` runs here ({why_v1})"
    return reason


DECODE_PAGED_V1 = _cpp("kb_cpp_decode_paged_v1", DECODE_PAGED.args, DECODE_PAGED.out,
                       "C++ paged decode v1: pages converted to fp32 in L1, fp32 FMAs (the rung before the "
                       "AVX512-BF16/VNNI dot products)", "decode_paged.cpp", layout=DECODE_PAGED.layout,
                       unsupported=_decode_v1_unsupported)
