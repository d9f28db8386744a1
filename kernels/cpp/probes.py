"""Native ceiling probes of libkb_cpp (probes.cpp, probes_ext.cpp): bindings and the peak suite's setups.

Each probe computes something with a closed form, so the harness checks it like any kernel before timing
it (a loop the compiler shortened, or a wrong FLOP count, fails the check):
- `stream_copy`: dst = src with streaming stores; bytes read n + write n, no read-for-ownership.
- `fma`: acc = acc * m + c, `iters` times, per lane of 12-16 register chains: 2 FLOPs per lane-iteration.
- `dpbf16`: acc += a . b (pairs of bf16 per fp32 lane, vdpbf16ps), `iters` times: 64 FLOPs per instruction.
- `amx`: four 16x16 accumulator tiles += A_i @ B_j (bf16 -> fp32, or int8 -> int32), `iters` times.
- `read`: out[0] = the xor of every 32-bit word of a (a sequential read, nothing written): bytes read n x 4.
Each probe is declared once, as a kernels/native.py `Kernel` of libkb_cpp (entry point, argument mapping, the
check of its tensors): the ctypes binding comes from the declaration and tests/test_native.py checks it against
the C prototype. `bound(KERNEL, out=..., **tensors)` gives the zero-argument call. Nothing here raises on
import.
"""
from __future__ import annotations

import ctypes

import torch

from kernels import native as N
from kernels.cpp import lib as cpplib

AMX_KIND = {"bfloat16": 1, "int8": 3}
DPBF16_LANES = 16 * 16          # floats per block of the vector-FMA probe on vdpbf16ps: 16 chains x 16 lanes


def _i64(name: str) -> N.Arg:
    return N.Arg(ctypes.c_int64, lambda c: int(c[name]))


def _numel(name: str) -> N.Arg:
    return N.Arg(ctypes.c_int64, lambda c: c[name].numel())


def _helper(symbol: str, res, args):
    """A library helper that is not a kernel (no tensors): bound by hand, as kb_cpp_isa is."""
    f = getattr(cpplib.LIB.require().dll, symbol)
    f.restype, f.argtypes = res, args
    return f


def block_floats() -> int:
    """Floats per block of the vector-FMA probe (chains x lanes of the ISA in use)."""
    if cpplib.LIB.load() is None:
        return 256
    try:
        return int(_helper("kb_cpp_probe_block_floats", ctypes.c_int, [])())
    except AttributeError:
        return 256


def _contiguous(dtype: torch.dtype, *names: str):
    def why(t: dict) -> str | None:
        bad = [n for n in names if t[n].dtype != dtype or not t[n].is_contiguous()]
        return f"{', '.join(bad)}: contiguous {dtype} tensors expected" if bad else None
    return why


def _copy_check(case=None, **t) -> str | None:
    why = _contiguous(torch.float32, "a", "out")(t)
    return why or (None if t["out"].numel() == t["a"].numel() else "stream_copy: a and out of one size")


def _read_check(case=None, **t) -> str | None:
    why = _contiguous(torch.float32, "a")(t) or _contiguous(torch.int32, "out")(t)
    return why or (None if t["out"].numel() == 1 else "read: out int32 [1]")


def _fma_check(case=None, **t) -> str | None:
    why = _contiguous(torch.float32, "a", "out")(t)
    if why or (t["a"].dim() == 2 and t["a"].shape[1] == block_floats() and t["out"].shape == t["a"].shape):
        return why
    return f"fma: a and out float32 [blocks, {block_floats()}]"


def _dpbf16_check(case=None, **t) -> str | None:
    why = _contiguous(torch.float32, "a", "out")(t) or _contiguous(torch.bfloat16, "b")(t)
    if why or (t["b"].numel() == 64 and t["a"].dim() == 2 and t["a"].shape[1] == DPBF16_LANES
               and t["out"].shape == t["a"].shape):
        return why
    return f"dpbf16: a and out float32 [blocks, {DPBF16_LANES}], b bfloat16 [64]"


def _amx_check(case=None, **t) -> str | None:
    if t["a"].nbytes != 2048 or t["b"].nbytes != 2048 or not (t["a"].is_contiguous() and t["b"].is_contiguous()):
        return "amx: a and b two contiguous 16 x 64-byte tiles each"
    if t["out"].shape[1:] != (4, 16, 16) or not t["out"].is_contiguous():
        return "amx: out [blocks, 4, 16, 16], contiguous"
    return None


def _probe(symbol: str, args, doc: str, check) -> N.Kernel:
    return N.Kernel(cpplib.LIB, symbol, args, out=lambda case, a, **_: a.shape, doc=doc, backend="cpp",
                    source="kernels/cpp/probes.cpp", available=cpplib.available, unsupported=check)


# src, dst, n, threads: dst = src with streaming stores; n floats read + n written, no read-for-ownership
STREAM_COPY = _probe("kb_cpp_probe_stream_copy", [N.ptr("a"), N.ptr("out"), _numel("a"), N.threads()],
                     "streaming-store copy (float32)", _copy_check)
# init, out, blocks, iters, m, c, threads: out = init after iters steps of acc * m + c; 2 FLOPs per lane-step
FMA = _probe("kb_cpp_probe_fma", [N.ptr("a"), N.ptr("out"), N.size("a", 0), _i64("iters"), N.f32("m"), N.f32("c"),
                                  N.threads()],
             "chains of vector FMAs (float32)", _fma_check)
# init, ab, out, blocks, iters, threads: out = init + iters x (pairwise dot of ab[:32], ab[32:]); 4 FLOPs per lane
DPBF16 = _probe("kb_cpp_probe_dpbf16", [N.ptr("a"), N.ptr("b"), N.ptr("out"), N.size("a", 0), _i64("iters"),
                                        N.threads()],
                "chains of vdpbf16ps (bf16 pairs, float32 lanes)", _dpbf16_check)
# kind, a, b, out, blocks, iters, threads: four 16 x 16 tiles += A_i @ B_j per iteration
AMX = _probe("kb_cpp_probe_amx", [N.i32(lambda c: AMX_KIND[c["kind"]]), N.ptr("a"), N.ptr("b"), N.ptr("out"),
                                  N.size("out", 0), _i64("iters"), N.threads()],
             "AMX tile products (bf16 -> fp32, int8 -> int32)", _amx_check)
# src, out, n, threads: out[0] = xor of the n words of src; n x 4 bytes read. threads: the run's (0) or a count
READ = _probe("kb_cpp_probe_read", [N.ptr("a"), N.ptr("out"), _numel("a"),
                                    N.i32(lambda c: int(c["threads"]) or torch.get_num_threads())],
              "sequential read: xor of every 32-bit word", _read_check)
PROBES = (STREAM_COPY, FMA, DPBF16, AMX, READ)
for _k in PROBES:       # checked by the peak suite's `cpp` variant, which picks one probe per case
    cpplib.UNREGISTERED[_k.symbol] = "a ceiling probe: suites/peak.py's cpp variant calls it by op"


def bound(kernel: N.Kernel, out: torch.Tensor, **tensors):
    """The zero-argument call of `kernel` on `tensors` into `out` (ValueError for tensors it does not take)."""
    why = kernel.unsupported(None, out=out, **tensors)
    if why:
        raise ValueError(why)
    return kernel.bind(kernel.lib.require(), None, tensors, out)


def missing_reason(case=None) -> str | None:
    """libkb_cpp.so built (make build), on a CPU with what the probe needs (AVX512-BF16, AMX).

    None when the probe of `case` (its `op` and dtype) can run here, else the reason (-> a skipped row)."""
    why = cpplib.missing_reason(case)
    if why:
        return why
    try:
        for k in PROBES:
            cpplib.LIB.require().function(k)
    except AttributeError:
        return "libkb_cpp.so predates the probes: run 'make build'"
    if case is None:
        return None
    kind = None
    if case.get("op") == "fma" and case.dtype_name == "bfloat16":
        kind = 0
    elif case.get("op") == "amx":
        kind = AMX_KIND.get(case.dtype_name)
        if kind is None:
            return f"no AMX probe for {case.dtype_name}"
    if kind is not None and _helper("kb_cpp_probe_available", ctypes.c_int, [ctypes.c_int])(kind) != 0:
        return cpplib.LIB.require().last_error()
    return None
