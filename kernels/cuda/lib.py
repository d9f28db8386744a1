"""Python side of the CUDA kernels: loads build/lib/libkb_cuda.so through ctypes (plain C interface, no
torch C++ ABI, so one build serves every torch version) and drives it with torch tensors.

- `bind(path)` returns a `KbCuda` whose methods take torch tensors: CUDA tensors for the real library,
  CPU tensors for the simulated one (build/lib/libkb_cuda_sim.so, the same .cu sources compiled by the host
  compiler against kernels/cuda/sim/). Outputs are written into buffers the caller passes.
- `missing_reason(case)` is None when the real kernels can run, else why not (a `skipped` row).
- `attention_setup`, `softmax_setup`, `norm_setup`, `gemm_setup` have the registry's setup signature
  (`setup(case, **inputs) -> launcher`) so that a suite registers a kernel in one line.

Never raises on import: a missing library or torch without CUDA shows up in missing_reason().
"""
from __future__ import annotations

import ctypes
import math
import os
from pathlib import Path

try:
    import torch
except Exception:  # pragma: no cover - torch is a dependency of the whole suite
    torch = None

REPO = Path(__file__).resolve().parents[2]
NOT_BUILT = "CUDA kernels not built: run 'make build'"
_DTYPE_CODES = {"float32": 0, "bfloat16": 1, "float16": 2}

_c_void_p, _c_int, _c_i64, _c_float = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float

# Argument types of every entry point (docs/cuda-kernels.md lists their meaning).
_SIGNATURES = {
    "kb_cuda_attention_fwd": [_c_void_p] * 4 + [_c_int] + [_c_i64] * 6 + [_c_int, _c_float] + [_c_i64] * 12
                             + [_c_void_p],
    "kb_cuda_softmax": [_c_void_p, _c_void_p, _c_int, _c_i64, _c_i64, _c_i64, _c_i64, _c_void_p],
    "kb_cuda_rmsnorm": [_c_void_p, _c_void_p, _c_void_p, _c_int] + [_c_i64] * 4 + [_c_float, _c_void_p],
    "kb_cuda_layernorm": [_c_void_p] * 4 + [_c_int] + [_c_i64] * 4 + [_c_float, _c_void_p],
    "kb_cuda_gemm": [_c_void_p] * 3 + [_c_int, _c_int] + [_c_i64] * 6 + [_c_void_p],
}


def build_dir() -> Path:
    return Path(os.environ["KB_BUILD_DIR"]) if os.environ.get("KB_BUILD_DIR") else REPO / "build"


def library_path(simulated: bool = False) -> Path:
    return build_dir() / "lib" / ("libkb_cuda_sim.so" if simulated else "libkb_cuda.so")


class KbCudaError(RuntimeError):
    pass


def _dtype_code(t) -> int:
    name = str(t.dtype).replace("torch.", "")
    if name not in _DTYPE_CODES:
        raise KbCudaError(f"dtype {t.dtype} not supported by the CUDA kernels")
    return _DTYPE_CODES[name]


def _aligned(t, vec: int) -> bool:
    """Last dim contiguous, other strides multiples of 16 bytes, data 16-byte aligned (cp.async)."""
    return (t.stride(-1) == 1 and all(s % vec == 0 for s in t.stride()[:-1]) and t.data_ptr() % 16 == 0)


class KbCuda:
    """The C entry points of one library (real or simulated) as methods taking torch tensors."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lib = ctypes.CDLL(str(self.path))
        self.simulated = "sim" in self.path.name
        self.device = "cpu" if self.simulated else "cuda"
        for name, argtypes in _SIGNATURES.items():
            fn = getattr(self.lib, name)
            fn.argtypes = argtypes
            fn.restype = ctypes.c_int
        self.lib.kb_cuda_last_error.restype = ctypes.c_char_p
        self.lib.kb_cuda_last_error.argtypes = []

    # -- plumbing ------------------------------------------------------------------------------------
    def _stream(self):
        if self.simulated:
            return None
        return ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            msg = self.lib.kb_cuda_last_error().decode(errors="replace")
            raise KbCudaError(f"{what} failed ({rc}): {msg}")

    def _on_device(self, *tensors) -> None:
        for t in tensors:
            if t.device.type != self.device:
                raise KbCudaError(f"{self.path.name} takes {self.device} tensors, got one on {t.device}")

    # -- kernels -------------------------------------------------------------------------------------
    def attention_fwd(self, q, k, v, out, causal: bool = False, scale: float | None = None):
        """out[b, h, sq, d] = softmax(q k^T * scale, causal top-left) v; q/k/v as in suites/attention.py."""
        self._on_device(q, k, v, out)
        b, h, sq, d = q.shape
        hkv, sk = k.shape[1], k.shape[2]
        scale = 1.0 / math.sqrt(d) if scale is None else scale
        st = [s for t in (q, k, v, out) for s in t.stride()[:3]]
        rc = self.lib.kb_cuda_attention_fwd(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
                                            _dtype_code(q), b, h, hkv, sq, sk, d, int(bool(causal)), scale,
                                            *st, self._stream())
        self._check(rc, "kb_cuda_attention_fwd")
        return out

    def softmax(self, x, out):
        """out = softmax(x, dim=-1) for 2-D x and out with unit stride along the last dimension."""
        self._on_device(x, out)
        rows, cols = x.shape
        rc = self.lib.kb_cuda_softmax(x.data_ptr(), out.data_ptr(), _dtype_code(x), rows, cols, x.stride(0),
                                      out.stride(0), self._stream())
        self._check(rc, "kb_cuda_softmax")
        return out

    def rmsnorm(self, x, weight, out, eps: float):
        self._on_device(x, weight, out)
        rows, cols = x.shape
        rc = self.lib.kb_cuda_rmsnorm(x.data_ptr(), weight.data_ptr(), out.data_ptr(), _dtype_code(x), rows,
                                      cols, x.stride(0), out.stride(0), eps, self._stream())
        self._check(rc, "kb_cuda_rmsnorm")
        return out

    def layernorm(self, x, weight, bias, out, eps: float):
        self._on_device(x, weight, bias, out)
        rows, cols = x.shape
        rc = self.lib.kb_cuda_layernorm(x.data_ptr(), weight.data_ptr(), bias.data_ptr(), out.data_ptr(),
                                        _dtype_code(x), rows, cols, x.stride(0), out.stride(0), eps,
                                        self._stream())
        self._check(rc, "kb_cuda_layernorm")
        return out

    def gemm(self, a, b, out):
        """out[M, N] = a[M, K] @ b[K, N]; a, b bf16 or fp16; out fp32 or a's dtype."""
        self._on_device(a, b, out)
        (m, k), n = a.shape, b.shape[1]
        rc = self.lib.kb_cuda_gemm(a.data_ptr(), b.data_ptr(), out.data_ptr(), _dtype_code(a),
                                   _dtype_code(out), m, n, k, a.stride(0), b.stride(0), out.stride(0),
                                   self._stream())
        self._check(rc, "kb_cuda_gemm")
        return out


def bind(path: str | os.PathLike) -> KbCuda:
    """Load a kb_cuda library (real or simulated) from `path`."""
    return KbCuda(path)


_LOADED: dict[str, KbCuda | str] = {}


def load(simulated: bool = False) -> KbCuda | str:
    """The library from the build directory, or the reason it cannot be used (cached per path)."""
    path = library_path(simulated)
    key = str(path)
    if key not in _LOADED:
        if not path.exists():
            _LOADED[key] = NOT_BUILT + ("" if not simulated else " (simulation: libkb_cuda_sim.so)")
        else:
            try:
                _LOADED[key] = bind(path)
            except (OSError, AttributeError) as exc:
                _LOADED[key] = f"cannot load {path.name}: {exc}"
    return _LOADED[key]


def missing_reason(case=None) -> str | None:
    """libkb_cuda.so built (make build)

    None when the real CUDA kernels can run `case`, else the reason (a skipped row)."""
    if torch is None:
        return "torch is not importable"
    if case is not None and getattr(case, "device", "cuda") != "cuda":
        return "CUDA kernels run on CUDA devices only"
    try:
        if not torch.cuda.is_available():
            return "no CUDA GPU"
        if torch.cuda.get_device_capability() < (8, 0):
            return "CUDA kernels need compute capability 8.0+ (mma.m16n8k16 bf16, cp.async)"
    except Exception as exc:  # a broken driver must not break the suite
        return f"CUDA unusable: {exc}"
    lib = load(False)
    return lib if isinstance(lib, str) else None


# -- setups with the registry signature ------------------------------------------------------------
def _skip(reason: str):
    try:
        from harness.registry import Skip
    except Exception:  # pragma: no cover
        raise KbCudaError(reason) from None
    raise Skip(reason)


def _lib_for(case) -> KbCuda:
    """The real library for CUDA cases, the simulated one for CPU cases (tests)."""
    lib = load(simulated=case.device != "cuda")
    if isinstance(lib, str):
        _skip(lib)
    return lib


def _prepare(t, vec: int):
    """A view the kernels accept (16-byte aligned rows), copying only when needed; done outside timing."""
    return t if _aligned(t, vec) else t.clone(memory_format=torch.contiguous_format)


def attention_setup(case, q, k, v):
    """FlashAttention-2 style forward: bf16/fp16 on mma.sync tensor cores, fp32 on CUDA cores"""
    if q.shape[-1] not in (64, 128):
        _skip(f"head dim {q.shape[-1]} not supported (64 or 128)")
    lib = _lib_for(case)
    vec = 16 // q.element_size()
    q, k, v = (_prepare(t, vec) for t in (q, k, v))
    out = case.poisoned(q.shape)
    causal = bool(case.get("causal", False))
    return lambda: lib.attention_fwd(q, k, v, out, causal)


def _rows(x):
    """x as [rows, cols] with unit last stride (a view when possible)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def softmax_setup(case, x):
    """one block per row, online max/sum, row cached in shared memory (one read of x)"""
    lib = _lib_for(case)
    x2 = _rows(x)
    out = case.poisoned(x.shape)
    out2 = out.view(-1, x.shape[-1])
    return lambda: (lib.softmax(x2, out2), out)[1]


def norm_setup(case, x, weight, bias, eps):
    """one block per row, fp32 statistics, row cached in shared memory (one read of x)"""
    lib = _lib_for(case)
    x2 = _rows(x)
    w = weight.contiguous()
    out = case.poisoned(x.shape)
    out2 = out.view(-1, x.shape[-1])
    kind = case.get("norm", "rms")
    if kind == "rms":
        return lambda: (lib.rmsnorm(x2, w, out2, float(eps)), out)[1]
    b = bias.contiguous()
    return lambda: (lib.layernorm(x2, w, b, out2, float(eps)), out)[1]


def gemm_setup(case, a, b):
    """128x128x32 tiles, mma.sync m16n8k16, 3-stage cp.async pipeline; output in the input dtype"""
    if case.dtype_name not in ("bfloat16", "float16"):
        _skip(f"tensor-core GEMM takes bf16/fp16 inputs, not {case.dtype_name}")
    lib = _lib_for(case)
    a = a if a.stride(-1) == 1 else a.contiguous()
    b = b if b.stride(-1) == 1 else b.contiguous()
    out = case.poisoned((a.shape[0], b.shape[1]))
    return lambda: lib.gemm(a, b, out)
