"""deploy/: ONNX export (checked, cached by model hash), ONNX Runtime against the eager model (with and without
the KV cache), the backend guards. The ORT variants of the model and digits suites are also checked at every
test case by tests/test_suites.py (through the runner, as bench.py checks them)."""
import json

import pytest
import torch

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e . installs it)")

from deploy import export, guards  # noqa: E402
from deploy.ort import Session, _evaluate  # noqa: E402
from harness.check import check_variant  # noqa: E402
from harness.registry import all_suites  # noqa: E402


@pytest.fixture(scope="module")
def lm():
    from models import zoo
    return zoo.load("test", progress=False, attn="eager")


@pytest.fixture(scope="module")
def graphs(lm):
    return {g: export.export_lm(lm, g) for g in ("prefill", "decode")}


def _eager_cached(lm, ids, past_len):
    """Eager logits of ids[:, past_len:] with a DynamicCache holding ids[:, :past_len], and that cache."""
    from models import generate
    cache = generate.make_cache(lm.model, "dynamic", ids.shape[0], ids.shape[1])
    with torch.no_grad():
        generate.prefill(lm.model, ids[:, :past_len], cache)
        pos = torch.arange(past_len, ids.shape[1])
        logits = lm.model(input_ids=ids[:, past_len:], cache=cache, cache_position=pos, use_cache=True).logits
    return logits, cache


def test_graphs_pass_the_checker_and_name_their_tensors(lm, graphs):
    import onnx
    layers = lm.model.config.num_hidden_layers
    for graph, path in graphs.items():
        export.check(path)                                  # raises on an invalid graph
        m = onnx.load(str(path))
        ins = [i.name for i in m.graph.input]
        outs = [o.name for o in m.graph.output]
        assert outs == ["logits", *export.kv_names(layers, "present")]
        assert ins == ["input_ids"] + ([] if graph == "prefill" else export.kv_names(layers, "past"))
        assert export.record(path)["weights"] == export.weights_digest(lm.model)


@pytest.mark.parametrize("b,n,p", [(1, 1, 30), (3, 4, 2), (2, 7, 9)])
def test_decode_graph_matches_the_eager_model_with_its_cache(lm, graphs, b, n, p):
    """The graph with the KV cache in/out against transformers' DynamicCache: logits of the new tokens and
    the cache of p + n tokens, at batch and lengths other than the export's example (2, 5, 7)."""
    ids = torch.randint(0, 256, (b, p + n), generator=torch.Generator().manual_seed(b * 100 + n * 10 + p))
    ref_logits, cache = _eager_cached(lm, ids, p)
    pre, dec = Session(graphs["prefill"]), Session(graphs["decode"])
    past = pre.run(input_ids=ids[:, :p])[1:]
    layers = lm.model.config.num_hidden_layers
    out = dec.run(input_ids=ids[:, p:], **dict(zip(export.kv_names(layers, "past"), past)))
    torch.testing.assert_close(out[0], ref_logits, atol=2e-5, rtol=2e-5)
    for i, layer in enumerate(cache.layers[:layers]):
        torch.testing.assert_close(out[1 + 2 * i], layer.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[2 + 2 * i], layer.values, atol=1e-5, rtol=1e-5)
    # a cache of the wrong tokens changes the logits: the graph reads its past inputs
    wrong = dec.run(input_ids=ids[:, p:], **dict(zip(export.kv_names(layers, "past"), [x.flip(0) if b > 1
                                                                                        else x + 1 for x in past])))
    assert (wrong[0] - ref_logits).abs().max() > 1e-3


def test_export_is_cached_by_model_hash(tmp_path, monkeypatch):
    from models import digits
    monkeypatch.setenv("KB_ONNX_CACHE", str(tmp_path))
    torch.manual_seed(0)
    model = digits.make().eval()
    first = export.export_digits(model)
    calls = []
    real = export._run_export
    monkeypatch.setattr(export, "_run_export", lambda *a: (calls.append(1), real(*a)))
    assert export.export_digits(model) == first and calls == []          # cached: no second export
    with torch.no_grad():
        model[0].weight[0, 0] += 1e-3                                   # new weights: new hash, new file
    second = export.export_digits(model)
    assert second != first and calls == [1]
    first.write_bytes(first.read_bytes()[:-10] + b"0123456789")         # a corrupt entry is exported again
    with torch.no_grad():
        model[0].weight[0, 0] -= 1e-3
    assert export.verify(first) is not None
    assert export.export_digits(model) == first and calls == [1, 1] and export.verify(first) is None
    rec = json.loads(first.with_suffix(".json").read_text())
    assert rec["graph"] == "digits" and rec["torch"] == torch.__version__ and rec["export_s"] > 0


def test_checker_failure_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(export.ExportError, match="onnx.checker rejects bad.onnx"):
        export.check(bad)


def test_unknown_graph_is_refused():
    with pytest.raises(ValueError, match="unknown graph"):
        export.export(torch.nn.Linear(2, 2), "train", "x")


def test_output_shapes_from_symbolic_dims():
    assert _evaluate("past + seq", {"past": 7, "seq": 5}) == 12
    assert _evaluate(3, {}) == 3
    with pytest.raises(ValueError):
        _evaluate("__import__('os')", {})


def test_guards_give_reasons_and_never_raise(monkeypatch):
    import importlib.util

    import onnxruntime as ort
    assert guards.missing("onnxruntime") is None and guards.missing("onnx") is None
    if "CUDAExecutionProvider" not in ort.get_available_providers():      # the CPU wheel (not make gpu's)
        assert "CUDAExecutionProvider" in guards.missing("ort_cuda")
    if importlib.util.find_spec("tensorrt") is None:
        assert "make gpu installs it" in guards.missing("tensorrt")
    if not torch.cuda.is_available():
        assert guards.missing("cupy") and guards.missing("tensorrt")          # nothing to launch on
    with pytest.raises(ValueError):
        guards.missing("openvino")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name))
    guards.missing.cache_clear()
    try:
        assert guards.missing("onnxruntime") == "package 'onnxruntime' is not installed (pip install -e . installs it)"
    finally:
        monkeypatch.undo()
        guards.missing.cache_clear()


def test_missing_backend_is_a_skipped_row_not_a_broken_suite(monkeypatch):
    from harness.registry import Skip
    monkeypatch.setattr(guards, "missing", lambda name: f"{name} is gone")
    suite = all_suites()["digits"]
    case = suite.cases("test", "cpu")[0]
    assert suite.variants["onnxruntime"].requires.missing(case) == "onnxruntime is gone"
    with pytest.raises(Skip, match="tensorrt is gone"):
        guards.require("tensorrt")


def test_ort_decode_with_another_sequences_cache_fails_the_check(monkeypatch):
    """Break the decode path on purpose (each sequence decodes against another sequence's cache): the model
    suite's check against the uncached eager forward must reject it. (Zeroing one layer's keys is not enough
    on the barely trained `test` model: uniform attention there moves the logits by 1.7e-3 only.)"""
    from deploy import variants
    suite = all_suites()["model"]
    case = next(c for c in suite.cases("test", "cpu") if c.kind == "decode")
    real = variants.lm_launcher

    def broken(case, input_ids, prefill_run, decode_run, *rest):
        def swapped(ids):
            out = prefill_run(ids)
            return [out[0], *[t.roll(1, 0) for t in out[1:]]]
        return real(case, input_ids, swapped, decode_run, *rest)
    monkeypatch.setattr(variants, "lm_launcher", broken)
    assert not check_variant(suite, case, suite.variants["onnxruntime"]).result.ok


def test_digits_rows_carry_accuracy(tmp_path):
    from harness.runner import Plan, RunOptions, Runner
    from harness.timing import TimingConfig
    suite = all_suites()["digits"]
    opts = RunOptions(suites=[suite], device="cpu", dtypes=None, mode="test", out=tmp_path / "r",
                      timing=TimingConfig(budget_s=0.01, min_samples=2), progress=False, isolate=False)
    runner = Runner(opts, [])
    try:
        rows = [runner.run_one(Plan(suite, suite.cases("test", "cpu")[0], suite.variants[v]))
                for v in ("eager", "onnxruntime")]
    finally:
        runner.close()
    for r in rows:
        assert r["status"] == "ok", r["reason"]
        assert r["quality_metric"] == "test_accuracy" and r["quality_value"] > 0.9
        assert abs(r["quality_delta"]) < 1e-9                # the same float32 model, another runtime
    assert "CPUExecutionProvider" in rows[1]["config"] and "opt=all" in rows[1]["config"]


# ---- ONNX Runtime int8 quantization ----------------------------------------------------------------------------
def test_the_value_info_trap_is_stripped(graphs):
    """The dynamo exporter declares value_info for initializers (what made quantize_dynamic's shape inference
    fail); the strip removes exactly those and keeps the rest."""
    import onnx
    from deploy.ort_quant import strip_initializer_value_info
    m = onnx.load(str(graphs["prefill"]))
    inits = {i.name for i in m.graph.initializer}
    before = [v.name for v in m.graph.value_info]
    named = sum(n in inits for n in before)
    assert named > 0, "the exporter no longer annotates initializers: the trap is gone, update the docs"
    assert strip_initializer_value_info(m) == named
    assert [v.name for v in m.graph.value_info] == [n for n in before if n not in inits]


@pytest.mark.parametrize("method,ops", [("dynamic", {"MatMulInteger", "DynamicQuantizeLinear"}),
                                        ("static", {"QuantizeLinear", "DequantizeLinear"})])
def test_int8_graphs_are_quantized_and_keep_quality(lm, graphs, method, ops, monkeypatch):
    import onnx
    from deploy import ort_quant
    from models import evaluate, zoo
    path = ort_quant.quantize(graphs["prefill"], method, ort_quant.calibration_feeds(lm, "prefill"))
    qm = onnx.load(str(path))
    got = {n.op_type for n in qm.graph.node}
    assert ops <= got, f"{method}: no {ops - got} in the graph"

    def elements(m, dtype):
        return sum(int(torch.tensor(i.dims).prod()) for i in m.graph.initializer if i.data_type == dtype)
    f32 = elements(onnx.load(str(graphs["prefill"])), onnx.TensorProto.FLOAT)
    assert elements(qm, onnx.TensorProto.INT8) > 0.75 * f32       # every MatMul weight int8 (not the embedding)
    from onnxruntime import quantization as q
    monkeypatch.setattr(q, "quantize_dynamic", lambda *a, **k: pytest.fail("cached graph quantized again"))
    monkeypatch.setattr(q, "quantize_static", lambda *a, **k: pytest.fail("cached graph quantized again"))
    assert ort_quant.quantize(graphs["prefill"], method, ort_quant.calibration_feeds(lm, "prefill")) == path
    fwd, _ = ort_quant.lm_forward(lm, method)
    ref = evaluate.bits_per_byte(lm, limit=4096)
    val = evaluate.bits_per_byte(zoo.LM(lm.name, fwd, lm.context), limit=4096)
    assert val != ref and abs(val - ref) / ref < 0.01


def test_int8_decode_setup_follows_the_eager_model(lm):
    """The quant-suite setup (decode: quantized cache graph with a calibrated past) against eager logits."""
    from deploy import ort_quant
    suite = all_suites()["model"]
    case = next(c for c in suite.cases("test", "cpu") if c.kind == "decode")
    for method in ("dynamic", "static"):
        inputs = suite.make_inputs(case, 1)
        out = ort_quant.model_setup(method)(case, **inputs)()
        ref = suite.compute_reference(case, inputs)
        err = (out.double() - ref).abs().max().item()
        assert 0 < err < 0.05, f"{method}: max error {err} against the eager float32 model"


def test_quant_suite_registration_is_one_line():
    """`ort_quant.register(SUITE)` on a suite shaped like the model suite (what the quant suite will be)."""
    from deploy import ort_quant
    from harness.registry import Suite
    suite = Suite(name="q", description="", baseline="eager")
    ort_quant.register(suite)
    assert set(suite.variants) == {"ort_int8_dynamic", "ort_int8_static"}
    model = all_suites()["model"]
    case = next(c for c in model.cases("test", "cpu") if c.kind == "prefill")
    assert suite.variants["ort_int8_static"].requires.missing(case) is None
    launcher = suite.variants["ort_int8_static"].setup(case, **model.make_inputs(case, 0))
    assert "int8=static" in suite.variants["ort_int8_static"].config(launcher)
