"""The Triton kernels against their suites' references.

On the CPU every Triton variant a suite registers (the table is derived from the declarations:
`variant.kernel.backend == "triton"`, so a second Triton variant in a suite is tested too) runs under
Triton's interpreter (fp32 and fp16; numpy has no bf16) at its suite's "test" cases (odd shapes, GQA,
sq != sk, one query, one key live in the suite files), plus the looped row paths forced at short rows.
Each check is harness.check.check_variant: bench.py's own check, with its seeding, NaN-poisoned outputs,
the suite's float64 reference and tolerance.

Triton fixes its mode when it is first imported (kernels/triton/common.py): a pytest process that imported
triton compiled (the suites import the kernels) cannot interpret. The `test_interp_*` tests therefore run
in one child pytest with TRITON_INTERPRET=1 (about a minute on 2 cores), and each test here reports its
child's outcome (pass, failure message, skip). Run directly under `TRITON_INTERPRET=1 pytest ...`,
they run in-process.

Tests marked gpu compare bf16/fp16 on a CUDA device, with the compiled, autotuned kernels.
"""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from harness.check import check_variant, compare
from harness.registry import Case, Skip, all_suites, get_suite
from kernels.triton import common

ROOT = Path(__file__).resolve().parent.parent
CPU_DTYPES = ("float32", "float16")
GPU_DTYPES = ("bfloat16", "float16")
IN_INTERPRETER = common.HAS_TRITON and common.INTERPRETED

pytestmark = pytest.mark.skipif(not common.HAS_TRITON, reason="triton is not installed")


def triton_variants():
    """(suite, variant name) for every Triton variant the suites register."""
    return [(su, v.name) for su in all_suites().values() for v in su.variants.values()
            if getattr(v.kernel, "backend", None) == "triton"]


LOOPED_SHAPES = [(1, 127), (129, 1000), (3, 1)]  # 128-column tiles under the interpreter: 1, 8, 1 tiles


def _suite_params():
    out = []
    for suite, variant in triton_variants():
        for dtype in CPU_DTYPES:
            for case in suite.cases("test", "cpu", dtype):
                if suite.applies is not None and not suite.applies(case, variant):
                    continue
                out.append(pytest.param(suite.name, variant, case, id=f"{suite.name}-{variant}-{dtype}-{case.name}"))
    return out


def _run_variant(name, variant, case, seed=0):
    suite = get_suite(name)
    checked = check_variant(suite, case, suite.variants[variant], seed)
    assert checked.ok, f"{case} seed={checked.seed}: {checked.result.message}"
    return checked


# --------------------------------------------------------------------------------------------------
# the child process and the proxy
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def child_outcomes():
    """None when this process interprets; else {test name: (outcome, message)} from one child pytest
    that runs every test_interp_* test under TRITON_INTERPRET=1."""
    if IN_INTERPRETER:
        return None
    junit = ROOT / ".cache" / "pytest-triton-interp.xml"
    junit.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TRITON_INTERPRET": "1", "KB_TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", str(Path(__file__)), "-q", "-k", "interp", "-p", "no:cacheprovider",
           f"--junitxml={junit}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if not junit.exists():
        pytest.fail(f"the interpreter child did not run ({proc.returncode}):\n{proc.stdout[-3000:]}"
                    f"\n{proc.stderr[-3000:]}", pytrace=False)
    outcomes = {}
    for tc in ET.parse(junit).getroot().iter("testcase"):
        status, msg = "passed", ""
        for child in tc:
            if child.tag in ("failure", "error"):
                status, msg = "failed", (child.get("message") or "") + "\n" + (child.text or "")
            elif child.tag == "skipped":
                status, msg = "skipped", child.get("message") or ""
        outcomes[tc.get("name")] = (status, msg)
    return outcomes


def _interpreted(request, outcomes):
    """True: run the test body here. Otherwise report the child's outcome for this test."""
    if outcomes is None:
        return True
    name = request.node.name
    if name not in outcomes:
        pytest.fail(f"{name} did not run in the interpreter child", pytrace=False)
    status, msg = outcomes[name]
    if status == "failed":
        pytest.fail(f"[interpreter child] {msg[-4000:]}", pytrace=False)
    if status == "skipped":
        pytest.skip(msg)
    return False


# --------------------------------------------------------------------------------------------------
# under the interpreter (CPU)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,variant,case", _suite_params())
def test_interp_suite_case(request, child_outcomes, name, variant, case):
    """Each registered Triton variant on each test case of its suite, checked as bench.py checks it."""
    if not _interpreted(request, child_outcomes):
        return
    assert get_suite(name).variants[variant].requires.missing(case) is None
    try:
        checked = _run_variant(name, variant, case)
    except Skip as e:   # a case the kernel declines (e.g. bottom-right causal alignment): skipped, with why
        pytest.skip(f"{name} {variant}: {e}")
    assert checked.config.startswith("interpreted:")


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("rows,cols", LOOPED_SHAPES)
@pytest.mark.parametrize("kernel", ["softmax", "rmsnorm", "layernorm"])
def test_interp_looped_rows(request, child_outcomes, kernel, rows, cols, dtype):
    """The looped (long-row) path of the row kernels, forced at short rows so the interpreter can run it."""
    if not _interpreted(request, child_outcomes):
        return
    from kernels.triton import layernorm, rmsnorm, softmax
    suite, case = get_suite(kernel), Case(kernel, dict(rows=rows, cols=cols), "cpu", dtype)
    seed = secrets.randbits(31)
    inputs = suite.make_inputs(case, seed)
    out = case.poisoned((rows, cols))
    if kernel == "softmax":
        cfg = softmax.softmax(inputs["x"], out, looped=True)
    elif kernel == "rmsnorm":
        cfg = rmsnorm.rmsnorm(inputs["x"], inputs["weight"], out, inputs["eps"], looped=True)
    else:
        cfg = layernorm.layernorm(inputs["x"], inputs["weight"], inputs["bias"], out, inputs["eps"], looped=True)
    assert cfg.kwargs["LOOPED"] is True
    res = compare(out, suite.compute_reference(case, inputs), *suite.tolerance(case))
    assert res.ok, f"{case} seed={seed}: {res.message}"


SPECIAL_SUITES = [n for n in ("softmax", "norm", "rmsnorm", "layernorm") if n in all_suites()] + ["attention"]


@pytest.mark.parametrize("looped", [False, True])
@pytest.mark.parametrize("name", SPECIAL_SUITES)
def test_interp_special_values(request, child_outcomes, name, looped):
    """-inf rows, +inf, NaN (tests/special_values.py): NaN and inf exactly where torch's eager op puts them,
    on the fused and the looped row paths (128-column tiles: the looped softmax's first tiles are all -inf)."""
    if not _interpreted(request, child_outcomes):
        return
    from tests.special_values import assert_same_specials, attention_inputs, row_inputs, torch_expected
    suite = get_suite(name)
    if name == "attention":
        if looped:
            pytest.skip("attention has no looped path")
        case = Case(name, dict(b=1, h=2, hkv=1, sq=129, sk=129, d=64, causal=True), "cpu", "float32")
        inputs = attention_inputs(suite, case)
        out = suite.variants["triton"].setup(case, **inputs)()
    else:
        from kernels.triton import layernorm, rmsnorm, softmax
        base = suite.cases("test", "cpu", "float32")[0]
        kinds = [base.get("norm")] if base.get("norm") is None else ["rms", "layer"]
        for kind in kinds:
            params = dict(base.params, rows=6, cols=1000)
            if kind is not None:
                params["norm"] = kind
            case = Case(name, params, "cpu", "float32")
            inputs = row_inputs(suite, case)
            want = torch_expected(suite, case, inputs)
            out = case.poisoned((6, 1000))
            x = inputs["x"]
            if name == "softmax":
                softmax.softmax(x, out, looped=looped)
            elif kind == "rms" or name == "rmsnorm":
                rmsnorm.rmsnorm(x, inputs["weight"], out, inputs["eps"], looped=looped)
            else:
                layernorm.layernorm(x, inputs["weight"], inputs["bias"], out, inputs["eps"], looped=looped)
            assert_same_specials(out, want, f"triton {name} {kind} looped={looped}", *suite.tolerance(case))
        return
    assert_same_specials(out, torch_expected(suite, case, inputs), "triton attention", *suite.tolerance(case))


@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_interp_gemm_strided(request, child_outcomes, dtype):
    """Any strides: a transposed (column-major) B and a C written into a wider buffer's columns."""
    if not _interpreted(request, child_outcomes):
        return
    from kernels.triton import gemm
    suite = get_suite("gemm")
    case = Case("gemm", dict(m=65, n=47, k=129), "cpu", dtype)
    seed = secrets.randbits(31)
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(65, 129, generator=g).to(case.dtype)
    b = torch.randn(47, 129, generator=g).to(case.dtype).t()          # strides (1, 129)
    wide = case.poisoned((65, 50))
    out = wide[:, 1:48]                                                # row stride 50
    gemm.gemm(a, b, out)
    res = compare(out, suite.compute_reference(case, {"a": a, "b": b}), *suite.tolerance(case))
    assert res.ok, f"seed={seed}: {res.message}"
    assert torch.isnan(wide[:, 0]).all() and torch.isnan(wide[:, 48:]).all(), "wrote outside its columns"


def test_interp_bf16_is_skipped_with_reason(request, child_outcomes):
    if not _interpreted(request, child_outcomes):
        return
    case = Case("softmax", dict(rows=1, cols=1), "cpu", "bfloat16")
    assert common.missing_reason(case) == common.BF16_REASON
    assert common.missing_reason(case.with_(dtype="float16")) is None


# --------------------------------------------------------------------------------------------------
# this process (no interpreter needed)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,variant", [(s.name, v) for s, v in triton_variants()])
def test_registered_as_compiled_with_config(name, variant):
    v = get_suite(name).variants[variant]
    assert v.compiled and callable(v.config)
    assert v.requires.check is common.missing_reason


def test_every_triton_kernel_module_is_registered():
    """Every kernels/triton module that declares a VARIANT is registered by a suite (hence tested)."""
    import importlib
    registered = {v.kernel.source for s in all_suites().values() for v in s.variants.values()
                  if getattr(v.kernel, "backend", None) == "triton"}
    for path in sorted((ROOT / "kernels" / "triton").glob("*.py")):
        mod = importlib.import_module(f"kernels.triton.{path.stem}")
        if isinstance(getattr(mod, "VARIANT", None), common.Declared):
            assert f"kernels/triton/{path.name}" in registered, f"{path.name} declares a VARIANT no suite registers"


def test_autotune_pruning():
    """What autotuning may try on a GPU, per dtype, head dim and row length (the lists the AOT test
    compiled spill-free)."""
    from kernels.triton import attention_fwd as A
    from kernels.triton import gemm as G
    from kernels.triton import softmax as S
    bf16, fp32 = torch.empty(1, dtype=torch.bfloat16), torch.empty(1, dtype=torch.float32)
    assert G._prune(G.CONFIGS, {"a_ptr": bf16}) == G.CONFIGS_16
    assert G._prune(G.CONFIGS, {"a_ptr": fp32}) == G.CONFIGS_32
    for d in (64, 128):
        assert A._prune(A.CONFIGS, {"q_ptr": bf16}, HEAD_D=d) == A.CONFIGS_BY_D[d]
        assert A._prune(A.CONFIGS, {"q_ptr": fp32}, HEAD_D=d) == A.FP32_CONFIGS_BY_D[d]
    assert A._prune(A.CONFIGS, {"q_ptr": bf16}, HEAD_D=32) == A.CONFIGS_BY_D[64]

    def warps(block):
        return sorted(c.num_warps for c in common.prune_row_configs(S.FUSED_CONFIGS, {}, BLOCK_N=block))
    assert warps(4096) == [4, 8, 16]       # 8..32 elements per thread
    assert warps(16384) == [16, 32]
    assert warps(128) == [1]               # too short for 8 per thread: the fewest warps
    assert all(8 <= c.kwargs["BLOCK_N"] // (32 * c.num_warps) <= 32 for c in S.LOOPED_CONFIGS)


@pytest.mark.skipif(IN_INTERPRETER, reason="checks the compiled mode's CPU skip")
def test_cpu_skip_reason(monkeypatch):
    monkeypatch.delenv("KB_TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    case = Case("softmax", dict(rows=1, cols=1), "cpu", "float32")
    assert common.missing_reason(case) == common.CPU_REASON
    # asked for, but too late: this process imported triton compiled
    monkeypatch.setenv("KB_TRITON_INTERPRET", "1")
    assert "TRITON_INTERPRET=1" in common.missing_reason(case)


@pytest.mark.skipif(IN_INTERPRETER, reason="checks the compiled mode's CPU refusal")
def test_compiled_mode_refuses_cpu_tensors():
    from kernels.triton import softmax
    x = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match="needs a GPU"):
        softmax.softmax(x, torch.empty_like(x))


def test_bench_skips_triton_on_cpu(tmp_path, monkeypatch):
    """bench.py on the CPU: every Triton row is `skipped` with the reason, never timed."""
    import pandas as pd

    from tests.helpers import bench
    monkeypatch.delenv("KB_TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    r = bench("--suite", "softmax,gemm", "--variant", "triton", "--device", "cpu", "--test-shapes",
              "--no-progress", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(tmp_path / "results.csv")
    assert len(df) > 0 and (df["status"] == "skipped").all()
    assert (df["reason"] == common.CPU_REASON).all()


# --------------------------------------------------------------------------------------------------
# on a GPU
# --------------------------------------------------------------------------------------------------


def _gpu_params():
    out = []
    for suite, variant in triton_variants():
        for dtype in GPU_DTYPES:
            for mode in ("test", "quick"):
                for case in suite.cases(mode, "cuda", dtype):
                    out.append(pytest.param(suite.name, variant, case,
                                            id=f"{suite.name}-{variant}-{dtype}-{mode}-{case.name}"))
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("name,variant,case", _gpu_params())
def test_gpu_suite_case(name, variant, case):
    if IN_INTERPRETER:
        pytest.skip("this process runs Triton interpreted (TRITON_INTERPRET=1)")
    reason = get_suite(name).variants[variant].requires.missing(case)
    if reason:
        pytest.skip(reason)
    cfg = _run_variant(name, variant, case).config
    assert "warps=" in cfg and not cfg.startswith("interpreted"), cfg
    torch.cuda.synchronize()
