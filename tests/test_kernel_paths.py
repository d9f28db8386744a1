"""Kernel paths the suites' "test" shapes do not take, checked against float64 (not merely executed): what
`make coverage` found unexecuted (docs/cuda-simulation.md, "Coverage"), issue 13.

- decode: the (q dtype, KV format, head dim) instantiations the test cases leave out (the CUDA kernel is a
  template on the head dim's elements per lane: native d=32, fp8 d=64 and d=128 were never run), and the C++
  kernel's float caches of another dtype than q (6 pairs the suite's "native" cache never selects);
- quant_gemm: M values whose last micro-tile has every height the kernels have (MR 1..8: M = 2, 12, 13, 14, 127,
  16 leave 2, 4, 5, 6, 7, 8 rows; the test shapes' 1, 3, 9, 17, 129 only 1 and 3), at both schemes;
- the CUDA GEMM's fp32 output (out_dtype 0, the `OutT = float` instantiations) under the simulation, at a
  scalar-path and a cp.async-path shape, within fp32 accumulation error (16-bit rounding of the output fails);
- bad arguments: every C entry point of kernels/cpp and kernels/cuda (on the simulation), given a valid call of
  a test case with one dtype code made unknown or one size made negative, returns a non-zero code with a message
  (never 0: the C++ GEMMs returned 0, computing nothing, until this test).

The C++ kernels need build/lib/libkb_cpp.so (skipped with the loader's reason otherwise); the CUDA ones run on
the simulation (built into .cache/sim-build on first use). About 40 s on one core of this machine.
"""
from __future__ import annotations

import ctypes

import pytest
import torch

from harness.check import check_variant, compare
from harness.registry import Case, Skip, all_suites
from kernels.cpp import lib as cpp_lib
from kernels.cuda import lib as cuda_lib
from kernels.cuda.sim.build import SimBuildError, missing_tools, sim_library
from kernels.native import Ctx


@pytest.fixture(scope="module")
def simlib():
    if missing_tools():
        pytest.skip(f"the CUDA simulation cannot be built here: {missing_tools()}")
    try:
        return cuda_lib.bind(sim_library("kb_cuda_sim")[0])
    except SimBuildError as e:
        pytest.fail(f"the CUDA kernels do not build under the simulation:\n{e}")


@pytest.fixture
def on_sim(simlib, monkeypatch):
    monkeypatch.setattr(cuda_lib.SIM, "for_case", lambda case: simlib)
    return simlib


def _native_variants(suite):
    return [v for v in suite.variants.values() if getattr(v.kernel, "backend", None) in ("cpp", "cuda")]


def _decode(b, ctx, *, h, hkv, d, sq=1, ragged=True, kv="native", bs=16):
    return dict(b=b, h=h, hkv=hkv, d=d, ctx=ctx, sq=sq, ragged=ragged, kv=kv, bs=bs)


EXTRA = {
    "decode": [_decode(2, 37, h=4, hkv=2, d=32), _decode(2, 37, h=4, hkv=1, d=64, kv="fp8"),
               _decode(2, 37, h=4, hkv=2, d=128, sq=2, kv="fp8", bs=5), _decode(3, 20, h=2, hkv=2, d=64, kv="int8")],
    "quant_gemm": [dict(scheme="w8a8", m=m, n=47, k=67) for m in (2, 12, 13, 14, 127, 16)]
                  + [dict(scheme="w4", m=m, n=47, k=128, group=64) for m in (2, 12, 13, 14, 127, 16)],
}


def _extra_cases():
    out = []
    suites = all_suites()
    for name, shapes in EXTRA.items():
        s = suites[name]
        for v in _native_variants(s):
            for dtype in s.dtypes:
                if v.kernel.dtypes is not None and dtype not in v.kernel.dtypes:
                    continue
                for p in shapes:
                    case = Case(name, p, "cpu", dtype)
                    if s.applies is not None and not s.applies(case, v.name):
                        continue
                    out.append(pytest.param(name, v.name, case, id=f"{name}-{v.name}-{dtype}-{case.name}"))
    return out


@pytest.mark.parametrize("suite_name,variant,case", _extra_cases())
def test_untaken_paths_match_reference(on_sim, suite_name, variant, case):
    s = all_suites()[suite_name]
    try:
        r = check_variant(s, case, s.variants[variant], seed=3)
    except Skip as e:
        pytest.skip(f"{suite_name} {variant}: {e}")
    assert r.ok, f"{suite_name} {variant} {case}: {r.result.message}"


def _cpp_isas() -> list[str]:
    """The C++ ISA paths this CPU runs (each kernel file is compiled once per ISA), as tests/test_cpp_kernels.py."""
    lib = cpp_lib.load()
    best = cpp_lib._isa_code(lib) if lib is not None else 0
    return [i for i in ("avx512", "avx2") if {"avx2": 1, "avx512": 2}[i] <= best] or ["default"]


@pytest.fixture
def isa():
    def force(name):
        if name != "default":
            cpp_lib.set_isa(name)
    yield force
    if cpp_lib.load() is not None:
        cpp_lib.set_isa(None)


_FLOATS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@pytest.mark.parametrize("isa_name", _cpp_isas())
@pytest.mark.parametrize("q_dtype,kv_dtype", [(q, kv) for q in _FLOATS for kv in _FLOATS.values() if _FLOATS[q] != kv])
@pytest.mark.parametrize("ctx", [37, 300])
def test_cpp_decode_float_cache_of_another_dtype(isa, isa_name, q_dtype, kv_dtype, ctx):
    """The C++ decode takes a float cache of any float dtype (its run<T, KV> instantiations); the suite's "native"
    cache has q's dtype, so the 6 mixed pairs run only here, on every ISA path. Reference: float64 on the same
    (rounded) cache. Both of a unit's write-outs: ctx 37 keeps each (sequence, kv head) in one unit (normalized
    into out); ctx 300 splits sequences into chunks of 64 tokens (partial m, l, Acc, then the merge)."""
    s = all_suites()["decode"]
    case = Case("decode", _decode(2, ctx, h=4, hkv=2, d=64), "cpu", q_dtype)
    inputs = s.make_inputs(case, seed=4)
    inputs["k_cache"], inputs["v_cache"] = inputs["k_cache"].to(kv_dtype), inputs["v_cache"].to(kv_dtype)
    try:
        isa(isa_name)
        out = cpp_lib.DECODE_PAGED.setup(case, **inputs)()
    except Skip as e:
        pytest.skip(str(e))
    r = compare(out, s.compute_reference(case, inputs), *s.tolerance(case))
    assert r.ok, f"q {q_dtype}, cache {kv_dtype}: {r.message}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,n,k", [(127, 129, 67), (129, 136, 264)])   # scalar path; cp.async path (K, N % 8 == 0)
def test_cuda_gemm_fp32_output(simlib, m, n, k, dtype):
    g = torch.Generator().manual_seed(m * n + k)
    a = torch.randn(m, k, generator=g).to(dtype)
    b = torch.randn(k, n, generator=g).to(dtype)
    out = torch.full((m, n), float("nan"), dtype=torch.float32)        # poisoned
    cuda_lib.GEMM(lib=simlib, a=a, b=b, out=out)
    ref = a.double() @ b.double()
    # products of 16-bit values are exact; fp32 accumulation: |err| <= K eps32 sum|a||b| (rounding the output to
    # bf16/fp16 would be ~2^-9 / 2^-12 of |ref|, far past this)
    bound = k * torch.finfo(torch.float32).eps * (a.double().abs() @ b.double().abs())
    err = (out.double() - ref).abs()
    assert torch.isfinite(out).all(), "unwritten (NaN) outputs"
    assert (err <= bound).all(), f"max error {err.max():.3g}, bound {bound.min():.3g}..{bound.max():.3g}"
    assert err.max() < 2.0 ** -12 * ref.abs().max(), "no better than a 16-bit output"


def test_cuda_gemm_out_dtype_errors(simlib):
    a = torch.randn(9, 16).to(torch.bfloat16)
    b = torch.randn(16, 8).to(torch.bfloat16)
    with pytest.raises(RuntimeError, match="out_dtype 2 must be 0"):
        cuda_lib.GEMM(lib=simlib, a=a, b=b, out=torch.empty(9, 8, dtype=torch.float16))
    with pytest.raises(RuntimeError, match="dtype 0 not supported"):
        cuda_lib.GEMM(lib=simlib, a=a.float(), b=b.float(), out=torch.empty(9, 8))


# ---- bad arguments ------------------------------------------------------------------------------------------
def _declared():
    return [pytest.param(k, id=k.symbol) for k in cpp_lib.LIB.kernels + cuda_lib.LIB.kernels]


def _kind(arg) -> str:
    """'dtype', 'size' or other: which kernels.native helper made the argument."""
    return getattr(arg.get, "__qualname__", "").split(".")[0]


def _valid_call(kernel):
    """(loaded library, argument values, their context) of the first test case the kernel takes, or a skip reason."""
    why = "no test case of any suite registering it"
    for s in all_suites().values():
        for v in s.variants.values():
            if v.kernel is not kernel:
                continue
            for dtype in s.dtypes:
                for case in s.cases("test", "cpu", dtype):
                    if s.applies is not None and not s.applies(case, v.name):
                        continue
                    inputs = s.make_inputs(case, seed=5)
                    try:
                        call = v.setup(case, **inputs)
                    except Skip as e:
                        why = str(e)
                        continue
                    lib = kernel.lib.for_case(case)
                    ctx = Ctx(case, call.keep, lib)    # one context, in order, as bind does (the decode's
                    return lib, [a.get(ctx) for a in kernel.args], ctx   # workspace lives in ctx.tensors)
    return None, why, None


@pytest.mark.parametrize("kernel", _declared())
def test_bad_arguments_are_errors(on_sim, kernel):
    lib, vals, keep = _valid_call(kernel)
    if lib is None:
        pytest.skip(f"{kernel.symbol}: {vals}")
    fn = lib.function(kernel)
    assert fn(*vals) == 0, f"{kernel.symbol}: the valid call fails: {lib.last_error()}"
    probes = [(i, 9 if _kind(a) == "dtype" else -1) for i, a in enumerate(kernel.args) if _kind(a) in ("dtype", "size")]
    assert probes, f"{kernel.symbol} declares no dtype or size argument"
    for i, bad in probes:
        args = list(vals)
        args[i] = bad
        rc = fn(*args)
        assert rc > 0, f"{kernel.symbol}: argument {i} ({_kind(kernel.args[i])}) = {bad} returned {rc}"
        assert lib.last_error(), f"{kernel.symbol}: error {rc} without a message"
        with pytest.raises(RuntimeError):
            lib.check(rc, kernel.symbol)


# The v2 paged decode (kernels/cpp/decode_paged_dp.cpp) is a template on the rows a unit keeps (NR = 1..4 in the QK
# step, 1..8 in the PV step: R = (h / hkv) x sq rows per kv head, taken 4 at a time) and on the head dim in
# registers (DC = 2 for d 64, 4 for d 128, 0 = reloaded for other multiples of 32); the suite's test cases take a
# few of those. Here every R from 1 to 8, at d 64, 96 and 128, for each (q, KV) pair v2 runs: its dot-product path
# (bf16 q with bf16 KV, bf16 and fp16 q with int8 KV) and its fp32 path (fp32 and fp16 KV: qk_f32 NR 1..4, pv_f32
# NR 1..8), and at d 80 (d % 32 == 16: the fp32 path's one-vector last column block; bf16 KV at d 80 takes that path
# too). Checked against float64 by the suite's check, as bench.py does.
_V2_PAIRS = [("bfloat16", "native"), ("bfloat16", "int8"), ("float16", "int8"), ("float32", "native"),
             ("float16", "native")]
_V2_CASES = ([(dtype, kv, d) for dtype, kv in _V2_PAIRS for d in (64, 96, 128)]
             + [(dtype, "native", 80) for dtype in ("float32", "float16", "bfloat16")])


@pytest.mark.parametrize("dtype,kv,d", _V2_CASES)
def test_cpp_decode_v2_every_row_count(dtype, kv, d):
    s = all_suites()["decode"]
    v = s.variants["cpp"]
    failed = []
    # (g, sq, ctx, ragged); the last: 33 tokens and sq 2, so the second 32-token step holds one token that query
    # row 0 cannot see (it sees up to len - 2): the step's "no visible key" path
    for g, sq, ctx, ragged in [(1, 1, 37, True), (2, 1, 37, True), (3, 1, 37, True), (4, 1, 37, True),
                               (5, 1, 37, True), (6, 1, 37, True), (7, 1, 37, True), (8, 1, 37, True),
                               (3, 2, 37, True), (2, 2, 33, False)]:
        case = Case("decode", _decode(2, ctx, h=g, hkv=1, d=d, sq=sq, kv=kv, ragged=ragged), "cpu", dtype)
        if v.requires.missing(case):
            pytest.skip(v.requires.missing(case))
        r = check_variant(s, case, v, seed=5)
        if not r.ok:
            failed.append(f"R={g * sq}: {r.result.message}")
    assert not failed, failed
