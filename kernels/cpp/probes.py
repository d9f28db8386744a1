"""Native ceiling probes of libkb_cpp (probes.cpp, probes_ext.cpp): bindings and the peak suite's setups.

Each probe computes something with a closed form, so the harness checks it like any kernel before timing
it (a loop the compiler shortened, or a wrong FLOP count, fails the check):
- `stream_copy`: dst = src with streaming stores; bytes read n + write n, no read-for-ownership.
- `fma`: acc = acc * m + c, `iters` times, per lane of 12-16 register chains: 2 FLOPs per lane-iteration.
- `dpbf16`: acc += a . b (pairs of bf16 per fp32 lane, vdpbf16ps), `iters` times: 64 FLOPs per instruction.
- `amx`: four 16x16 accumulator tiles += A_i @ B_j (bf16 -> fp32, or int8 -> int32), `iters` times.
Loaded through kernels/cpp/lib.py's loader; nothing here raises on import.
"""
from __future__ import annotations

import ctypes

import torch

from kernels.cpp import lib as cpplib

_i64, _i32, _f32, _vp = ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_void_p
_SIGNATURES = {
    "kb_cpp_probe_stream_copy": (_i32, [_vp, _vp, _i64, _i32]),                 # src, dst, n, threads
    "kb_cpp_probe_block_floats": (_i32, []),
    "kb_cpp_probe_fma": (_i32, [_vp, _vp, _i64, _i64, _f32, _f32, _i32]),      # init, out, blocks, iters, m, c
    "kb_cpp_probe_available": (_i32, [_i32]),                                  # 0 dpbf16, 1 AMX bf16, 3 AMX int8
    "kb_cpp_probe_dpbf16": (_i32, [_vp, _vp, _vp, _i64, _i64, _i32]),          # init, ab, out, blocks, iters
    "kb_cpp_probe_amx": (_i32, [_i32, _vp, _vp, _vp, _i64, _i64, _i32]),       # kind, a, b, out, blocks, iters
}
AMX_KIND = {"bfloat16": 1, "int8": 3}
DPBF16_LANES = 16 * 16          # floats per block of the vdpbf16ps probe: 16 chains x 16 lanes


def _dll():
    """The loaded library with the probe signatures set, or None (the reason: missing_reason())."""
    lib = cpplib.load()
    if lib is None:
        return None
    dll = lib.dll
    if not getattr(dll, "_kb_probes", False):
        for fn, (res, args) in _SIGNATURES.items():
            f = getattr(dll, fn)
            f.restype, f.argtypes = res, args
        dll._kb_probes = True
    return dll


def missing_reason(case=None) -> str | None:
    """libkb_cpp.so built (make build), on a CPU with what the probe needs (AVX512-BF16, AMX).

    None when the probe of `case` (its `op` and dtype) can run here, else the reason (-> a skipped row)."""
    why = cpplib.missing_reason(case)
    if why or case is None:
        return why
    try:
        dll = _dll()
        if not hasattr(dll, "kb_cpp_probe_fma"):
            return "libkb_cpp.so predates the probes: run 'make build'"
    except AttributeError:
        return "libkb_cpp.so predates the probes: run 'make build'"
    kind = None
    if case.get("op") == "fma" and case.dtype_name == "bfloat16":
        kind = 0
    elif case.get("op") == "amx":
        kind = AMX_KIND.get(case.dtype_name)
        if kind is None:
            return f"no AMX probe for {case.dtype_name}"
    if kind is not None and dll.kb_cpp_probe_available(kind) != 0:
        return dll.kb_cpp_last_error().decode(errors="replace")
    return None


def _check(dll, rc: int, what: str) -> None:
    if rc != 0:
        raise RuntimeError(f"kb_cpp_probe_{what} failed (code {rc}): "
                           f"{dll.kb_cpp_last_error().decode(errors='replace')}")


def block_floats() -> int:
    """Floats per block of the vector-FMA probe (chains x lanes of the ISA in use)."""
    dll = _dll()
    return int(dll.kb_cpp_probe_block_floats()) if dll is not None else 256


def stream_copy(src: torch.Tensor, out: torch.Tensor, threads: int | None = None):
    """A zero-argument call: out[:] = src with streaming stores (float32, contiguous)."""
    dll = _dll()
    if src.dtype != torch.float32 or not src.is_contiguous() or not out.is_contiguous() or \
            out.numel() != src.numel():
        raise ValueError("stream_copy: contiguous float32 tensors of one size")
    args = (src.data_ptr(), out.data_ptr(), src.numel(), threads or torch.get_num_threads())
    fn = dll.kb_cpp_probe_stream_copy

    def call():
        _check(dll, fn(*args), "stream_copy")
        return out
    call.keep = (src, out)          # the tensors behind the pointers live as long as the call
    return call


def fma(init: torch.Tensor, out: torch.Tensor, iters: int, m: float, c: float, threads: int | None = None):
    """out = init after `iters` steps of acc * m + c (float32 [blocks, block_floats()])."""
    dll = _dll()
    if init.dtype != torch.float32 or init.dim() != 2 or init.shape[1] != block_floats() or \
            not init.is_contiguous() or out.shape != init.shape or not out.is_contiguous():
        raise ValueError(f"fma: contiguous float32 [blocks, {block_floats()}] tensors")
    args = (init.data_ptr(), out.data_ptr(), init.shape[0], iters, m, c, threads or torch.get_num_threads())
    fn = dll.kb_cpp_probe_fma

    def call():
        _check(dll, fn(*args), "fma")
        return out
    call.keep = (init, out)
    return call


def dpbf16(init: torch.Tensor, ab: torch.Tensor, out: torch.Tensor, iters: int, threads: int | None = None):
    """out = init + iters x (pairwise dot of ab[:32] and ab[32:] per lane), vdpbf16ps; init, out float32
    [blocks, 256], ab bfloat16 [64]."""
    dll = _dll()
    if ab.dtype != torch.bfloat16 or ab.numel() != 64 or init.shape[1] != DPBF16_LANES or out.shape != init.shape:
        raise ValueError("dpbf16: init/out float32 [blocks, 256], ab bfloat16 [64]")
    args = (init.data_ptr(), ab.data_ptr(), out.data_ptr(), init.shape[0], iters, threads or torch.get_num_threads())
    fn = dll.kb_cpp_probe_dpbf16

    def call():
        _check(dll, fn(*args), "dpbf16")
        return out
    call.keep = (init, ab, out)
    return call


def amx(kind: str, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, iters: int, threads: int | None = None):
    """out[blk] = iters x (A_i @ B_j) for the four (i, j) tile pairs; a, b: two 1 KiB tiles each (b in VNNI
    layout), out [blocks, 4, 16, 16] float32 (bf16) or int32 (int8)."""
    dll = _dll()
    if a.nbytes != 2048 or b.nbytes != 2048 or out.shape[1:] != (4, 16, 16) or not out.is_contiguous():
        raise ValueError("amx: a, b two 16 x 64-byte tiles each, out [blocks, 4, 16, 16]")
    args = (AMX_KIND[kind], a.data_ptr(), b.data_ptr(), out.data_ptr(), out.shape[0], iters,
            threads or torch.get_num_threads())
    fn = dll.kb_cpp_probe_amx

    def call():
        _check(dll, fn(*args), "amx")
        return out
    call.keep = (a, b, out)
    return call
