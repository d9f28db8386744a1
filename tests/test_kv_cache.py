"""The paged KV cache (inference/): block accounting under thousands of random operations, copy-on-write
forks keeping every sequence's contents, the quantized formats and their scales, the page-table views, and
the decode argument validation that runs before any kernel."""
from __future__ import annotations

import random

import pytest
import torch

from inference import BlockManager, DecodeArgumentError, OutOfBlocks, PagedKVCache, quant
from inference.paged import gather, reference, validate


def test_random_operations_leak_nothing_and_double_own_nothing():
    """5,000 random add/reserve/fork/free operations against an independent model of who holds what: after every
    operation the manager's audit holds (refcounts = holders, free list = unreferenced blocks, each once), every
    sequence's slots agree with the model, and at the end, all freed, every block is free again."""
    rng = random.Random(1234)
    m = BlockManager(num_blocks=97, block_size=16)
    model: dict[int, list[int]] = {}           # seq -> the slot of each of its tokens (what the model expects)
    ops = {"add": 0, "reserve": 0, "fork": 0, "free": 0, "oob": 0, "cow": 0}
    for step in range(5000):
        op = rng.choices(["add", "reserve", "fork", "free"], weights=[2, 6, 2, 2])[0]
        if op == "add" or not model:
            model[m.add()] = []
            ops["add"] += 1
        elif op == "reserve":
            sid = rng.choice(list(model))
            n = rng.choice([1, 1, 1, 3, 15, 16, 17, 40])
            free_before = m.allocator.num_free
            try:
                slots, copies = m.reserve(sid, n)
            except OutOfBlocks:
                assert m.allocator.num_free == free_before and m.length(sid) == len(model[sid])   # all or nothing
                ops["oob"] += 1
                continue
            ops["reserve"] += 1
            for src, dst in copies:            # copy-on-write: the model's slots in the copied block move
                ops["cow"] += 1
                model[sid] = [dst * 16 + s % 16 if s // 16 == src else s for s in model[sid]]
            model[sid] += slots.tolist()
        elif op == "fork":
            sid = rng.choice(list(model))
            model[m.fork(sid)] = list(model[sid])
            ops["fork"] += 1
        else:
            sid = rng.choice(list(model))
            m.free(sid)
            del model[sid]
            ops["free"] += 1
        m.audit()
        for other, slots in model.items():     # every token's slot is where the block table says
            table = m.seqs[other].blocks
            assert [table[i // 16] * 16 + i % 16 for i in range(len(slots))] == slots
        # the block a sequence appends into next (its partly filled last block) is its alone after a reserve
        if op == "reserve":
            s = m.seqs[sid]
            assert s.length % 16 == 0 or m.allocator.refcount(s.blocks[-1]) == 1
    assert min(ops.values()) > 20, ops
    for sid in list(model):
        m.free(sid)
    m.audit()
    assert m.allocator.num_free == 97


def test_audit_catches_a_leak_and_a_double_owner():
    m = BlockManager(8, 4)
    a = m.add()
    m.reserve(a, 6)
    m.audit()
    m.allocator._ref[m.seqs[a].blocks[0]] += 1      # a reference nobody holds: a leak
    with pytest.raises(AssertionError, match="refcount"):
        m.audit()
    m.allocator._ref[m.seqs[a].blocks[0]] -= 1
    m.allocator._free.append(m.seqs[a].blocks[1])   # owned and free at once
    with pytest.raises(AssertionError):
        m.audit()


def test_double_free_and_unknown_sequences_are_errors():
    m = BlockManager(4, 16)
    a = m.add()
    m.reserve(a, 3)
    m.free(a)
    with pytest.raises(KeyError, match="freed twice"):
        m.free(a)
    with pytest.raises(KeyError):
        m.reserve(a, 1)
    with pytest.raises(ValueError, match="double free"):
        m.allocator.decref(0)


def _kv(n, hkv=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, hkv, d, generator=g), torch.randn(n, hkv, d, generator=g)


@pytest.mark.parametrize("fmt", ["float32", "bfloat16", "int8", "fp8_e4m3"])
def test_fork_shares_the_prompt_and_copies_on_write(fmt):
    """A child shares the parent's blocks; the first append of either into the shared partly-filled block copies
    it, so each sees its own tokens and the common prompt; full blocks stay shared; freeing returns them all."""
    c = PagedKVCache(num_blocks=16, kv_heads=2, head_dim=8, block_size=4, num_layers=2, kv_format=fmt)
    k, v = _kv(10)
    p = c.add()
    c.append(p, torch.stack([k, 2 * k]), torch.stack([v, 2 * v]))    # 10 tokens: blocks of 4, 4, 2
    child = c.fork(p)
    assert c.manager.seqs[child].blocks == c.manager.seqs[p].blocks
    used = c.num_blocks - c.manager.allocator.num_free
    k2, v2 = _kv(3, seed=1)
    k3, v3 = _kv(2, seed=2)
    c.append(child, torch.stack([k2, k2]), torch.stack([v2, v2]))
    c.append(p, torch.stack([k3, k3]), torch.stack([v3, v3]))
    bp, bc = c.manager.seqs[p].blocks, c.manager.seqs[child].blocks
    assert bp[:2] == bc[:2] and bp[2] != bc[2]              # full blocks shared, the partial one copied
    assert c.num_blocks - c.manager.allocator.num_free == used + 2   # the child's copy + its next block
    tol = {"float32": 0, "bfloat16": 1e-2, "int8": 3e-2, "fp8_e4m3": 0.13}[fmt]
    for sid, (kk, vv) in ((p, (torch.cat([k, k3]), torch.cat([v, v3]))), (child, (torch.cat([k, k2]), torch.cat([v, v2])))):
        for layer, f in ((0, 1), (1, 2)):
            gk, gv = c.gather(layer, sid)
            want_k = torch.cat([k * f, kk[10:]])
            want_v = torch.cat([v * f, vv[10:]])
            assert torch.allclose(gk, want_k, atol=tol * want_k.abs().max(), rtol=0), (fmt, sid, layer)
            assert torch.allclose(gv, want_v, atol=tol * want_v.abs().max(), rtol=0), (fmt, sid, layer)
    c.free(p)
    c.free(child)
    c.manager.audit()
    assert c.manager.allocator.num_free == c.num_blocks


def test_per_block_scales_grow_and_requantize_old_tokens():
    """Appending a token larger than a block's scale covers grows the scale and requantizes the stored tokens:
    the small first token survives within one step of the new scale, the big one is not clipped."""
    c = PagedKVCache(num_blocks=4, kv_heads=1, head_dim=4, block_size=4, kv_format="int8", scales="block")
    s = c.add()
    small = torch.tensor([[[0.1, -0.2, 0.05, 0.0]]])
    big = torch.tensor([[[5.0, -1.0, 0.0, 2.0]]])
    c.append(s, small, small)
    b = c.manager.seqs[s].blocks[0]
    assert c.k_scale[0][b, 0] == pytest.approx(0.2 / 127)
    c.append(s, big, big)
    assert c.k_scale[0][b, 0] == pytest.approx(5.0 / 127)
    gk, _ = c.gather(0, s)
    assert torch.allclose(gk[1], big[0], atol=1e-6 + 5.0 / 127 / 2)
    assert torch.allclose(gk[0], small[0], atol=5.0 / 127)       # one step of the grown scale
    assert c.saturated == 0


def test_per_head_scales_calibrate_on_the_first_write_and_count_saturation():
    c = PagedKVCache(num_blocks=4, kv_heads=2, head_dim=4, block_size=4, kv_format="int8", scales="head")
    s = c.add()
    x = torch.tensor([[[1.0, 0, 0, 0], [0, 0, 0, 3.0]]])
    c.append(s, x, x)
    assert c.k_scale[0].tolist() == pytest.approx([1 / 127, 3 / 127])
    c.append(s, 2 * x, x)                                          # beyond the scales: saturates, counted
    assert c.saturated == 2
    gk, _ = c.gather(0, s)
    assert torch.allclose(gk[1], x[0], atol=1e-6)


@pytest.mark.parametrize("fmt,bound", [("int8", 0.5 / 127), ("fp8_e4m3", 2 ** -4)])
def test_quantization_error_is_within_half_a_step(fmt, bound):
    """int8: |x - deq| <= scale/2; fp8 e4m3: relative error <= 2^-4 (3 mantissa bits) above the subnormals."""
    x = torch.randn(1000, 4, 64)
    s = quant.scale_for(x.abs().amax(dim=(0, 2)), fmt)[None, :, None]
    err = (quant.dequantize(quant.quantize(x, s, fmt), s) - x).abs()
    if fmt == "int8":
        assert float((err / s).max()) <= 0.5 + 1e-5
    else:
        normal = x.abs() / s >= 2 ** -6
        assert float((err / x.abs())[normal].max()) <= bound


def test_csr_and_padded_tables_describe_the_same_pages():
    m = BlockManager(32, 16)
    ids = [m.add() for _ in range(3)]
    for sid, n in zip(ids, (1, 16, 40)):
        m.reserve(sid, n)
    indptr, indices, last = m.csr(ids)
    table, lens = m.block_tables(ids), m.seq_lens(ids)
    assert indptr.tolist() == [0, 1, 2, 5] and last.tolist() == [1, 16, 8] and lens.tolist() == [1, 16, 40]
    for i in range(3):
        assert indices[indptr[i]:indptr[i + 1]].tolist() == table[i, :indptr[i + 1] - indptr[i]].tolist()
    assert table[0, 1:].eq(-1).all()


def _decode_args(b=2, sq=1, h=4, hkv=2, d=16, nb=12, bs=4, dtype=torch.float32):
    q = torch.randn(b, sq, h, d, dtype=dtype)
    kc = torch.randn(nb, bs, hkv, d, dtype=dtype)
    vc = torch.randn(nb, bs, hkv, d, dtype=dtype)
    tables = torch.randperm(nb)[: b * 3].view(b, 3).to(torch.int32)
    lens = torch.tensor([5, 12][:b], dtype=torch.int32)
    return q, kc, vc, tables, lens


@pytest.mark.parametrize("mutate,match", [
    (lambda a: a.__setitem__(3, torch.tensor([[0, 12, 1], [2, 3, 4]], dtype=torch.int32)), "outside the cache"),
    (lambda a: a.__setitem__(3, torch.tensor([[0, -1, 5], [2, 3, 4]], dtype=torch.int32)), "outside the cache"),
    (lambda a: a.__setitem__(4, torch.tensor([5, 13], dtype=torch.int32)), "longer than its pages"),
    (lambda a: a.__setitem__(0, torch.randn(2, 1, 3, 16)), "not a multiple"),
    (lambda a: a.__setitem__(0, torch.randn(2, 1, 4, 8)), "head_dim"),
    (lambda a: a.__setitem__(2, torch.randn(12, 4, 3, 16)), "both be"),
    (lambda a: a.__setitem__(3, a[3].long()), "int32"),
    (lambda a: a.__setitem__(4, torch.tensor([0, 12], dtype=torch.int32)), "fewer than"),
])
def test_validation_names_the_problem(mutate, match):
    args = list(_decode_args())
    validate(*args)
    mutate(args)
    with pytest.raises(DecodeArgumentError, match=match):
        validate(*args)


def test_padding_past_a_sequence_pages_is_ignored():
    q, kc, vc, tables, lens = _decode_args()
    tables[0, 2] = -1                      # sequence 0 has 5 tokens = 2 pages: the third entry is padding
    validate(q, kc, vc, tables, lens)


def test_gathered_sdpa_matches_the_reference_on_ragged_lengths():
    from inference.paged import sdpa_gathered
    q, kc, vc, tables, lens = _decode_args(sq=3, dtype=torch.float64)
    k, v = gather(kc, vc, tables, lens)
    torch.testing.assert_close(sdpa_gathered(q, k, v, lens), reference(q, kc, vc, tables, lens))
