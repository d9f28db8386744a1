"""quant/: every method's layers against their dequantized weights in float64, the storage formats (nibble order,
grids, half-step error bounds), GPTQ against round-to-nearest, bad input, and suites/quant.py end to end on the
`test` model and the digits MLP (the tiny model's quality targets: slow)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import quant
from quant import awq, fp8, gptq, int4_weight_only as i4, int8_weight_only as i8, torch_native, w8a8_dynamic


def _lin(n, k, bias, seed):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) * 0.05)
        lin.weight[0, :7] = 0.0                               # a zero stretch: must stay exactly zero
        if bias:
            lin.bias.copy_(torch.randn(n, generator=g))
    return lin


def _salient_inputs(k, tokens, seed):
    """Calibration inputs whose first 4 channels are 20x louder than the rest (AWQ's salient channels)."""
    x = torch.randn(tokens, k, generator=torch.Generator().manual_seed(seed))
    x[:, :4] *= 20
    return x.double()


def _awq_layer(lin, group=64):
    x = _salient_inputs(lin.in_features, 1024, 5)
    return awq.AWQLinear(lin, group, *awq.awq_quantize(lin.weight, x.t() @ x, x.abs().sum(0), len(x), group))


LAYERS = {
    "int8_wo": lambda lin: i8.Int8WeightOnlyLinear(lin),
    "int4_g32": lambda lin: i4.Int4WeightOnlyLinear(lin, 32),
    "int4_g64": lambda lin: i4.Int4WeightOnlyLinear(lin, 64),
    "int4_g128": lambda lin: i4.Int4WeightOnlyLinear(lin, 128),
    "fp8_wo": lambda lin: fp8.Fp8WeightOnlyLinear(lin),
    "torch_int8pack": lambda lin: torch_native.Int8PackLinear(lin),
    "torch_int4pack_g64": lambda lin: torch_native.Int4PackLinear(lin, 64),
    "awq_g64": _awq_layer,
}


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("m", [1, 3, 17])
@pytest.mark.parametrize("bias", [False, True])
def test_weight_only_layers_compute_with_their_dequantized_weight(name, m, bias):
    n, k = 48, 256
    lin = _lin(n, k, bias, seed=m * 7 + bias)
    layer = LAYERS[name](lin)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
    w = layer.dequantize(torch.float64)
    ref = x.double() @ w.t() + (lin.bias.double() if bias else 0)
    got = layer(x)
    assert got.shape == (m, n) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, atol=2e-5, rtol=1e-5)
    # and the dequantized weight is the original within the method's rounding (AWQ trades the precision of quiet
    # input channels and clipped outliers for the loud channels' (test_awq_has_a_lower_output_error...): looser)
    bound = 0.02 if "int8" in name else 1.0 if name.startswith("awq") else 0.5
    assert (w - lin.weight.double()).abs().max() < 0.05 * bound


@pytest.mark.parametrize("cls", [w8a8_dynamic.W8A8DynamicLinear, fp8.Fp8DynamicLinear])
@pytest.mark.parametrize("m", [1, 5, 33])
def test_dynamic_layers_quantize_each_token_then_multiply(cls, m):
    n, k = 40, 96
    lin = _lin(n, k, True, seed=m)
    layer = cls(lin)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(100 + m)) * 3
    x[0, :] *= 50                                              # one loud token must not flatten the others
    if cls is w8a8_dynamic.W8A8DynamicLinear:
        xq, sx = w8a8_dynamic.quantize_rows(x)
        xd = xq.double() * sx.double()[:, None]
        assert (xd - x.double()).abs().max(1).values.le(sx.double() / 2 + 1e-6).all()
    else:
        xq, sx = fp8.quantize_rows_f8(x)
        xd = xq.double() * sx.double()[:, None]
    ref = xd @ layer.dequantize(torch.float64).t() + lin.bias.double()
    torch.testing.assert_close(layer(x).double(), ref, atol=1e-4, rtol=1e-5)


def test_int4_packs_two_values_per_byte_even_k_in_the_low_nibble():
    q = torch.tensor([[1, 2, 3, 4, 15, 0]], dtype=torch.uint8)
    assert i4.pack(q).tolist() == [[0x21, 0x43, 0x0F]]
    r = torch.randint(0, 16, (7, 64), dtype=torch.uint8)
    assert torch.equal(i4.unpack(i4.pack(r)), r)
    lin = _lin(16, 64, False, 0)
    assert i4.Int4WeightOnlyLinear(lin, 32).packed.shape == (16, 32)


@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_grid_errors_within_half_a_step_and_zero_is_exact(group):
    lin = _lin(24, 256, False, group)
    layer = i4.Int4WeightOnlyLinear(lin, group)
    s = layer.scale.double().repeat_interleave(group, 1)
    err = (layer.dequantize(torch.float64) - lin.weight.double()).abs()
    assert (err <= s / 2 + 1e-7).all()
    assert torch.all(layer.dequantize()[0, :7] == 0)
    q = i4.unpack(layer.packed)
    assert q.max() <= 15 and layer.zero.max() <= 15
    assert q.min() == 0 or q.max() == 15                       # the grid spans the range (not a lazy scale)


def test_int8_grid_errors_within_half_a_step():
    lin = _lin(33, 129, False, 3)
    q, s = i8.quantize_per_channel(lin.weight)
    assert q.abs().max() == 127                                # each row's absmax maps to 127
    err = (q.double() * s.double()[:, None] - lin.weight.double()).abs()
    assert (err <= s.double()[:, None] / 2 + 1e-7).all()
    w, sf = fp8.quantize_rows_f8(lin.weight)
    assert w.dtype == torch.float8_e4m3fn and torch.allclose(w.float().abs().amax(1), torch.full((33,), 448.0))


def test_gptq_has_a_lower_output_error_than_round_to_nearest():
    g = torch.Generator().manual_seed(0)
    k, n, tokens = 128, 64, 4096
    mix = torch.randn(k, k, generator=g) / k ** 0.5 + torch.eye(k)          # correlated input features
    x = (torch.randn(tokens, k, generator=g) * torch.linspace(0.2, 3, k)) @ mix
    lin = _lin(n, k, False, 1)
    xtx = x.double().t() @ x.double()
    q, s, z = gptq.gptq_quantize(lin.weight, xtx, tokens, 64)
    w_gptq = i4.Int4WeightOnlyLinear(lin, 64, q=q, scale=s, zero=z).dequantize(torch.float64)
    w_rtn = i4.Int4WeightOnlyLinear(lin, 64).dequantize(torch.float64)
    out = lambda w: (x.double() @ (w - lin.weight.double()).t()).norm()       # noqa: E731
    assert out(w_gptq) < 0.8 * out(w_rtn), (out(w_gptq), out(w_rtn))
    assert q.max() <= 15 and s.gt(0).all()


def test_gptq_act_order_beats_plain_gptq_with_static_groups():
    """Act-order (columns by decreasing H_ii; here the input scales rise with k, so the order is reversed) with
    static groups: the grids are those of the original weights, the layout unchanged, the output error lower
    than GPTQ in column order and than RTN, on the calibration inputs and on fresh ones drawn alike."""
    g = torch.Generator().manual_seed(0)
    k, n, tokens = 128, 64, 4096
    mix = torch.randn(k, k, generator=g) / k ** 0.5 + torch.eye(k)
    draw = lambda: ((torch.randn(tokens, k, generator=g) * torch.linspace(0.2, 3, k) ** 2) @ mix).double()  # noqa
    x, fresh = draw(), draw()
    lin = _lin(n, k, False, 1)
    xtx = x.t() @ x
    q, s, z = gptq.gptq_quantize(lin.weight, xtx, tokens, 64, act_order=True)
    s0, z0 = i4.group_params(lin.weight, 64)
    assert torch.equal(s, s0) and torch.equal(z, z0)                       # static groups
    deq = lambda q, s, z: i4.Int4WeightOnlyLinear(lin, 64, q=q, scale=s, zero=z).dequantize(torch.float64)  # noqa
    w_act = deq(q, s, z)
    w_plain = deq(*gptq.gptq_quantize(lin.weight, xtx, tokens, 64))
    w_rtn = i4.Int4WeightOnlyLinear(lin, 64).dequantize(torch.float64)
    for inputs in (x, fresh):
        out = lambda w: (inputs @ (w - lin.weight.double()).t()).norm()       # noqa: E731
        assert out(w_act) < 0.9 * out(w_plain) and out(w_act) < 0.5 * out(w_rtn), \
            (out(w_act), out(w_plain), out(w_rtn))


def test_awq_has_a_lower_output_error_than_round_to_nearest():
    """With a few loud input channels, AWQ's searched scales (alpha > 0) and clipping cut the output error of
    int4 g64 RTN on the calibration inputs, and on fresh inputs drawn alike."""
    k, n = 128, 64
    lin = _lin(n, k, False, 3)
    x, fresh = _salient_inputs(k, 4096, 0), _salient_inputs(k, 4096, 1)
    s, alpha = awq.search_scale(lin.weight, x.t() @ x / len(x), x.abs().mean(0), 64)
    assert alpha > 0 and s[:4].min() > s[4:].max()             # the loud channels get the larger scales
    w_awq = _awq_layer(lin).dequantize(torch.float64)
    w_rtn = i4.Int4WeightOnlyLinear(lin, 64).dequantize(torch.float64)
    for inputs in (x, fresh):
        out = lambda w: (inputs @ (w - lin.weight.double()).t()).norm()       # noqa: E731
        assert out(w_awq) < 0.8 * out(w_rtn), (out(w_awq), out(w_rtn))
    # the clip search alone, on plain inputs (no scaling to gain): never worse than the full range
    h = torch.eye(k, dtype=torch.float64)
    ratio = awq.search_clip(lin.weight.double(), h, 64)
    err = lambda r: awq._output_error(awq._fake_quant(lin.weight, *awq.clipped_params(lin.weight, 64, r), 64)  # noqa
                                      - lin.weight.double(), h)
    assert ratio.min() < 1.0 and err(ratio) < err(1.0)


def test_calibrated_model_quantization_replaces_every_decoder_linear():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 16))
    x = torch.randn(256, 64)
    q = quant.quantize(model, "gptq_g64", calibrate=lambda m: m(x))
    assert [type(m).__name__ for m in q if not isinstance(m, nn.ReLU)] == ["Int4WeightOnlyLinear"] * 2
    assert isinstance(model[0], nn.Linear)                     # the original is untouched (a copy is quantized)
    assert quant.weight_bytes(q) < quant.weight_bytes(model) / 4
    # AWQ's calibration statistics: per layer sum x x^T, sum |x| and the token count of that layer's inputs
    stats = awq.statistics(model, lambda m: m(x))
    for name, inp in (("0", x), ("2", torch.relu(model[0](x)))):
        xtx, abs_sum, count = stats[name]
        torch.testing.assert_close(xtx, inp.double().t() @ inp.double())
        torch.testing.assert_close(abs_sum, inp.double().abs().sum(0))
        assert count == len(x)
    a = quant.quantize(model, "awq_g64", calibrate=lambda m: m(x))
    assert [type(m).__name__ for m in a if not isinstance(m, nn.ReLU)] == ["AWQLinear"] * 2
    # AWQ stores the int4 layout plus one fp32 1/s per input channel of each layer
    assert quant.weight_bytes(a) == quant.weight_bytes(q) + 4 * (64 + 64)
    with torch.no_grad():
        h = torch.relu(x.double() @ a[0].dequantize(torch.float64).t() + a[0].bias.double())
        ref = h @ a[2].dequantize(torch.float64).t() + a[2].bias.double()
        torch.testing.assert_close(a(x).double(), ref, atol=1e-4, rtol=1e-4)


def test_bad_input_is_one_line():
    model = nn.Sequential(nn.Linear(96, 32))
    cases = [(lambda: i8.apply(model, bits=4), "unsupported bit width 4"),
             (lambda: i4.apply(model, group=64), "group size 64 does not divide the input size 96"),
             (lambda: i4.apply(model, group=48), "group size 48 is not one of 32, 64, 128"),
             (lambda: i4.apply(model, group=32, bits=3), "unsupported bit width 3"),
             (lambda: quant.quantize(model, "int3"), "unknown quantization method 'int3'"),
             (lambda: quant.quantize(model, "gptq_g32"), "unknown quantization method"),
             (lambda: quant.quantize(nn.Sequential(nn.Linear(64, 10)), "torch_int4pack_g64"),
              "needs a multiple of 16"),
             (lambda: quant.quantize(nn.Sequential(nn.Linear(64, 16)), "gptq_g64"), "needs calibration data"),
             (lambda: quant.quantize(nn.Sequential(nn.Linear(64, 16)), "awq_g64"), "needs calibration data"),
             (lambda: quant.quantize(model, "awq_g64", calibrate=lambda m: m(torch.randn(8, 96))),
              "group size 64 does not divide the input size 96"),
             (lambda: quant.quantize(nn.Sequential(nn.Linear(64, 16)), "awq_g64", calibrate=lambda m: None),
              "saw no calibration input"),
             (lambda: quant.quantize(nn.Sequential(nn.Linear(64, 16)), "gptq_g64_seq"), "needs calibration data"),
             (lambda: quant.quantize(model, "gptq_g64_seq", calibrate=lambda m: m(torch.randn(8, 96))),
              "group size 64 does not divide the input size 96")]
    if quant.METHODS["torchao_intx_int4_g64"].why_not("cpu") is None:     # torchao's own check is an AssertionError
        cases.append((lambda: quant.quantize(model, "torchao_intx_int4_g64"),
                      "torchao_intx_int4_g64: group size 64 does not divide the input size 96"))
    cases.append((lambda: quant.quantize(model, "int4_g64_cpp"), "group size 64 does not divide the input size 96"))
    # GPTQ on a layer that saw no calibration input (its Hessian 0: it would be quantized to all zeros)
    two = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 16))
    for name in ("gptq_g64", "gptq_g64_seq", "gptq_g64_act"):
        cases.append((lambda name=name: quant.quantize(two, name, calibrate=lambda m: m[0](torch.randn(8, 64))),
                      "layer '1' saw no calibration input"))
    for fn, words in cases:
        with pytest.raises(quant.QuantError) as e:
            fn()
        assert words in str(e.value) and "\n" not in str(e.value)
    assert isinstance(model[0], nn.Linear)                     # a refused method changed nothing


def test_cuda_only_configs_say_why():
    for name in ("torchao_int4_wo", "torchao_fp8_dynamic"):
        why = quant.METHODS[name].why_not("cpu")
        assert why and "CUDA" in why


def test_weight_bytes_counts_storage_at_its_width():
    model = nn.Sequential(nn.Linear(128, 64, bias=False))
    assert quant.weight_bytes(model) == 128 * 64 * 4
    assert quant.weight_bytes(quant.quantize(model, "int8_wo")) == 128 * 64 + 64 * 4
    # int4 g64: half a byte per weight + one fp32 scale and one uint8 zero point per group
    assert quant.weight_bytes(quant.quantize(model, "int4_g64")) == 128 * 64 // 2 + 64 * 2 * (4 + 1)


# ---- the suite ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qsuite():
    from harness.registry import all_suites
    return all_suites()["quant"]


def test_every_method_is_a_variant_and_bad_cases_are_skipped_rows(qsuite):
    """Every method is a variant (tests/test_suites.py checks each one at every test case through the runner); a
    method that cannot run here or cannot take a layer says why, as a skipped row would."""
    from harness.check import check_variant
    from harness.registry import Skip
    # every method of quant/, and ONNX Runtime's int8 (deploy/ort_quant.py: test_ort_int8_rows_on_the_quant_suite)
    assert set(qsuite.variants) == set(quant.METHODS) | {"ort_int8_dynamic", "ort_int8_static"}
    assert "digits" in qsuite.variants["ort_int8_dynamic"].requires.missing(
        next(c for c in qsuite.cases("test") if c.kind == "digits"))
    prefill = next(c for c in qsuite.cases("test") if c.kind == "prefill")
    assert "CUDA" in qsuite.variants["torchao_int4_wo"].requires.missing(prefill)
    with pytest.raises(Skip, match="group size 128 does not divide the input size 64"):
        check_variant(qsuite, prefill, qsuite.variants["int4_g128"])
    digits_case = next(c for c in qsuite.cases("test") if c.kind == "digits")
    with pytest.raises(Skip, match="needs a multiple of 16"):
        check_variant(qsuite, digits_case, qsuite.variants["torch_int4pack_g64"])
    for name in ("int4_g64", "gptq_g64"):
        assert check_variant(qsuite, prefill, qsuite.variants[name]).ok


def _swap_nibbles(monkeypatch):
    real = i4.unpack
    monkeypatch.setattr(i4, "unpack", lambda p: real(((p & 0xF) << 4) | (p >> 4)))


@pytest.mark.parametrize("breakage", ["swapped_nibbles", "scale_x2", "transposed_groups"])
def test_the_suite_check_fails_a_wrong_quantized_model(qsuite, monkeypatch, breakage):
    """The model-level bound catches layout and scale errors (on the digits MLP, whose logits are large)."""
    import suites.quant as sq
    from harness.check import check_variant
    if breakage == "swapped_nibbles":
        _swap_nibbles(monkeypatch)
    elif breakage == "scale_x2":
        real = i8.quantize_per_channel
        monkeypatch.setattr(i8, "quantize_per_channel", lambda w, bits=8: (lambda q, s: (q, 2 * s))(*real(w, bits)))
    else:
        real_deq = i4.Int4WeightOnlyLinear.dequantize
        monkeypatch.setattr(i4.Int4WeightOnlyLinear, "dequantize",
                            lambda self, dtype=torch.float32: real_deq(self, dtype).flip(1))
    sq._Q.clear()
    case = next(c for c in qsuite.cases("test") if c.kind == "digits")
    variant = qsuite.variants["int8_wo" if breakage == "scale_x2" else "int4_g32"]
    try:
        assert not check_variant(qsuite, case, variant).ok
    finally:
        sq._Q.clear()


def test_quality_columns_on_the_test_model(qsuite):
    import suites.quant as sq
    case = next(c for c in qsuite.cases("test") if c.kind == "quality")
    rows = {}
    for name in ("none", "int8_wo", "int4_g32"):
        v = qsuite.variants[name]
        launcher = v.setup(case, **qsuite.make_inputs(case, 0))
        rows[name] = sq.model_columns(case, launcher, {"median_ms": 2.0})
    assert rows["none"]["quality_delta"] == 0 and rows["none"]["greedy_agreement"] == 1.0
    assert rows["none"]["bits_per_weight"] == pytest.approx(32.0)
    lins = [lin for _, lin in quant.decoder_linears(sq.lm_for(case).model)]
    per_row = sum(lin.out_features for lin in lins) / sum(lin.weight.numel() for lin in lins)
    assert rows["int8_wo"]["bits_per_weight"] == pytest.approx(8 + 32 * per_row)   # one fp32 scale per row
    assert rows["int4_g32"]["bits_per_weight"] == pytest.approx(4 + 40 / 32)
    assert rows["int4_g32"]["weight_bytes"] < rows["int8_wo"]["weight_bytes"] < rows["none"]["weight_bytes"]
    for r in rows.values():
        assert r["quality_metric"] == "heldout_bpb" and 0 <= r["greedy_agreement"] <= 1
        assert r["tokens_per_s"] == pytest.approx(sq.tokens(case) / 2e-3)


@pytest.mark.slow
def test_tiny_model_quality_targets():
    """The issue's quality targets on the tiny model (trains it on first use): int8 weight-only within 0.1% bits
    per byte, int4 g64 RTN within 1%, GPTQ g64 and AWQ g64 better than RTN g64 (full held-out split)."""
    from models import evaluate, zoo
    lm = zoo.load("tiny", progress=False)
    ref = evaluate.bits_per_byte(lm)
    bpb = {m: evaluate.bits_per_byte(zoo.LM("tiny", quant.quantize(lm, m), lm.context))
           for m in ("int8_wo", "int4_g64", "gptq_g64", "gptq_g64_act", "awq_g64")}
    assert (bpb["int8_wo"] - ref) / ref <= 0.001, (bpb, ref)
    assert (bpb["int4_g64"] - ref) / ref <= 0.01, (bpb, ref)
    assert bpb["gptq_g64"] < bpb["int4_g64"], (bpb, ref)
    assert bpb["awq_g64"] < bpb["int4_g64"] and bpb["gptq_g64_act"] < bpb["int4_g64"], (bpb, ref)


@pytest.mark.slow
@pytest.mark.parametrize("breakage", ["none", "swapped_nibbles"])
def test_tiny_model_check_passes_int4_and_fails_a_broken_one(qsuite, monkeypatch, breakage):
    """On the tiny model the suite's logit bound holds for a correct int4 g64 model and fails a broken one."""
    import suites.quant as sq
    from harness.check import check_variant
    from harness.registry import Case
    if breakage == "swapped_nibbles":
        _swap_nibbles(monkeypatch)
    sq._Q.clear()
    case = Case("quant", dict(kind="quality", b=8, n=64, model="tiny"), name="tiny:quality")
    try:
        assert check_variant(qsuite, case, qsuite.variants["int4_g64"]).ok == (breakage == "none")
    finally:
        sq._Q.clear()


def test_pareto_plot_of_a_quant_run():
    import pandas as pd

    from harness.report_plots import pareto_png
    rows = []
    for v, tps, delta, mb in (("none", 100, 0.0, 4), ("int8_wo", 150, 0.001, 1), ("int4_g64", 200, 0.01, 0.5),
                              ("slow_bad", 50, 0.05, 1)):
        rows.append(dict(status="ok", variant=v, case="tiny:decode-b1-ctx48", tokens_per_s=tps, quality_metric=None,
                         quality_delta=None, quality_ref=None, weight_bytes=None))
        rows.append(dict(status="ok", variant=v, case="tiny:quality", tokens_per_s=1, quality_metric="heldout_bpb",
                         quality_delta=delta, quality_ref=2.5, weight_bytes=mb * 2**20))
    png = pareto_png("tiny", pd.DataFrame(rows))
    assert png and len(png) > 1000
    assert pareto_png("tiny", pd.DataFrame(rows).query("quality_metric != 'heldout_bpb'")) is None


def test_pareto_points_pair_quality_and_speed_of_one_dtype():
    """A quant run over float32 and bfloat16: each point is one (variant, dtype), its speed and quality from rows of
    that dtype (a bfloat16 speed never paired with a float32 quality), one front per dtype, a repeated row once."""
    import pandas as pd

    from harness.report_plots import pareto_front, pareto_png, pareto_points
    rows = []
    for dt, k in (("float32", 1), ("bfloat16", 3)):
        for v, tps, delta in (("none", 100, 0.0), ("int8_wo", 150, 0.001), ("int4_g64", 200, 0.01),
                              ("slow_bad", 50, 0.05), ("int8_slower", 120, 0.001)):     # as good, slower: off
            rows.append(dict(status="ok", variant=v, dtype=dt, case="tiny:decode-b1-ctx48", tokens_per_s=k * tps,
                             quality_metric=None, quality_delta=None, quality_ref=None, weight_bytes=None))
            rows.append(dict(status="ok", variant=v, dtype=dt, case="tiny:quality", tokens_per_s=1,
                             quality_metric="heldout_bpb", quality_delta=k * delta, quality_ref=2.0,
                             weight_bytes=2**20))
    rows.append(dict(rows[-1], quality_delta=0.5))                          # resumed: the last row counts
    pts = pareto_points(pd.DataFrame(rows))
    assert len(pts) == 10 and pts.attrs["case"] == "tiny:decode-b1-ctx48"
    assert pts.loc["int4_g64 bfloat16", "x"] == 600 and pts.loc["int4_g64 float32", "x"] == 200
    assert pts.loc["int8_wo bfloat16", "y"] == pytest.approx(0.15) and pts.loc["int8_wo float32", "y"] == 0.05
    assert pts.loc["int8_slower bfloat16", "y"] == pytest.approx(25.0)
    assert pareto_front(pts[pts["dtype"] == "float32"]) == [(200, 0.5), (150, 0.05), (100, 0.0)]
    assert pareto_png("tiny", pd.DataFrame(rows))
    one = pareto_points(pd.DataFrame(rows[:10]))                               # one dtype: plain variant names
    assert sorted(one.index) == ["int4_g64", "int8_slower", "int8_wo", "none", "slow_bad"]


@pytest.mark.parametrize("name,ref", [("w8a8_cpp", "w8a8"), ("int4_g64_cpp", "int4_g64")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpp_kernel_methods_compute_what_the_torch_layers_compute(name, ref, dtype):
    why = quant.METHODS[name].why_not("cpu")
    if why:
        pytest.skip(why)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 96), nn.GELU(), nn.Linear(96 if "w8" in name else 128, 32)) \
        if "w8" in name else nn.Sequential(nn.Linear(128, 128), nn.GELU(), nn.Linear(128, 48))
    x = torch.randn(2, 7, 128)
    model = model.to(dtype)
    a, b = quant.quantize(model, name), quant.quantize(model, ref)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    with torch.no_grad():
        torch.testing.assert_close(a(x.to(dtype)).float(), b(x.to(dtype)).float(), **tol)


def test_ort_int8_rows_on_the_quant_suite(qsuite, tmp_path):
    """deploy/ort_quant's variants as registered in the quant suite, through the runner on the suite's own test
    shapes: the language-model rows ok (checked against the float32 model before timing) with their quality
    columns; the digits and bfloat16 rows skipped with the reason."""
    from deploy import guards
    from harness.runner import Plan, RunOptions, Runner
    from harness.timing import TimingConfig
    why = guards.missing("onnxruntime")
    if why:
        pytest.skip(why)
    import suites.quant as sq
    opts = RunOptions(suites=[qsuite], device="cpu", dtypes=None, mode="test", out=tmp_path, progress=False,
                      timing=TimingConfig(budget_s=0.01, min_samples=2), isolate=False)
    runner = Runner(opts, [])
    try:
        for name in ("ort_int8_dynamic", "ort_int8_static"):
            for dtype in qsuite.dtypes:
                for case in qsuite.cases("test", "cpu", dtype):
                    row = runner.run_one(Plan(qsuite, case, qsuite.variants[name]))
                    what = f"{name} {case.name} {dtype}"
                    if case.kind == "digits" or dtype != "float32":
                        assert row["status"] == "skipped" and row["reason"], what
                        continue
                    assert row["status"] == "ok", (what, row.get("reason"))
                    assert f"int8={name.removeprefix('ort_int8_')}" in row["config"], what
                    assert row["method_family"] == "onnxruntime" and row["tokens_per_s"] > 0, what
                    fp32_bytes = 4 * sum(p.numel() for p in sq.lm_for(case.with_(dtype="float32")).model.parameters())
                    assert 0 < row["weight_bytes"] < fp32_bytes, what       # int8 weights stored
                    if case.kind == "quality":
                        assert row["quality_metric"] == "heldout_bpb", what
                        # quantized: not the float32 model's figure, but within 2% of it
                        assert row["quality_delta"] != 0 and abs(row["quality_delta"]) / row["quality_ref"] < 0.02, what
                        assert 0.5 <= row["greedy_agreement"] <= 1.0, what
    finally:
        runner.close()


@pytest.mark.parametrize("name,kernel,source,other", [
    ("w8a8_cpp", "GEMM_W8A8", "kernels/cpp/quant_int8_gemm_v3.cpp", "GEMM_W8A8_V2"),
    ("int4_g64_cpp", "GEMM_W4A16_DP", "kernels/cpp/quant_int4_dp.cpp", "GEMM_W4A16")])
def test_cpp_methods_run_the_v3_kernels_at_decode_and_prefill_rows(name, kernel, source, other, monkeypatch):
    """The model paths call the newest rung (int8 v3, int4 v3 where the CPU has AVX512-BF16) at every row count a
    model gives them (decode M = 1, 16, prefill 128, 200), never the rung below."""
    from kernels.cpp import lib as cpp
    why = quant.METHODS[name].why_not("cpu") or (cpp.w4_dp_reason() if name == "int4_g64_cpp" else None)
    if why:
        pytest.skip(why)
    assert getattr(cpp, kernel).source == source
    model = nn.Sequential(nn.Linear(128, 128), nn.GELU(), nn.Linear(128, 64))
    q = quant.quantize(model, name)
    rows, real = [], getattr(cpp, kernel)

    def spy(**kw):
        rows.append(kw["out"].shape[0])
        return real(**kw)
    monkeypatch.setattr(cpp, kernel, spy)
    monkeypatch.setattr(cpp, other, lambda **kw: pytest.fail(f"{name} called {other}"))
    ref = quant.quantize(model, name.removesuffix("_cpp"))                 # the same grid computed by torch
    with torch.no_grad():
        for m in (1, 16, 128, 200):
            x = torch.randn(m, 128)
            torch.testing.assert_close(q(x), ref(x), atol=1e-4, rtol=1e-4)
    assert rows == [1, 1, 16, 16, 128, 128, 200, 200]


def _seq_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32))
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(64, 64, generator=g) / 8 + torch.eye(64)
    x = (torch.randn(2048, 64, generator=g) * torch.linspace(0.2, 3, 64)) @ mix
    return model, x


def test_gptq_sequential_takes_each_hessian_from_the_quantized_layers_before_it():
    """gptq_g64_seq: the first layer as plain GPTQ (nothing quantized before it); the second layer's Hessian from
    the outputs of the *quantized* first layer, computed here independently in float64: its int4 codes are exactly
    GPTQ's on that Hessian, and differ from those of the unquantized model's Hessian (plain gptq_g64). (What it
    buys is not asserted: here layer 2's error on its quantized inputs is 5.94 against plain GPTQ's 5.91, GPTQ being
    greedy and the two Hessians close; the tiny model's row in the README says what it gives there.)"""
    model, x = _seq_model()
    seq = quant.quantize(model, "gptq_g64_seq", calibrate=lambda m: m(x))
    plain = quant.quantize(model, "gptq_g64", calibrate=lambda m: m(x))
    assert torch.equal(seq[0].packed, plain[0].packed)
    h1 = torch.relu(x @ seq[0].dequantize(torch.float32).t() + seq[0].bias)     # what layer 2 sees, quantized
    q, s, z = gptq.gptq_quantize(model[2].weight, h1.double().t() @ h1.double(), len(x), 64)
    assert torch.equal(seq[2].packed, i4.Int4WeightOnlyLinear(model[2], 64, q=q, scale=s, zero=z).packed)
    assert not torch.equal(seq[2].packed, plain[2].packed)


def test_gptq_sequential_groups_layers_that_read_one_input():
    """The order of true-sequential GPTQ on a Llama block: q/k/v (one input), o, gate/up (one input), down, block
    after block; calibration batches after the first are not run to find it."""
    from transformers import LlamaForCausalLM

    from models import configs
    lm = LlamaForCausalLM(configs.TEST.config()).eval()
    calls = []
    ids = torch.randint(0, 256, (3, 16))

    def calibrate(m):
        for b in ids:
            calls.append(1)
            m(input_ids=b[None])
    groups = gptq.sequential_groups(lm, calibrate)
    assert len(calls) == 2                     # the second of 3 batches starts, then the order is known
    blocks = [[[f"model.layers.{i}.self_attn.{p}_proj" for p in "qkv"], [f"model.layers.{i}.self_attn.o_proj"],
               [f"model.layers.{i}.mlp.{p}_proj" for p in ("gate", "up")], [f"model.layers.{i}.mlp.down_proj"]]
              for i in range(2)]
    assert groups == blocks[0] + blocks[1]
