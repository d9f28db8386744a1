"""Every Triton kernel (every GPU autotuning config) compiled ahead of time for sm_80 and sm_90a on this
GPU-less machine (kernels/triton/aot.py): no config may spill, and GEMM and attention must run on the
tensor cores (HMMA on sm_80, warpgroup HGMMA on sm_90a).

The first run compiles ~120 kernels in two child processes (a few minutes on 2 busy cores); the results
are cached under .cache/triton_aot/, so later runs take seconds.
"""
from __future__ import annotations

import json
import re

import pytest

from kernels.triton import aot, common

pytestmark = pytest.mark.skipif(not common.HAS_TRITON, reason="triton is not installed")


@pytest.fixture(scope="module")
def report():
    return aot.collect_triton(("sm_80", "sm_90a"), detail=True)


def _module(kernel: str) -> str:
    return kernel.split("[", 1)[0]


def test_compiles_everything(report):
    if "error" in report.columns:
        bad = report[report["error"].notna()]
        assert bad.empty, "compile errors:\n" + "\n".join(f"{r.kernel} {r.arch}: {r.error}" for r in bad.itertuples())
    assert list(report.columns[:len(aot.COLUMNS)]) == aot.COLUMNS
    assert (report["backend"] == "triton").all()
    # every module, every arch, and every spec its aot_specs() lists
    for mod in aot.MODULES:
        specs, source = aot._specs(mod)
        rows = report[report["kernel"].map(_module) == mod]
        assert set(rows["arch"]) == {"sm_80", "sm_90a"}
        assert len(rows) == sum(len(s[5]) if len(s) > 5 else 2 for s in specs), mod
        assert (rows["source"] == source).all()


def test_no_kernel_spills(report):
    spills = report[(report["spill_stores_bytes"] != 0) | (report["spill_loads_bytes"] != 0)]
    assert spills.empty, "kernels that spill:\n" + spills[
        ["kernel", "arch", "registers", "spill_stores_bytes", "spill_loads_bytes"]].to_string(index=False)


def _fp32(report):
    return report["kernel"].str.contains(r"\[fp32", regex=True)


@pytest.mark.parametrize("mod", ["gemm", "attention_fwd"])
def test_matmul_kernels_use_tensor_cores(report, mod):
    rows = report[(report["kernel"].map(_module) == mod) & ~_fp32(report)]   # the 16-bit kernels
    sm90 = rows[rows["arch"] == "sm_90a"]
    sm80 = rows[rows["arch"] == "sm_80"]
    assert len(sm90) and len(sm80)
    no_tc = sm90[sm90["tensor_core_instrs"] == 0]
    assert no_tc.empty, f"sm_90a {mod} without tensor-core instructions: {list(no_tc['kernel'])}"
    # Hopper's full rate needs warpgroup MMA (wgmma -> HGMMA), not the sm_80 mma.sync (HMMA)
    no_wgmma = sm90[sm90["hgmma"] == 0]
    assert no_wgmma.empty, f"sm_90a {mod} without HGMMA: {list(no_wgmma['kernel'])}"
    assert (sm80["hmma"] > 0).all() and (sm80["hgmma"] == 0).all()


def test_exact_fp32_kernels_stay_off_tensor_cores(report):
    """fp32 GEMM and attention ask for input_precision="ieee": a TF32 HMMA/HGMMA would lose 13 bits."""
    rows = report[_fp32(report)]
    assert set(rows["kernel"].map(_module)) == {"gemm", "attention_fwd"}
    assert (rows["tensor_core_instrs"] == 0).all()


def test_row_kernels_use_no_tensor_cores(report):
    rows = report[report["kernel"].map(_module).isin(["softmax", "rmsnorm", "layernorm"])]
    assert len(rows) and (rows["tensor_core_instrs"] == 0).all()


def test_report_values_are_consistent(report):
    assert report["registers"].between(1, 255).all()
    assert report["threads_per_block"].isin([32 * w for w in (1, 2, 4, 8, 16, 32)]).all()
    assert report["occupancy"].between(0, 1, inclusive="right").all()
    smem = report["smem_static_bytes"] + report["smem_dynamic_bytes"]
    assert (smem <= 227 * 1024).all()
    assert ((report["arch"] == "sm_80") <= (smem <= 163 * 1024)).all(), "an sm_80 kernel needs > 163 KiB smem"


def test_artifacts_are_cached(report):
    for d in report["cache_dir"]:
        folder = aot.ROOT / d
        assert (folder / "row.json").exists()
        assert any(folder.glob("*.cubin")) and any(folder.glob("*.sass")) and (folder / "ptxas.log").exists()
        assert json.loads((folder / "row.json").read_text())["backend"] == "triton"


def test_occupancy_formula():
    # 255 registers x 128 threads: 8 KiB registers per warp -> 8 warps fit the 64K register file
    assert aot.occupancy(255, 0, 128, "sm_90a") == pytest.approx(8 / 64)
    # 32 registers, 256 threads, no shared memory: the 64-warp limit
    assert aot.occupancy(32, 0, 256, "sm_80") == pytest.approx(1.0)
    # shared memory bound: 100 KiB per block -> one block of 4 warps on a 164 KiB sm_80 SM
    assert aot.occupancy(64, 100 * 1024, 128, "sm_80") == pytest.approx(4 / 64)
    # and two on a 228 KiB sm_90 SM
    assert aot.occupancy(64, 100 * 1024, 128, "sm_90a") == pytest.approx(8 / 64)


# -- 64-bit offsets and grid limits ---------------------------------------------------------------------------
AOT_64BIT = r"""
import json, sys, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kernels.triton import attention_fwd, gemm
out = {}
# strides typed i32 (values below 2**31) while index * stride passes it: a [b, s, h, d] view with s * h * d
# past 2**31 elements, a column-major B (stride_bn = K) with N * K past 2**31
for name, fn, const in (
        ("gemm", gemm.gemm_kernel, dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, GROUP_M=8, DOT_PRECISION="tf32")),
        ("attention", attention_fwd.attn_fwd_kernel,
         dict(HEAD_D=128, BLOCK_M=64, BLOCK_N=64, CAUSAL=True, DOT_PRECISION="tf32"))):
    sig = {n: "constexpr" if n in const else "*bf16" if n.endswith("_ptr") else "fp32" if n == "qk_scale"
           else "i32" for n in fn.arg_names}
    c = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": 4, "num_stages": 2})
    out[name] = c.asm["ttir"]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def ttir_64bit():
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", AOT_64BIT], capture_output=True, text=True, env=env, timeout=600,
                       cwd=str(aot.ROOT))
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kernel", ["gemm"])
def test_offsets_are_64_bit(ttir_64bit, kernel):
    """Compiled AOT (sm_90a) with i32 strides: every tensor of offsets (indices * stride) is multiplied in
    i64, so none wraps once the product passes 2**31 (before, `offs_m * stride_qm` and `rn * stride_bn` were
    i32 multiplies)."""
    ir = ttir_64bit[kernel]
    muls = [ln.strip() for ln in ir.splitlines() if "arith.muli" in ln and ": tensor<" in ln]
    assert muls, "no tensor multiplies in the TTIR"
    narrow = [ln for ln in muls if "xi32>" in ln]
    assert not narrow, f"{kernel}: 32-bit offset products: {narrow[:3]}"


def i32_index_times_stride(ttir: str) -> list[str]:
    """The 32-bit multiplies of the TTIR that scale a grid or loop index by a kernel argument (a stride):
    the products that wrap past 2**31. A forward taint over the SSA values: `index` from tt.get_program_id
    and scf.for's induction variables and iter_args, `arg` from the kernel's integer arguments; a multiply
    of an index by a block size, or of an in-tile arange by a stride, is not one of them."""
    ref = re.compile(r"%([\w$.-]+)(?:#\d+)?")
    head = next(ln for ln in ttir.splitlines() if "tt.func" in ln)
    arg = set(re.findall(r"%([\w$.-]+): i(?:32|64)\b", head))
    index: set[str] = set()
    bad = []
    for ln in ttir.splitlines():
        code = ln.split(" loc(")[0].strip()
        m = re.match(r"(%[\w$.-]+(?::\d+)?(?:, %[\w$.-]+)*) = (\S+)(.*)", code)
        if not m:
            continue
        outs = [o.split(":")[0][1:] for o in m.group(1).split(", ")]
        op, rest = m.group(2), m.group(3)
        if op == "scf.for":                       # induction variable and iter_args are per-iteration values
            index.update(re.findall(r"(?:scf\.for|\(|, ) ?%([\w$.-]+) = ", code))
        uses = ref.findall(rest)
        if op == "tt.get_program_id" or any(u in index for u in uses):
            index.update(outs)
        if any(u in arg for u in uses):
            arg.update(outs)
        if op == "arith.muli" and re.search(r": (?:i32|tensor<[^>]*xi32>)$", code):
            a, b = uses[:2]
            if (a in index and b in arg) or (b in index and a in arg):
                bad.append(code)
    return bad


def test_attention_offsets_scale_no_index_in_32_bits(ttir_64bit):
    """Triton attention compiled (sm_90a, causal, d=128) with i32 strides: every offset that grows with the
    grid (query tile, head, batch) or the key loop is formed in 64 bits (64-bit scalar tile bases); only
    in-tile offsets (arange x stride, at most BLOCK x stride) stay 32-bit, so the pointer tensors cost no
    extra registers (every autotuning config stays spill-free: test_no_kernel_spills)."""
    ir = ttir_64bit["attention"]
    assert "tt.get_program_id" in ir and "scf.for" in ir
    bad = i32_index_times_stride(ir)
    assert not bad, f"attention: 32-bit index x stride products: {bad[:3]}"


def test_the_index_times_stride_scan_finds_what_it_looks_for():
    """The scan on a hand-written TTIR: a program id or a loop variable times a stride is found; a block
    size times the program id, an arange times a stride and an i64 product are not."""
    ir = """
  tt.func public @k(%p: !tt.ptr<bf16>, %stride: i32, %n: i32) {
    %c64_i32 = arith.constant 64 : i32
    %pid = tt.get_program_id x : i32
    %row0 = arith.muli %pid, %c64_i32 : i32
    %r = tt.make_range {end = 64 : i32, start = 0 : i32} : tensor<64xi32>
    %rows = tt.splat %row0 : i32 -> tensor<64xi32>
    %offs = arith.addi %rows, %r : tensor<64xi32>
    %st = tt.splat %stride : i32 -> tensor<64xi32>
    %bad1 = arith.muli %offs, %st : tensor<64xi32>
    %tile = arith.muli %r, %st : tensor<64xi32>
    %w = arith.extsi %row0 : i32 to i64
    %s64 = arith.extsi %stride : i32 to i64
    %ok = arith.muli %w, %s64 : i64
    %res:2 = scf.for %i = %c64_i32 to %n step %c64_i32 iter_args(%a = %c64_i32, %q = %p) -> (i32, !tt.ptr<bf16>) : i32 {
      %bad2 = arith.muli %stride, %i : i32
      %step = arith.muli %stride, %c64_i32 : i32
    }
"""
    found = i32_index_times_stride(ir)
    assert [f.split(" = ")[0] for f in found] == ["%bad1", "%bad2"], found


def test_attention_grid_puts_heads_and_batch_on_their_own_axes(monkeypatch):
    """CUDA's grid y and z allow 65,535 each: the grid is (query tiles, h, b), so b * h may pass 65,535
    (b=64 x h=2048 here); b * h on one axis (as before) failed to launch past it."""
    import torch

    from kernels.triton import attention_fwd as A
    seen = {}

    def fake(grid, *args, **kw):
        seen["grid"] = grid({"BLOCK_M": 64})

    monkeypatch.setattr(A, "KERNEL", fake)
    b, h, sq, d = 64, 2048, 130, 64
    q = torch.empty(sq * d).as_strided((b, h, sq, d), (0, 0, d, 1))   # one head of memory: shapes matter
    A.attention_fwd(q, q[:, :1], q[:, :1], q, causal=True)
    assert seen["grid"] == (3, h, b)


def test_quant_kernels_use_tensor_cores(report):
    """The W8A8 GEMM's int8 tl.dot is IMMA on sm_80 and IGMMA (int8 wgmma) on sm_90a; the W4A16 GEMM's bf16 dots
    are HMMA / HGMMA. An int8 kernel reported with 0 tensor-core instructions is what the report said before it
    counted the integer forms."""
    rows = report[report["kernel"].map(_module) == "quant_gemm"].set_index(["kernel", "arch"])
    w8 = rows[rows.index.get_level_values(0).str.contains("w8a8")]
    w4 = rows[rows.index.get_level_values(0).str.contains("w4a16")]
    assert len(w8) == 2 and len(w4) == 2
    assert (w8.xs("sm_80", level="arch")["imma"] > 0).all() and (w8.xs("sm_90a", level="arch")["igmma"] > 0).all()
    assert (w4.xs("sm_80", level="arch")["hmma"] > 0).all() and (w4.xs("sm_90a", level="arch")["hgmma"] > 0).all()
    assert (rows["tensor_core_instrs"] == rows[["hmma", "hgmma", "imma", "igmma"]].sum(axis=1)).all()
