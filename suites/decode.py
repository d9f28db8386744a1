"""Decode attention over a paged KV cache: one query token per sequence (a few for speculative decoding),
grouped-query heads, ragged lengths, the cache in vLLM's paged layout (inference/paged.py).

Shapes: q [b, sq, h, d]; k_cache, v_cache [num_blocks, bs, hkv, d] (bs = 16 tokens per block by default),
block_tables [b, max_blocks] int32 (a random permutation of the blocks: pages are not contiguous), seq_lens
[b] int32; out [b, sq, h, d]. Query i of sequence j sees keys 0 .. len_j - sq + i. `kv` = "native" stores the
cache in the suite dtype; "int8" (per-block, per-head scales) and "fp8" (e4m3, per-head scales) store it
quantized, and the reference is computed on the dequantized values (the kernels' arithmetic is checked, the
format's own rounding is measured in tests/test_kv_cache.py).

Work: memory-bound. Bytes = the KV rows read (sum of lengths x hkv x d x 2 tensors x the cache's element size)
+ their scales (4 bytes per block, head and tensor) + q + out + block tables and lengths: each KV row is read
once for all the h / hkv query heads that share it. FLOPs = 4 x h x d x sq x sum of lengths (QK^T and PV).
So the rows' GB/s and `pct_peak_measured` (against the measured sequential read, `bench.py --suite peak`'s
`read` probe: the suite declares bandwidth="read"; the copy where no read is stored) are the figures of merit.

Baselines: `sdpa_gathered` (the baseline: gather the pages into a contiguous padded cache, then SDPA with a
length/causal mask: what a framework without a paged kernel does, gather included in the timing),
`sdpa_pregathered` (the same SDPA with the gather done outside the timing: the difference of the two rows is
the gather's cost), `flex_attention` (torch.compile'd flex_attention over the gathered cache with a block
mask that skips the padding), `flashinfer` (FlashInfer's paged decode on a GPU, the anchor; skipped elsewhere).
Kernels: `cpp` (kernels/cpp/decode_paged_dp.cpp, v2, where it applies; else v1), `cpp_v1` (kernels/cpp/decode_paged.cpp,
the ladder's rung), `triton` (kernels/triton/decode_paged.py), `cuda`
(kernels/cuda/decode_paged.cu).
"""
from __future__ import annotations

import torch

from deploy import cupy_launch
from harness.registry import Requires, Skip, Suite
from inference import paged, quant
from kernels.cpp import lib as cpp
from kernels.cuda import lib as cuda
from kernels.triton import decode_paged as triton_decode

KV_FORMATS = {"native": None, "int8": "int8", "fp8": "fp8_e4m3"}


def _name(p):
    return (f"b{p['b']}h{p['h']}kv{p['hkv']}-ctx{p['ctx']}-d{p['d']}" + (f"-q{p['sq']}" if p["sq"] > 1 else "")
            + ("-ragged" if p["ragged"] else "") + (f"-bs{p['bs']}" if p["bs"] != 16 else "")
            + (f"-{p['kv']}" if p["kv"] != "native" else ""))


SUITE = Suite(
    name="decode",
    description="paged decode attention (GQA, ragged lengths, bf16/fp32/int8/fp8 KV): memory-bound",
    baseline="sdpa_gathered",
    dtypes=("float32", "bfloat16", "float16"),
    # Outputs are attention averages of v rows (|out| ~ 1/sqrt(len)); against the float64 reference on the same
    # (rounded / dequantized) cache. bf16/fp16: the output's own rounding (2^-8 / 2^-11) plus the inputs' rounding
    # inside a torch kernel that computes in the storage dtype.
    tolerances={"float32": (2e-6, 2e-5), "bfloat16": (1e-2, 2e-2), "float16": (2e-3, 3e-3)},
    case_name=_name,
    applies=lambda case, variant: variant != "flex_attention" or _flex_applies(case),
    bandwidth="read",                # rows read the cache: % of the measured sequential read (peak suite `read`)
)

# flex_attention compiles once per case (10-20 s here): of the odd test shapes, only the speculative one (sq > 1,
# causal inside the new tokens) runs it, so the test suite stays short; every benchmark case runs it.
FLEX_TEST_CASE = "b2h4kv1-ctx33-d128-q3-ragged"


def _flex_applies(case) -> bool:
    return case.name == FLEX_TEST_CASE or case.name not in _TEST_NAMES


def _case(b, ctx, *, h=8, hkv=2, d=128, sq=1, ragged=False, kv="native", bs=16):
    return dict(b=b, h=h, hkv=hkv, d=d, ctx=ctx, sq=sq, ragged=ragged, kv=kv, bs=bs)


# Odd sizes: lengths that end inside a block, one-token sequences, block sizes 5 and 16, GQA groups 1..4, head
# dims 32/64/128, speculative queries (sq > 1), every KV format.
SUITE.add_cases("test", [
    _case(3, 127, h=4, hkv=2, d=64, ragged=True),
    _case(2, 129, h=8, hkv=2, d=128, kv="int8"),
    _case(2, 33, h=4, hkv=1, d=128, sq=3, ragged=True),
    _case(1, 1, h=2, hkv=2, d=64),
    _case(2, 1000, h=2, hkv=1, d=32, ragged=True, kv="fp8"),
    _case(2, 65, h=6, hkv=3, d=32, sq=2, ragged=True, kv="int8", bs=5),
    _case(5, 47, h=4, hkv=4, d=128, ragged=True, bs=5),
    _case(1, 301, h=4, hkv=1, d=64, sq=4, kv="int8"),    # 16 rows per kv head, split chunks, sq 4
    # short contexts (2-5 keys): where an approximation in the scores shows most (an int8-quantized q failed here
    # at 2x the bf16 tolerance; decode_paged_dp.cpp's header)
    _case(4, 5, h=8, hkv=2, d=128, ragged=True, kv="int8"),
    # int8 KV: 8 rows at d 96 (q's slices reloaded, DC = 0) over steps of 64 tokens and a tail; 5 rows (QK blocks
    # of 4 + 1, PV 5); d 80 (not a multiple of 32: v1 for int8, the fp32 path for the float cache)
    _case(3, 77, h=8, hkv=1, d=96, ragged=True, kv="int8"),
    _case(2, 150, h=5, hkv=1, d=128, kv="int8"),
    _case(2, 90, h=6, hkv=2, d=80, ragged=True, kv="int8"),
    _case(2, 90, h=6, hkv=2, d=80, ragged=True),
])
_TEST_NAMES = {c.name for c in SUITE.cases("test")}
# CPU: heads scaled from 32/8 to 8/2 (the same group of 4 query heads per KV head), head dim 128.
SUITE.add_cases("quick", [
    _case(8, 2048), _case(8, 2048, ragged=True), _case(8, 2048, kv="int8"), _case(1, 8192),
    _case(32, 512, sq=4),
], devices=("cpu",))
SUITE.add_cases("full", [_case(b, ctx, ragged=r) for b in (1, 8, 32, 64) for ctx in (512, 2048, 8192)
                         for r in (False, True)]
                + [_case(b, ctx, kv=kv) for b in (8, 32) for ctx in (2048, 8192) for kv in ("int8", "fp8")]
                + [_case(8, 2048, sq=4), _case(32, 2048, sq=4, ragged=True)], devices=("cpu",))
GPU = dict(h=32, hkv=8, d=128)
SUITE.add_cases("quick", [_case(32, 2048, **GPU), _case(32, 8192, ragged=True, **GPU), _case(32, 8192, kv="int8", **GPU),
                          _case(64, 2048, sq=4, **GPU)], devices=("cuda",))
SUITE.add_cases("full", [_case(b, ctx, ragged=r, **GPU) for b in (1, 8, 32, 64) for ctx in (512, 2048, 8192, 32768)
                         for r in (False, True)]
                + [_case(b, ctx, kv=kv, **GPU) for b in (8, 32) for ctx in (2048, 8192) for kv in ("int8", "fp8")],
                devices=("cuda",))


def lengths(case) -> list[int]:
    """The sequence lengths of a case: all `ctx`, or ragged (uniform in [ctx/8, ctx], the longest = ctx), drawn
    from the case alone so the declared bytes are those the kernels read whatever the seed."""
    if not case.ragged or case.b == 1:
        return [case.ctx] * case.b
    g = torch.Generator().manual_seed(case.b * 7919 + case.ctx)
    lens = (case.ctx / 8 + torch.rand(case.b, generator=g) * (case.ctx - case.ctx / 8)).long().clamp(case.sq, case.ctx)
    lens[int(torch.randint(case.b, (1,), generator=g))] = case.ctx
    return [max(int(x), case.sq) for x in lens]


def kv_dtype(case) -> torch.dtype:
    fmt = KV_FORMATS[case.kv]
    return case.dtype if fmt is None else quant.FORMATS[fmt][0]


@SUITE.inputs
def make_inputs(case, rng):
    dev = case.device
    lens = lengths(case)
    pages = [-(-n // case.bs) for n in lens]
    nb = sum(pages) + 3                                  # a few blocks no sequence uses
    perm = torch.randperm(nb, generator=rng, device=dev).to(torch.int32)
    tables = torch.full((case.b, max(pages)), -1, dtype=torch.int32, device=dev)
    at = 0
    for i, p in enumerate(pages):
        tables[i, :p] = perm[at:at + p]
        at += p

    def randn(*shape):
        return torch.randn(*shape, generator=rng, device=dev, dtype=torch.float32)
    q = randn(case.b, case.sq, case.h, case.d).to(case.dtype)
    k, v = randn(nb, case.bs, case.hkv, case.d), randn(nb, case.bs, case.hkv, case.d)
    inputs = dict(q=q, block_tables=tables, seq_lens=torch.tensor(lens, dtype=torch.int32, device=dev))
    fmt = KV_FORMATS[case.kv]
    if fmt is None:
        return dict(inputs, k_cache=k.to(case.dtype), v_cache=v.to(case.dtype), k_scale=None, v_scale=None)
    for name, x in (("k", k), ("v", v)):
        if case.kv == "int8":      # per block and head: [nb, hkv]
            s = quant.scale_for(x.abs().amax(dim=(1, 3)), fmt)
            inputs[f"{name}_cache"] = quant.quantize(x, s[:, None, :, None], fmt)
        else:                      # per head: [hkv], seen by the kernels as [nb, hkv] with block stride 0
            s = quant.scale_for(x.abs().amax(dim=(0, 1, 3)), fmt)
            inputs[f"{name}_cache"] = quant.quantize(x, s[None, None, :, None], fmt)
            s = quant.scales_view(s, nb)
        inputs[f"{name}_scale"] = s
    return inputs


@SUITE.flops
def flops(case):
    return 4 * case.h * case.d * case.sq * sum(lengths(case))


@SUITE.bytes
def nbytes(case):
    lens = lengths(case)
    kv_item = torch.empty((), dtype=kv_dtype(case)).element_size()
    kv = 2 * sum(lens) * case.hkv * case.d * kv_item
    scales = 2 * sum(-(-n // case.bs) for n in lens) * case.hkv * 4 if case.kv != "native" else 0
    qo = 2 * case.b * case.sq * case.h * case.d * case.itemsize
    return kv + scales + qo + 4 * case.b * (1 + -(-max(lens) // case.bs))


@SUITE.reference
def reference(case, q, k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale):
    return paged.reference(q, k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale)


def _checked(q, k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale):
    paged.validate(q, k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale)


@SUITE.variant("sdpa_gathered")
def sdpa_gathered(case, q, k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale):
    """gather the pages into a contiguous cache (dequantized), then SDPA with a length/causal mask: both timed"""
    _checked(q, k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale)

    def run():
        k, v = paged.gather(k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale, dtype=q.dtype)
        return paged.sdpa_gathered(q, k, v, seq_lens)
    return run


@SUITE.variant("sdpa_pregathered")
def sdpa_pregathered(case, q, k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale):
    """SDPA over the contiguous cache gathered outside the timing (gather cost = sdpa_gathered - this)"""
    _checked(q, k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale)
    k, v = paged.gather(k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale, dtype=q.dtype)
    return lambda: paged.sdpa_gathered(q, k, v, seq_lens)


@SUITE.variant("flex_attention", compiled=True)
def flex(case, q, k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale):
    """torch.compile'd flex_attention over the gathered cache, a block mask skipping the padding (gather timed)"""
    _checked(q, k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale)
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as exc:
        raise Skip(f"flex_attention unavailable: {exc}") from None
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)   # one compile per case
    sq, b = case.sq, case.b
    maxlen = int(seq_lens.max())
    lens = seq_lens.to(torch.int64)

    def mask_mod(bi, hi, qi, kj):
        return kj <= lens[bi] - sq + qi
    try:
        mask = create_block_mask(mask_mod, b, None, sq, maxlen, device=q.device, BLOCK_SIZE=128)
    except Exception as exc:   # noqa: BLE001 -- a torch build that cannot build the mask here: a skipped row
        raise Skip(f"flex_attention block mask failed here: {type(exc).__name__}: {str(exc)[:120]}") from None
    fn = torch.compile(flex_attention, dynamic=False)
    gqa = case.h != case.hkv

    def run():
        k, v = paged.gather(k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale, dtype=q.dtype)
        o = fn(q.transpose(1, 2), k, v, block_mask=mask, enable_gqa=gqa)
        return o.transpose(1, 2)
    return run


@SUITE.variant("flashinfer", requires=Requires(devices=("cuda",), packages=("flashinfer",)))
def flashinfer_decode(case, q, k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale):
    """FlashInfer's BatchDecodeWithPagedKVCacheWrapper on the same pages (NHD layout = vLLM's): the GPU anchor"""
    _checked(q, k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale)
    if case.sq != 1:
        raise Skip("FlashInfer's batch decode takes one query token per sequence (sq > 1 is its prefill API)")
    if case.kv != "native":
        raise Skip("quantized KV: FlashInfer's fp8 decode takes per-tensor scales, not these per-head/per-block ones")
    import flashinfer
    bs = case.bs
    lens = seq_lens.to(torch.int64)
    pages = (lens + bs - 1) // bs
    indptr = torch.zeros(case.b + 1, dtype=torch.int32, device=q.device)
    indptr[1:] = pages.cumsum(0)
    used = torch.arange(block_tables.shape[1], device=q.device)[None, :] < pages[:, None]
    indices = block_tables[used].to(torch.int32)
    last = ((lens - 1) % bs + 1).to(torch.int32)
    workspace = torch.empty(128 << 20, dtype=torch.uint8, device=q.device)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD")
    wrapper.plan(indptr, indices, last, case.h, case.hkv, case.d, bs, pos_encoding_mode="NONE", data_type=q.dtype)
    q3 = q[:, 0].contiguous()
    return lambda: wrapper.run(q3, (k_cache, v_cache)).unsqueeze(1)


SUITE.add("cpp", cpp.DECODE_PAGED)
SUITE.add("cpp_v1", cpp.DECODE_PAGED_V1)        # the ladder: v1, whose figures decode_paged_dp.cpp quotes
SUITE.add("triton", triton_decode.VARIANT)
SUITE.add("cuda", cuda.DECODE_PAGED)
SUITE.add("cupy", cupy_launch.variant(cuda.DECODE_PAGED))    # the same .cu, NVRTC via CuPy
