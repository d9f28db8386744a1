"""Peak: what this device can do, measured, so results report % of a ceiling this machine reaches.

Probes (variant_op = the probe name in results/peaks/<device>.json, harness/peaks.py PROBES):
- `torch_copy`: a large tensor copy into a preallocated buffer (read N + write N bytes counted; the stores
  also read each destination line first, so DRAM moves 3N).
- `cpp_copy`: the same copy with streaming stores (kernels/cpp/probes.cpp): read N + write N, no
  read-for-ownership: the ceiling of the row kernels that stream their output.
- `torch_matmul`: a square matmul big enough to be compute-bound, per dtype.
- `cpp_fma`: register-resident FMA chains, the vector unit's peak: fp32 FMA (AVX-512 or AVX2), bf16
  vdpbf16ps (AVX512-BF16).
- `cpp_amx`: AMX tile products, bf16 (tdpbf16ps) and int8 (tdpbssd); `skipped` on CPUs without AMX.
- `cpp_read` / `cpp_read1`: a sequential read (xor of every 32-bit word, kernels/cpp/probes.cpp), on the run's
  threads / on one thread: read N bytes, nothing written. Their own ceilings (`read_gbs`, `read1_gbs`), beside the
  copy's `bw_gbs`: the suites that only read (decode: `bandwidth="read"`) hold their rows against them.
Every probe is checked against a closed form before it is timed. After a run each figure is offered to the
store (harness/peaks.py: kept only if more credible or higher than the stored one), the theoretical peak
(cores x clock x FLOPs/cycle) is printed beside it, and every later run's `% peak` uses the highest credible
figure per ceiling, naming it in `peak_source`.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch

from harness import env, peaks
from harness.registry import Requires, Suite
from kernels.cpp import probes

# Which (op, dtype) each variant measures; other pairs are left out of the plan (not a skipped row).
APPLIES = {
    "torch": {"copy": ("float32",), "matmul": ("float32", "bfloat16", "float16")},
    "cpp": {"copy": ("float32",), "fma": ("float32", "bfloat16"), "amx": ("bfloat16", "int8"),
            "read": ("float32",), "read1": ("float32",)},
}


def _applies(case, variant: str) -> bool:
    return case.dtype_name in APPLIES.get(variant, {}).get(case.op, ())


def _tolerances(case):
    if case.op in ("read", "read1"):               # an xor of 32-bit words: exact
        return {"float32": (0.0, 0.0)}
    if case.op == "matmul":
        s = math.sqrt(case.n)
        return {"float32": (2e-5 * s, 1e-4), "bfloat16": (1e-2 * s, 1.6e-2), "float16": (2e-3 * s, 2e-3)}
    # fp32 accumulation over `iters` steps: rounding drifts by at most ~iters x 2^-24 relative; a loop that
    # ran 1% fewer iterations misses by ~0.7% (fma) or 1% (dot products): far outside these bounds.
    drift = max(1e-5, 4 * case.get("iters", 0) * 2.0 ** -24)
    return {"float32": (0.0, drift), "bfloat16": (0.0, max(drift, 1e-3)), "float16": (0.0, 1e-3),
            "int8": (0.0, 0.0)}


def _store(rows: list[dict], mode: str = "quick") -> None:
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return
    name = ok[0]["device_name"]
    theo = peaks.theoretical() if ok[0]["device"] == "cpu" else {}
    lines = []
    for r in ok:
        probe = f"{r['variant']}_{r['p_op'] if 'p_op' in r else r['op']}"
        if probe not in peaks.PROBES:
            continue
        value = r["gbps"] if peaks.PROBES[probe][1] == "GB/s" else r["tflops"]
        kept, msg = peaks.record(name, probe, r["dtype"], value, mode=mode, commit=env.git_commit(),
                                 others_pct=r.get("cpu_others_pct"), date=r.get("timestamp"))
        t = theo.get(r["dtype"]) if peaks.PROBES[probe][0] == "compute" else None
        if t:
            msg += f"; theoretical {t:.4g} TFLOP/s ({100 * value / t:.0f}% of it)"
        lines.append(msg)
    peaks.note_theoretical(name, theo)
    print(f"peak: {peaks.measured_path(name)}")
    for line in lines:
        print(f"  {line}")
    if theo.get("basis"):
        print(f"  theoretical: {theo['basis']}")


SUITE = Suite(
    name="peak",
    description="measured ceilings of this device: copy and read bandwidth, matmul, vector FMA and AMX peaks",
    baseline="torch",
    dtypes=("float32", "bfloat16", "float16", "int8"),
    tolerances=_tolerances,
    default_dtype={"cpu": "float32,bfloat16,int8", "cuda": "bfloat16,float16,float32"},
    after_run=_store,
    compute_class="matmul",          # the bf16 matmul is held against the bf16 ceiling, not fp32's
    case_name=lambda p: f"{p['op']}-{p['n']}" if "n" in p else f"{p['op']}-{p['blocks']}x{p['iters']}",
    applies=_applies,
)
_BLOCKS = 32 * (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
SUITE.add_cases("test", [dict(op="copy", n=1000), dict(op="matmul", n=129), dict(op="fma", blocks=3, iters=1000),
                         dict(op="amx", blocks=3, iters=100), dict(op="read", n=1000), dict(op="read1", n=4099)])
# CPU: 2^27 elements (512 MiB fp32 in, 512 MiB out) go well past the caches a VM of this kind can use.
# fma: 32 blocks per CPU (dynamic schedule: balanced for any thread count), ~5 ms per call at 0.16 TFLOP/s.
# read: 2^27 words (512 MiB), 16x the L3 here, on all threads and on one.
SUITE.add_cases("quick", [dict(op="copy", n=1 << 27), dict(op="matmul", n=2048),
                          dict(op="fma", blocks=_BLOCKS, iters=20000), dict(op="amx", blocks=_BLOCKS, iters=4096),
                          dict(op="read", n=1 << 27), dict(op="read1", n=1 << 27)],
                devices=("cpu",))
SUITE.add_cases("full", [dict(op="copy", n=1 << 27), dict(op="matmul", n=4096),
                         dict(op="fma", blocks=_BLOCKS, iters=40000), dict(op="amx", blocks=_BLOCKS, iters=8192),
                         dict(op="read", n=1 << 27), dict(op="read1", n=1 << 27)],
                devices=("cpu",))
SUITE.add_cases("quick", [dict(op="copy", n=1 << 30), dict(op="matmul", n=8192)], devices=("cuda",))
SUITE.add_cases("full", [dict(op="copy", n=1 << 30), dict(op="matmul", n=8192)], devices=("cuda",))
# The first-run probe (harness/autopeak.py): seconds, not minutes.
# The first of these that runs sets each ceiling (AMX before the vector units; torch where nothing native ran).
AUTO_CASES = [dict(op="copy", n=1 << 25), dict(op="amx", blocks=_BLOCKS, iters=2048),
              dict(op="fma", blocks=_BLOCKS, iters=10000), dict(op="matmul", n=1024), dict(op="read", n=1 << 25)]


def _fma_m(case) -> float:
    return 1.0 - math.log(2.0) / case.iters      # m^iters = 1/2: every iteration moves the result


@SUITE.inputs
def make_inputs(case, rng):
    dev = case.device
    if case.op in ("copy", "matmul", "read", "read1"):
        shape = (case.n, case.n) if case.op == "matmul" else (case.n,)

        def randn():
            return torch.randn(*shape, generator=rng, device=dev, dtype=torch.float32).to(case.dtype)
        return {"a": randn(), "b": randn() if case.op == "matmul" else None}   # read: random bits to xor
    if case.op == "fma":
        width = probes.block_floats() if case.dtype_name == "float32" else probes.DPBF16_LANES
        init = 0.5 + torch.rand(case.blocks, width, generator=rng, device=dev)
        ab = (0.5 + torch.rand(64, generator=rng, device=dev)).to(torch.bfloat16)
        return {"a": init, "b": ab if case.dtype_name == "bfloat16" else None}
    if case.dtype_name == "int8":       # two A tiles 16 x 64, two B tiles 16 k-quads x 16 columns x 4
        a = torch.randint(-8, 8, (2, 16, 64), generator=rng, device=dev, dtype=torch.int8)
        b = torch.randint(-8, 8, (2, 16, 16, 4), generator=rng, device=dev, dtype=torch.int8)
    else:                               # bf16: A 16 x 32, B 16 k-pairs x 16 columns x 2
        a = (0.5 + torch.rand(2, 16, 32, generator=rng, device=dev)).to(torch.bfloat16)
        b = (0.5 + torch.rand(2, 16, 16, 2, generator=rng, device=dev)).to(torch.bfloat16)
    return {"a": a, "b": b}


@SUITE.flops
def flops(case):
    if case.op == "matmul":
        return 2 * case.n ** 3
    if case.op == "fma":     # fp32: 2 per lane-iteration; vdpbf16ps: 2 products + 2 adds per fp32 lane
        return (case.blocks * probes.block_floats() * 2 * case.iters if case.dtype_name == "float32"
                else case.blocks * probes.DPBF16_LANES * 4 * case.iters)
    if case.op == "amx":     # 4 tile products per iteration: 16 x 16 x (32 bf16 | 64 int8) multiply-adds
        k = 64 if case.dtype_name == "int8" else 32
        return case.blocks * case.iters * 4 * 16 * 16 * k * 2
    return 0


@SUITE.bytes
def nbytes(case):
    if case.op == "copy":
        return 2 * case.n * case.itemsize
    if case.op in ("read", "read1"):
        return case.n * case.itemsize
    if case.op == "matmul":
        return 3 * case.n * case.n * case.itemsize
    if case.op == "fma":     # read init, write out once; the loop itself stays in registers
        width = probes.block_floats() if case.dtype_name == "float32" else probes.DPBF16_LANES
        return 2 * case.blocks * width * 4
    return 4096 + case.blocks * 4 * 16 * 16 * 4          # amx: read A, B tiles; write the C tiles once


def _vnni_to_kn(b: torch.Tensor) -> torch.Tensor:
    """[16 rows, 16 columns, g] (VNNI: g consecutive k per column) -> the logical [16 g, 16] matrix."""
    return b.permute(0, 2, 1).reshape(16 * b.shape[2], 16)


@SUITE.reference
def reference(case, a, b):
    if case.op == "copy":
        return a.clone()
    if case.op in ("read", "read1"):               # a arrives in float64: back to its float32 words, exactly
        words = a.to(torch.float32).contiguous().view(torch.int32).numpy()
        return torch.tensor([int(np.bitwise_xor.reduce(words))], dtype=torch.int32)
    if case.op == "matmul":
        return a @ b
    if case.op == "fma":
        if case.dtype_name == "float32":          # acc_n = m^n acc_0 + c (1 - m^n) / (1 - m)
            m = _fma_m(case)
            c = 0.25 * (1 - m)
            mn = m ** case.iters
            return a * mn + c * (1 - mn) / (1 - m)
        ab = b.to(torch.float64)                  # per lane l: a[2l] b[2l] + a[2l+1] b[2l+1]
        d = (ab[:32] * ab[32:]).view(16, 2).sum(1)
        return a + case.iters * d.repeat(16)
    if case.dtype_name == "int8":
        a64, b64 = a.to(torch.int64), b.to(torch.int64)
    else:
        a64, b64 = a.to(torch.float64), b.to(torch.float64)
    tiles = [a64[i] @ _vnni_to_kn(b64[j]) for i, j in ((0, 0), (0, 1), (1, 0), (1, 1))]
    one = torch.stack(tiles) * case.iters
    return one.unsqueeze(0).expand(case.blocks, 4, 16, 16).clone()


@SUITE.variant("torch")
def torch_peak(case, a, b):
    """a copy into a preallocated buffer, or torch.matmul"""
    if case.op == "copy":
        out = torch.empty_like(a)
        return lambda: out.copy_(a)
    return lambda: torch.matmul(a, b)


@SUITE.variant("cpp", requires=Requires(devices=("cpu",), check=probes.missing_reason))
def cpp_peak(case, a, b):
    """native probes: streaming-store copy, sequential read, FMA / vdpbf16ps chains, AMX tiles"""
    if case.op == "copy":
        return probes.bound(probes.STREAM_COPY, a=a, out=case.poisoned(a.shape))
    if case.op in ("read", "read1"):               # a sentinel: 1 chance in 2^32 of being the answer
        out = torch.full((1,), 0x5A5A5A5A, dtype=torch.int32)
        return probes.bound(probes.READ, a=a, out=out, threads=1 if case.op == "read1" else 0)
    if case.op == "fma":
        out = case.poisoned(a.shape, torch.float32)
        if case.dtype_name == "float32":
            m = _fma_m(case)
            return probes.bound(probes.FMA, a=a, out=out, iters=case.iters, m=m, c=0.25 * (1 - m))
        return probes.bound(probes.DPBF16, a=a, b=b, out=out, iters=case.iters)
    if case.dtype_name == "int8":
        out = torch.full((case.blocks, 4, 16, 16), -2**31, dtype=torch.int32)   # a sentinel no result hits
    else:
        out = case.poisoned((case.blocks, 4, 16, 16), torch.float32)
    return probes.bound(probes.AMX, kind=case.dtype_name, a=a.contiguous(), b=b.contiguous(), out=out,
                        iters=case.iters)
