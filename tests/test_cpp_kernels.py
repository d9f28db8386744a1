"""The C++ CPU kernels (libkb_cpp.so): every variant a suite registers from kernels/cpp/lib.py, checked by
harness.check.check_variant (the check bench.py runs, with its seeding) at every test case of its suite.

The table is derived from the declarations: every registered variant whose `kernel.backend` is "cpp", every
ISA path the CPU has (AMX for the bf16 GEMM, AVX-512, AVX2/FMA; forced through kb_cpp_set_isa), every dtype
of the suite, every "test" case of the suite (odd shapes, one row, tails of every tile size, rows too long for
the cached path, GQA, causal with sq != sk live in the suite files). Outputs are poisoned with NaN by the
declared setup, so an element a kernel never writes fails. The remaining tests drive the entry points
directly: row strides, errors, thread counts, a missing library.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from harness.check import check_variant
from harness.registry import Case, Skip, all_suites
from kernels.cpp import lib as cpp

LIB = cpp.load()
pytestmark = pytest.mark.skipif(LIB is None, reason=cpp.load_error() or cpp.BUILD_HINT)

# every code path the CPU can run: AMX (bf16 GEMM), AVX-512, AVX2/FMA
_BEST = cpp._isa_code(LIB) if LIB is not None else 0
ISAS = [i for i in ("amx", "avx512", "avx2") if {"avx2": 1, "avx512": 2, "amx": 3}[i] <= _BEST]
# the tile kernels' back ends: AMX, and the AVX512-BF16 model (which an AMX CPU also runs when forced to avx512)
_TILES = cpp._tile_code(LIB) if LIB is not None else 0
TILE_ISAS = [i for i in ISAS if i in ("amx", "avx512") and (_TILES == 2 or (i == "avx512" and _TILES == 1))]


def _table():
    """(suite, variant name, case) for every C++ variant the suites register, at every test case and dtype."""
    out = []
    for suite in all_suites().values():
        for v in suite.variants.values():
            if getattr(v.kernel, "backend", None) != "cpp":
                continue
            for dtype in suite.dtypes:
                if v.kernel.dtypes is not None and dtype not in v.kernel.dtypes:
                    continue
                for case in suite.cases("test", "cpu", dtype):
                    if suite.applies is not None and not suite.applies(case, v.name):
                        continue
                    # AMX changes only the bf16 GEMM: other kernels run on the AVX paths; the tile kernels run
                    # on the tile back ends the CPU has
                    isas = [i for i in ISAS if i != "amx" or v.kernel is cpp.GEMM]
                    if v.kernel.available is cpp.tiles_available:
                        isas = TILE_ISAS
                    for isa in isas:
                        out.append(pytest.param(suite.name, v.name, case, isa,
                                                id=f"{suite.name}-{v.name}-{dtype}-{case.name}-{isa}"))
    return out


@pytest.fixture
def forced_isa(request):
    yield lambda name: cpp.set_isa(name)
    cpp.set_isa(None)


@pytest.mark.parametrize("suite_name,variant,case,isa", _table())
def test_variant_matches_reference(forced_isa, suite_name, variant, case, isa):
    suite = all_suites()[suite_name]
    forced_isa(isa)
    try:
        checked = check_variant(suite, case, suite.variants[variant], seed=0)
    except Skip as e:                  # a case the kernel declares it does not take: a skipped row in bench.py
        pytest.skip(f"{suite_name} {variant}: {e}")
    assert checked.ok, f"{suite_name} {case} [{isa}] seed={checked.seed}: {checked.result.message}"


def test_every_cpp_kernel_is_registered():
    """A declared kernel no suite registers would never be checked nor benchmarked."""
    registered = {id(v.kernel) for s in all_suites().values() for v in s.variants.values() if v.kernel}
    unregistered = [k.symbol for k in cpp.LIB.kernels if id(k) not in registered and k.symbol not in cpp.UNREGISTERED]
    assert not unregistered, f"declared in kernels/cpp/lib.py but registered in no suite: {unregistered}"


def test_layernorm_one_column():
    x = torch.randn(7, 1)
    out = torch.full_like(x, float("nan"))
    cpp.LAYERNORM(x=x, weight=torch.ones(1), bias=torch.full((1,), 0.25), eps=1e-5, out=out)
    assert torch.equal(out, torch.full_like(x, 0.25))


def test_fresh_inputs_change_the_output():
    """A kernel that returned a cached answer would pass one check; two seeds must give two answers."""
    suite = all_suites()["softmax"]
    case = Case("softmax", dict(rows=3, cols=100), "cpu", "float32")
    outs = []
    for seed in (1, 2):
        inputs = suite.make_inputs(case, seed)
        outs.append(cpp.SOFTMAX.setup(case, **inputs)().clone())
    assert not torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("isa", [i for i in ISAS if i != "amx"])
@pytest.mark.parametrize("op", ["softmax", "rmsnorm", "layernorm"])
def test_row_strides_touch_only_their_rows(forced_isa, isa, op):
    """Rows with strides > cols: the gaps between rows keep their sentinel values, the rows are right."""
    forced_isa(isa)
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
    cpp.GEMM(a=a, b=b, out=c)
    torch.testing.assert_close(c.double(), a.double() @ b.double(), atol=1e-4, rtol=1e-5)
    assert torch.isnan(cbuf[:, 33:]).all()     # the columns past N are not written


def test_errors_are_reported_not_crashes():
    x = torch.randn(4, 8)
    rc = LIB.dll.kb_cpp_softmax(x.data_ptr(), x.data_ptr(), 4, 8, 8, 8, 7, 0)   # dtype code 7
    assert rc != 0 and "dtype" in LIB.last_error()
    with pytest.raises(RuntimeError, match="softmax"):
        LIB.check(rc, "kb_cpp_softmax")
    q = torch.randn(1, 3, 4, 64)
    kv = torch.randn(1, 2, 4, 64)
    with pytest.raises(RuntimeError, match="bad arguments"):   # 3 heads over 2 kv heads
        cpp.ATTENTION(q=q, k=kv, v=kv, causal=False, out=torch.empty_like(q))
    q = torch.randn(1, 1, 4, 60)
    with pytest.raises(RuntimeError, match="head dim"):
        cpp.ATTENTION(q=q, k=q, v=q, causal=False, out=torch.empty_like(q))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts_give_the_same_answer(threads):
    """Results do not depend on how the rows/tiles are shared out (each output is computed by one thread)."""
    old = torch.get_num_threads()
    try:
        x = torch.randn(300, 1000)
        a, b = torch.randn(200, 300), torch.randn(300, 100)
        q, k, v = torch.randn(1, 4, 100, 64), torch.randn(1, 2, 100, 64), torch.randn(1, 2, 100, 64)

        def run():
            return (cpp.SOFTMAX(x=x, out=torch.empty_like(x)), cpp.GEMM(a=a, b=b, out=torch.empty(200, 100)),
                    cpp.ATTENTION(q=q, k=k, v=v, causal=True, out=torch.empty_like(q)))
        torch.set_num_threads(1)
        ref = run()
        torch.set_num_threads(threads)
        for r, g in zip(ref, run()):
            assert torch.equal(r, g)
    finally:
        torch.set_num_threads(old)


def test_missing_library_is_a_reason_not_an_error(tmp_path, monkeypatch):
    """The loader's reason names the build hint and the path it looked at; a foreign file gives the dynamic
    loader's own message; the setup turns either into a Skip (a skipped row), never an exception."""
    from harness.registry import Skip
    from kernels.native import Library
    monkeypatch.setenv("KB_BUILD_DIR", str(tmp_path))
    lib = Library("kb_cpp", device="cpu", error_symbol="kb_cpp_last_error", hint=cpp.BUILD_HINT)
    assert lib.load() is None
    assert lib.reason().startswith(cpp.BUILD_HINT) and str(tmp_path) in lib.reason()
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libkb_cpp.so").write_text("not an ELF file")
    lib2 = Library("kb_cpp", device="cpu", error_symbol="kb_cpp_last_error", hint=cpp.BUILD_HINT)
    assert "invalid ELF header" in lib2.reason() or "too short" in lib2.reason(), lib2.reason()
    with pytest.raises(Skip, match="make build"):
        lib2.require()


def test_a_stale_library_names_the_missing_entry_point(monkeypatch):
    """A build that lacks a declared entry point is reported as stale, with the symbol's name."""
    from kernels.native import Kernel, Library, ptr
    lib = Library("kb_cpp", device="cpu", error_symbol="kb_cpp_last_error", hint=cpp.BUILD_HINT)
    lib.path = lambda: LIB.path
    Kernel(lib, "kb_cpp_no_such_kernel", [ptr("x")], lambda case, x: x.shape, "", "cpp", "none")
    assert "stale" in lib.reason() and "kb_cpp_no_such_kernel" in lib.reason()


def test_all_cases_listed():
    """Sanity: the suites' odd shapes really are odd (not multiples of the tile sizes) and cover 1-row inputs."""
    s = all_suites()
    soft = [c.params for c in s["softmax"].cases("test")]
    att = [c.params for c in s["attention"].cases("test")]
    gemm = [c.params for c in s["gemm"].cases("test")]
    assert any(p["rows"] == 1 for p in soft) and any(p["cols"] % 16 for p in soft)
    assert {p["d"] for p in att} >= {64, 128}
    assert any(p["h"] != p["hkv"] for p in att) and any(p["causal"] for p in att)
    assert any(p["m"] % 14 and p["n"] % 32 for p in gemm)
    assert len(list(itertools.product(ISAS, ("float32", "bfloat16", "float16")))) >= 3


# The ceiling probes (kernels/cpp/probes*.cpp) of the peak suite, bound by kernels/cpp/probes.py: streaming
# copies of odd lengths at every misalignment of source and destination, the FMA chains on both ISA paths.
@pytest.mark.parametrize("isa", [i for i in ISAS if i != "amx"])
@pytest.mark.parametrize("n", [1, 15, 127, 1000, 65537])
@pytest.mark.parametrize("offset", [0, 1, 3, 17])
def test_stream_copy_probe(forced_isa, isa, n, offset):
    from kernels.cpp import probes
    forced_isa(isa)
    src = torch.randn(n + 32)[offset:offset + n]
    dst = torch.full((n + 32,), float("nan"))
    view = dst[(offset * 7) % 16:(offset * 7) % 16 + n]
    probes.bound(probes.STREAM_COPY, a=src, out=view)()
    assert torch.equal(view, src)
    assert torch.isnan(dst[:(offset * 7) % 16]).all() and torch.isnan(dst[(offset * 7) % 16 + n:]).all()


@pytest.mark.parametrize("isa", [i for i in ISAS if i != "amx"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fma_probes(forced_isa, isa, dtype):
    from kernels.cpp import probes
    forced_isa(isa)
    suite = all_suites()["peak"]
    case = Case("peak", dict(op="fma", blocks=5, iters=777), "cpu", dtype)
    if probes.missing_reason(case):
        pytest.skip(probes.missing_reason(case))
    checked = check_variant(suite, case, suite.variants["cpp"])
    assert checked.ok, checked.result.message


# The tile attention (attention_fwd_amx.cpp) beyond the suite's test cases: blocks of 32 queries / 64 keys with
# tails, 1000 queries and keys, one key, exact blocks (the suite's own test cases run in the table above).
ATTENTION_TILES = [
    dict(b=1, h=2, hkv=1, sq=1000, sk=1000, d=128, causal=True),
    dict(b=1, h=2, hkv=2, sq=127, sk=1000, d=64, causal=False),
    dict(b=2, h=4, hkv=1, sq=129, sk=127, d=64, causal=True),
    dict(b=1, h=1, hkv=1, sq=64, sk=64, d=128, causal=True),
    dict(b=1, h=1, hkv=1, sq=300, sk=1, d=64, causal=False),
]


@pytest.mark.parametrize("isa", TILE_ISAS or ["none"])
@pytest.mark.parametrize("params", ATTENTION_TILES, ids=lambda p: "-".join(f"{k}{int(v)}" for k, v in p.items()))
def test_attention_tiles(forced_isa, isa, params):
    if isa == "none":
        pytest.skip("this CPU has neither AMX nor AVX512-BF16: the tile kernels cannot run")
    forced_isa(isa)
    suite = all_suites()["attention"]
    case = Case("attention", params, "cpu", "bfloat16", suite.case_name(params))
    checked = check_variant(suite, case, suite.variants["cpp_amx"])
    assert checked.ok, checked.result.message


@pytest.mark.parametrize("isa", TILE_ISAS or ["none"])
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (17, 33, 63), (33, 17, 65), (127, 129, 200), (32, 32, 64),
                                   (40, 50, 0), (5, 70, 300)])
def test_int8_tiles(forced_isa, isa, m, n, k):
    """The int8 tile path (int8_tiles.cpp): exact against float64 (int32 sums of int8 products are exact there),
    full int8 range including -128 * -128, tails of the 16-row/16-column/64-deep tiles in every dimension."""
    if isa == "none":
        pytest.skip("this CPU has neither AMX nor AVX512-BF16: the tile kernels cannot run")
    forced_isa(isa)
    g = torch.Generator().manual_seed(m * 10007 + n * 101 + k)
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (k, n), generator=g, dtype=torch.int8)
    if m and k:
        a[0, :] = -128
    if k and n:
        b[:, -1] = -128
    out = torch.full((m, n), -7, dtype=torch.int32)   # poisoned: every element must be written
    cpp.GEMM_S8S8S32(a=a, b=b, out=out)
    ref = (a.double() @ b.double()).to(torch.int32)
    assert torch.equal(out, ref), (out - ref).abs().max()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gemm_long_k(dtype):
    """bf16 on AVX512-BF16 accumulates 4 K-slices of 4096 (odd K)."""
    suite = all_suites()["gemm"]
    case = Case("gemm", dict(m=29, n=70, k=12289), "cpu", dtype, "29x70x12289")
    checked = check_variant(suite, case, suite.variants["cpp"])
    assert checked.ok, checked.result.message
