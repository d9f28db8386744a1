"""The paged decode kernels' entry points and setup: bad arguments are refused with a clear message before any
memory is touched (the C entry point checks them itself, even when called directly), results do not depend on
the thread count or on how the context is split, and fresh inputs change the answer. The kernels against the
reference at every odd test shape: tests/test_cpp_kernels.py (its table takes every registered cpp variant)."""
from __future__ import annotations

import pytest
import torch

from harness.registry import all_suites
from inference import DecodeArgumentError
from inference.paged import reference
from kernels.cpp import lib as cpp
from kernels.native import NativeError

LIB = cpp.load()
needs_cpp = pytest.mark.skipif(LIB is None, reason=cpp.load_error() or cpp.BUILD_HINT)
SUITE = all_suites()["decode"]


def _inputs(b=3, sq=1, h=8, hkv=2, d=64, bs=16, lens=(40, 17, 33), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    pages = [-(-n // bs) for n in lens]
    nb = sum(pages) + 2
    perm = torch.randperm(nb, generator=g).to(torch.int32)
    tables = torch.full((b, max(pages)), -1, dtype=torch.int32)
    at = 0
    for i, p in enumerate(pages):
        tables[i, :p] = perm[at:at + p]
        at += p
    return dict(q=torch.randn(b, sq, h, d, generator=g).to(dtype),
                k_cache=torch.randn(nb, bs, hkv, d, generator=g).to(dtype),
                v_cache=torch.randn(nb, bs, hkv, d, generator=g).to(dtype),
                block_tables=tables, seq_lens=torch.tensor(lens, dtype=torch.int32), k_scale=None, v_scale=None)


def _call(x, threads=None):
    out = torch.full_like(x["q"], float("nan"))
    if threads is not None:
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
    try:
        return cpp.DECODE_PAGED(out=out, **x)
    finally:
        if threads is not None:
            torch.set_num_threads(old)


@needs_cpp
@pytest.mark.parametrize("breakage,match", [
    (lambda x: x["block_tables"].__setitem__((1, 0), 10_000), "outside the cache"),
    (lambda x: x["block_tables"].__setitem__((2, 1), -3), "outside the cache"),
    (lambda x: x["seq_lens"].__setitem__(0, 49), "need 4 blocks, the table has 3"),
    (lambda x: x.__setitem__("q", x["q"][:, :, :7].contiguous()), "not a multiple"),
    (lambda x: x.__setitem__("v_cache", x["v_cache"][:-1].contiguous()), "v_cache"),
    (lambda x: x.__setitem__("v_cache", x["v_cache"][:, :, :1].contiguous()), "v_cache"),
    (lambda x: x.__setitem__("q", x["q"][..., :32].contiguous()), "head_dim of q"),
    (lambda x: x.__setitem__("seq_lens", x["seq_lens"][:2].contiguous()), "2 lengths"),
    (lambda x: x.__setitem__("block_tables", x["block_tables"][:2].contiguous()), "2 block-table rows"),
    (lambda x: x.__setitem__("k_scale", torch.ones(9, 2)), "take both scales"),
    (lambda x: x.update(k_cache=x["k_cache"].to(torch.int8), v_cache=x["v_cache"].to(torch.int8),
                        k_scale=torch.ones(3, 2), v_scale=torch.ones(3, 2)), "want \\[num_blocks"),
    (lambda x: x["seq_lens"].__setitem__(1, 0), "fewer than its 1 queries"),
])
def test_c_entry_point_refuses_bad_arguments(breakage, match):
    """Called directly (no Python validation in between): a clear error, the output left untouched."""
    x = _inputs()
    breakage(x)
    out = torch.full_like(x["q"], 7.0)
    with pytest.raises(NativeError, match=match):
        cpp.DECODE_PAGED(out=out, **x)
    assert (out == 7.0).all()


@needs_cpp
def test_setup_validates_before_the_kernel_runs():
    """Through the variant's setup (what bench.py runs): inference.paged.validate raises before any C call."""
    case = SUITE.cases("test", "cpu", "float32")[0]
    x = SUITE.make_inputs(case, 1)
    x["block_tables"] = x["block_tables"].clone()
    x["block_tables"][0, 0] = x["k_cache"].shape[0]
    with pytest.raises(DecodeArgumentError, match="outside the cache"):
        SUITE.variants["cpp"].setup(case, **x)


@needs_cpp
@pytest.mark.parametrize("lens", [(40, 17, 33), (1000, 3, 517)])
def test_thread_count_and_splitting_do_not_change_the_result(lens):
    """One thread (few, long chunks) and two (more chunks, merged): both match the float64 reference."""
    x = _inputs(lens=lens)
    ref = reference(*(x[k].double() if x[k] is not None and x[k].is_floating_point() else x[k]
                      for k in ("q", "k_cache", "v_cache", "block_tables", "seq_lens", "k_scale", "v_scale")))
    for t in (1, 2):
        out = _call(x, threads=t).double()
        torch.testing.assert_close(out, ref, atol=2e-6, rtol=2e-5)


@needs_cpp
def test_fresh_inputs_change_the_output():
    a, b = _call(_inputs(seed=1)).clone(), _call(_inputs(seed=2)).clone()
    assert not torch.equal(a, b)


@needs_cpp
def test_pages_past_the_length_are_never_read():
    """Blocks a sequence's length does not reach hold NaN: the output stays finite."""
    x = _inputs(lens=(40, 17, 33))
    used = set()
    for i, n in enumerate((40, 17, 33)):
        used |= set(x["block_tables"][i, : -(-n // 16)].tolist())
    unused = [bl for bl in range(x["k_cache"].shape[0]) if bl not in used]
    x["k_cache"][unused] = float("nan")
    x["v_cache"][unused] = float("nan")
    x["k_cache"][x["block_tables"][1, 1], 1:] = float("nan")     # sequence 1: 17 tokens, 1 in its second page
    x["v_cache"][x["block_tables"][1, 1], 1:] = float("nan")
    assert torch.isfinite(_call(x)).all()


@needs_cpp
@pytest.mark.parametrize("fmt", ["float32", "int8"])
def test_prefill_into_pages_then_decode_continues_the_sequence(fmt):
    """One cache end to end: the C++ attention kernel prefills a prompt (K, V written into the pages), a forked
    sample and the original each append their own next token, and the C++ decode kernel's output for each equals
    full causal attention over its whole sequence (float64, on the cache's own dequantized K/V)."""
    from inference import PagedKVCache
    from inference.prefill import attention_kernel, prefill
    g = torch.Generator().manual_seed(5)
    h, hkv, d, n = 8, 2, 64, 37
    cache = PagedKVCache(num_blocks=16, kv_heads=hkv, head_dim=d, kv_format=fmt)
    q, k, v = (torch.randn(n, x, d, generator=g) for x in (h, hkv, hkv))
    sid = cache.add()
    out = prefill(cache, 0, cache.reserve(sid, n), q, k, v, attention=attention_kernel("cpp"))
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1).double(), *(t.transpose(0, 1).double().repeat_interleave(h // hkv, 0) for t in (k, v)),
        is_causal=True).transpose(0, 1)
    if fmt == "float32":
        torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)
    gk, gv = cache.gather(0, sid)                              # the prompt's K, V are in the pages
    tol = 0.0 if fmt == "float32" else 0.5 / 127 * max(k.abs().max(), v.abs().max())
    assert (gk - k).abs().max() <= tol + 1e-7 and (gv - v).abs().max() <= tol + 1e-7
    child = cache.fork(sid)
    qs = {}
    for s in (sid, child):                                     # the child's first append copies the shared page
        kt, vt = torch.randn(1, hkv, d, generator=g), torch.randn(1, hkv, d, generator=g)
        cache.append(s, kt, vt)
        qs[s] = torch.randn(1, 1, h, d, generator=g)
    ids = [sid, child]
    ks = vs = None
    if cache.quantized:
        ks, vs = cache.k_scale[0], cache.v_scale[0]
    dec = cpp.DECODE_PAGED(q=torch.cat([qs[s] for s in ids]), k_cache=cache.k[0], v_cache=cache.v[0],
                           block_tables=cache.block_tables(ids), seq_lens=cache.seq_lens(ids), k_scale=ks, v_scale=vs,
                           out=torch.full((2, 1, h, d), float("nan")))
    for i, s in enumerate(ids):
        kk, vv = (t.double().transpose(0, 1).repeat_interleave(h // hkv, 0) for t in cache.gather(0, s))
        want = torch.softmax(qs[s][0].double().transpose(0, 1) @ kk.transpose(1, 2) / d ** 0.5, -1) @ vv
        torch.testing.assert_close(dec[i, 0].double(), want[:, 0], atol=2e-6, rtol=2e-5)
    assert cache.manager.seqs[sid].blocks[:2] == cache.manager.seqs[child].blocks[:2]      # full pages shared
    assert cache.manager.seqs[sid].blocks[2] != cache.manager.seqs[child].blocks[2]        # the partial one copied
