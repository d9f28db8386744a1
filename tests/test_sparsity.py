"""sparsity/: the masks keep what each pattern says (counted against brute force), the formats round-trip and
count their bytes, the kernels' unfit shapes are skipped with the reason, model pruning zeroes exactly the
masked weights (Wanda's calibration changes the choice), recovery keeps the masks, the sparse model runs on
the project's kernels and matches the masked dense model, and the sparsity suite's quality columns are there.
The kernels themselves are checked at every test case of suites/sparse_gemm.py by tests/test_cpp_kernels.py
(and the CUDA simulation / Triton interpreter tests).
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from sparsity import formats, masks, prune, recover
from sparsity.masks import Pattern, PatternError


def _w(n=48, k=64, seed=0):
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed))


def test_24_mask_keeps_the_two_largest_of_every_group():
    w = _w()
    m = masks.mask_for(w, Pattern("2:4"))
    groups, kept = w.abs().reshape(48, 16, 4), m.reshape(48, 16, 4)
    assert (kept.sum(-1) == 2).all()
    # brute force: the kept pair is the pair with the largest |w| sum of the 6 possible pairs
    for r, g in itertools.product(range(48), range(16)):
        best = max(itertools.combinations(range(4), 2), key=lambda p: float(groups[r, g, list(p)].sum()))
        assert set(kept[r, g].nonzero().flatten().tolist()) == set(best)
    assert masks.is_2to4(w * m) and not masks.is_2to4(w)


def test_wanda_score_changes_the_choice():
    w = _w()
    norms = torch.ones(64)
    norms[::4] = 100.0                            # input features 0, 4, 8, ... are loud
    m_mag = masks.mask_for(w, Pattern("2:4"))
    m_wanda = masks.mask_for(w, Pattern("2:4", score="wanda"), norms)
    assert m_wanda[:, ::4].float().mean() > 0.95    # small weights on a loud input survive
    assert m_mag[:, ::4].float().mean() < 0.7
    assert not torch.equal(m_mag, m_wanda)
    assert torch.equal(masks.wanda(w, norms), w.abs() * norms)
    with pytest.raises(ValueError):
        masks.mask_for(w, Pattern("2:4", score="wanda"))          # no calibration: an error, not magnitude


@pytest.mark.parametrize("block,density", [(16, 0.5), (16, 0.25), (32, 0.1), (16, 0.1)])
def test_block_mask_keeps_whole_blocks_with_the_largest_scores(block, density):
    w = _w(64, 96)
    m = masks.mask_for(w, Pattern("block", density, block))
    nb = (64 // block) * (96 // block)
    blocks = m.reshape(64 // block, block, 96 // block, block).permute(0, 2, 1, 3).reshape(nb, -1)
    assert ((blocks.all(1)) | (~blocks.any(1))).all()             # whole blocks only
    kept = blocks.any(1)
    assert int(kept.sum()) == masks.n_kept(nb, density)
    score = w.abs().reshape(64 // block, block, 96 // block, block).permute(0, 2, 1, 3).reshape(nb, -1).sum(1)
    assert score[kept].min() >= score[~kept].max() if (~kept).any() else True


def test_unstructured_keeps_the_largest_weights():
    w = _w()
    m = masks.mask_for(w, Pattern("unstructured", 0.25))
    assert int(m.sum()) == round(w.numel() * 0.25)
    assert w.abs()[m].min() >= w.abs()[~m].max()


@pytest.mark.parametrize("pattern,shape,why", [
    (Pattern("2:4"), (8, 130), "divisible by 4"),
    (Pattern("block", 0.5, 16), (40, 64), "out_features=40"),
    (Pattern("block", 0.5, 32), (64, 48), "in_features=48"),
])
def test_unfit_shapes_raise_with_the_reason(pattern, shape, why):
    with pytest.raises(PatternError, match=why):
        masks.mask_for(torch.randn(*shape), pattern)


def test_pattern_validation():
    with pytest.raises(ValueError):
        Pattern("2:4", density=0.25)
    with pytest.raises(ValueError):
        Pattern("diagonal")
    assert Pattern("block", 0.1, 32).name == "block32-d10"
    assert Pattern("2:4", score="wanda").name == "2:4-wanda"


@pytest.mark.parametrize("k", [4, 36, 64, 100])
def test_24_format_round_trip_and_bytes(k):
    w = _w(33, k)
    m = masks.mask_for(w, Pattern("2:4"))
    wp = w * m
    for packed in (formats.pack_24(wp, m), formats.pack_24(wp)):
        assert torch.equal(formats.unpack_24(packed["vals"], packed["meta"], k), wp)
        got = sum(t.numel() * t.element_size() for t in packed.values())
        assert got == formats.bytes_24(33, k, 4)
    # 2 bits per kept value: a word holds 16 of them
    assert formats.pack_24(wp)["meta"].shape == (33, math.ceil(k / 2 / 16))
    with pytest.raises(PatternError):
        formats.pack_24(w)                        # dense: not 2:4


@pytest.mark.parametrize("block,density", [(16, 0.5), (32, 0.25), (16, 1.0)])
def test_bsr_format_round_trip_and_bytes(block, density):
    w = _w(64, 96)
    m = masks.mask_for(w, Pattern("block", density, block))
    wp = w * m
    b = formats.bsr_pack(wp, block, m)
    assert torch.equal(formats.bsr_unpack(b["rowptr"], b["cols"], b["vals"], wp.shape), wp)
    assert b["vals"].shape[0] == masks.n_kept((64 // block) * (96 // block), density)
    got = sum(t.numel() * t.element_size() for t in b.values())
    assert got == formats.bsr_bytes(b["vals"].shape[0], block, 64, 4)
    # blocks are stored transposed: the kernel reads a row of b outputs per input
    i, c = 0, int(b["cols"][0])
    assert torch.equal(b["vals"][0], wp[i * block:(i + 1) * block, c * block:(c + 1) * block].T)


# ---- the kernel suite's skipped rows -------------------------------------------------------------------
def test_sparse_gemm_unfit_cases_are_skipped_rows(tmp_path):
    from harness.registry import all_suites
    from harness.runner import Plan, RunOptions, Runner
    from harness.timing import TimingConfig
    suite = all_suites()["sparse_gemm"]
    unfit = [c for c in suite.cases("test", "cpu", "float32") if c.k in (129, 36) and c.n == 48]
    assert len(unfit) == 3
    opts = RunOptions(suites=[suite], device="cpu", dtypes=None, mode="test", out=tmp_path / "r",
                      timing=TimingConfig(budget_s=0.01, min_samples=2), progress=False, isolate=False)
    runner = Runner(opts, [])
    try:
        for case in unfit:
            for name in ("cpp_bsr", "cpp_24", "dense"):
                if not suite.applies(case, name):
                    continue
                row = runner.run_one(Plan(suite, case, suite.variants[name]))
                if name == "dense":
                    assert row["status"] == "ok"          # the baseline still runs on the (unpruned) weight
                else:
                    assert row["status"] == "skipped" and "divisible" in row["reason"], row
    finally:
        runner.close()


# ---- whole models --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def test_lm():
    from models import zoo
    with torch.enable_grad():
        return zoo.load("test", progress=False)


def _copy(lm):
    import copy
    out = copy.copy(lm)
    out.model = copy.deepcopy(lm.model)
    return out


def test_prune_model_zeroes_exactly_the_masked_weights(test_lm):
    lm = _copy(test_lm)
    before = {n: m.weight.detach().clone() for n, m in prune.linear_layers(lm.model)}
    rep = prune.prune_model(lm.model, Pattern("2:4"))
    assert set(rep.masks) == set(before) and len(before) == 14       # 2 layers x (q, k, v, o, gate, up, down)
    for n, m in prune.linear_layers(lm.model):
        assert torch.equal(m.weight, before[n] * rep.masks[n])
    assert rep.density == 0.5
    emb = lm.model.get_input_embeddings().weight
    assert bool((emb != 0).all())                                     # the tied embedding / head stays dense
    bytes_dense = prune.weight_bytes(lm.model, None, 4)
    bytes_24 = prune.weight_bytes(lm.model, rep, 4)
    assert bytes_dense - bytes_24 == sum(m.numel() * 4 - formats.bytes_24(*m.shape, 4) for m in rep.masks.values())


def test_unfit_layers_stay_dense_and_are_reported(test_lm):
    lm = _copy(test_lm)
    rep = prune.prune_model(lm.model, Pattern("block", 0.5, 48))      # 48 divides no dimension of `test`
    assert not rep.masks and len(rep.skipped) == 14
    assert all("divisible by 48" in why for _, why in rep.skipped)


def test_calibration_norms_are_the_input_feature_norms(test_lm):
    norms = prune.calibrate(test_lm, seqs=4)
    ids = prune.calibration_ids(test_lm.context, 4)
    name, layer = prune.linear_layers(test_lm.model)[0]
    seen = []
    h = layer.register_forward_hook(lambda m, a, o: seen.append(a[0].detach().reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        test_lm.model(input_ids=ids)
    h.remove()
    torch.testing.assert_close(norms[name], torch.cat(seen).norm(dim=0), rtol=1e-5, atol=1e-5)
    # calibration text is the training split, not the held-out text quality is measured on
    from models import data
    held = data.split()[1]
    assert bytes(ids[0].tolist()) not in held


@pytest.mark.parametrize("pattern", [Pattern("2:4"), Pattern("block", 0.5, 16), Pattern("unstructured", 0.5)])
def test_recovery_keeps_the_masks_and_lowers_the_loss(test_lm, pattern):
    lm = _copy(test_lm)
    rep = prune.prune_model(lm.model, pattern)
    with torch.no_grad():
        losses = recover.finetune(lm, rep.masks, steps=12, lr=3e-3)
    assert len(losses) == 12 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-4:]) < sum(losses[:4])
    for n, m in prune.linear_layers(lm.model):
        assert bool((m.weight[~rep.masks[n]] == 0).all()), n
        assert bool((m.weight[rep.masks[n]] != 0).any())


@pytest.mark.parametrize("pattern", [Pattern("2:4"), Pattern("block", 0.25, 16), Pattern("unstructured", 0.5)])
def test_sparse_model_matches_masked_dense(test_lm, pattern):
    from kernels.cpp import lib as cpp
    from sparsity import modules
    if pattern.kind != "unstructured" and cpp.missing_reason():
        pytest.skip(cpp.missing_reason())
    lm = _copy(test_lm)
    rep = prune.prune_model(lm.model, pattern)
    sparse = modules.sparsify(_copy(lm).model, rep)
    assert sum(isinstance(m, modules.SparseLinear) for m in sparse.modules()) == 14
    ids = torch.randint(0, 256, (2, 19))
    with torch.no_grad():
        torch.testing.assert_close(sparse(input_ids=ids).logits, lm.model(input_ids=ids).logits,
                                   rtol=2e-4, atol=2e-4)


def test_every_pattern_family_has_a_recovered_quality_row():
    """Recovery (quality before and after) for 2:4, blocks and unstructured at 50%: quality rows of the quick set
    whose pattern prunes exactly as its unrecovered twin, then fine-tunes."""
    import suites.sparsity as ss
    quick = [c for c in ss.SUITE.cases("quick")]
    for name, twin in (("2:4-wanda-rec", "2:4-wanda"), ("block16-d50-rec", "block16-d50"),
                       ("unstructured-d50-rec", "unstructured-d50")):
        (pattern, rec), (twin_pattern, twin_rec) = ss.PATTERNS[name], ss.PATTERNS[twin]
        assert rec and not twin_rec and pattern == twin_pattern
        assert any(c.pattern == name and c.kind == "quality" for c in quick), name
    for name in ss.RECOVERED_ONLY:
        assert {c.kind for c in quick if c.pattern == name} == {"quality"}


@pytest.mark.parametrize("pattern", [Pattern("2:4"), Pattern("block", 0.1, 32), Pattern("unstructured", 0.25)])
def test_planned_counts_match_real_pruning(test_lm, pattern):
    """The suite plans flops and bytes from the shapes alone; pruning must give exactly those counts."""
    lm = _copy(test_lm)
    plan = prune.planned(lm.model, pattern)
    rep = prune.prune_model(lm.model, pattern)
    assert {n: kept for n, (kept, _) in plan.items()} == {n: int(m.sum()) for n, m in rep.masks.items()}
    units = {n: u for n, (_, u) in plan.items()}
    assert prune.stored_bytes(lm.model, pattern, units, 2) == prune.weight_bytes(lm.model, rep, 2)


def test_report_quality_vs_speed_points_and_plot():
    """harness/report_sparsity.py: decode/prefill speed relative to dense, the quality row's delta, per pattern
    (names with ':' included); the HTML report gets the section."""
    import pandas as pd
    from harness import report, report_sparsity
    rows = []
    for pattern, dense_ms, sparse_ms, delta in (("dense", 2.0, None, 0.0), ("2:4-wanda-rec", 2.0, 1.0, 0.2),
                                               ("block32-d10", 2.0, 4.0, 120.0)):
        for kind in ("prefill-b8-p64", "decode-b1-ctx32", "quality"):
            for variant, ms in (("masked_dense", dense_ms), ("sparse_kernels", sparse_ms)):
                if ms is None:
                    continue
                rows.append(dict(run_id="r", suite="sparsity", case=f"tiny:{pattern}:{kind}", variant=variant,
                                 dtype="float32", status="ok", median_ms=ms, tokens_per_s=1000.0 / ms,
                                 bpb_delta_pct=delta if kind == "quality" else None, device_name="cpu"))
    df = pd.DataFrame(rows)
    pts = report_sparsity.points(df).set_index(["kind", "pattern"])
    assert pts.loc[("decode", "2:4-wanda-rec"), "speed"] == pytest.approx(2.0)
    assert pts.loc[("prefill", "block32-d10"), "speed"] == pytest.approx(0.5)
    assert pts.loc[("decode", "block32-d10"), "bpb_delta_pct"] == pytest.approx(120.0)
    assert pts.loc[("decode", "dense"), "speed"] == pytest.approx(1.0)
    assert report_sparsity.quality_speed_png(df)
    assert report_sparsity.quality_speed_png(df[df["suite"] == "nothing"]) is None
