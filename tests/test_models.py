"""models/: training, the cache, the evaluation API, KV-cached generation, kernels inside the model, bad input.

Everything here uses the `test` recipe (0.09M parameters, 20 steps: about a second of training); the real
`tiny` training path runs once in the slow-marked test at the end (`make test-slow`).
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import data, digits, evaluate, generate, zoo
from models.configs import RECIPES, TEST, TINY
from models.train import flops_per_token

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("models-cache")
    old = os.environ.get("KB_MODELS_CACHE")
    os.environ["KB_MODELS_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("KB_MODELS_CACHE", None)
    else:
        os.environ["KB_MODELS_CACHE"] = old


@pytest.fixture(scope="module")
def lm(cache):
    return zoo.load("test", progress=False)


def _bench(*args, env=None):
    e = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, str(ROOT / "bench.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, env=e, timeout=300)


# ---- data ---------------------------------------------------------------------------------------------
def test_heldout_split_is_fixed_disjoint_and_covers_the_corpus():
    train, held = data.split()
    corpus = data.corpus()
    assert len(train) + len(held) == len(corpus)
    assert len(held) == 45 * data.BLOCK                      # 455 full blocks + 1 partial; every tenth held out
    blocks = [corpus[i:i + data.BLOCK] for i in range(0, len(corpus), data.BLOCK)]
    held_blocks = [held[i:i + data.BLOCK] for i in range(0, len(held), data.BLOCK)]
    assert all(b in blocks for b in held_blocks)
    assert held_blocks[0] not in train                      # a held-out block never appears in training text
    data.split.cache_clear()
    assert data.split() == (train, held)                    # seeded: the same split every time


def test_baselines_unigram_worse_than_bigram():
    uni, bi = evaluate.unigram_bpb(), evaluate.bigram_bpb()
    assert 4.5 < uni < 5.0 and 3.4 < bi < 3.9 and bi < uni


# ---- evaluation -------------------------------------------------------------------------------------------
class _Uniform(torch.nn.Module):
    """Logits all equal: exactly 8 bits per byte."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids):
        return type("Out", (), {"logits": torch.zeros(*input_ids.shape, 256) + self.w})()


def test_bits_per_byte_of_a_uniform_model_is_8():
    u = zoo.LM("uniform", _Uniform(), context=64)
    assert evaluate.bits_per_byte(u, limit=4096) == pytest.approx(8.0, abs=1e-5)
    assert evaluate.perplexity(u, limit=4096) == pytest.approx(256.0, rel=1e-5)


def test_bits_per_byte_matches_a_direct_computation(lm):
    ids = data.as_tensor(data.split()[1][:lm.context + 1])
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(input_ids=ids[None, :-1]).logits[0], -1)
    want = float(-logp[torch.arange(lm.context), ids[1:]].sum()) / math.log(2) / lm.context
    assert evaluate.bits_per_byte(lm, limit=lm.context + 1) == pytest.approx(want, rel=1e-5)
    a, b = evaluate.bits_per_byte(lm, limit=2048), evaluate.bits_per_byte(lm, limit=2048)
    assert a == b                                           # deterministic


def test_greedy_agreement_is_one_for_the_same_model_and_drops_when_perturbed(lm):
    ref = evaluate.greedy_tokens(lm, new_tokens=16)
    assert evaluate.greedy_agreement(lm, ref, new_tokens=16) == 1.0
    broken = zoo.load("test", progress=False)
    with torch.no_grad():
        broken.model.model.layers[0].mlp.down_proj.weight.mul_(-3.0)
    assert evaluate.greedy_agreement(broken, ref, new_tokens=16) < 0.9


def test_digits_classifier_accuracy_on_the_fixed_split():
    x, y = digits.test_split()
    assert len(y) == 450
    acc = evaluate.accuracy(digits.train(), x, y)
    assert acc >= 0.95
    assert evaluate.accuracy(digits.train(), x, y) == acc      # deterministic
    assert evaluate.accuracy(digits.train(steps=1), x, y) < 0.8   # the metric sees an untrained model


# ---- generation with a KV cache -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", generate.CACHES)
def test_cached_greedy_equals_recomputing_the_whole_sequence(lm, kind):
    ids = lm.encode("The import statement ")[None]
    got = generate.greedy(lm.model, ids, 12, cache=kind)
    seq = ids
    with torch.no_grad():
        for _ in range(12):
            nxt = lm.model(input_ids=seq).logits[:, -1].argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], 1)
    assert torch.equal(got, seq[:, ids.shape[1]:])


def test_static_and_dynamic_decode_step_logits_agree(lm):
    ids = data.as_tensor(data.split()[1][:2 * 21]).view(2, 21)
    with torch.no_grad():
        want = lm.model(input_ids=ids).logits[:, -1]
    for kind in generate.CACHES:
        kv = generate.make_cache(lm.model, kind, 2, 21)
        generate.prefill(lm.model, ids[:, :20], kv)
        got = generate.decode_step(lm.model, ids[:, 20], kv, 20)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


# ---- the project's kernels inside the model -----------------------------------------------------------------
def _cpp_reason():
    from kernels.cpp import lib
    return lib.missing_reason()


@pytest.mark.skipif(_cpp_reason() is not None, reason=f"C++ kernels unavailable: {_cpp_reason()}")
def test_cpp_attention_in_the_model_matches_eager(lm):
    from models import attention
    attention.register()
    ids = data.as_tensor(data.split()[1][:2 * 33]).view(2, 33)
    with torch.no_grad():
        lm.model.set_attn_implementation("eager")
        want = lm.model(input_ids=ids).logits
        lm.model.set_attn_implementation("kb_cpp")
        try:
            got = lm.model(input_ids=ids).logits
            toks = generate.greedy(lm.model, ids[:, :8], 6)                  # prefill + one-token decode steps
            with pytest.raises(ValueError, match="DynamicCache"):            # padded static buffers: refused
                generate.greedy(lm.model, ids[:, :8], 6, cache="static")
        finally:
            lm.model.set_attn_implementation("eager")
        ref_toks = generate.greedy(lm.model, ids[:, :8], 6)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert torch.equal(toks, ref_toks)


# ---- training, the cache, checkpoints -------------------------------------------------------------------------
def test_training_records_curve_flops_and_beats_nothing_silly(lm):
    m = lm.meta
    assert len(m["loss_curve"]) == TEST.steps
    assert m["loss_curve"][-1] < m["loss_curve"][0]                    # it learned something
    n = sum(p.numel() for p in lm.model.parameters())
    assert m["n_params"] == n
    assert m["train_flops"] == pytest.approx(flops_per_token(TEST, n) * TEST.steps * TEST.batch * TEST.context)
    assert m["heldout_bpb"] == pytest.approx(evaluate.bits_per_byte(lm), rel=1e-6)
    assert (lm.path / "loss_curve.png").is_file()


def test_mfu_against_the_measured_peak(cache, monkeypatch):
    from harness import peaks
    from models import train
    monkeypatch.setattr(peaks, "load_measured", lambda name: {"float32": 0.5, "bw_gbs": 20.0})
    recipe = RECIPES["test"].__class__(**{**TEST.as_dict(), "steps": 2})
    _, meta = train.train(recipe, progress=False)
    assert meta["peak_tflops"] == 0.5
    assert meta["mfu"] == pytest.approx(meta["train_flops"] / meta["train_seconds"] / 1e12 / 0.5)
    monkeypatch.setattr(peaks, "load_measured", lambda name: None)
    _, meta = train.train(recipe, progress=False)
    assert meta["mfu"] is None and "bench.py --suite peak" in meta["peak_source"]


def test_mfu_probes_the_peak_on_a_first_training_run(monkeypatch):
    """With nothing stored, a real recipe's training measures the peak (the runner's first-run probe) rather
    than leaving MFU blank; the unit tests' `test` recipe never probes."""
    from harness import autopeak, peaks
    from models import train
    stored: dict = {}
    calls: list = []
    monkeypatch.setattr(peaks, "load_measured", lambda name: stored or None)
    monkeypatch.setattr(autopeak, "probe", lambda device, name: calls.append(name) or stored.update(float32=0.25))
    assert train._measured_peak("cpu", probe=False) == (None, train._measured_peak("cpu", probe=False)[1])
    assert calls == []
    peak, source = train._measured_peak("cpu", probe=True)
    assert peak == 0.25 and len(calls) == 1 and source.startswith("measured")
    train._measured_peak("cpu", probe=True)                               # stored now: no second probe
    assert len(calls) == 1


def test_cache_is_reused_and_training_is_deterministic(lm, monkeypatch):
    from models import train
    sha = json.loads((lm.path / "meta.json").read_text())["weights_sha256"]
    monkeypatch.setattr(train, "train", lambda *a, **k: pytest.fail("a valid cache was retrained"))
    again = zoo.load("test", progress=False)
    assert again.path == lm.path
    monkeypatch.undo()
    zoo.build(TEST, progress=False, force=True)                       # same recipe, same seed: same weights
    assert json.loads((lm.path / "meta.json").read_text())["weights_sha256"] == sha


@pytest.mark.parametrize("damage", ["flip_weight_byte", "truncate_meta", "delete_config"])
def test_a_corrupt_cache_is_rebuilt_never_used(lm, damage, capsys):
    entry = lm.path
    if damage == "flip_weight_byte":
        w = entry / zoo.WEIGHTS
        b = bytearray(w.read_bytes())
        b[-10] ^= 0xFF
        w.write_bytes(bytes(b))
    elif damage == "truncate_meta":
        (entry / "meta.json").write_text("{\"loss")
    else:
        (entry / "config.json").unlink()
    assert zoo.verify(entry) is not None
    zoo.load("test", progress=False)
    assert "retraining" in capsys.readouterr().err
    assert zoo.verify(entry) is None


def test_a_cache_entry_loads_as_a_user_checkpoint(lm):
    user = zoo.load(str(lm.path), progress=False)
    ids = data.as_tensor(data.split()[1][:40])[None]
    with torch.no_grad():
        torch.testing.assert_close(user.model(input_ids=ids).logits, lm.model(input_ids=ids).logits)
    assert user.byte_level


# ---- bad input: one line, exit 2 ------------------------------------------------------------------------------
def _not_causal(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 32}))
    return tmp_path


@pytest.mark.parametrize("bad", ["nope", "empty_dir", "garbage_config", "not_causal", "no_weights"])
def test_bad_model_is_one_line_and_exit_2(tmp_path, bad, capsys):
    if bad == "nope":
        spec = "no-such-model"
    elif bad == "empty_dir":
        spec = str(tmp_path)
    elif bad == "garbage_config":
        (tmp_path / "config.json").write_text("{not json")
        spec = str(tmp_path)
    elif bad == "not_causal":
        spec = str(_not_causal(tmp_path))
    else:
        TEST.config().save_pretrained(tmp_path)
        spec = str(tmp_path)
    with pytest.raises(zoo.ModelError):
        zoo.load(spec, progress=False)
    from harness.cli import main
    for args in (["model", "--model", spec], ["--suite", "model", "--model", spec]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_bad_model_from_the_command_line_is_one_line_and_exit_2():
    r = _bench("--suite", "model", "--model", "no-such-model")
    assert r.returncode == 2 and r.stderr.strip() == (
        "bench.py: error: unknown model 'no-such-model': choose from tiny, small, test or a checkpoint directory")


def test_model_command_reports_the_figures(cache, capsys):
    from models import cli
    assert cli.main(["--model", "test", "--json", "--no-progress"]) == 0
    fig = json.loads(capsys.readouterr().out)
    assert fig["heldout_bpb"] < fig["unigram_bpb"] + 1 and fig["digits_accuracy"] >= 0.95
    assert fig["sample"].startswith(evaluate.PROMPTS[0])


# ---- slow: the real training path and torch.compile -------------------------------------------------------------
@pytest.mark.slow
def test_tiny_trains_to_its_quality_target(tmp_path, monkeypatch):
    """The default model's real recipe, from scratch (minutes: see README's models table)."""
    monkeypatch.setenv("KB_MODELS_CACHE", str(tmp_path))
    tiny = zoo.load("tiny", progress=False)
    bpb = evaluate.bits_per_byte(tiny)
    # The target is 2.1; this recipe measured 2.03 on one thread (docs/models.md): the target itself
    # is the bound (thread counts change the summation order, not the result by 0.07), and it fails if
    # training breaks.
    assert bpb <= 2.1 and bpb < evaluate.bigram_bpb() - 1.5
    assert tiny.meta["heldout_bpb"] == pytest.approx(bpb, rel=1e-6)
    assert tiny.meta["recipe"] == TINY.as_dict()


@pytest.mark.slow
def test_compiled_static_cache_matches_eager(lm):
    ids = data.as_tensor(data.split()[1][:2 * 17]).view(2, 17)
    with torch.no_grad():
        want = lm.model(input_ids=ids).logits[:, -1]
        fwd = torch.compile(lm.model, dynamic=False)
        kv = generate.make_cache(lm.model, "static", 2, 17)
        generate.prefill(fwd, ids[:, :16], kv)
        for _ in range(2):                       # twice: the rewound StaticCache gives the same answer
            got = generate.decode_step(fwd, ids[:, 16], kv, 16)
            kv.crop(-1)
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
