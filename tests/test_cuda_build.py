"""The CUDA kernels: they build with nvcc for every architecture in the list (no GPU needed), none spills,
the tensor-core kernels contain HMMA, the occupancy arithmetic matches a hand computation; and, where a GPU
(or the CPU simulation library) is present, every kernel matches its suite's reference at the suite's odd
test shapes, on fresh random inputs, with NaN-poisoned outputs.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from harness import kernels_report as kr

REPO = Path(__file__).resolve().parents[1]

# Every kernel instantiation the library must contain (short demangled names), per architecture.
EXPECTED_KERNELS = (
    [f"kb_attn_fwd_mma_kernel<{t}, {d}, {bn}>" for t in ("__nv_bfloat16", "__half") for d, bn in ((64, 64), (128, 32))]
    + [f"kb_attn_fwd_f32_kernel<{d}>" for d in (64, 128)]
    + [f"kb_{op}_kernel<{t}>" for op in ("softmax", "rmsnorm", "layernorm") for t in ("float", "__nv_bfloat16", "__half")]
    + [f"kb_gemm_tc_kernel<{t}, {o}, {a}>" for t in ("__nv_bfloat16", "__half") for o in ("float", t)
       for a in ("true", "false")]
    + [f"kb_sparse24_mma_sp_kernel<{t}>" for t in ("__nv_bfloat16", "__half")]
    + [f"kb_bsr_mma_kernel<{t}, {b}>" for t in ("__nv_bfloat16", "__half") for b in (16, 32)]
    + [f"kb_gemm_w4a16_kernel<{t}>" for t in ("__nv_bfloat16", "__half")]
)
# kernels that must use tensor cores (HMMA; mma.sp shows as HMMA.SP), the others must not
TENSOR_CORE_KERNELS = ("kb_gemm_tc_kernel", "kb_attn_fwd_mma_kernel", "kb_sparse24_mma_sp_kernel", "kb_bsr_mma_kernel",
                       "kb_gemm_w4a16_kernel", "kb_gemm_w8a8_kernel")     # the last on IMMA (mma.sync s8)


def _cuda_archs(build: Path) -> list[str]:
    cache = build / "CMakeCache.txt"
    m = re.search(r"^CMAKE_CUDA_ARCHITECTURES:\w+=(.*)$", cache.read_text(), re.M) if cache.exists() else None
    archs = (m.group(1) if m else "80;90a").split(";")
    return [f"sm_{a.split('-')[0]}" for a in archs if a]


def _build(source: Path, build: Path) -> subprocess.CompletedProcess:
    cfg = subprocess.run(["cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"],
                         capture_output=True, text=True)
    if cfg.returncode != 0:
        return cfg
    return subprocess.run(["cmake", "--build", str(build), "--target", "kb_cuda", "-j2"],
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def cuda_build() -> Path:
    """The build directory holding lib/libkb_cuda.so: build/ (or $KB_BUILD_DIR), brought up to date with
    the kb_cuda target; if the top-level project does not configure, kernels/cuda on its own."""
    if not shutil.which("nvcc") or not shutil.which("cmake"):
        pytest.skip("nvcc or cmake not found: the CUDA kernels cannot be built here")
    build = Path(os.environ.get("KB_BUILD_DIR") or REPO / "build")
    res = _build(REPO, build)
    if res.returncode != 0:
        alt = REPO / "build-kb-cuda"
        res2 = _build(REPO / "kernels" / "cuda", alt)
        assert res2.returncode == 0, f"kb_cuda does not build:\n{res.stdout[-3000:]}{res.stderr[-3000:]}\n" \
                                     f"{res2.stdout[-3000:]}{res2.stderr[-3000:]}"
        build = alt
    assert (build / "lib" / "libkb_cuda.so").exists()
    return build


@pytest.fixture(scope="module")
def report(cuda_build):
    return kr.collect_cuda(cuda_build)


def test_every_kernel_has_a_row_per_arch(cuda_build, report):
    archs = _cuda_archs(cuda_build)
    assert archs, "no CUDA architectures configured"
    have = set(zip(report.kernel, report.arch))
    missing = [(k, a) for k in EXPECTED_KERNELS for a in archs if (k, a) not in have]
    assert not missing, f"kernels missing from the build: {missing}"
    assert set(report.arch) == set(archs)
    assert (report.registers > 0).all()
    assert (report.threads_per_block > 0).all(), "a kernel has no '// kb-report:' launch annotation"
    assert report.occupancy.between(0, 1, inclusive="right").all()
    assert (report.source.str.startswith("kernels/cuda/")).all()


def test_no_kernel_spills(cuda_build, report):
    assert kr.ptxas_logs(cuda_build), "the build kept no ptxas -v logs (build/**/ptxas/*.log)"
    spills = report[(report.spill_stores_bytes > 0) | (report.spill_loads_bytes > 0)]
    assert spills.empty, "register spills:\n" + spills[["kernel", "arch", "registers", "spill_stores_bytes",
                                                         "spill_loads_bytes"]].to_string()


def test_tensor_core_kernels_use_hmma(report):
    if not (kr.find_tool("cuobjdump") and kr.find_tool("nvdisasm")):
        pytest.skip("cuobjdump/nvdisasm not found (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
    by = report.set_index(["kernel", "arch"])
    # what each kernel really uses: mma.sync (HMMA) on both archs, never wgmma or TMA; cp.async (LDGSTS) in
    # the GEMM (its aligned path) and both attention kernels, not in the row kernels
    assert (by.hgmma == 0).all() and (by.tma_loads == 0).all()
    for (kernel, arch), n in by.ldgsts.items():
        assert (n > 0) == kernel.startswith(("kb_gemm_tc_kernel", "kb_attn_fwd")) or (
            kernel.startswith("kb_gemm_tc_kernel") and ", false>" in kernel), (kernel, arch, n)
    tc = by.tensor_core_instrs
    for (kernel, arch), n in tc.items():
        if kernel.startswith(TENSOR_CORE_KERNELS):
            assert n > 0, f"{kernel} on {arch} has no tensor-core (HMMA/IMMA) instruction"
        else:
            assert n == 0, f"{kernel} on {arch} was not expected to use tensor cores"
    # The attention step does S = Q K^T and O += P V: (d/16)(BN/8) + (BN/16)(d/8) mma per warp per step.
    attn = tc.xs("kb_attn_fwd_mma_kernel<__nv_bfloat16, 128, 32>", level="kernel")
    assert (attn == 8 * 4 + 2 * 16).all()
    # The GEMM's k-loop body: 2 k16 steps x 4 x 4 tiles of m16n8.
    assert (tc.xs("kb_gemm_tc_kernel<__nv_bfloat16, __nv_bfloat16, true>", level="kernel") == 32).all()


def test_occupancy_arithmetic_hand_computed():
    # sm_80, 164 regs x 128 threads, 34,816 B smem: a warp takes ceil(164*32/256)*256 = 5376 registers;
    # a sub-partition (16,384) holds 3 warps -> 12 warps = 3 blocks; smem (34,816 + 1,024) fits 4 blocks in
    # 164 KiB; threads allow 16 -> 3 blocks x 4 warps / 64 = 0.1875.
    assert kr.occupancy(164, 34816, 128, "sm_80") == pytest.approx(0.1875)
    # 64 registers x 256 threads: 2048 per warp, 8 warps per sub-partition -> 32 warps = 4 blocks -> 50 %.
    assert kr.occupancy(64, 0, 256, "sm_80") == pytest.approx(0.5)
    # sm_86 has 1536 threads per SM: 6 blocks of 256 = 48 warps = 100 %.
    assert kr.occupancy(32, 0, 256, "sm_86") == pytest.approx(1.0)
    # sm_90a, the GEMM: 126 regs -> 4096 per warp -> 16 warps = 2 blocks of 8; smem 57,856 B fits 4 in
    # 228 KiB -> 2 x 8 / 64 = 0.25.
    assert kr.occupancy(126, 56832, 256, "sm_90a") == pytest.approx(0.25)
    # Shared-memory bound: 100,000 B + 1 KiB reserved, rounded to 128 -> 101,120: one block in 164 KiB.
    assert kr.occupancy(32, 100000, 128, "sm_80") == pytest.approx(4 / 64)
    # Block-count bound: 32 threads, few registers: 32 blocks x 1 warp of 64.
    assert kr.occupancy(16, 0, 32, "sm_80") == pytest.approx(0.5)
    # Registers are allocated per sub-partition (a quarter of the file), as in cuda_occupancy.h: 192 regs
    # -> 6144 per warp, 2 warps per 16,384-register quarter -> 8 warps of 1-warp blocks (not 65536 // 6144
    # = 10) -> 8 / 64.
    assert kr.occupancy(192, 0, 32, "sm_80") == pytest.approx(8 / 64)
    # More registers than a thread may have: cannot launch.
    assert kr.occupancy(300, 0, 32, "sm_80") != kr.occupancy(300, 0, 32, "sm_80")  # NaN


def test_parsers_on_sample_output():
    log = """ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_80'
ptxas info    : Function properties for _Z3fooPf
    8 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 2048 bytes smem, 360 bytes cmem[0]
"""
    assert kr.parse_ptxas_log(log) == {("_Z3fooPf", "sm_80"): dict(registers=40, spill_stores=12,
                                                                    spill_loads=16, smem_static=2048)}
    usage = """Fatbin elf code:
================
arch = sm_90a
 Function _Z3fooPf:
  REG:40 STACK:8 SHARED:3072 LOCAL:16 CONSTANT[0]:544 TEXTURE:0 SURFACE:0 SAMPLER:0
"""
    assert kr.parse_resource_usage(usage) == {("_Z3fooPf", "sm_90a"): dict(registers=40, stack=8,
                                                                           smem_static=3072, local=16)}
    sass = """	code for sm_80
		Function : _Z3fooPf
        /*00b0*/                   HMMA.16816.F32.BF16 R4, R4, R8, RZ ;
        /*00c0*/                   HMMA.16816.F32.BF16 R4, R4, R8, R4 ;
        /*00d0*/                   FADD R1, R2, R3 ;
		Function : _Z3barv
        /*0000*/                   EXIT ;
"""
    assert kr.count_tensor_core_instrs(sass) == {("_Z3fooPf", "sm_80"): 2, ("_Z3barv", "sm_80"): 0}
    sass90 = """	code for sm_90a
		Function : _Z3bazv
        /*0010*/                   LDGSTS.E.BYPASS.LTC128B.128 [R1], desc[UR4][R2.64] ;
        /*0020*/                   UTMALDG.2D [UR8], [UR4] ;
        /*0030*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8], R24 ;
        /*0040*/                   HMMA.16816.F32.BF16 R4, R4, R8, RZ ;
        /*0050*/                   IMMA.16832.S8.S8.SAT R4, R4, R8, RZ ;
        /*0060*/                   IGMMA.64x128x32.S32.S8.S8 R24, gdesc[UR8], R24 ;
        /*0070*/                   IGMMA.64x128x32.S32.S8.S8 R24, gdesc[UR8], R24 ;
"""
    assert kr.count_sass_instrs(sass90) == {("_Z3bazv", "sm_90a"): dict(hmma=1, hgmma=1, imma=1, igmma=2, tma_loads=1,
                                                                        ldgsts=1)}
    assert kr.count_tensor_core_instrs(sass90) == {("_Z3bazv", "sm_90a"): 5}      # int8 MMAs are tensor-core ones
    assert kr.base_name("_Z17kb_gemm_tc_kernelI6__halffLb1EEvPKT_") == "kb_gemm_tc_kernel"
    assert kr.short_name("void kb_f<float, 64>(float const*, int)") == "kb_f<float, 64>"


def test_main_writes_the_table(cuda_build, tmp_path, capsys):
    assert kr.main(["--build-dir", str(cuda_build), "--out", str(tmp_path)]) == 0
    import pandas as pd
    df = pd.read_parquet(tmp_path / "kernels_report.parquet")
    assert list(df.columns[:len(kr.COLUMNS)]) == kr.COLUMNS
    assert len(df[df.backend == "cuda"]) >= len(EXPECTED_KERNELS)
    assert (tmp_path / "kernels_report.csv").exists()
    printed = capsys.readouterr().out
    assert "kb_gemm_tc_kernel" in printed and "kernels_report.parquet" in printed


def test_lib_imports_and_explains_without_gpu():
    from harness.registry import Case
    from kernels.cuda import lib
    case = Case("softmax", dict(rows=2, cols=3), "cuda", "float32")
    reason = lib.SOFTMAX.missing(case)
    if not torch.cuda.is_available():
        assert reason == "no CUDA GPU"
    lib_path = lib.LIB.path()
    if lib_path.exists():  # loading needs no GPU: the CUDA runtime is linked statically
        k = lib.bind(lib_path)
        assert not k.simulated and k.device == "cuda"
        with pytest.raises(lib.KbCudaError, match="takes cuda tensors"):
            lib.SOFTMAX(k, x=torch.zeros(2, 3), out=torch.zeros(2, 3))


# -- kernels against the suite references on a GPU (the CPU simulation: tests/test_cuda_sim_kernels.py) ------
@pytest.mark.gpu
def test_kernels_match_suite_references():
    """Every variant registered from kernels/cuda/lib.py, every test case, checked as bench.py checks it."""
    from harness.check import check_variant
    from harness.registry import Skip, all_suites

    checked, failures = 0, []
    for suite in all_suites().values():
        for v in suite.variants.values():
            if getattr(v.kernel, "backend", None) != "cuda":
                continue
            for dtype in suite.dtypes:
                for case in suite.cases("test", device="cuda", dtype=dtype):
                    reason = v.requires.missing(case)
                    if reason:
                        if "no CUDA GPU" in reason or "not built" in reason:
                            pytest.skip(reason)
                        continue
                    try:
                        r = check_variant(suite, case, v)
                    except Skip:
                        continue
                    checked += 1
                    if not r.ok:
                        failures.append(f"{suite.name} {v.name} {case.name} {dtype}: {r.result.message}")
    assert checked > 0, "no suite case ran"
    assert not failures, "\n".join(failures)
