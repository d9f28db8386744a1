"""Attention forward: softmax(Q K^T / sqrt(d)) V, causal or not, with grouped-query heads.

Shapes: q [b, h, sq, d], k and v [b, hkv, sk, d] (h % hkv == 0; query head i reads kv head i // (h // hkv)),
out [b, h, sq, d]. Causal masking is top-left aligned by default (query i sees keys j <= i), as
`scaled_dot_product_attention(is_causal=True)`; the option `causal_align=bottom-right` (`--shape ...,
causal_align=bottom-right`) aligns the diagonal to the bottom-right corner (query i sees keys
j <= i + sk - sq), as flash-attention >= 2.1 and SDPA's `causal_lower_right` define it; a query that sees no
key (sq > sk) outputs 0, as both do. The two coincide when sq == sk. A variant that implements only one
alignment skips the other with the reason. The FLOP count stays "halved when causal" for both.

Work, counted as FlashAttention does: two matmuls of 2*sq*sk*d FLOPs per head -> 4*b*h*sq*sk*d, halved
when causal (the masked half need not be computed). Bytes: read q, k, v and write out once; the sq x sk
score matrix is what a fused kernel never writes to memory, so it is not counted.
"""
from __future__ import annotations

import contextlib
import math
import warnings

import torch
import torch.nn.functional as F

from deploy import cupy_launch
from harness.registry import Requires, Skip, Suite
from kernels.cpp import lib as cpp
from kernels.cuda import lib as cuda
from kernels.triton import attention_fwd as triton_attention

SUITE = Suite(
    name="attention",
    description="attention forward (FlashAttention FLOP count), causal/non-causal, grouped-query heads",
    baseline="eager",
    dtypes=("float32", "bfloat16", "float16"),
    # Against the float64 reference of the same (rounded) inputs; outputs are O(1) averages of v rows.
    tolerances={"float32": (2e-5, 1e-4), "bfloat16": (2e-2, 2e-2), "float16": (3e-3, 3e-3)},
    compute_class="matmul",
    case_name=lambda p: (f"b{p['b']}h{p['h']}" + (f"kv{p['hkv']}" if p['hkv'] != p['h'] else "")
                         + f"-{p['sq']}x{p['sk']}-d{p['d']}" + ("-causal" if p["causal"] else "")
                         + ("-br" if p.get("causal_align", "top-left") == "bottom-right" else "")),
    options={"causal_align": ("top-left", "bottom-right")},
)


def bottom_right(case) -> bool:
    """True when the causal mask is bottom-right aligned and that differs from top-left (sq != sk)."""
    return bool(case.causal) and case.get("causal_align", "top-left") == "bottom-right" and case.sq != case.sk


def _case(b, h, hkv, sq, sk, d, causal):
    return dict(b=b, h=h, hkv=hkv, sq=sq, sk=sk, d=d, causal=causal)


# Odd sizes: non-multiples of every tile size, one-row queries, head dims 64 and 128, GQA, causal.
SUITE.add_cases("test", [
    _case(1, 2, 2, 127, 129, 64, False),
    _case(2, 4, 2, 129, 129, 128, True),
    _case(1, 4, 1, 1, 127, 64, False),
    _case(1, 2, 2, 1, 1, 128, True),
    _case(1, 3, 3, 65, 65, 128, True),
    # GQA with sq < sk and sq > sk, causal both ways, one key, one query, head dims 32, 64, 128
    _case(1, 4, 2, 1, 1000, 128, False),
    _case(1, 2, 1, 200, 97, 64, True),
    _case(1, 2, 2, 97, 200, 64, True),
    _case(2, 6, 3, 49, 65, 128, False),
    _case(1, 1, 1, 33, 33, 32, True),
    _case(1, 4, 2, 127, 129, 64, True),
    _case(1, 4, 2, 129, 127, 128, False),
    _case(1, 2, 2, 129, 127, 128, True),
    _case(1, 2, 1, 129, 1, 64, True),
    _case(2, 2, 2, 1, 129, 128, True),
    _case(1, 2, 2, 1, 129, 64, False),
    _case(1, 2, 1, 65, 65, 64, True),         # d=64 causal (its own CUDA tile config), GQA
])
# bottom-right causal alignment, both ways (sq > sk: the first sq - sk queries see no key)
SUITE.add_cases("test", [{**_case(1, 4, 2, 65, 129, 64, True), "causal_align": "bottom-right"},
                         {**_case(1, 2, 2, 129, 65, 128, True), "causal_align": "bottom-right"}])
SUITE.add_cases("quick", [
    _case(1, 8, 8, 512, 512, 64, False),
    _case(1, 8, 8, 512, 512, 128, True),
    _case(1, 8, 2, 512, 512, 64, True),
])
SUITE.add_cases("full", [
    _case(1, 8, 8, 1024, 1024, 64, False),
    _case(1, 8, 8, 1024, 1024, 128, True),
    _case(1, 8, 8, 2048, 2048, 64, True),
    _case(1, 8, 8, 2048, 2048, 128, False),
    _case(1, 8, 2, 2048, 2048, 128, True),
    _case(1, 8, 8, 4096, 4096, 128, True),
], devices=("cpu",))
SUITE.add_cases("full", [
    _case(4, 32, 32, 1024, 1024, 128, False),
    _case(4, 32, 32, 2048, 2048, 128, True),
    _case(2, 32, 32, 4096, 4096, 128, False),
    _case(2, 32, 32, 4096, 4096, 128, True),
    _case(2, 32, 32, 4096, 4096, 64, True),
    _case(2, 32, 8, 4096, 4096, 128, True),
    _case(16, 32, 8, 1, 8192, 128, False),      # decode step against a long KV cache
], devices=("cuda",))


@SUITE.inputs
def make_inputs(case, rng):
    def randn(*shape):
        return torch.randn(*shape, generator=rng, device=case.device, dtype=torch.float32).to(case.dtype)
    return {"q": randn(case.b, case.h, case.sq, case.d),
            "k": randn(case.b, case.hkv, case.sk, case.d),
            "v": randn(case.b, case.hkv, case.sk, case.d)}


@SUITE.flops
def flops(case):
    f = 4 * case.b * case.h * case.sq * case.sk * case.d
    return f // 2 if case.causal else f


@SUITE.bytes
def nbytes(case):
    return case.itemsize * case.d * (2 * case.b * case.h * case.sq + 2 * case.b * case.hkv * case.sk)


def naive(q, k, v, causal: bool, bottom_right: bool = False):
    """Matmul, softmax, matmul: materializes the sq x sk scores (the eager baseline)."""
    h, hkv = q.shape[1], k.shape[1]
    if h != hkv:
        k = k.repeat_interleave(h // hkv, dim=1)
        v = v.repeat_interleave(h // hkv, dim=1)
    s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    if causal:
        sq, sk = s.shape[-2:]
        mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(sk - sq if bottom_right else 0)
        s = s.masked_fill(~mask, float("-inf"))
        if bottom_right and sq > sk:     # queries that see no key: 0, not softmax's NaN
            return torch.softmax(s, dim=-1).nan_to_num(0.0) @ v
    return torch.softmax(s, dim=-1) @ v


@SUITE.reference
def reference(case, q, k, v):
    # One batch element at a time bounds the float64 score matrix's memory.
    br = bottom_right(case)
    return torch.cat([naive(q[i:i + 1], k[i:i + 1], v[i:i + 1], case.causal, br) for i in range(q.shape[0])])


@SUITE.variant("eager")
def eager(case, q, k, v):
    """naive matmul-softmax-matmul in the input dtype"""
    br = bottom_right(case)
    return lambda: naive(q, k, v, case.causal, br)


@SUITE.variant("torch_compile", compiled=True)
def compiled(case, q, k, v):
    """torch.compile of the naive version (inductor fuses what it can)"""
    fn = torch.compile(naive, dynamic=False)
    br = bottom_right(case)
    return lambda: fn(q, k, v, case.causal, br)


def _sdpa(backend_name: str):
    def setup(case, q, k, v):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        backend = getattr(SDPBackend, backend_name)
        kw = {"enable_gqa": True} if case.h != case.hkv else {}
        if bottom_right(case):      # SDPA's own bottom-right mask (flash-attention >= 2.1 semantics)
            from torch.nn.attention.bias import causal_lower_right
            with warnings.catch_warnings():    # "NaNs when sq > sk": SDPA's kernels output 0 there (checked)
                warnings.simplefilter("ignore")
                kw["attn_mask"] = causal_lower_right(case.sq, case.sk)
        else:
            kw["is_causal"] = case.causal

        def run():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, **kw)
        try:
            with torch.no_grad():
                run()
        except RuntimeError as exc:   # the backend refuses this case (dtype, head dim, GQA...)
            if "No available kernel" in str(exc) or "not supported" in str(exc).lower():
                raise Skip(f"sdpa {backend_name.lower()} backend refuses this case: "
                           f"{str(exc).strip().splitlines()[0][:160]}") from None
            raise
        return run
    setup.__doc__ = f"scaled_dot_product_attention forced to the {backend_name.lower()} backend"
    return setup


CUDA_ONLY = Requires(devices=("cuda",))
SUITE.variant("sdpa_math")(_sdpa("MATH"))
SUITE.variant("sdpa_flash")(_sdpa("FLASH_ATTENTION"))       # on the CPU: torch's own flash kernel
SUITE.variant("sdpa_efficient", requires=CUDA_ONLY)(_sdpa("EFFICIENT_ATTENTION"))
SUITE.variant("sdpa_cudnn", requires=Requires(devices=("cuda",), min_cc=(8, 0)))(_sdpa("CUDNN_ATTENTION"))

SUITE.add("cpp", cpp.ATTENTION)
SUITE.add("cpp_amx", cpp.ATTENTION_AMX)
SUITE.add("cuda_flash", cuda.ATTENTION)
SUITE.add("cupy_flash", cupy_launch.variant(cuda.ATTENTION))    # the same .cu, NVRTC via CuPy
SUITE.add("triton", triton_attention.VARIANT)
