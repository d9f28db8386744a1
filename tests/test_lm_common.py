"""suites/_lm.py, the pieces the model-level suites share: the work formulas against a hand count, the case
names, and the launchers doing the same work on every call (a decode step that forgets to crop its cache, or a
prefill that keeps one, would drift from call to call while the one check before timing still passes)."""
import pytest
import torch

from suites import _lm


def test_work_formulas_against_a_hand_count():
    s = dict(layers=2, heads=4, kv=2, hd=8)           # attention: 4 * 2 * 4 * 8 = 256 FLOPs per (query, key)
    # decode: 3 tokens, each 2 * 1000 weight FLOPs + 256 * (5 + 1) keys = 3 * 3536
    assert _lm.flops(s, 1000, "decode", 3, 5) == 10608
    # prefill of 5: 3 * (2 * 1000 * 5 + 256 * (1 + 2 + 3 + 4 + 5)) = 3 * 13840
    assert _lm.flops(s, 1000, "prefill", 3, 5) == 41520
    assert _lm.flops(s, 1000, "quality", 3, 5) == 41520
    # 3 sequences x 6 tokens x (K and V) x 2 layers x 2 KV heads x 8 x 4 bytes
    assert _lm.kv_bytes(s, 3, 5, 4) == 4608
    assert _lm.tokens("decode", 3, 5) == 3 and _lm.tokens("prefill", 3, 5) == 15


def test_case_names():
    assert _lm.case_name(_lm.prefill(2, 17, model="test")) == "test:prefill-b2-p17"
    assert _lm.case_name(_lm.decode(3, 9, model="test")) == "test:decode-b3-ctx9"
    assert _lm.case_name(dict(kind="quality", b=4, n=64, model="/ckpt/my-model/")) == "my-model:quality"


@pytest.fixture(scope="module")
def lm():
    from models import zoo
    return zoo.load("test", device="cpu", dtype=torch.float32, attn="sdpa", progress=False)


@pytest.mark.parametrize("kind,cache", [("decode", "dynamic"), ("decode", "static"), ("prefill", "dynamic"),
                                        ("prefill", "static"), ("quality", "dynamic")])
def test_every_call_does_the_same_work(lm, kind, cache):
    n = 9
    ids = _lm.held_out_windows(torch.Generator().manual_seed(3), 2, n + 1 if kind == "decode" else n)
    with torch.no_grad():
        run = _lm.runner(lm.model, kind, ids, n, cache=cache)
        outs = [run() for _ in range(3)]
        full = lm.model(input_ids=ids).logits          # the uncached forward
    ref = _lm.last_if_decode(kind, full)
    for out in outs:
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, atol=2e-4, rtol=2e-4)


def test_launcher_runs_under_its_context():
    seen = []
    launcher = _lm.Launcher(lambda: seen.append(torch.is_grad_enabled()) or 7, model="m")
    assert launcher() == 7 and seen == [False] and launcher.model == "m"
