"""Peaks: datasheet lookup, measured peaks stored and reloaded, and the roofline fraction."""
import math

import pytest

from harness import peaks
from harness.registry import all_suites


def test_datasheet_matches_the_most_specific_name():
    assert peaks.datasheet("NVIDIA H100 80GB HBM3")[0] == "H100"
    assert peaks.datasheet("NVIDIA H100 PCIe")[0] == "H100 PCIe"
    assert peaks.datasheet("NVIDIA H200")[0] == "H200"
    assert peaks.datasheet("NVIDIA A100-SXM4-80GB")[1]["bw_gbs"] == 2039
    assert peaks.datasheet("Intel(R) Xeon(R) Processor") is None


def test_roofline_fraction():
    p = {"bw_gbs": 100.0, "float32": 1.0}
    # memory-bound: 1 GB at 100 GB/s takes 10 ms at best; measured 20 ms -> 50%
    assert peaks.roofline_pct(1e6, 1e9, 0.020, p, "float32") == pytest.approx(50.0)
    # compute-bound: 1 TFLOP at 1 TFLOP/s takes 1 s at best; measured 4 s -> 25%
    assert peaks.roofline_pct(1e12, 1e6, 4.0, p, "float32") == pytest.approx(25.0)
    assert math.isnan(peaks.roofline_pct(1e12, 1e6, 4.0, p, "bfloat16"))    # no ceiling: no figure
    assert math.isnan(peaks.roofline_pct(1e12, 1e6, 4.0, None, "float32"))


def _rec(probe, dtype, value, others=0.0, mode="quick"):
    return peaks.record("Dev", probe, dtype, value, mode=mode, commit="abc", others_pct=others)


def test_a_lower_or_contended_figure_never_replaces_a_ceiling(tmp_path, monkeypatch):
    monkeypatch.setattr(peaks, "PEAKS_DIR", tmp_path)
    assert _rec("cpp_copy", "float32", 26.8, mode="full")[0]
    kept, msg = _rec("cpp_copy", "float32", 22.8)               # the quick run: lower, so not stored
    assert not kept and "lower" in msg and "26.8" in msg
    kept, msg = _rec("cpp_copy", "float32", 40.0, others=55.0)  # higher but contended: not credible
    assert not kept and "contended" in msg
    assert peaks.load_measured("Dev") == {"bw_gbs": 26.8}
    assert _rec("cpp_copy", "float32", 27.5)[0]                 # higher and quiet: the new ceiling
    e = peaks.load_store("Dev")["probes"]["cpp_copy/float32"]
    assert e["value"] == 27.5 and e["mode"] == "quick" and e["commit"] == "abc" and e["contended"] is False
    assert "date" in e and "load1" in e


def test_a_contended_ceiling_gives_way_to_a_quiet_one_even_lower(tmp_path, monkeypatch):
    monkeypatch.setattr(peaks, "PEAKS_DIR", tmp_path)
    assert _rec("cpp_fma", "float32", 0.30, others=60.0)[0]     # first figure: stored, marked contended
    assert peaks.load_store("Dev")["probes"]["cpp_fma/float32"]["contended"] is True
    assert _rec("cpp_fma", "float32", 0.25, others=1.0)[0]
    assert peaks.load_measured("Dev") == {"float32": 0.25}


def test_reset_forgets_all_or_named_probes(tmp_path, monkeypatch):
    monkeypatch.setattr(peaks, "PEAKS_DIR", tmp_path)
    _rec("cpp_copy", "float32", 30.0)
    _rec("torch_matmul", "float32", 0.3)
    assert peaks.reset("Dev", ["cpp_copy"]) == ["cpp_copy/float32"]
    assert peaks.load_measured("Dev") == {"float32": 0.3}
    assert peaks.reset("Dev") == ["torch_matmul/float32"] and peaks.load_measured("Dev") is None
    with pytest.raises(ValueError, match="unknown probe"):
        peaks.reset("Dev", ["nope"])


def test_ceiling_is_the_best_probe_and_rows_name_the_figure_used(tmp_path, monkeypatch):
    monkeypatch.setattr(peaks, "PEAKS_DIR", tmp_path)
    _rec("torch_copy", "float32", 20.0)
    _rec("cpp_copy", "float32", 30.0)
    _rec("torch_matmul", "float32", 0.30)
    _rec("cpp_fma", "float32", 0.40)
    _rec("torch_matmul", "bfloat16", 1.5)
    choice = peaks.choose("cpu", "Dev")
    assert choice.primary.values == {"bw_gbs": 30.0, "float32": 0.40, "bfloat16": 1.5}
    # memory-bound row: 1 GB in 50 ms at a 30 GB/s ceiling -> 1/30 s / 0.05 s = 66.7%
    cols = peaks.row_columns(choice, 1e6, 1e9, 0.05, "float32")
    assert cols["pct_peak"] == pytest.approx(100 / 1.5)
    assert cols["peak_source"].startswith("measured: cpp_copy/float32 30 GB/s (quick")
    cols = peaks.row_columns(choice, 4e11, 1e3, 2.0, "float32")      # compute-bound: 0.4 TFLOP at 0.4 TFLOP/s
    assert cols["pct_peak"] == pytest.approx(50.0) and "cpp_fma/float32" in cols["peak_source"]
    assert cols["pct_peak_measured"] == pytest.approx(50.0)


def test_gpu_keeps_its_datasheet_and_the_measured_figure_beside_it(tmp_path, monkeypatch):
    monkeypatch.setattr(peaks, "PEAKS_DIR", tmp_path)
    peaks.record("NVIDIA H100 80GB HBM3", "torch_copy", "float32", 3000.0, mode="quick", commit=None,
                 others_pct=None)
    choice = peaks.choose("cuda", "NVIDIA H100 80GB HBM3")
    assert choice.primary.source == "datasheet:H100" and choice.primary.values["bw_gbs"] == 3350
    cols = peaks.row_columns(choice, 0, 3e9, 1e-3, "bfloat16")        # 3 GB in 1 ms
    assert cols["peak_source"] == "datasheet:H100 (bandwidth)"
    assert cols["pct_peak"] == pytest.approx(100 * 3000 / 3350)
    assert cols["pct_peak_measured"] == pytest.approx(100.0)
    assert not peaks.needs_probe(choice)


def test_format_1_files_are_read_as_torch_probes(tmp_path, monkeypatch):
    monkeypatch.setattr(peaks, "PEAKS_DIR", tmp_path)
    peaks.measured_path("Old").write_text('{"bw_gbs": 26.8, "float32": 0.366, "bfloat16": 2.72, '
                                          '"device_name": "Old", "measured_commit": "d1c1d11"}')
    assert peaks.load_measured("Old") == {"bw_gbs": 26.8, "float32": 0.366, "bfloat16": 2.72}
    assert "torch_copy/float32" in peaks.choose("cpu", "Old").primary.figures["bw_gbs"]


SPR = """processor : 0
vendor_id : GenuineIntel
cpu family : 6
model name : Intel(R) Xeon(R) Platinum 8480+ @ 2.00GHz
cpu MHz : 2000.000
flags : fpu sse2 avx2 fma avx512f avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8

"""
ZEN4 = SPR.replace("GenuineIntel", "AuthenticAMD").replace("cpu family : 6", "cpu family : 25").replace(
    "Intel(R) Xeon(R) Platinum 8480+ @ 2.00GHz", "AMD EPYC").replace(" amx_bf16 amx_tile amx_int8", "")


@pytest.mark.parametrize("cpuinfo,fp32,bf16", [(SPR, 64, 1024), (ZEN4, 32, 64)])
def test_theoretical_peak_from_flags_and_clock(tmp_path, monkeypatch, cpuinfo, fp32, bf16):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cpuinfo").write_text(cpuinfo)
    monkeypatch.setattr(peaks, "_physical_cores", lambda root="": (2, "2 cores"))
    t = peaks.theoretical(str(tmp_path))
    ghz = 2.0 if cpuinfo is SPR else 2.0                      # model-name clock, else "cpu MHz"
    assert t["float32"] == pytest.approx(2 * ghz * fp32 / 1e3)
    assert t["bfloat16"] == pytest.approx(2 * ghz * bf16 / 1e3)
    assert "2 cores" in t["basis"]


def test_matmul_suites_use_the_matrix_ceiling_of_their_dtype():
    suites = all_suites()
    matmul = {n for n, s in suites.items() if s.compute_class == "matmul"}
    assert matmul == {"attention", "gemm", "peak", "model", "train", "sparse_gemm", "sparsity", "digits", "distill",
                      "quant", "quant_gemm"}


def test_first_run_measures_a_ceiling_and_every_row_names_it(tmp_path, monkeypatch):
    """% peak on the first run (issue 11): no stored figure -> a quick probe (seconds), stored as mode 'auto'."""
    import time

    import torch

    from harness import autopeak
    from harness.registry import Suite
    from harness.runner import RunOptions, Runner, build_plan
    from harness.timing import TimingConfig
    from kernels.cpp import probes
    monkeypatch.setattr(peaks, "PEAKS_DIR", tmp_path / "peaks")
    monkeypatch.setattr(autopeak, "BUDGET_S", 0.05)
    s = Suite("toy", "x + 1", baseline="add", tolerances={"float32": (1e-6, 1e-6)})
    s.add_cases("quick", [dict(n=4096)])
    s.inputs(lambda case, rng: {"x": torch.randn(case.n, generator=rng)})
    s.flops(lambda case: case.n)
    s.bytes(lambda case: 8 * case.n)
    s.reference(lambda case, x: x + 1)
    s.variant("add")(lambda case, x: (lambda: x + 1))
    opts = RunOptions(suites=[s], device="cpu", dtypes=["float32"], mode="quick", out=tmp_path / "run",
                      timing=TimingConfig(budget_s=0.05, min_samples=3), progress=False, isolate=False)
    t0 = time.perf_counter()
    runner = Runner(opts, [])
    took = time.perf_counter() - t0
    store = peaks.load_store(runner.keys["device_name"])["probes"]
    bw_probe = "torch_copy" if probes.missing_reason() else "cpp_copy"
    assert store[f"{bw_probe}/float32"]["mode"] == "auto" and store[f"{bw_probe}/float32"]["value"] > 0
    assert any(k.endswith("/float32") and not k.startswith(("torch_copy", "cpp_copy")) for k in store)
    assert took < 60, f"the first-run probe took {took:.0f} s"
    runner.run(build_plan(opts))
    row = runner.writer.rows[0]
    assert row["pct_peak"] > 0 and row["peak_source"].startswith(f"measured: {bw_probe}/float32")
    assert runner.writer.manifest["peaks"]["primary"]["values"]["bw_gbs"] == store[f"{bw_probe}/float32"]["value"]
    n = len(store)                                            # a second run finds them: no probe
    Runner(RunOptions(**{**opts.__dict__, "out": tmp_path / "run2"}), [])
    assert len(peaks.load_store(runner.keys["device_name"])["probes"]) == n


def test_probe_check_catches_a_wrong_iteration_count():
    """The FMA probe is checked against its closed form: a loop that ran 1% fewer iterations fails."""
    import torch

    from harness.check import compare
    from harness.registry import Case, get_suite
    from kernels.cpp import probes
    if probes.missing_reason():
        pytest.skip(probes.missing_reason())
    suite = get_suite("peak")
    case = Case("peak", dict(op="fma", blocks=4, iters=2000), "cpu", "float32")
    inputs = suite.make_inputs(case, 1)
    ref = suite.compute_reference(case, inputs)
    atol, rtol = suite.tolerance(case)
    m = 1.0 - math.log(2.0) / case.iters
    for iters, ok in ((2000, True), (1980, False)):
        out = probes.bound(probes.FMA, a=inputs["a"], out=torch.empty_like(inputs["a"]), iters=iters, m=m,
                           c=0.25 * (1 - m))()
        assert compare(out, ref, atol, rtol).ok is ok


def test_probe_declarations_refuse_tensors_they_cannot_take():
    """The probes are declared kernels (kernels/cpp/probes.py): a call on tensors of the wrong size, dtype or
    layout is refused before the C call (which would read or write past the buffers)."""
    import torch

    from kernels.cpp import probes
    if probes.missing_reason():
        pytest.skip(probes.missing_reason())
    a = torch.randn(100)
    with pytest.raises(ValueError, match="of one size"):
        probes.bound(probes.STREAM_COPY, a=a, out=torch.empty(99))
    with pytest.raises(ValueError, match="contiguous"):
        probes.bound(probes.STREAM_COPY, a=torch.randn(200)[::2], out=torch.empty(100))
    with pytest.raises(ValueError, match="float32"):
        probes.bound(probes.FMA, a=torch.randn(3, 7), out=torch.empty(3, 7), iters=1, m=1.0, c=0.0)
    with pytest.raises(ValueError, match="bfloat16"):
        probes.bound(probes.DPBF16, a=torch.randn(2, 256), b=torch.randn(64), out=torch.empty(2, 256), iters=1)
    out = torch.full((100,), float("nan"))
    assert torch.equal(probes.bound(probes.STREAM_COPY, a=a, out=out)(), a)


def test_read_ceiling_is_its_own_and_read_suites_use_it(tmp_path, monkeypatch):
    """The sequential read (cpp_read, cpp_read1) sets its own ceilings beside the copy's: the copy stays every
    suite's bandwidth, a suite declaring bandwidth="read" (decode) is held against the read, the copy where no read
    is stored; the store never drifts down for it either."""
    monkeypatch.setattr(peaks, "PEAKS_DIR", tmp_path)
    _rec("cpp_copy", "float32", 20.0)
    choice = peaks.choose("cpu", "Dev")
    cols = peaks.row_columns(choice, 0, 1e9, 0.1, "float32", "read")        # no read stored: the copy's 20 GB/s
    assert cols["pct_peak"] == pytest.approx(50.0) and "cpp_copy" in cols["peak_source"]
    _rec("cpp_read", "float32", 40.0)
    _rec("cpp_read1", "float32", 25.0)
    assert not _rec("cpp_read", "float32", 30.0)[0]                           # lower: the ceiling stays 40
    assert peaks.load_measured("Dev") == {"bw_gbs": 20.0, "read_gbs": 40.0, "read1_gbs": 25.0}
    choice = peaks.choose("cpu", "Dev")
    assert peaks.row_columns(choice, 0, 1e9, 0.1, "float32")["pct_peak"] == pytest.approx(50.0)   # copy suites
    cols = peaks.row_columns(choice, 0, 1e9, 0.1, "float32", "read")         # 1 GB in 0.1 s against 40 GB/s
    assert cols["pct_peak"] == pytest.approx(25.0) and cols["pct_peak_measured"] == pytest.approx(25.0)
    assert cols["peak_source"].startswith("measured: cpp_read/float32 40 GB/s")
    assert all_suites()["decode"].bandwidth == "read" and all_suites()["softmax"].bandwidth == "copy"


@pytest.mark.parametrize("n", [1, 15, 63, 64, 1000, 65537, 200_003])
@pytest.mark.parametrize("offset", [0, 1, 5])
@pytest.mark.parametrize("threads", [1, 2])
def test_read_probe_is_the_xor_of_every_word(n, offset, threads):
    """kb_cpp_probe_read against the closed form on both ISA paths: odd lengths (tails of the 4-vector loop, of a
    thread's chunk), misaligned starts, 1 and 2 threads; the words around the slice are not read (they would change
    the xor)."""
    import numpy as np
    import torch

    from kernels.cpp import lib as cpplib
    from kernels.cpp import probes
    if probes.missing_reason():
        pytest.skip(probes.missing_reason())
    base = torch.randn(n + 16)
    base[:offset] = float("inf")
    base[offset + n:] = float("nan")
    a = base[offset:offset + n]
    want = int(np.bitwise_xor.reduce(a.view(torch.int32).numpy()))
    isas = [i for i in ("avx512", "avx2") if {"avx2": 1, "avx512": 2}[i] <= cpplib._isa_code(cpplib.LIB.load())]
    try:
        for isa in isas:
            cpplib.set_isa(isa)
            out = torch.full((1,), 0x5A5A5A5A, dtype=torch.int32)
            got = probes.bound(probes.READ, a=a, out=out, threads=threads)()
            assert int(got[0]) == want, isa
    finally:
        cpplib.set_isa(None)
    with pytest.raises(ValueError, match="int32"):
        probes.bound(probes.READ, a=a, out=torch.empty(1), threads=1)


def test_read_probe_is_checked_by_the_peak_suite():
    """The peak suite's `read` / `read1` rows go through check_variant: exact, and a wrong word fails it."""
    import torch

    from harness.check import check_variant, compare
    from harness.registry import Case, get_suite
    from kernels.cpp import probes
    if probes.missing_reason():
        pytest.skip(probes.missing_reason())
    suite = get_suite("peak")
    for op in ("read", "read1"):
        case = Case("peak", dict(op=op, n=4099), "cpu", "float32")
        assert check_variant(suite, case, suite.variants["cpp"], seed=3).ok
        assert suite.work(case) == (0, 4099 * 4)
    inputs = suite.make_inputs(case, 1)
    ref = suite.compute_reference(case, inputs)
    got = suite.variants["cpp"].setup(case, **inputs)()
    assert compare(got, ref, *suite.tolerance(case)).ok
    assert not compare(got ^ 1, ref, *suite.tolerance(case)).ok      # one bit off: outside the (0, 0) bound
