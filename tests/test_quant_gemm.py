"""The quantized GEMM kernels (kernels/cpp/quant_int8_gemm_v3.cpp and its rung below quant_int8_gemm.cpp,
quant_int4_gemv.cpp) beyond the suite's test cases (tests/test_cpp_kernels.py checks those at every dtype): exact
integer results at the extremes of int8 (the u8 + compensation trick of vpdpbusd), v3's tile edges (every row count
of its 6-row tile, partial 64-channel panels, K % 4 tails, several L2 row blocks, row strides), the quant/ int4
layout end to end, thread counts, bad arguments."""
from __future__ import annotations

import pytest
import torch

from harness.registry import all_suites
from kernels.cpp import lib as cpp
from kernels.native import NativeError
from quant import int4_weight_only as i4

LIB = cpp.load()
pytestmark = pytest.mark.skipif(LIB is None or cpp.vnni_available() is not None,
                                reason=cpp.load_error() or "no AVX512-VNNI on this CPU")


W8_RUNGS = {"v3": cpp.GEMM_W8A8, "v2": cpp.GEMM_W8A8_V2}


@pytest.fixture(params=list(W8_RUNGS))
def rung(request):
    return W8_RUNGS[request.param]


def _w8a8(a, w, sa=None, sw=None, dtype=torch.float32, threads=None, kernel=cpp.GEMM_W8A8):
    m, n = a.shape[0], w.shape[0]
    sa = torch.ones(m) if sa is None else sa
    sw = torch.ones(n) if sw is None else sw
    out = torch.full((m, n), float("nan"), dtype=dtype)
    if threads is not None:
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
    try:
        return kernel(a=a, sa=sa, w=w, sw=sw, out=out)
    finally:
        if threads is not None:
            torch.set_num_threads(old)


@pytest.mark.parametrize("k", [1, 3, 4, 64, 131, 1027])
def test_int8_extremes_are_exact(k, rung):
    """-128 activations and weights, +127, zeros: every product exactly (the u8 offset and its compensation)."""
    m, n = 11, 37
    g = torch.Generator().manual_seed(k)
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    w = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    a[0], a[1], w[0], w[1], a[2] = -128, 127, -128, 127, 0
    got = _w8a8(a, w, kernel=rung)
    want = (a.long() @ w.long().t()).float()
    assert torch.equal(got, want), (got - want).abs().max()


def test_int8_scales_and_bf16_output(rung):
    g = torch.Generator().manual_seed(1)
    a = torch.randint(-127, 128, (5, 96), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (40, 96), generator=g, dtype=torch.int8)
    sa, sw = torch.rand(5, generator=g) + 0.1, torch.rand(40, generator=g) + 0.1
    ref = (a.double() @ w.double().t()) * sa.double()[:, None] * sw.double()
    torch.testing.assert_close(_w8a8(a, w, sa, sw, kernel=rung).double(), ref, rtol=1e-6, atol=1e-3)
    got = _w8a8(a, w, sa, sw, dtype=torch.bfloat16, kernel=rung)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), ref, rtol=8e-3, atol=1e-2)
    # bf16 output rounded to nearest even from the fp32 result (v3 converts 16 lanes at a time, v2 one by one)
    assert torch.equal(got, _w8a8(a, w, sa, sw, kernel=rung).bfloat16())


# v3's edges: M = 1..7 and 13, 200 (every row count of the 6-row tile; 200 x K=1024 spans two L2 row blocks of
# 192 rows), N = 1, 16, 47, 50, 64, 65, 130 (1..4 blocks of 16 in a 64-channel panel, ragged blocks),
# K = 1..9, 67 (every K % 4)
V3_EDGES = ([(m, 50, 67) for m in range(1, 8)] + [(13, n, 9) for n in (1, 16, 47, 64, 65, 130)]
            + [(5, 33, k) for k in range(1, 10)] + [(200, 70, 1024)])


@pytest.mark.parametrize("m,n,k", V3_EDGES, ids=[f"{m}x{n}x{k}" for m, n, k in V3_EDGES])
def test_int8_tile_edges_are_exact(m, n, k, rung):
    g = torch.Generator().manual_seed(m * 10007 + n * 101 + k)
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    w = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    a[:, -1], w[:, -1] = -128, 127             # the last k (the K % 4 tail's) at the extremes in every row
    assert torch.equal(_w8a8(a, w, kernel=rung), (a.long() @ w.long().t()).float())


def test_int8_row_strides_and_padded_output(rung):
    """A with a row stride > K (a slice of a wider tensor) and out with one > N: only out's own columns written."""
    g = torch.Generator().manual_seed(5)
    wide = torch.randint(-128, 128, (14, 80), generator=g, dtype=torch.int8)
    a, w = wide[:, 3:70], torch.randint(-128, 128, (37, 67), generator=g, dtype=torch.int8)
    big = torch.full((14, 50), float("nan"))
    rung(a=a, sa=torch.ones(14), w=w, sw=torch.ones(37), out=big[:, :37])
    assert torch.equal(big[:, :37], (a.long() @ w.long().t()).float())
    assert big[:, 37:].isnan().all()


def test_rungs_share_the_packed_weights():
    """v2 and v3 read the same packed layout (kb_cpp_pack_w8_vnni): one packed tensor, the same exact product."""
    g = torch.Generator().manual_seed(6)
    a = torch.randint(-128, 128, (9, 131), generator=g, dtype=torch.int8)
    w = torch.randint(-128, 128, (40, 131), generator=g, dtype=torch.int8)
    packed = cpp.pack_w8_vnni(w)
    assert packed.dtype == torch.uint8 and cpp.pack_w8_vnni(packed) is packed     # packed once, passed as it is
    outs = [torch.full((9, 40), float("nan")) for _ in W8_RUNGS]
    for kernel, out in zip(W8_RUNGS.values(), outs):
        kernel(a=a, sa=torch.ones(9), w=packed, sw=torch.ones(40), out=out)
        assert torch.equal(out, (a.long() @ w.long().t()).float())


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_counts_give_the_same_answer(threads):
    g = torch.Generator().manual_seed(2)
    a = torch.randint(-128, 128, (130, 200), generator=g, dtype=torch.int8)
    w = torch.randint(-128, 128, (150, 200), generator=g, dtype=torch.int8)
    for kernel in W8_RUNGS.values():
        assert torch.equal(_w8a8(a, w, threads=threads, kernel=kernel), (a.long() @ w.long().t()).float())
    a = torch.randint(-128, 128, (400, 1024), generator=g, dtype=torch.int8)     # v3: three L2 row blocks
    assert torch.equal(_w8a8(a, w[:20].repeat(1, 6)[:, :1024], threads=threads),
                       (a.long() @ w[:20].repeat(1, 6)[:, :1024].long().t()).float())
    x = torch.randn(9, 256, generator=g)
    q = torch.randint(0, 16, (70, 256), generator=g, dtype=torch.uint8)
    s, z = torch.rand(70, 4, generator=g), torch.randint(0, 16, (70, 4), generator=g, dtype=torch.uint8)
    out1 = torch.empty(9, 70)
    cpp.GEMM_W4A16(x=x, packed=i4.pack(q), scale=s, zero=z, out=out1, case=_Group(64))
    torch.set_num_threads(threads)
    out2 = torch.empty(9, 70)
    try:
        cpp.GEMM_W4A16(x=x, packed=i4.pack(q), scale=s, zero=z, out=out2, case=_Group(64))
    finally:
        torch.set_num_threads(2)
    assert torch.equal(out1, out2)


class _Group:
    """The case parameters a direct call of GEMM_W4A16 needs (the group size)."""
    def __init__(self, group):
        self.params = {"group": group}

    def get(self, k, d=None):
        return self.params.get(k, d)


@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_kernel_computes_a_quantized_layer_of_quant(group):
    """quant/'s Int4WeightOnlyLinear storage straight into the kernel: the same product as the layer."""
    from torch import nn
    torch.manual_seed(group)
    lin = nn.Linear(384, 96, bias=False)
    layer = i4.Int4WeightOnlyLinear(lin, group)
    x = torch.randn(3, 384)
    out = torch.full((3, 96), float("nan"))
    cpp.GEMM_W4A16(x=x, packed=layer.packed, scale=layer.scale, zero=layer.zero, out=out, case=_Group(group))
    torch.testing.assert_close(out.double(), x.double() @ layer.dequantize(torch.float64).t(), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("rung_name", list(W8_RUNGS))
def test_bad_arguments_are_errors_not_crashes(rung_name):
    kernel = W8_RUNGS[rung_name]
    x, out = torch.randn(2, 96), torch.empty(2, 8)
    packed, s, z = torch.zeros(8, 48, dtype=torch.uint8), torch.ones(8, 2), torch.zeros(8, 2, dtype=torch.uint8)
    with pytest.raises(NativeError, match="group 48 must be a multiple of 32 dividing K=96"):
        cpp.GEMM_W4A16(x=x, packed=packed, scale=s, zero=z, out=out, case=_Group(48))
    with pytest.raises(NativeError, match="group 64 must be a multiple of 32 dividing K=96"):
        cpp.GEMM_W4A16(x=x, packed=packed, scale=s, zero=z, out=out, case=_Group(64))
    a, w = torch.zeros(2, 70000, dtype=torch.int8), torch.zeros(3, 70000, dtype=torch.int8)
    with pytest.raises(NativeError, match="overflow"):
        _w8a8(a, w, kernel=kernel)
    with pytest.raises(NativeError, match="output dtype"):
        kernel(a=a[:, :8], sa=torch.ones(2), w=w[:, :8], sw=torch.ones(3), out=torch.empty(2, 3).half())


def test_quant_gemm_declares_weights_at_their_bit_width():
    suite = all_suites()["quant_gemm"]
    w8 = next(c for c in suite.cases("quick") if c.scheme == "w8a8" and c.m == 1)
    w4 = next(c for c in suite.cases("quick") if c.scheme == "w4" and c.m == 1 and c.n == w8.n and c.k == w8.k)
    assert suite.work(w8)[0] == suite.work(w4)[0] == 2 * w8.n * w8.k
    # int4: half a byte per weight + 5 bytes per group of 64; int8: one byte per weight
    assert suite.work(w4)[1] < 0.6 * suite.work(w8)[1]
    assert suite.work(w8)[1] >= w8.n * w8.k


# ---- the int4 v3 kernel (kernels/cpp/quant_int4_dp.cpp: AVX512-BF16, its own channel-block packing) -----------
def _w4_dp_skip():
    return cpp.w4_dp_reason()


def _int4_operands(n, k, group, g):
    q = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    s = 0.05 + 0.1 * torch.rand(n, k // group, generator=g)
    z = torch.randint(0, 16, (n, k // group), generator=g, dtype=torch.uint8)
    w = s.double().repeat_interleave(group, 1) * (q.double() - z.double().repeat_interleave(group, 1))
    return i4.pack(q), s, z, w


def _w4_dp(x, packed, s, z, group, out=None):
    out = torch.full((x.shape[0], packed.shape[0]), float("nan"), dtype=x.dtype) if out is None else out
    cpp.GEMM_W4A16_DP(x=x, packed=packed, scale=s, zero=z, out=out, case=_Group(group))
    return out


def _dp_bound(x, w, dtype):
    """What v3 may be off by, per output. bf16 x: exact products, fp32 accumulation, the output rounded to bf16
    (2^-9 relative) -- the bf16 bound is that rounding plus 2^-20 of sum |x w|. fp32 x: split into bf16 hi + lo,
    |x - hi - lo| <= 2^-18 |x|, so 2^-17 of sum |x w| covers the split and the fp32 sums (1e-6 of it is typical)."""
    mag = x.double().abs() @ w.abs().t()
    if dtype == torch.float32:
        return 2.0 ** -17 * mag + 1e-30
    return 2.0 ** -8 * (x.double() @ w.t()).abs() + 2.0 ** -20 * mag + 1e-30


@pytest.mark.skipif(_w4_dp_skip() is not None, reason=str(_w4_dp_skip()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_dp_every_row_tile_and_channel_tail(group, dtype):
    """Every row count 1..17 (the 1-8 row tiles with 4, 2 and 1 partial sums each; 9-16 as two tiles, 17 as three)
    and 64, 65, 129 (chunks of 64 rows) at N = 129 / 33 (one channel in the last block of 16), then N = 1, 15, 16,
    17, 127, 1000 at M = 1, 5 and 9; K of one group and of 3 (the group loop): against float64 within the bound of
    _dp_bound, every output written (NaN poison)."""
    g = torch.Generator().manual_seed(group)
    shapes = [(m, 129, 3 * group) for m in range(1, 18)] + [(m, 33, group) for m in (64, 65, 129)]   # row chunks
    shapes += [(m, n, k) for n in (1, 15, 16, 17, 127, 1000) for m in (1, 5, 9) for k in (group, 3 * group)]
    for m, n, k in shapes:
        packed, s, z, w = _int4_operands(n, k, group, g)
        x = torch.randn(m, k, generator=g).to(dtype)
        got = _w4_dp(x, packed, s, z, group).double()
        err = (got - x.double() @ w.t()).abs()
        bound = _dp_bound(x, w, dtype)
        assert not got.isnan().any(), (m, n, k)
        assert (err <= bound).all(), (m, n, k, (err / bound).max().item())


@pytest.mark.skipif(_w4_dp_skip() is not None, reason=str(_w4_dp_skip()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int4_dp_strided_rows_and_no_write_past_n(dtype):
    """x a column slice of a wider tensor (odd row stride for bf16: the pairs are re-copied per call), out a slice
    of a wider buffer whose other columns must keep their sentinel (the masked store of the last block)."""
    g = torch.Generator().manual_seed(7)
    m, n, k, group = 11, 37, 192, 64
    packed, s, z, w = _int4_operands(n, k, group, g)
    x = torch.randn(m, k + 5, generator=g).to(dtype)[:, 3:3 + k]
    wide = torch.full((m, n + 13), 1234.0, dtype=dtype)
    _w4_dp(x, packed, s, z, group, out=wide[:, :n])
    err = (wide[:, :n].double() - x.double() @ w.t()).abs()
    assert (err <= _dp_bound(x, w, dtype)).all()
    assert (wide[:, n:] == 1234.0).all()


def _unpack_dp(blob, n, k, group):
    """The documented layout read back in Python: per 16-channel block and group, G/8 slabs of 64 bytes (lane i =
    channel i; k = 8j + 2p in bits 4p.., k + 1 in bits 16 + 4p..), then 16 fp32 16 s, then 16 u8 z."""
    nb, ng = (n + 15) // 16, k // group
    per_group = 8 * group + 80
    b = blob.reshape(nb, ng, per_group)
    lanes = b[:, :, :8 * group].contiguous().view(torch.int32).reshape(nb, ng, group // 8, 16).long() & 0xFFFFFFFF
    q = torch.empty(nb, 16, ng, group // 8, 8, dtype=torch.long)
    for p in range(4):
        q[..., 2 * p] = ((lanes >> (4 * p)) & 0xF).permute(0, 3, 1, 2)
        q[..., 2 * p + 1] = ((lanes >> (16 + 4 * p)) & 0xF).permute(0, 3, 1, 2)
    s16 = b[:, :, 8 * group:8 * group + 64].contiguous().view(torch.float32).reshape(nb, ng, 16)
    z = b[:, :, 8 * group + 64:].reshape(nb, ng, 16)
    return (q.reshape(nb * 16, k)[:n], (s16 / 16).permute(0, 2, 1).reshape(nb * 16, ng)[:n],
            z.permute(0, 2, 1).reshape(nb * 16, ng)[:n], q.reshape(nb * 16, k)[n:], s16.permute(0, 2, 1)
            .reshape(nb * 16, ng)[n:])


@pytest.mark.skipif(cpp.load() is None, reason=str(cpp.load_error()))
@pytest.mark.parametrize("n,k,group", [(1, 32, 32), (33, 128, 64), (40, 256, 128)])
def test_int4_dp_packing_is_the_documented_layout(n, k, group):
    """pack_w4_dp against the header's layout decoded independently: every nibble, scale and zero point in place,
    the padding channels of the last block zero (weight and scale), the size 8G + 80 bytes per block and group."""
    g = torch.Generator().manual_seed(n)
    q = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    s = torch.rand(n, k // group, generator=g)
    z = torch.randint(0, 16, (n, k // group), generator=g, dtype=torch.uint8)
    blob = cpp.pack_w4_dp(i4.pack(q), s, z, group)
    assert blob.numel() == (n + 15) // 16 * (k // group) * (8 * group + 80)
    q2, s2, z2, q_pad, s_pad = _unpack_dp(blob, n, k, group)
    assert torch.equal(q2, q.long()) and torch.equal(s2, s) and torch.equal(z2, z)
    assert (q_pad == 0).all() and (s_pad == 0).all()


@pytest.mark.skipif(_w4_dp_skip() is not None, reason=str(_w4_dp_skip()))
def test_int4_dp_threads_and_bad_arguments():
    g = torch.Generator().manual_seed(3)
    packed, s, z, _ = _int4_operands(70, 256, 64, g)
    x = torch.randn(9, 256, generator=g)
    out1 = _w4_dp(x, packed, s, z, 64)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out2 = _w4_dp(x, packed, s, z, 64)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(out1, out2)
    x96, p96, s96, z96 = torch.randn(2, 96), torch.zeros(8, 48, dtype=torch.uint8), torch.ones(8, 2), \
        torch.zeros(8, 2, dtype=torch.uint8)
    with pytest.raises(ValueError, match="group=48"):
        _w4_dp(x96, p96, s96, z96, 48)
    with pytest.raises(ValueError, match="group=64"):
        _w4_dp(x96, p96, s96, z96, 64)
    with pytest.raises(NativeError, match="group 64 must be a multiple of 32 dividing K=96"):
        blob = cpp.pack_w4_dp(p96, torch.ones(8, 3), torch.zeros(8, 3, dtype=torch.uint8), 32)
        cpp.GEMM_W4A16_DP(x=x96, packed=p96, w4p=blob, out=torch.empty(2, 8), case=_Group(64))
    with pytest.raises(NativeError, match="dtype 2"):
        cpp.GEMM_W4A16_DP(x=x96.half(), packed=p96, w4p=blob, out=torch.empty(2, 8).half(), case=_Group(32))


@pytest.mark.skipif(_w4_dp_skip() is not None, reason=str(_w4_dp_skip()))
def test_int4_dp_is_skipped_on_the_avx2_path():
    """kb_cpp_set_isa('avx2'): the suite's cpp_w4 row is skipped with the reason, never run on the wrong ISA."""
    from harness.registry import Case, Skip
    suite = all_suites()["quant_gemm"]
    case = Case("quant_gemm", dict(scheme="w4", m=1, n=16, k=64, group=32), "cpu", "float32")
    inputs = suite.make_inputs(case, 0)
    cpp.set_isa("avx2")
    try:
        with pytest.raises(Skip, match="AVX-512"):
            suite.variants["cpp_w4"].setup(case, **inputs)
    finally:
        cpp.set_isa(None)


@pytest.mark.skipif(_w4_dp_skip() is not None, reason=str(_w4_dp_skip()))
def test_int4_model_layers_run_v3_on_their_packed_copy():
    """quant/cpp_kernels.py's int4 layer keeps v3's copy (packed once, counted as its storage) and computes the
    product of its dequantized weight."""
    from torch import nn

    from quant.cpp_kernels import Int4CppLinear
    torch.manual_seed(5)
    layer = Int4CppLinear(nn.Linear(384, 72, bias=False), 64)
    assert layer.w4p is not None and layer.storage_bytes() == layer.w4p.numel() == 5 * 6 * (8 * 64 + 80)
    x = torch.randn(3, 384)
    want = x.double() @ layer.dequantize(torch.float64).t()
    got = layer(x).double()
    assert ((got - want).abs() <= _dp_bound(x, layer.dequantize(torch.float64), torch.float32)).all()
