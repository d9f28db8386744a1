"""Quantized GEMMs: the kernels behind quant/'s methods, against the fp32/bf16 matmul of the same (dequantized)
operands and PyTorch's own int8/int4 paths. Two schemes (case parameter `scheme`):
- `w8a8`: out[M,N] = (a[M,K] @ w[N,K]^T) * sa[m] * sw[n]; a, w int8 (each row reaching +-127, as dynamic
  per-token / per-channel quantization produces), sa, sw fp32 scales; out in the case dtype (fp32 or bf16).
  Variants: `torch_matmul` (the baseline: the dequantized operands a*sa and w*sw in the case dtype),
  `torch_int_mm` (torch._int_mm, oneDNN's s8s8 GEMM, then the scales), `cpp_vnni` (ours, v3,
  kernels/cpp/quant_int8_gemm_v3.cpp; its weight packing is done once, outside the timing), `cpp_vnni_v2` (the rung
  below, kernels/cpp/quant_int8_gemm.cpp: the same packed weights). torchao's
  Int8DynamicActivationInt8Weight is not a variant here: it quantizes the activations itself, on its own grid
  (not absmax/127), so it computes a different product than this reference; it is compared with ours on the
  model (suites/quant.py: `torchao_w8a8` against `w8a8` / `w8a8_cpp`).
- `w4`: out = x[M,K] @ W^T with W int4 in quant/int4_weight_only.py's layout (packed[N, K/2], groups of G with
  fp32 scales and uint8 zero points); x and out in the case dtype. Variants: `torch_matmul` (baseline: x @ the
  dequantized W in the case dtype), `torch_int4pack` (aten's _weight_int4pack_mm_for_cpu with the same grid, in
  its own packing), `cpp_w4` (ours, v3: kernels/cpp/quant_int4_dp.cpp, AVX512-BF16 on its own channel-block
  packing, done once outside the timing), `cpp_w4_v2` (ours, v2: kernels/cpp/quant_int4_gemv.cpp, quant/'s layout).
- `cuda_mma` (w8a8, kernels/cuda/quant_int8_gemm.cu): mma.sync.m16n8k32 s8 with int32 accumulators; on the CPU
  the tests run it under the CUDA simulation, which computes the s8 fragment layouts of the PTX ISA.
- `cuda_w4a16` (w4, kernels/cuda/quant_w4a16_gemm.cu): bf16/fp16 x against the int4 weights dequantized in
  registers straight into mma.sync.m16n8k16 B fragments, fp32 accumulation; checked under the CUDA simulation;
  `cupy_w4a16` the same source through NVRTC (deploy/cupy_launch.py).
- `triton` (both schemes, kernels/triton/quant_gemm.py): on a GPU, compiled and autotuned; on the CPU checked
  under the interpreter (`KB_TRITON_INTERPRET=1`, float32 and float16).
The check: a float64 reference of the dequantized product (exact integer sums, then the scales).
Work: 2MNK FLOPs (integer or float); bytes: operands at their stored width -- int8 1 byte, int4 half a byte plus
5 bytes of scale and zero point per group, activations and output at their dtype's -- so decode (M = 1) is judged
against memory bandwidth.
Shapes: M in {1, 16, 128, 2048} (decode to prefill) x LLM-shaped (N, K): 4096 x 4096, 11008 x 4096,
4096 x 11008 (`--full`), scaled by 1/4 in quick mode for this CPU, and the tiny model's own (N, K).
"""
from __future__ import annotations

import math

import torch

from deploy import cupy_launch
from harness.registry import Requires, Skip, Suite
from kernels.cpp import lib as cpp
from kernels.cuda import lib as cuda
from kernels.triton import quant_gemm as triton_quant
from quant import int4_weight_only as i4


def _tolerances(case):
    s = 2 * math.sqrt(case.k)          # outputs are sums of K terms of O(1): O(sqrt(K)), as in suites/gemm.py
    return {"float32": (2e-5 * s, 1e-4), "bfloat16": (1e-2 * s, 1.6e-2), "float16": (2e-3 * s, 2e-3)}


def _name(p):
    g = f"-g{p['group']}" if p["scheme"] == "w4" else ""
    return f"{p['scheme']}{g}-{p['m']}x{p['n']}x{p['k']}"


SUITE = Suite(
    name="quant_gemm",
    description="int8 (W8A8) and int4 weight-only GEMMs against the fp32/bf16 matmul of the dequantized operands",
    baseline="torch_matmul",
    dtypes=("float32", "bfloat16", "float16"),    # float16: the Triton kernels under the interpreter (no bf16)
    tolerances=_tolerances,
    compute_class="matmul",
    case_name=_name,
)


def _w8(m, n, k):
    return dict(scheme="w8a8", m=m, n=n, k=k)


def _w4(m, n, k, group=64):
    return dict(scheme="w4", m=m, n=n, k=k, group=group)


SUITE.add_cases("test", [_w8(1, 33, 129), _w8(3, 127, 4), _w8(17, 1, 64), _w8(9, 48, 1000), _w8(129, 50, 67),
                         _w4(1, 33, 128, 32), _w4(3, 127, 256, 64), _w4(17, 1, 128, 128), _w4(5, 48, 384, 128),
                         _w4(16, 64, 64, 64), _w4(129, 40, 96, 32)])
_LLM = {"quick": [(1024, 1024), (2752, 1024), (1024, 2752)], "full": [(4096, 4096), (11008, 4096), (4096, 11008)]}
_TINY = [(384, 128), (128, 384), (128, 128)]          # the tiny model's MLP up/gate, down, attention q/o
for _mode, _shapes in _LLM.items():
    cases = []
    for scheme in (_w8, _w4):
        for i, (n, k) in enumerate(_shapes):
            cases += [scheme(m, n, k) for m in (1, 16, 128)]
            if i == 0:
                cases.append(scheme(2048, n, k))
        if _mode == "full":
            cases += [scheme(m, n, k) for n, k in _TINY for m in (1, 16)]
    SUITE.add_cases(_mode, cases, devices=("cpu",))


# ---- inputs -------------------------------------------------------------------------------------------------
def _int8_rows(rows, cols, rng, device):
    """Uniform int8 in [-127, 127] with +-127 in every row (dynamic quantization's output)."""
    q = torch.randint(-127, 128, (rows, cols), generator=rng, device=device, dtype=torch.int8)
    idx = torch.randint(0, cols, (rows,), generator=rng, device=device)
    sign = torch.randint(0, 2, (rows,), generator=rng, device=device, dtype=torch.int8) * 2 - 1
    q[torch.arange(rows, device=device), idx] = (127 * sign).to(torch.int8)
    return q


@SUITE.inputs
def make_inputs(case, rng):
    dev = case.device
    if case.scheme == "w8a8":
        a, w = _int8_rows(case.m, case.k, rng, dev), _int8_rows(case.n, case.k, rng, dev)
        sa = (1 + 2 * torch.rand(case.m, generator=rng, device=dev)) / 127    # a * sa in [-3, 3]
        sw = (0.5 + torch.rand(case.n, generator=rng, device=dev)) / 127      # w * sw in [-1.5, 1.5]
        return {"a": a, "sa": sa, "w": w, "sw": sw}
    if case.k % case.group:
        raise ValueError(f"group {case.group} does not divide K={case.k}")
    ng = case.k // case.group
    q = torch.randint(0, 16, (case.n, case.k), generator=rng, device=dev, dtype=torch.uint8)
    return {"x": torch.randn(case.m, case.k, generator=rng, device=dev).to(case.dtype),
            "packed": i4.pack(q),
            "scale": 0.05 + 0.1 * torch.rand(case.n, ng, generator=rng, device=dev),
            "zero": torch.randint(0, 16, (case.n, ng), generator=rng, device=dev, dtype=torch.uint8)}


def _deq_w4(packed, scale, zero, group, dtype):
    q = i4.unpack(packed).to(dtype)
    return scale.to(dtype).repeat_interleave(group, 1) * (q - zero.to(dtype).repeat_interleave(group, 1))


@SUITE.flops
def flops(case):
    return 2 * case.m * case.n * case.k


@SUITE.bytes
def nbytes(case):
    io = (case.m * case.n) * case.itemsize
    if case.scheme == "w8a8":
        return case.m * case.k + case.n * case.k + 4 * (case.m + case.n) + io
    return case.n * case.k // 2 + 5 * case.n * case.k // case.group + case.m * case.k * case.itemsize + io


@SUITE.reference
def reference(case, a=None, sa=None, w=None, sw=None, x=None, packed=None, scale=None, zero=None):
    if case.scheme == "w8a8":
        return (a.double() @ w.double().t()) * sa[:, None] * sw[None, :]
    return x @ _deq_w4(packed, scale, zero, case.group, torch.float64).t()


# ---- variants -----------------------------------------------------------------------------------------------
W8 = ("cpp_vnni", "cpp_vnni_v2", "torch_int_mm", "cuda_mma")
W4 = ("cpp_w4", "cpp_w4_v2", "torch_int4pack", "cuda_w4a16", "cupy_w4a16")


def applies(case, variant: str) -> bool:
    return not ((case.scheme == "w8a8" and variant in W4) or (case.scheme == "w4" and variant in W8))


SUITE.applies = applies


@SUITE.variant("torch_matmul")
def torch_matmul(case, a=None, sa=None, w=None, sw=None, x=None, packed=None, scale=None, zero=None):
    """torch.matmul of the dequantized operands in the case dtype (oneDNN fp32 / AVX512-BF16)"""
    if case.scheme == "w8a8":
        xd = (a.float() * sa[:, None]).to(case.dtype)
        wt = (w.float() * sw[:, None]).to(case.dtype).t().contiguous()
    else:
        xd, wt = x, _deq_w4(packed, scale, zero, case.group, torch.float32).to(case.dtype).t().contiguous()
    return lambda: torch.matmul(xd, wt)


@SUITE.variant("torch_int_mm")
def torch_int_mm(case, a, sa, w, sw):
    """torch._int_mm (oneDNN s8s8s32 GEMM) then the scales, in fp32"""
    wt = w.t().contiguous()
    sa2, sw2 = sa[:, None], sw[None, :]
    return lambda: (torch._int_mm(a, wt).float() * sa2 * sw2).to(case.dtype)


def _int4pack_reason(case) -> str | None:
    """the CPU (aten's int4 CPU kernel)"""
    return None if case.device == "cpu" else "_weight_int4pack_mm_for_cpu is the CPU kernel"


@SUITE.variant("torch_int4pack", requires=Requires(check=_int4pack_reason))
def torch_int4pack(case, x, packed, scale, zero):
    """aten _weight_int4pack_mm_for_cpu with the same grid (its own packing, done outside the timing)"""
    if case.n % 16:
        raise Skip(f"_weight_int4pack_mm_for_cpu packs N in multiples of 16 (N={case.n})")
    q = i4.unpack(packed)
    w4 = torch._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
    offset = (8.0 - zero.float()) * scale
    sz = torch.stack([scale.t(), offset.t()], -1).contiguous().to(case.dtype)
    return lambda: torch._weight_int4pack_mm_for_cpu(x, w4, case.group, sz)


SUITE.add("cpp_vnni", cpp.GEMM_W8A8)              # v3: quant_int8_gemm_v3.cpp (the model path too)
SUITE.add("cpp_vnni_v2", cpp.GEMM_W8A8_V2)        # the ladder: v2, whose figures v3's header quotes
SUITE.add("cpp_w4", cpp.GEMM_W4A16_DP)             # v3: vdpbf16ps on 1 + q/16, channel-block packing (once)
SUITE.add("cpp_w4_v2", cpp.GEMM_W4A16)            # v2: vpermps table lookups on quant/'s layout
SUITE.add("cuda_mma", cuda.GEMM_W8A8)              # int8 tensor cores; under the simulation in the tests
SUITE.add("cupy_mma", cupy_launch.variant(cuda.GEMM_W8A8))    # the same .cu, NVRTC via CuPy
SUITE.add("cuda_w4a16", cuda.GEMM_W4A16)          # int4 nibbles dequantized into mma.m16n8k16 fragments; simulated
SUITE.add("cupy_w4a16", cupy_launch.variant(cuda.GEMM_W4A16))  # the same .cu, NVRTC via CuPy
SUITE.add("triton", triton_quant.VARIANT)         # both schemes: int8 tl.dot, and nibbles dequantized in registers
