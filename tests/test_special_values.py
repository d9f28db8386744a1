"""Special values: every CPU-runnable variant (C++, the CUDA kernels under the simulation, torch) puts NaN and
+-inf exactly where torch's eager op does, on fully masked (-inf) rows, rows with +inf, NaN inputs, and
NaN/inf keys in attention, inf and NaN entries of a GEMM's A and B (inputs: tests/special_values.py).
Triton's kernels get the same check under its interpreter (tests/test_triton_kernels.py::
test_interp_special_values). Row lengths 1000 (the cached path
of the CUDA row kernels) and 25000 (past every cache threshold: 24,576 fp32 columns).
"""
from __future__ import annotations

import pytest
import torch

from harness.registry import Case, Skip, all_suites
from kernels.cuda import lib as cuda_lib
from tests.special_values import GEMM_SHAPES, ROW_SUITES, assert_same_specials, special_inputs, torch_expected

# Known disagreements, found by this test, owned elsewhere: expected to fail until fixed (strict: a fix flips it).
KNOWN_BAD: dict[tuple[str, str], str] = {}
ROW_SHAPES = ((6, 1000), (6, 25000))
ATTENTION_SHAPES = (dict(b=1, h=2, hkv=1, sq=129, sk=129, d=64, causal=True),
                    dict(b=1, h=2, hkv=2, sq=65, sk=129, d=128, causal=False))
DTYPES = ("float32", "bfloat16")


def _suites():
    return {n: s for n, s in all_suites().items() if n in ROW_SUITES + ("attention", "gemm")}


def _cases():
    out = []
    for name, suite in _suites().items():
        base = suite.cases("test", "cpu", "float32")
        kinds = sorted({c.get("norm") for c in base if c.get("norm") is not None}) or [None]
        shapes = (ATTENTION_SHAPES if name == "attention" else GEMM_SHAPES if name == "gemm"
                  else [dict(rows=r, cols=c) for r, c in ROW_SHAPES])
        for dtype in DTYPES:
            if dtype not in suite.dtypes:
                continue
            for shape in shapes:
                for kind in kinds:
                    params = dict(base[0].params, **shape)
                    if kind is not None:
                        params["norm"] = kind
                    case = Case(name, params, "cpu", dtype, suite.case_name(params) if suite.case_name else None)
                    out.append(pytest.param(name, case, id=f"{name}-{case.name}-{dtype}"))
    return out


@pytest.fixture(scope="module")
def simlib():
    from kernels.cuda.sim.build import SimBuildError, missing_tools, sim_library
    if missing_tools():
        return None
    try:
        return cuda_lib.bind(sim_library("kb_cuda_sim")[0])
    except SimBuildError as e:
        pytest.fail(str(e))


@pytest.mark.parametrize("suite_name,case", _cases())
def test_variants_put_nan_and_inf_where_torch_does(suite_name, case, simlib, monkeypatch):
    suite = _suites()[suite_name]
    inputs = special_inputs(suite_name, suite, case)
    _check_every_variant(suite_name, suite, case, inputs, simlib, monkeypatch)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_nan_keys_filling_the_first_key_blocks(dtype, simlib, monkeypatch):
    """Every key of the first 128 NaN for kv head 1 (the first key block of every kernel: 64 or 128 keys): a
    kernel whose running maximum skips NaN finds nothing visible in that block and must still remember the NaN
    (the AMX attention gave those rows finite outputs when it kept only the maximum)."""
    suite = _suites()["attention"]
    case = next(c.values[1] for c in _cases() if c.values[1].dtype_name == dtype and c.values[1].get("hkv") == 2)
    inputs = suite.make_inputs(case, 12)
    inputs["k"][0, 1, :128] = float("nan")
    _check_every_variant("attention", suite, case, inputs, simlib, monkeypatch)


def _check_every_variant(suite_name, suite, case, inputs, simlib, monkeypatch):
    want = torch_expected(suite, case, inputs)
    assert torch.isnan(want).any() and torch.isfinite(want).any(), "the inputs must produce NaN and finite rows"
    atol, rtol = suite.tolerance(case)
    ran, tried_cuda = [], []
    for vname, variant in suite.variants.items():
        if variant.compiled:      # torch.compile: test_compiled_variants_special_values; Triton: interpreter child
            continue
        if vname.startswith("sdpa"):  # torch's own SDPA kernels are torch; sdpa_math differs from eager here:
            continue                  # it adds the -inf mask to NaN scores, so masked NaN keys poison every row
        if getattr(variant.kernel, "backend", None) == "cuda":   # on the simulation built for this test
            if simlib is None:
                continue
            monkeypatch.setattr(cuda_lib.SIM, "for_case", lambda c: simlib)
            tried_cuda.append(vname)
        elif variant.requires.missing(case):
            continue
        try:
            launcher = variant.setup(case, **inputs)
        except Skip:
            continue
        what = f"{suite_name} {vname} {case.name} {case.dtype_name}"
        if (suite_name, vname) in KNOWN_BAD:
            try:
                assert_same_specials(launcher(), want, what, atol, rtol)
            except AssertionError:
                continue
            pytest.fail(f"{what} now agrees with torch: remove it from KNOWN_BAD ({KNOWN_BAD[suite_name, vname]})")
        assert_same_specials(launcher(), want, what, atol, rtol)
        ran.append(vname)
    assert "cpp" in ran and len(ran) >= 2, ran
    cuda = [n for n, v in suite.variants.items() if getattr(v.kernel, "backend", None) == "cuda"]
    if simlib is not None:   # each CUDA kernel reached its setup on the simulation (it may skip a dtype itself)
        assert sorted(tried_cuda) == sorted(cuda), f"CUDA kernels not tried under the simulation: {cuda}"


@pytest.mark.slow
@pytest.mark.parametrize("suite_name", sorted(n for n, s in _suites().items() if "torch_compile" in s.variants))
def test_compiled_variants_special_values(suite_name):
    """torch.compile variants (about 30 s of compilation per suite on this machine: marked slow)."""
    suite = _suites()[suite_name]
    case = next(c.values[1] for c in _cases() if c.values[0] == suite_name)
    inputs = special_inputs(suite_name, suite, case)
    want = torch_expected(suite, case, inputs)
    v = suite.variants["torch_compile"]
    assert_same_specials(v.setup(case, **inputs)(), want, f"{suite_name} torch_compile", *suite.tolerance(case))
