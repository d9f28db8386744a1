"""The project's CUDA kernels compiled at run time by NVRTC (`cupy.RawModule`) and launched through CuPy: an
alternative launcher to the CMake-built libkb_cuda.so, from the very same kernels/cuda/*.cu files.

Three parts, each tested without a GPU (tests/test_cupy_launch.py):
- source assembly (`device_source(file)`): the .cu file with its `#include "include/kb_common.h"` inlined
  (and kb_common.h's kb_cuda.h / kb_device.h), the system includes NVRTC lacks replaced by a prelude, and every
  host-only top-level function removed (the `launch<T>` templates, the `extern "C"` entry points,
  `kb_row_threads`): what remains is device code only. The test compiles it device-only with nvcc.
- kernel-name mapping (`ENTRY_POINTS`): for each C entry point, the template instantiation its host code
  launches for given arguments (`kb_softmax_kernel<__half>`, `kb_attn_fwd_mma_kernel<__nv_bfloat16, 64, 64>`,
  `kb_gemm_tc_kernel<__half, float, true>`), passed to RawModule as name expressions.
- launch configuration: Python copies of the host launchers (grid, block, dynamic shared memory), checked
  against the constants read out of the .cu sources and the `// kb-report:` lines there.
`CupyLib` stands in for the loaded library in `kernels.native.Kernel.bind`: the declared argument mapping
(pointers, dtype codes, sizes, strides, stream) is reused unchanged, and each entry point is the Python copy
of its C host function, which validates like the C code (an error code, then the library's message), picks the
instantiation and launches it. A suite registers the variant in one line: `SUITE.add("cupy_rowcache",
cupy_launch.variant(cuda.SOFTMAX))`.

On this machine cupy is not installed (`make gpu` installs it); where it is, without a driver it cannot
compile for or launch on a device: every CuPy row is `skipped` with that reason (deploy/guards.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from deploy import guards

ROOT = Path(__file__).resolve().parent.parent
CUDA_DIR = ROOT / "kernels" / "cuda"

PRELUDE = """// ---- NVRTC prelude (deploy/cupy_launch.py): what kb_cuda.h / kb_device.h take from system headers ----
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#if defined(__CUDACC_RTC__)
typedef signed char int8_t; typedef unsigned char uint8_t; typedef short int16_t; typedef unsigned short uint16_t;
typedef int int32_t; typedef unsigned int uint32_t; typedef long long int64_t; typedef unsigned long long uint64_t;
typedef unsigned long long uintptr_t;
#else
#include <stdint.h>
#endif
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
"""
_DROP_INCLUDES = re.compile(r'^\s*#\s*include\s*[<"](math\.h|stdint\.h|stdarg\.h|stdio\.h|cuda_runtime\.h|'
                            r'cuda_bf16\.h|cuda_fp16\.h|\.\./sim/kb_sim\.h)[>"].*$', re.M)
_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"\s*$', re.M)


# ---- source assembly -------------------------------------------------------------------------------------------
def _inline(path: Path, seen: set[Path]) -> str:
    """`path` with its local includes inlined once each (#pragma once), system includes NVRTC lacks dropped."""
    path = path.resolve()
    if path in seen:
        return ""
    seen.add(path)
    text = _DROP_INCLUDES.sub("", path.read_text())
    text = re.sub(r"^\s*#\s*pragma\s+once\s*$", "", text, flags=re.M)
    text = re.sub(r"^\s*#\s*if\s+defined\(KB_CUDA_SIM\)\s*\n\s*#\s*else\s*\n(.*?)#\s*endif\s*$", r"\1", text,
                  flags=re.M | re.S)        # kb_cuda.h: the nvcc branch only

    def include(m: re.Match) -> str:
        return f"// ---- {m.group(1)} ----\n" + _inline(path.parent / m.group(1), seen)
    return _LOCAL_INCLUDE.sub(include, text)


def _items(text: str):
    """Top-level items of C++ source: (kind, text) with kind 'pp' (a preprocessor line and its continuations),
    'comment', 'space', 'decl' (up to a top-level ';') or 'block' (a header and its {...}, with a trailing ';')."""
    i, n = 0, len(text)
    while i < n:
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j + 1
            yield "comment", text[i:j]
            i = j
        elif text.startswith("/*", i):
            j = text.index("*/", i) + 2
            yield "comment", text[i:j]
            i = j
        elif text[i].isspace():
            j = i
            while j < n and text[j].isspace():
                j += 1
            yield "space", text[i:j]
            i = j
        elif text[i] == "#":
            j = i
            while True:
                k = text.find("\n", j)
                if k < 0:
                    j = n
                    break
                j = k + 1
                if not text[:k].rstrip(" \t").endswith("\\"):
                    break
            yield "pp", text[i:j]
            i = j
        else:
            j, depth, kind = i, 0, "decl"
            while j < n:
                c = text[j]
                if text.startswith("//", j):
                    j = text.find("\n", j)
                    j = n if j < 0 else j
                    continue
                if c in "\"'":
                    j = _skip_literal(text, j)
                    continue
                if c == "{":
                    depth += 1
                    kind = "block"
                elif c == "}":
                    depth -= 1
                    if depth == 0:
                        j += 1
                        while j < n and text[j] in " \t":
                            j += 1
                        if j < n and text[j] == ";":
                            j += 1
                        break
                elif c == ";" and depth == 0:
                    j += 1
                    break
                j += 1
            yield kind, text[i:j]
            i = j


def _skip_literal(text: str, j: int) -> int:
    q, j = text[j], j + 1
    while j < len(text) and text[j] != q:
        j += 2 if text[j] == "\\" else 1
    return j + 1


_HOST_MACRO = re.compile(r"#\s*define\s+(KB_LAUNCH|KB_SET_MAX_DYNAMIC_SMEM|KB_OPT_IN_SMEM_ONCE)\b")
_NOT_FUNCTION = re.compile(r"^\s*(template\s*<[^{]*>\s*)?(struct|class|union|enum|namespace)\b")


def is_host_function(item: str) -> bool:
    """A top-level function definition without __global__ / __device__: host code, which NVRTC cannot use."""
    header = item.split("{", 1)[0]
    header = re.sub(r"//.*", "", header)
    if _NOT_FUNCTION.match(header) or "(" not in header:
        return False
    return "__global__" not in header and "__device__" not in header


def device_source(cu_file: str | Path) -> str:
    """The device-only translation unit NVRTC compiles for one kernels/cuda file (see the module docstring)."""
    path = Path(cu_file)
    path = path if path.is_absolute() else CUDA_DIR / path
    text = _inline(path, set())
    out = []
    for kind, item in _items(text):
        if kind == "pp" and _HOST_MACRO.match(item):
            continue                                  # launch macros: host code
        if kind == "block" and is_host_function(item):
            out.append(f"/* host function removed by deploy/cupy_launch.py: {item.split('(')[0].split()[-1]} */")
            continue
        out.append(item)
    return PRELUDE + "".join(out)


# ---- kernel names, launch configurations ------------------------------------------------------------------------
T_NAMES = {0: "float", 1: "__nv_bfloat16", 2: "__half"}       # the C dtype codes (kernels/native.py)
KB_ROW_CACHE_BYTES = 96 * 1024                                  # kb_common.h
GEMM = dict(BM=128, BN=128, BK=32, STAGES=3, THREADS=256)       # gemm_tc.cu
GEMM_SMEM = GEMM["STAGES"] * (GEMM["BM"] * (GEMM["BK"] + 8) + GEMM["BK"] * (GEMM["BN"] + 8)) * 2
W8A8 = dict(WARPS=4)                                            # quant_int8_gemm.cu
W4A16 = dict(W4_WARPS=4)                                        # quant_w4a16_gemm.cu
SP24 = dict(SP_WARPS=4, SP_BM=32)                               # sparse_24_mma_sp.cu (SP_BN = 16 * SP_WARPS)
BSR = dict(BS_WARPS=4, BS_WM=32)                                # sparse_bsr.cu
DECODE = dict(KB_DEC_MAX_R=16, KB_DEC_WARPS=4)                  # decode_paged.cu
KV_NAMES = {3: "int8_t", 4: "uint8_t"}                          # decode_paged's quantized caches (kv_dtype codes)


@dataclass(frozen=True)
class Launch:
    """One launch: which instantiation, grid, block, dynamic shared memory, and the kernel's own arguments."""
    name: str
    grid: tuple[int, ...]
    block: tuple[int, ...]
    smem: int
    args: tuple = ()


def row_threads(cols: int) -> int:
    """kb_row_threads (kb_common.h): one warp per 128 columns, 1 to 16 warps."""
    return 32 * min(16, max(1, (cols + 127) // 128))


def row_launch(kernel: str, dtype: int, rows: int, cols: int) -> Launch:
    """softmax / rmsnorm / layernorm: one block per row; the row cached in shared memory when it fits."""
    cached = cols * 4 <= KB_ROW_CACHE_BYTES
    return Launch(f"{kernel}<{T_NAMES[dtype]}>", (rows,), (row_threads(cols),), cols * 4 if cached else 0,
                  (int(cached),))


def attention_launch(dtype: int, d: int, b: int, h: int, sq: int) -> Launch:
    """attention_fwd.cu: mma kernel (bf16/fp16; BN 64 for d 64, 32 for d 128) over 64-query tiles, or the
    fp32 kernel over 32-query tiles; 128 threads, no dynamic shared memory."""
    if dtype == 0:
        return Launch(f"kb_attn_fwd_f32_kernel<{d}>", ((sq + 31) // 32, h, b), (128,), 0)
    bn = 64 if d == 64 else 32
    return Launch(f"kb_attn_fwd_mma_kernel<{T_NAMES[dtype]}, {d}, {bn}>", ((sq + 63) // 64, h, b), (128,), 0)


def gemm_launch(dtype: int, out_dtype: int, m: int, n: int, k: int, lda: int, ldb: int, a_ptr: int,
                b_ptr: int) -> Launch:
    """gemm_tc.cu: 128x128 output tiles, 256 threads, 3-stage pipeline in dynamic shared memory; the cp.async
    path when K, N, the leading dimensions (multiples of 8 elements) and the pointers (16 bytes) allow."""
    aligned = k % 8 == 0 and n % 8 == 0 and lda % 8 == 0 and ldb % 8 == 0 and a_ptr % 16 == 0 and b_ptr % 16 == 0
    out = "float" if out_dtype == 0 else T_NAMES[dtype]
    grid = ((n + GEMM["BN"] - 1) // GEMM["BN"], (m + GEMM["BM"] - 1) // GEMM["BM"])
    return Launch(f"kb_gemm_tc_kernel<{T_NAMES[dtype]}, {out}, {'true' if aligned else 'false'}>", grid,
                  (GEMM["THREADS"],), GEMM_SMEM)


def w8a8_launch(dtype: int, m: int, n: int) -> Launch:
    """quant_int8_gemm.cu: a block of WARPS warps covers (16 * WARPS) x 32 of out; out in fp32, bf16 or fp16."""
    rows = 16 * W8A8["WARPS"]
    return Launch(f"kb_gemm_w8a8_kernel<{T_NAMES[dtype]}>", ((n + 31) // 32, (m + rows - 1) // rows),
                  (32 * W8A8["WARPS"],), 0)


def w4a16_launch(dtype: int, m: int, n: int) -> Launch:
    """quant_w4a16_gemm.cu: a block of W4_WARPS warps covers (16 * W4_WARPS) x 32 of out; x and out bf16 or fp16."""
    rows = 16 * W4A16["W4_WARPS"]
    return Launch(f"kb_gemm_w4a16_kernel<{T_NAMES[dtype]}>", ((n + 31) // 32, (m + rows - 1) // rows),
                  (32 * W4A16["W4_WARPS"],), 0)


def sparse24_launch(dtype: int, m: int, n: int) -> Launch:
    """sparse_24_mma_sp.cu: 16 rows of W per warp (SP_BN per block) x SP_BM rows of x."""
    bn = 16 * SP24["SP_WARPS"]
    return Launch(f"kb_sparse24_mma_sp_kernel<{T_NAMES[dtype]}>", ((n + bn - 1) // bn,
                  (m + SP24["SP_BM"] - 1) // SP24["SP_BM"]), (32 * SP24["SP_WARPS"],), 0)


def bsr_launch(dtype: int, block: int, m: int, n: int) -> Launch:
    """sparse_bsr.cu: a block row of W per block x BS_WARPS * BS_WM rows of x (BS_WM per warp)."""
    rows = BSR["BS_WARPS"] * BSR["BS_WM"]
    return Launch(f"kb_bsr_mma_kernel<{T_NAMES[dtype]}, {block}>", (n // block, (m + rows - 1) // rows),
                  (32 * BSR["BS_WARPS"],), 0)


def decode_launches(q_dtype: int, kv_dtype: int, d: int, b: int, hkv: int, nsplit: int) -> tuple[Launch, Launch]:
    """decode_paged.cu: the split kernel, grid (B, HKV, nsplit), D / 32 elements per lane; then the merge, grid
    (B, HKV); 128 threads each, static shared memory only. The KbDecodeArgs struct is their one argument."""
    t = T_NAMES[q_dtype]
    kv = KV_NAMES.get(kv_dtype, t)
    threads = (32 * DECODE["KB_DEC_WARPS"],)
    return (Launch(f"kb_decode_paged_kernel<{t}, {kv}, {d // 32}>", (b, hkv, nsplit), threads, 0),
            Launch(f"kb_decode_merge_kernel<{t}>", (b, hkv), threads, 0))


def all_instantiations() -> dict[str, list[str]]:
    """Every instantiation each file's host code can launch: the RawModule name expressions."""
    rows = {f"{k}.cu": [f"kb_{k}_kernel<{t}>" for t in T_NAMES.values()] for k in ("softmax", "rmsnorm", "layernorm")}
    attn = [attention_launch(dt, d, 1, 1, 1).name for dt in (0, 1, 2) for d in (64, 128)]
    gemm = [gemm_launch(dt, od, 1, 8, 8, 8, 8, 16 * a, 0).name for dt in (1, 2) for od in (0, dt) for a in (0, 1)]
    gemm += [g.replace("true>", "false>") for g in gemm if g.endswith("true>")]
    decode = sorted({n.name for q in (0, 1, 2) for kv in (q, 3, 4) for d in (32, 64, 128)
                     for n in decode_launches(q, kv, d, 1, 1, 1)})
    return {**rows, "attention_fwd.cu": attn, "gemm_tc.cu": sorted(set(gemm)),
            "quant_int8_gemm.cu": [w8a8_launch(dt, 1, 1).name for dt in (0, 1, 2)],
            "quant_w4a16_gemm.cu": [w4a16_launch(dt, 1, 1).name for dt in (1, 2)],
            "sparse_24_mma_sp.cu": [sparse24_launch(dt, 1, 1).name for dt in (1, 2)],
            "sparse_bsr.cu": [bsr_launch(dt, bl, 1, bl).name for dt in (1, 2) for bl in (16, 32)],
            "decode_paged.cu": decode}


# ---- the entry points, in Python (mirrors of the C host functions) ------------------------------------------------
KB_OK, KB_EINVAL = 0, 1


class CupyLib:
    """Stands in for a loaded libkb_cuda.so in kernels.native.Kernel.bind: `function(kernel)` is the Python copy
    of the kernel's C entry point; kernels compile once per file (NVRTC, cached by CuPy on disk)."""
    device = "cuda"
    simulated = False
    path = Path("cupy.RawModule (NVRTC)")

    def __init__(self):
        import cupy
        self.cupy = cupy
        self.error = ""
        self._modules: dict[str, Any] = {}

    def module(self, cu_file: str):
        if cu_file not in self._modules:
            self._modules[cu_file] = self.cupy.RawModule(
                code=device_source(cu_file), options=("--std=c++17", "-default-device"),
                name_expressions=all_instantiations()[cu_file])
        return self._modules[cu_file]

    def launch(self, cu_file: str, launch: Launch, args: list, stream) -> int:
        kernel = self.module(cu_file).get_function(launch.name)
        if launch.smem > 48 * 1024:
            kernel.max_dynamic_shared_size_bytes = launch.smem
        with self.cupy.cuda.ExternalStream(stream or 0):
            kernel(launch.grid, launch.block, tuple(args), shared_mem=launch.smem)
        return KB_OK

    def fail(self, msg: str) -> int:
        self.error = msg
        return KB_EINVAL

    def check(self, rc: int, what: str) -> None:
        if rc:
            from kernels.native import NativeError
            raise NativeError(f"{what} failed (code {rc}): {self.error}")

    def stream(self):
        import torch
        return torch.cuda.current_stream().cuda_stream

    def function(self, kernel) -> Callable[..., int]:
        return ENTRY_POINTS[kernel.symbol](self)


def _np():
    import numpy as np
    return np


def _row_entry(kernel: str, cu: str, with_weight: bool, with_bias: bool):
    def bind(lib: CupyLib):
        np = _np()

        def entry(*a) -> int:
            ptrs = 2 + with_weight + with_bias            # x, [w], [b], y
            dtype, rows, cols, xs, ys = a[ptrs:ptrs + 5]
            eps = a[ptrs + 5] if with_weight else None
            stream = a[-1]
            if rows < 0 or cols < 1 or rows > 2147483647:
                return lib.fail(f"{kernel}: bad shape rows={rows} cols={cols}")
            if rows == 0:
                return KB_OK
            if dtype not in T_NAMES:
                return lib.fail(f"{kernel}: unknown dtype code {dtype}")
            launch = row_launch(kernel.replace("kb_cuda_", "kb_") + "_kernel", dtype, rows, cols)
            args = [np.uint64(p or 0) for p in a[:ptrs]] + [np.int64(cols), np.int64(xs), np.int64(ys)]
            if eps is not None:
                args.append(np.float32(eps))
            args.append(np.int32(launch.args[0]))
            return lib.launch(cu, launch, args, stream)
        return entry
    return bind


def _attention_entry(lib: CupyLib):
    np = _np()
    fields = [("q", "u8"), ("k", "u8"), ("v", "u8"), ("o", "u8"), ("H", "i4"), ("group", "i4"), ("SQ", "i4"),
              ("SK", "i4"), ("causal", "i4"), ("scale_log2", "f4")] + [
        (f"{t}_s{s}", "i8") for t in "qkvo" for s in "bhs"]
    struct = np.dtype(fields, align=True)                 # KbAttnArgs, C layout

    def entry(q, k, v, o, dtype, b, h, hkv, sq, sk, d, causal, scale, *rest) -> int:
        strides, stream = rest[:12], rest[12]
        if b < 0 or h < 1 or hkv < 1 or sq < 0 or sk < 1 or h % hkv or b > 65535 or h > 65535:
            return lib.fail(f"kb_cuda_attention_fwd: bad shape b={b} h={h} hkv={hkv} sq={sq} sk={sk}")
        if d not in (64, 128):
            return lib.fail(f"kb_cuda_attention_fwd: head dim {d} not supported (64 or 128)")
        if dtype not in T_NAMES:
            return lib.fail(f"kb_cuda_attention_fwd: unknown dtype code {dtype}")
        vec = 4 if dtype == 0 else 8
        if any(s % vec for s in strides):
            return lib.fail("kb_cuda_attention_fwd: a stride is not a multiple of 16 bytes")
        if q % 16 or k % 16 or v % 16:
            return lib.fail("kb_cuda_attention_fwd: q, k, v must be 16-byte aligned")
        if b == 0 or sq == 0:
            return KB_OK
        scale = scale if scale > 0 else 1.0 / d ** 0.5
        arg = np.zeros((), dtype=struct)
        for name, val in zip(("q", "k", "v", "o", "H", "group", "SQ", "SK", "causal", "scale_log2"),
                             (q, k, v, o, h, h // hkv, sq, sk, int(bool(causal)), scale * 1.4426950408889634)):
            arg[name] = val
        for (name, _), val in zip(fields[10:], strides):
            arg[name] = val
        return lib.launch("attention_fwd.cu", attention_launch(dtype, d, b, h, sq), [arg[()]], stream)
    return entry


def _gemm_entry(lib: CupyLib):
    np = _np()

    def entry(a, b, c, dtype, out_dtype, m, n, k, lda, ldb, ldc, stream) -> int:
        if m < 0 or n < 0 or k < 0 or max(m, n, k) > 2147483647 or (m + GEMM["BM"] - 1) // GEMM["BM"] > 65535:
            return lib.fail(f"kb_cuda_gemm: bad shape M={m} N={n} K={k}")
        if out_dtype not in (0, dtype):
            return lib.fail(f"kb_cuda_gemm: out_dtype {out_dtype} must be 0 (fp32) or the input dtype {dtype}")
        if m == 0 or n == 0:
            return KB_OK
        if dtype not in (1, 2):
            return lib.fail(f"kb_cuda_gemm: dtype {dtype} not supported (1 = bf16, 2 = f16)")
        launch = gemm_launch(dtype, out_dtype, m, n, k, lda, ldb, a, b)
        args = [np.uint64(a), np.uint64(b), np.uint64(c), np.int32(m), np.int32(n), np.int32(k), np.int64(lda),
                np.int64(ldb), np.int64(ldc)]
        return lib.launch("gemm_tc.cu", launch, args, stream)
    return entry


def _w8a8_entry(lib: CupyLib):
    np = _np()

    def entry(a, sa, w, sw, out, m, n, k, lda, ldw, ldo, dtype, stream) -> int:
        if not (a and sa and w and sw and out) or m < 0 or n < 0 or k < 0 or (m > 1 and lda < k) or \
                (n > 1 and ldw < k) or (m > 1 and ldo < n):
            return lib.fail(f"gemm_w8a8: bad arguments (M={m} N={n} K={k})")
        if k >= 1 << 17:
            return lib.fail(f"gemm_w8a8: K={k} could overflow int32")
        if m == 0 or n == 0:
            return KB_OK
        if dtype not in T_NAMES:
            return lib.fail(f"gemm_w8a8: unknown dtype code {dtype}")
        args = [np.uint64(p) for p in (a, sa, w, sw, out)] + [np.int64(v) for v in (m, n, k, lda, ldw, ldo)]
        return lib.launch("quant_int8_gemm.cu", w8a8_launch(dtype, m, n), args, stream)
    return entry


def _w4a16_entry(lib: CupyLib):
    np = _np()

    def entry(x, packed, scale, zero, out, m, n, k, group, ldx, ldo, dtype, stream) -> int:
        rows = 16 * W4A16["W4_WARPS"]
        if not (x and packed and scale and zero and out) or m < 0 or n < 0 or k < 0 or group <= 0 or group % 16 or \
                k % group or (m > 1 and (ldx < k or ldo < n)) or (m + rows - 1) // rows > 65535:
            return lib.fail(f"gemm_w4a16: bad arguments (M={m} N={n} K={k} group={group}: the group must be a "
                            "multiple of 16 dividing K)")
        if m == 0 or n == 0:
            return KB_OK
        if dtype not in (1, 2):
            return lib.fail(f"gemm_w4a16: dtype {dtype} not supported (1 = bf16, 2 = f16)")
        args = [np.uint64(p) for p in (x, packed, scale, zero, out)] + [np.int64(v) for v in (m, n, k)] + \
            [np.int32(group)] + [np.int64(v) for v in (ldx, ldo)]
        return lib.launch("quant_w4a16_gemm.cu", w4a16_launch(dtype, m, n), args, stream)
    return entry


def _sparse24_entry(lib: CupyLib):
    np = _np()

    def entry(x, vals, meta, y, m, n, k, ldx, ldy, dtype, stream) -> int:
        big = 2147483647
        if m < 0 or n < 0 or k < 4 or k % 4 or m > big or n > big or k > big or \
                (m + SP24["SP_BM"] - 1) // SP24["SP_BM"] > 65535 or (m > 1 and (ldx < k or ldy < n)):
            return lib.fail(f"kb_cuda_gemm_24: bad shape M={m} N={n} K={k} (K % 4 == 0)")
        if m == 0 or n == 0:
            return KB_OK
        if dtype not in (1, 2):
            return lib.fail(f"kb_cuda_gemm_24: dtype {dtype} not supported (1 = bf16, 2 = f16)")
        args = [np.uint64(p) for p in (x, vals, meta, y)] + [np.int32(m), np.int32(n), np.int32(k), np.int64(ldx),
                                                             np.int64(ldy)]
        return lib.launch("sparse_24_mma_sp.cu", sparse24_launch(dtype, m, n), args, stream)
    return entry


def _bsr_entry(lib: CupyLib):
    np = _np()

    def entry(x, rowptr, cols, vals, y, m, n, k, ldx, ldy, block, dtype, stream) -> int:
        rows = BSR["BS_WARPS"] * BSR["BS_WM"]
        if m < 0 or n < 0 or k < 0 or block not in (16, 32) or n % block or k % block or m > 2147483647 or \
                n // block > 2147483647 or (m + rows - 1) // rows > 65535 or (m > 1 and (ldx < k or ldy < n)):
            return lib.fail(f"kb_cuda_bsr_gemm: bad arguments M={m} N={n} K={k} block={block}")
        if m == 0 or n == 0:
            return KB_OK
        if dtype not in (1, 2):
            return lib.fail(f"kb_cuda_bsr_gemm: dtype {dtype} not supported (1 = bf16, 2 = f16)")
        args = [np.uint64(p) for p in (x, rowptr, cols, vals, y)] + [np.int32(m), np.int64(ldx), np.int64(ldy)]
        return lib.launch("sparse_bsr.cu", bsr_launch(dtype, block, m, n), args, stream)
    return entry


# KbDecodeArgs (decode_paged.cu), field by field: pointers, ints, int64 scale strides, the log2-scaled softmax scale
DECODE_FIELDS = [(f, "u8") for f in ("q", "k", "v", "tables", "lens", "ks", "vs", "o", "ws")] + [
    (f, "i4") for f in ("B", "SQ", "H", "HKV", "D", "NB", "BS", "MAXB", "nsplit", "pps", "G", "R")] + [
    ("ks_b", "i8"), ("vs_b", "i8"), ("scale_log2", "f4")]


def _decode_entry(lib: CupyLib):
    np = _np()
    fields = DECODE_FIELDS
    struct = np.dtype(fields, align=True)                 # KbDecodeArgs, C layout
    name = "kb_cuda_decode_paged"

    def entry(q, kc, vc, tables, lens, ks, vs, out, ws, ws_bytes, b, sq, h, d, nb, bs, hkv, kd, vnb, vbs, vhkv, vd,
              tb_rows, maxb, n_lens, ks_rows, ks_cols, ks_b, vs_rows, vs_cols, vs_b, nsplit, scale, q_dtype,
              kv_dtype, stream) -> int:
        if not (q and kc and vc and tables and lens and out and ws):
            return lib.fail(f"{name}: null pointer")
        if b < 0 or sq < 1 or h < 1 or hkv < 1 or nb < 1 or bs < 1 or maxb < 1 or nsplit < 1 or b > 65535 or \
                hkv > 65535 or nsplit > 65535 or nb * bs > 2147483647:
            return lib.fail(f"{name}: bad sizes (B={b} SQ={sq} H={h} HKV={hkv} NB={nb} BS={bs} MAXB={maxb} "
                            f"nsplit={nsplit})")
        if (vnb, vbs, vhkv, vd) != (nb, bs, hkv, kd):
            return lib.fail(f"{name}: v_cache [{vnb}, {vbs}, {vhkv}, {vd}] != k_cache [{nb}, {bs}, {hkv}, {kd}]")
        if kd != d:
            return lib.fail(f"{name}: head_dim of q ({d}) != the cache's ({kd})")
        if tb_rows != b or n_lens != b:
            return lib.fail(f"{name}: batch {b}, but {tb_rows} block-table rows and {n_lens} lengths")
        if h % hkv:
            return lib.fail(f"{name}: {h} query heads is not a multiple of {hkv} kv heads")
        if d not in (32, 64, 128):
            return lib.fail(f"{name}: head dim {d} (32, 64 or 128)")
        r = h // hkv * sq
        if r > DECODE["KB_DEC_MAX_R"]:
            return lib.fail(f"{name}: {r} query rows per kv head (max {DECODE['KB_DEC_MAX_R']})")
        quant = kv_dtype in (3, 4)
        if not 0 <= q_dtype <= 2 or not 0 <= kv_dtype <= 4:
            return lib.fail(f"{name}: dtype codes q {q_dtype} kv {kv_dtype}")
        if quant != bool(ks) or quant != bool(vs) or ks_b < 0 or vs_b < 0 or \
                (quant and (ks_rows != nb or vs_rows != nb or ks_cols != hkv or vs_cols != hkv)):
            return lib.fail(f"{name}: int8/fp8 caches take scales [num_blocks, kv_heads], float caches none")
        if ws_bytes < b * hkv * nsplit * r * (d + 2) * 4:
            return lib.fail(f"{name}: workspace of {ws_bytes} bytes is too small")
        if not scale > 0 or b == 0:
            return KB_OK if b == 0 else lib.fail(f"{name}: scale")
        if not quant and kv_dtype != q_dtype:
            return lib.fail(f"{name}: a float cache must have q's dtype ({q_dtype}), got {kv_dtype}")
        arg = np.zeros((), dtype=struct)
        values = (q, kc, vc, tables, lens, ks or 0, vs or 0, out, ws, b, sq, h, hkv, d, nb, bs, maxb, nsplit,
                  (maxb + nsplit - 1) // nsplit, h // hkv, r, ks_b, vs_b,
                  np.float32(scale) * np.float32(1.4426950408889634))
        for (field, _), val in zip(fields, values):
            arg[field] = val
        split, merge = decode_launches(q_dtype, kv_dtype, d, b, hkv, nsplit)
        rc = lib.launch("decode_paged.cu", split, [arg[()]], stream)
        return rc or lib.launch("decode_paged.cu", merge, [arg[()]], stream)
    return entry


ENTRY_POINTS: dict[str, Callable[[CupyLib], Callable[..., int]]] = {
    "kb_cuda_softmax": _row_entry("kb_cuda_softmax", "softmax.cu", False, False),
    "kb_cuda_rmsnorm": _row_entry("kb_cuda_rmsnorm", "rmsnorm.cu", True, False),
    "kb_cuda_layernorm": _row_entry("kb_cuda_layernorm", "layernorm.cu", True, True),
    "kb_cuda_attention_fwd": _attention_entry,
    "kb_cuda_gemm": _gemm_entry,
    "kb_cuda_gemm_w8a8": _w8a8_entry,
    "kb_cuda_gemm_w4a16": _w4a16_entry,
    "kb_cuda_gemm_24": _sparse24_entry,
    "kb_cuda_bsr_gemm": _bsr_entry,
    "kb_cuda_decode_paged": _decode_entry,
}


# Declared CUDA kernels without a CuPy launcher yet, and why (tests/test_cupy_launch.py fails on any other).
NOT_YET: dict[str, str] = {}


# ---- the variants ----------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _lib() -> CupyLib:
    return CupyLib()


def reason(case=None) -> str | None:
    """cupy installed, with a CUDA driver and device (make gpu installs cupy)"""
    return guards.missing("cupy")


def variant(kernel) -> "CupyVariant":
    """The CuPy launcher of a declared CUDA kernel (kernels/cuda/lib.py), for `SUITE.add(name, ...)`."""
    if kernel.symbol not in ENTRY_POINTS:
        raise KeyError(f"no CuPy launcher for {kernel.symbol}; add its host function to ENTRY_POINTS")
    return CupyVariant(kernel)


@dataclass
class CupyVariant:
    kernel: Any

    def setup(self, case, **inputs):
        from kernels.native import _skip
        k = self.kernel
        if k.unsupported is not None:
            why = k.unsupported(case, **inputs)
            if why:
                _skip(why)
        guards.require("cupy")
        spec = k.out(case, **inputs)
        shape, dt = spec if (isinstance(spec, tuple) and len(spec) == 2 and not isinstance(spec[1], int)) \
            else (spec, None)
        return k.bind(_lib(), case, inputs, case.poisoned(shape, dt))

    def variant_spec(self) -> dict[str, Any]:
        from harness.registry import Requires
        return dict(setup=self.setup, description=f"{self.kernel.doc} (NVRTC via cupy.RawModule)",
                    requires=Requires(devices=("cuda",), min_cc=self.kernel.min_cc, dtypes=self.kernel.dtypes,
                                      check=reason))
