"""ctypes loader for the CPU kernels (libkb_cpp.so) and their setup functions for the suites.

The library has a plain C interface (docs/CONTRACTS.md §2), so it is loaded with ctypes and never binds to
torch's C++ ABI: one build serves every torch version. It is looked up in `$KB_BUILD_DIR/lib` or
`<repo>/build/lib` (`$KB_CPP_LIB` names a library file directly: the ASan test uses it). Importing this
module never raises; when the library is missing, `missing_reason(case)` says how to build it.

Setup functions follow the registry signature `setup(case, **inputs) -> launcher`: validation, layout
and the output buffer (from `case.poisoned`, so unwritten elements fail the check) stay outside the
launcher; the launcher makes one C call and returns the output tensor.
"""
from __future__ import annotations

import ctypes
import math
import os
from pathlib import Path
from typing import Any, Callable

try:
    import torch
except Exception:  # pragma: no cover - torch is a hard dependency of the suite, but never raise on import
    torch = None

_ROOT = Path(__file__).resolve().parents[2]
BUILD_HINT = "C++ kernels not built: run 'make build'"

_i64, _i32, _f32, _vp = ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_void_p
_SIGNATURES = {
    "kb_cpp_last_error": (ctypes.c_char_p, []),
    "kb_cpp_isa": (_i32, []),
    "kb_cpp_set_isa": (_i32, [_i32]),
    "kb_cpp_set_threads": (_i32, [_i32]),
    "kb_cpp_get_threads": (_i32, []),
    # x, y, rows, cols, x_stride, y_stride, dtype, threads
    "kb_cpp_softmax": (_i32, [_vp, _vp, _i64, _i64, _i64, _i64, _i32, _i32]),
    # x, w, y, rows, cols, x_stride, y_stride, eps, dtype, threads
    "kb_cpp_rmsnorm": (_i32, [_vp, _vp, _vp, _i64, _i64, _i64, _i64, _f32, _i32, _i32]),
    # x, w, b, y, rows, cols, x_stride, y_stride, eps, dtype, threads
    "kb_cpp_layernorm": (_i32, [_vp, _vp, _vp, _vp, _i64, _i64, _i64, _i64, _f32, _i32, _i32]),
    # a, b, c, M, N, K, lda, ldb, ldc, dtype, threads
    "kb_cpp_gemm": (_i32, [_vp, _vp, _vp, _i64, _i64, _i64, _i64, _i64, _i64, _i32, _i32]),
    # q, k, v, o, batch, heads, kv_heads, seq_q, seq_k, head_dim, causal, scale, dtype, threads
    "kb_cpp_attention_fwd": (_i32, [_vp, _vp, _vp, _vp, _i64, _i64, _i64, _i64, _i64, _i64, _i32, _f32, _i32,
                                    _i32]),
    "kb_cpp_tile_backend": (_i32, []),
    # q, k, v, o, batch, heads, kv_heads, seq_q, seq_k, head_dim, causal, scale, threads (bf16 only)
    "kb_cpp_attention_fwd_amx": (_i32, [_vp, _vp, _vp, _vp, _i64, _i64, _i64, _i64, _i64, _i64, _i32, _f32, _i32]),
    # a, b, c, M, N, K, lda, ldb, ldc, threads (int8 x int8 -> int32 on tiles)
    "kb_cpp_gemm_s8s8s32_tiles": (_i32, [_vp, _vp, _vp, _i64, _i64, _i64, _i64, _i64, _i64, _i32]),
}
ISA_NAMES = {0: "none", 1: "avx2", 2: "avx512", 3: "amx"}
TILE_BACKENDS = {0: "none", 1: "avx512-bf16", 2: "amx"}   # kb_cpp_tile_backend(): what the tile kernels run on


def lib_path(name: str = "kb_cpp") -> Path:
    """Where the library is expected: $KB_CPP_LIB, else $KB_BUILD_DIR/lib or <repo>/build/lib."""
    if name == "kb_cpp" and os.environ.get("KB_CPP_LIB"):
        return Path(os.environ["KB_CPP_LIB"])
    base = Path(os.environ["KB_BUILD_DIR"]) if os.environ.get("KB_BUILD_DIR") else _ROOT / "build"
    return base / "lib" / f"lib{name}.so"


class KbCpp:
    """The loaded library; methods take torch CPU tensors and call the C entry points."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.dll = ctypes.CDLL(str(self.path))
        for fn, (res, args) in _SIGNATURES.items():
            f = getattr(self.dll, fn)
            f.restype, f.argtypes = res, args

    # ---- helpers -----------------------------------------------------------------------------------------
    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            msg = self.dll.kb_cpp_last_error().decode(errors="replace")
            raise RuntimeError(f"kb_cpp_{what} failed (code {rc}): {msg}")

    @staticmethod
    def dtype_code(t) -> int:
        codes = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
        if t.dtype not in codes:
            raise TypeError(f"libkb_cpp supports float32, bfloat16, float16, not {t.dtype}")
        return codes[t.dtype]

    @staticmethod
    def threads() -> int:
        return torch.get_num_threads()

    @property
    def isa(self) -> str:
        return ISA_NAMES.get(self.dll.kb_cpp_isa(), "?")

    def set_isa(self, name: str | None) -> None:
        """Force 'avx2', 'avx512' or 'amx' (tests run every path); None restores the automatic choice."""
        code = -1 if name is None else {v: k for k, v in ISA_NAMES.items()}[name]
        self._check(self.dll.kb_cpp_set_isa(code), "set_isa")

    @staticmethod
    def _rows(x):
        """A 2-D [rows, cols] view with unit column stride (copy only if the layout needs it)."""
        if x.dim() != 2:
            x = x.reshape(-1, x.shape[-1])
        if x.stride(-1) != 1:
            x = x.contiguous()
        return x

    # ---- kernels ---------------------------------------------------------------------------------------------
    # `bind_<op>(...)` validates and lays out the arguments once and returns a zero-argument call that makes
    # one C call and returns `out` (about a microsecond of Python); `<op>(...)` binds and calls.
    def _bound(self, name: str, args: tuple, out, keep: tuple = ()):
        fn = getattr(self.dll, f"kb_cpp_{name}")
        check = self._check

        def call():
            rc = fn(*args)
            if rc:
                check(rc, name)
            return out
        call.keep = keep          # the tensors behind the pointers stay alive as long as the call
        return call

    def bind_softmax(self, x, out):
        x2, o2 = self._rows(x), out.view(-1, out.shape[-1])
        args = (x2.data_ptr(), o2.data_ptr(), x2.shape[0], x2.shape[1], x2.stride(0), o2.stride(0),
                self.dtype_code(x2), self.threads())
        return self._bound("softmax", args, out, (x2, o2))

    def bind_rmsnorm(self, x, w, eps: float, out):
        x2, o2, w = self._rows(x), out.view(-1, out.shape[-1]), w.contiguous()
        args = (x2.data_ptr(), w.data_ptr(), o2.data_ptr(), x2.shape[0], x2.shape[1], x2.stride(0), o2.stride(0),
                float(eps), self.dtype_code(x2), self.threads())
        return self._bound("rmsnorm", args, out, (x2, o2, w))

    def bind_layernorm(self, x, w, b, eps: float, out):
        x2, o2, w, b = self._rows(x), out.view(-1, out.shape[-1]), w.contiguous(), b.contiguous()
        args = (x2.data_ptr(), w.data_ptr(), b.data_ptr(), o2.data_ptr(), x2.shape[0], x2.shape[1], x2.stride(0),
                o2.stride(0), float(eps), self.dtype_code(x2), self.threads())
        return self._bound("layernorm", args, out, (x2, o2, w, b))

    def bind_gemm(self, a, b, out):
        a = a if a.stride(-1) == 1 else a.contiguous()
        b = b if b.stride(-1) == 1 else b.contiguous()
        M, K = a.shape
        N = b.shape[1]
        if b.shape[0] != K or tuple(out.shape) != (M, N) or out.stride(-1) != 1:
            raise ValueError(f"gemm: shapes {tuple(a.shape)} @ {tuple(b.shape)} -> {tuple(out.shape)}")
        args = (a.data_ptr(), b.data_ptr(), out.data_ptr(), M, N, K, a.stride(0), b.stride(0), out.stride(0),
                self.dtype_code(a), self.threads())
        return self._bound("gemm", args, out, (a, b))

    def bind_attention_fwd(self, q, k, v, causal: bool, out, scale: float | None = None):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        B, H, SQ, D = q.shape
        HKV, SK = k.shape[1], k.shape[2]
        if not out.is_contiguous() or tuple(out.shape) != tuple(q.shape):
            raise ValueError("attention_fwd: out must be a contiguous tensor shaped like q")
        scale = 1.0 / math.sqrt(D) if scale is None else scale
        args = (q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), B, H, HKV, SQ, SK, D, int(bool(causal)),
                float(scale), self.dtype_code(q), self.threads())
        return self._bound("attention_fwd", args, out, (q, k, v))

    def bind_attention_fwd_amx(self, q, k, v, causal: bool, out, scale: float | None = None):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        B, H, SQ, D = q.shape
        HKV, SK = k.shape[1], k.shape[2]
        if not out.is_contiguous() or tuple(out.shape) != tuple(q.shape):
            raise ValueError("attention_fwd_amx: out must be a contiguous tensor shaped like q")
        if not all(t.dtype == torch.bfloat16 for t in (q, k, v, out)):
            raise TypeError("attention_fwd_amx: bfloat16 tensors only")
        scale = 1.0 / math.sqrt(D) if scale is None else scale
        args = (q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), B, H, HKV, SQ, SK, D, int(bool(causal)),
                float(scale), self.threads())
        return self._bound("attention_fwd_amx", args, out, (q, k, v))

    def gemm_s8s8s32_tiles(self, a, b, out):
        """out (int32) = a (int8) @ b (int8) on the int8 tile path (tdpbssd; int8_tiles.cpp)."""
        a = a if a.stride(-1) == 1 else a.contiguous()
        b = b if b.stride(-1) == 1 else b.contiguous()
        if a.dtype != torch.int8 or b.dtype != torch.int8 or out.dtype != torch.int32 or out.stride(-1) != 1:
            raise TypeError("gemm_s8s8s32_tiles: int8 a, b and an int32 out with unit column stride")
        M, K = a.shape
        N = b.shape[1]
        if b.shape[0] != K or tuple(out.shape) != (M, N):
            raise ValueError(f"gemm_s8s8s32_tiles: shapes {tuple(a.shape)} @ {tuple(b.shape)} -> {tuple(out.shape)}")
        args = (a.data_ptr(), b.data_ptr(), out.data_ptr(), M, N, K, a.stride(0), b.stride(0), out.stride(0),
                self.threads())
        return self._bound("gemm_s8s8s32_tiles", args, out, (a, b))()

    @property
    def tile_backend(self) -> str:
        return TILE_BACKENDS.get(self.dll.kb_cpp_tile_backend(), "?")

    def softmax(self, x, out):
        return self.bind_softmax(x, out)()

    def rmsnorm(self, x, w, eps: float, out):
        return self.bind_rmsnorm(x, w, eps, out)()

    def layernorm(self, x, w, b, eps: float, out):
        return self.bind_layernorm(x, w, b, eps, out)()

    def gemm(self, a, b, out):
        return self.bind_gemm(a, b, out)()

    def attention_fwd(self, q, k, v, causal: bool, out, scale: float | None = None):
        return self.bind_attention_fwd(q, k, v, causal, out, scale)()


_LIB: KbCpp | None = None
_LOAD_ERROR: str | None = None


def load(path: str | Path | None = None) -> KbCpp | None:
    """The library (cached), or None with the reason in `load_error()`."""
    global _LIB, _LOAD_ERROR
    if path is not None:
        return KbCpp(Path(path))
    if _LIB is None and _LOAD_ERROR is None:
        p = lib_path()
        if not p.exists():
            _LOAD_ERROR = f"{BUILD_HINT} ({p} not found)"
        else:
            try:
                _LIB = KbCpp(p)
            except Exception as exc:  # a stale or foreign build: say so, do not crash the suite
                _LOAD_ERROR = f"C++ kernels built but not loadable: {p}: {exc}"
    return _LIB


def load_error() -> str | None:
    load()
    return _LOAD_ERROR


def missing_reason(case=None) -> str | None:
    """libkb_cpp.so built (make build), on an AVX2 or AVX-512 CPU.

    Returns None when the C++ kernels can run this case, else the reason (-> a skipped row)."""
    if torch is None:
        return "torch is not importable"
    if load() is None:
        # "not built" only when it is not; a library that is there but does not load: the loader's own words
        return _LOAD_ERROR if _LOAD_ERROR and not _LOAD_ERROR.startswith(BUILD_HINT) else BUILD_HINT
    if case is not None and getattr(case, "device", "cpu") != "cpu":
        return "C++ kernels run on the CPU only"
    if _LIB.dll.kb_cpp_isa() == 0:
        return "C++ kernels need a CPU with AVX2+FMA or AVX-512"
    return None


def _lib() -> KbCpp:
    lib = load()
    if lib is None:
        raise RuntimeError(load_error() or BUILD_HINT)
    return lib


def _pick(inputs: dict, *names: str, required: bool = True) -> Any:
    for n in names:
        if n in inputs and inputs[n] is not None:
            return inputs[n]
    if required:
        raise KeyError(f"inputs need one of {names}; got {sorted(inputs)}")
    return None


def _param(case, names: tuple[str, ...], default: Any) -> Any:
    params = getattr(case, "params", {}) or {}
    for n in names:
        if n in params:
            return params[n]
    return default


# ---- setup functions: setup(case, **inputs) -> launcher ----------------------------------------------------
def softmax_setup(case, **inputs) -> Callable[[], Any]:
    """C++ softmax over the last dimension (AVX-512/AVX2, OpenMP over rows)."""
    lib, x = _lib(), _pick(inputs, "x", "input")
    out = case.poisoned(x.shape)
    return lib.bind_softmax(x, out)


def rmsnorm_setup(case, **inputs) -> Callable[[], Any]:
    """C++ fused RMSNorm forward."""
    lib, x = _lib(), _pick(inputs, "x", "input")
    w = _pick(inputs, "w", "weight", required=False)
    if w is None:
        w = torch.ones(x.shape[-1], dtype=x.dtype)
    eps = _param(case, ("eps",), inputs.get("eps", 1e-6))
    out = case.poisoned(x.shape)
    return lib.bind_rmsnorm(x, w, eps, out)


def layernorm_setup(case, **inputs) -> Callable[[], Any]:
    """C++ fused LayerNorm forward."""
    lib, x = _lib(), _pick(inputs, "x", "input")
    w = _pick(inputs, "w", "weight", required=False)
    b = _pick(inputs, "b", "bias", required=False)
    w = torch.ones(x.shape[-1], dtype=x.dtype) if w is None else w
    b = torch.zeros(x.shape[-1], dtype=x.dtype) if b is None else b
    eps = _param(case, ("eps",), inputs.get("eps", 1e-5))
    out = case.poisoned(x.shape)
    return lib.bind_layernorm(x, w, b, eps, out)


def gemm_setup(case, **inputs) -> Callable[[], Any]:
    """C++ tiled GEMM (packed panels, 14x32 AVX-512 micro-kernel)."""
    lib = _lib()
    a, b = _pick(inputs, "a", "A", "x"), _pick(inputs, "b", "B", "w")
    out = case.poisoned((a.shape[0], b.shape[1]))
    return lib.bind_gemm(a, b, out)


def attention_setup(case, **inputs) -> Callable[[], Any]:
    """C++ flash-attention forward (online softmax, fp32 accumulation)."""
    lib = _lib()
    q, k, v = (_pick(inputs, n) for n in ("q", "k", "v"))
    causal = bool(_param(case, ("causal", "is_causal"), inputs.get("causal", False)))
    scale = _param(case, ("scale",), None)
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"heads {q.shape[1]} is not a multiple of kv heads {k.shape[1]}")
    out = case.poisoned(q.shape)
    return lib.bind_attention_fwd(q, k, v, causal, out, scale)


def tiles_missing_reason(case=None) -> str | None:
    """libkb_cpp.so built, on a CPU with AMX or AVX512-BF16 (the tile kernels' two back ends)."""
    reason = missing_reason(case)
    if reason is None and _LIB.dll.kb_cpp_tile_backend() == 0:
        return "tile kernels need a CPU with AMX or AVX512-BF16"
    return reason


def attention_amx_setup(case, **inputs) -> Callable[[], Any]:
    """C++ bf16 flash-attention forward on tiles (AMX tdpbf16ps, else the AVX512-BF16 tile model)."""
    lib = _lib()
    q, k, v = (_pick(inputs, n) for n in ("q", "k", "v"))
    if q.shape[-1] not in (64, 128):
        raise _skip(f"head dim {q.shape[-1]}: the tile kernel has 64 and 128")
    causal = bool(_param(case, ("causal", "is_causal"), inputs.get("causal", False)))
    scale = _param(case, ("scale",), None)
    out = case.poisoned(q.shape)
    return lib.bind_attention_fwd_amx(q, k, v, causal, out, scale)


def _skip(reason: str) -> Exception:
    from harness.registry import Skip
    return Skip(reason)


def norm_setup(case, **inputs) -> Callable[[], Any]:
    """RMSNorm or LayerNorm, from the case's `norm`/`kind` parameter."""
    kind = str(_param(case, ("norm", "kind", "op"), "rmsnorm")).lower()
    if "layer" in kind or kind in ("ln",):
        return layernorm_setup(case, **inputs)
    return rmsnorm_setup(case, **inputs)
