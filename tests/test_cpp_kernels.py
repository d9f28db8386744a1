"""The C++ CPU kernels (libkb_cpp.so) against the suites' own float64 references and tolerances.

Every kernel, every ISA path the CPU has (AMX for the bf16 GEMM, AVX-512, AVX2/FMA; forced through
kb_cpp_set_isa), fp32/bf16/fp16, at the
suites' odd test shapes plus a few more (1 row, tails of every tile size, rows too long for the cached
path, GQA, causal with sq != sk). Inputs are fresh (a new seed per test), outputs poisoned with NaN
(`case.poisoned`), so an element a kernel never writes fails. The reference and tolerance are the suite's
(`SUITE.compute_reference`, `SUITE.tolerance`) and the comparison is the harness's (`harness.check.compare`).
"""
from __future__ import annotations

import itertools
import zlib

import pytest
import torch

from harness.check import compare
from harness.registry import Case
from kernels.cpp import lib as cpp
from suites import attention as attention_suite
from suites import gemm as gemm_suite
from suites import norm as norm_suite
from suites import softmax as softmax_suite

LIB = cpp.load()
pytestmark = pytest.mark.skipif(LIB is None, reason=cpp.load_error() or cpp.BUILD_HINT)

DTYPES = ("float32", "bfloat16", "float16")
# every code path the CPU can run: AMX (bf16 GEMM), AVX-512, AVX2/FMA
ISAS = [i for i in ("amx", "avx512", "avx2") if LIB is not None and
        {"avx2": 1, "avx512": 2, "amx": 3}[i] <= LIB.dll.kb_cpp_isa()]


@pytest.fixture(params=[i for i in ISAS if i != "amx"])
def isa(request):
    LIB.set_isa(request.param)
    yield request.param
    LIB.set_isa(None)


@pytest.fixture(params=ISAS)   # AMX changes only the bf16 GEMM
def gemm_isa(request):
    LIB.set_isa(request.param)
    yield request.param
    LIB.set_isa(None)


def _seed(*parts) -> int:
    return zlib.crc32(repr(parts).encode())   # fresh inputs per test, reproducible


def run_case(module, setup, params: dict, dtype: str, tag: str):
    suite = module.SUITE
    case = Case(suite.name, params, "cpu", dtype)
    inputs = suite.make_inputs(case, _seed(suite.name, tuple(params.items()), dtype, tag))
    out = setup(case, **inputs)()
    ref = suite.compute_reference(case, inputs)
    atol, rtol = suite.tolerance(case)
    res = compare(out, ref, atol, rtol)
    assert res.ok, f"{suite.name} {params} {dtype} [{tag}]: {res.message}"
    return res


def _cases(module, extra):
    return [c for c, _ in module.SUITE._cases["test"]] + extra


SOFTMAX = _cases(softmax_suite, [dict(rows=1, cols=1), dict(rows=2, cols=16), dict(rows=5, cols=70001),
                                 dict(rows=64, cols=33)])
NORM = _cases(norm_suite, [dict(norm=n, rows=r, cols=c) for n in ("rms", "layer")
                           for r, c in ((1, 1), (1, 4096), (3, 70001), (33, 15))])
GEMM = _cases(gemm_suite, [dict(m=1, n=1, k=1), dict(m=14, n=32, k=256), dict(m=15, n=33, k=257),
                           dict(m=300, n=70, k=600), dict(m=129, n=129, k=0),
                           dict(m=29, n=70, k=12289)])   # bf16 AVX512-BF16: 4 K-slices of 4096, odd K
ATTENTION = _cases(attention_suite, [
    dict(b=1, h=4, hkv=2, sq=1, sk=1000, d=128, causal=False),
    dict(b=1, h=2, hkv=1, sq=200, sk=97, d=64, causal=True),      # sq > sk, causal top-left
    dict(b=1, h=2, hkv=2, sq=97, sk=200, d=64, causal=True),      # sq < sk
    dict(b=2, h=6, hkv=3, sq=49, sk=65, d=128, causal=False),
    dict(b=1, h=1, hkv=1, sq=33, sk=33, d=32, causal=True),       # another head dim (generic path)
])


def _id(p):
    return "-".join(f"{k}{int(v) if isinstance(v, bool) else v}" for k, v in p.items())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("params", SOFTMAX, ids=_id)
def test_softmax(isa, params, dtype):
    run_case(softmax_suite, cpp.softmax_setup, params, dtype, isa)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("params", NORM, ids=_id)
def test_norm(isa, params, dtype):
    run_case(norm_suite, cpp.norm_setup, params, dtype, isa)


def test_layernorm_one_column():
    x = torch.randn(7, 1)
    out = torch.full_like(x, float("nan"))
    LIB.layernorm(x, torch.ones(1), torch.full((1,), 0.25), 1e-5, out)
    assert torch.equal(out, torch.full_like(x, 0.25))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("params", GEMM, ids=_id)
def test_gemm(gemm_isa, params, dtype):
    run_case(gemm_suite, cpp.gemm_setup, params, dtype, gemm_isa)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("params", ATTENTION, ids=_id)
def test_attention(isa, params, dtype):
    run_case(attention_suite, cpp.attention_setup, params, dtype, isa)


# The tile attention (attention_fwd_amx.cpp): bf16, head dims 64/128, on each tile back end the CPU has (AMX, and
# the AVX512-BF16 model, which an AMX CPU also runs when forced to "avx512"). Tails in every dimension: queries
# and keys not multiples of the 32-query / 64-key blocks, 1000, one key, sq != sk under causal masking, GQA.
ATTENTION_TILES = [p for p in ATTENTION if p["d"] in (64, 128)] + [
    dict(b=1, h=2, hkv=1, sq=1000, sk=1000, d=128, causal=True),
    dict(b=1, h=2, hkv=2, sq=127, sk=1000, d=64, causal=False),
    dict(b=2, h=4, hkv=1, sq=129, sk=127, d=64, causal=True),
    dict(b=1, h=1, hkv=1, sq=64, sk=64, d=128, causal=True),       # exact blocks
    dict(b=1, h=1, hkv=1, sq=300, sk=1, d=64, causal=False),        # one key
]
TILE_ISAS = [i for i in ISAS if LIB is not None and i in ("amx", "avx512") and
             (LIB.dll.kb_cpp_tile_backend() == 2 or (i == "avx512" and LIB.dll.kb_cpp_tile_backend() == 1))]


@pytest.fixture(params=TILE_ISAS or [None])
def tile_isa(request):
    if request.param is None:
        pytest.skip("this CPU has neither AMX nor AVX512-BF16: the tile kernels cannot run")
    LIB.set_isa(request.param)
    yield LIB.tile_backend
    LIB.set_isa(None)


@pytest.mark.parametrize("params", ATTENTION_TILES, ids=_id)
def test_attention_tiles(tile_isa, params):
    run_case(attention_suite, cpp.attention_amx_setup, params, "bfloat16", tile_isa)


def test_attention_tiles_refuses_what_it_lacks(tile_isa):
    q = torch.randn(1, 1, 4, 32, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="head dim"):
        LIB.bind_attention_fwd_amx(q, q, q, False, torch.empty_like(q))()
    with pytest.raises(TypeError, match="bfloat16"):
        x = torch.randn(1, 1, 4, 64)
        LIB.bind_attention_fwd_amx(x, x, x, False, torch.empty_like(x))


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (17, 33, 63), (33, 17, 65), (127, 129, 200), (32, 32, 64),
                                   (40, 50, 0), (5, 70, 300)])
def test_int8_tiles(tile_isa, m, n, k):
    """The int8 tile path (int8_tiles.cpp): exact against float64 (int32 sums of int8 products are exact there),
    full int8 range including -128 * -128, tails of the 16-row/16-column/64-deep tiles in every dimension."""
    g = torch.Generator().manual_seed(_seed("int8", m, n, k))
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (k, n), generator=g, dtype=torch.int8)
    if m and k:
        a[0, :] = -128
    if k and n:
        b[:, -1] = -128
    out = torch.full((m, n), -7, dtype=torch.int32)   # poisoned: every element must be written
    LIB.gemm_s8s8s32_tiles(a, b, out)
    ref = (a.double() @ b.double()).to(torch.int32)
    assert torch.equal(out, ref), (out - ref).abs().max()


def test_fresh_inputs_change_the_output():
    """A kernel that returned a cached answer would pass one check; two seeds must give two answers."""
    case = Case("softmax", dict(rows=3, cols=100), "cpu", "float32")
    outs = []
    for seed in (1, 2):
        inputs = softmax_suite.SUITE.make_inputs(case, seed)
        outs.append(cpp.softmax_setup(case, **inputs)().clone())
    assert not torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("op", ["softmax", "rmsnorm", "layernorm"])
def test_row_strides_touch_only_their_rows(isa, op):
    """Rows with strides > cols: the gaps between rows keep their sentinel values, the rows are right."""
    rows, cols, pad = 9, 37, 11
    xbuf = torch.randn(rows, cols + pad)
    x = xbuf[:, :cols]
    ybuf = torch.full((rows, cols + pad), 7.0)
    y = ybuf[:, :cols]
    w, b = torch.randn(cols), torch.randn(cols)
    fn = getattr(LIB.dll, f"kb_cpp_{op}")
    head = (x.data_ptr(),) + ((w.data_ptr(),) if op != "softmax" else ()) + \
        ((b.data_ptr(),) if op == "layernorm" else ())
    tail = (rows, cols, cols + pad, cols + pad) + ((1e-5,) if op != "softmax" else ()) + (0, 0)
    assert fn(*head, y.data_ptr(), *tail) == 0
    assert torch.equal(ybuf[:, cols:], torch.full((rows, pad), 7.0))
    xd = x.double()
    ref = {"softmax": lambda: torch.softmax(xd, -1),
           "rmsnorm": lambda: xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-5) * w.double(),
           "layernorm": lambda: torch.nn.functional.layer_norm(xd, (cols,), w.double(), b.double(), 1e-5)}[op]()
    torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-5)


def test_gemm_row_strides():
    a = torch.randn(50, 80)[:, :70]            # lda 80
    b = torch.randn(70, 40)[:, :33]            # ldb 40
    cbuf = torch.full((50, 45), float("nan"))
    c = cbuf[:, :33]                            # ldc 45
    LIB.gemm(a, b, c)
    torch.testing.assert_close(c.double(), a.double() @ b.double(), atol=1e-4, rtol=1e-5)
    assert torch.isnan(cbuf[:, 33:]).all()     # the columns past N are not written


def test_errors_are_reported_not_crashes():
    x = torch.randn(4, 8)
    rc = LIB.dll.kb_cpp_softmax(x.data_ptr(), x.data_ptr(), 4, 8, 8, 8, 7, 0)   # dtype code 7
    assert rc != 0 and "dtype" in LIB.dll.kb_cpp_last_error().decode()
    with pytest.raises(RuntimeError, match="softmax"):
        LIB._check(rc, "softmax")
    q = torch.randn(1, 3, 4, 64)
    kv = torch.randn(1, 2, 4, 64)
    with pytest.raises(RuntimeError, match="bad arguments"):   # 3 heads over 2 kv heads
        LIB.attention_fwd(q, kv, kv, False, torch.empty_like(q))
    q = torch.randn(1, 1, 4, 60)
    with pytest.raises(RuntimeError, match="head dim"):
        LIB.attention_fwd(q, q, q, False, torch.empty_like(q))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts_give_the_same_answer(threads):
    """Results do not depend on how the rows/tiles are shared out (each output is computed by one thread)."""
    old = torch.get_num_threads()
    try:
        x = torch.randn(300, 1000)
        a, b = torch.randn(200, 300), torch.randn(300, 100)
        q, k, v = torch.randn(1, 4, 100, 64), torch.randn(1, 2, 100, 64), torch.randn(1, 2, 100, 64)
        torch.set_num_threads(1)
        ref = (LIB.softmax(x, torch.empty_like(x)), LIB.gemm(a, b, torch.empty(200, 100)),
               LIB.attention_fwd(q, k, v, True, torch.empty_like(q)))
        torch.set_num_threads(threads)
        got = (LIB.softmax(x, torch.empty_like(x)), LIB.gemm(a, b, torch.empty(200, 100)),
               LIB.attention_fwd(q, k, v, True, torch.empty_like(q)))
        for r, g in zip(ref, got):
            assert torch.equal(r, g)
    finally:
        torch.set_num_threads(old)


def test_missing_library_is_a_reason_not_an_error(tmp_path, monkeypatch):
    import importlib
    monkeypatch.setenv("KB_BUILD_DIR", str(tmp_path))
    fresh = importlib.util.module_from_spec(importlib.util.find_spec("kernels.cpp.lib"))
    fresh.__spec__.loader.exec_module(fresh)   # a second copy of the module: never raises on import
    assert fresh.missing_reason(None) == cpp.BUILD_HINT
    assert "make build" in fresh.load_error()


def test_all_cases_listed():
    """Sanity: the odd shapes really are odd (not multiples of the tile sizes) and cover 1-row inputs."""
    assert any(p["rows"] == 1 for p in SOFTMAX) and any(p["cols"] % 16 for p in SOFTMAX)
    assert {p["d"] for p in ATTENTION} >= {64, 128}
    assert any(p["h"] != p["hkv"] for p in ATTENTION) and any(p["causal"] for p in ATTENTION)
    assert any(p["m"] % 14 and p["n"] % 32 for p in GEMM)
    assert len(list(itertools.product(ISAS, DTYPES))) >= 3


# The ceiling probes (kernels/cpp/probes*.cpp), through the peak suite's declarations: streaming copies of
# odd lengths at every misalignment of source and destination, the FMA chains on both ISA paths.
@pytest.mark.parametrize("n", [1, 15, 127, 1000, 65537])
@pytest.mark.parametrize("offset", [0, 1, 3, 17])
def test_stream_copy_probe(isa, n, offset):
    from kernels.cpp import probes
    src = torch.randn(n + 32)[offset:offset + n]
    dst = torch.full((n + 32,), float("nan"))
    view = dst[(offset * 7) % 16:(offset * 7) % 16 + n]
    probes.stream_copy(src, view)()
    assert torch.equal(view, src)
    assert torch.isnan(dst[:(offset * 7) % 16]).all() and torch.isnan(dst[(offset * 7) % 16 + n:]).all()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fma_probes(isa, dtype):
    from kernels.cpp import probes
    from suites import peak
    case = Case("peak", dict(op="fma", blocks=5, iters=777), "cpu", dtype)
    if peak.cpp_peak and probes.missing_reason(case):
        pytest.skip(probes.missing_reason(case))
    run_case(peak, peak.cpp_peak, case.params, dtype, isa)
