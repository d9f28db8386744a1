"""Quantization methods on a whole model, quality and speed side by side: one variant per method of quant/
(ours, PyTorch's, torchao's), the unquantized model as the baseline.

The model: `bench.py --suite quant --model tiny|small|PATH` (default tiny; the `test` model for test shapes),
loaded through models.zoo and quantized once per (model, device, dtype, method) outside the timing (GPTQ's
calibration included). Only the decoder's linear layers are quantized (quant/common.py).
Cases:
- `prefill-b{b}-p{p}`: one forward over b prompts of p tokens, filling a DynamicCache; tokens per call b*p.
- `decode-b{b}-ctx{c}`: one decode step for b sequences against a cache of c tokens (cropped back after each
  call, so every timed call does the same work); `ms_per_token` is the step's time.
- `quality`: a forward over b held-out windows (timed); its row carries the held-out bits per byte of the
  quantized model against the unquantized one (`quality_*` columns, the whole held-out split) and, as extra
  columns, `quality_delta_pct` (delta / reference, %) and `greedy_agreement` (share of identical greedy tokens
  over models.evaluate.PROMPTS, 32 tokens each).
- `digits`: the same method applied to the digits MLP (models/digits.py), timed on the 450 test images;
  `quality_metric` = digits_accuracy. A method that cannot take the MLP (a group that does not divide 64) is
  a skipped row with the reason.
Every row also has `weight_bytes` (the model's weights as stored: quant.weight_bytes) and `bits_per_weight`
(storage of the quantized layers per quantized weight, scales and zero points included).

Correctness: logits against the unquantized float32 model. A quantized model is *meant* to differ, so the
check is a bound on gross error (a wrong scale, a swapped nibble, a transposed weight fail it, see
tests/test_quant.py); the difference that matters is measured by the quality columns. Each method's layers are
checked exactly against their dequantized weights in float64 by tests/test_quant.py.
Work: as suites/model.py (2 FLOPs per weight per token plus attention); bytes: the unquantized weights plus the
KV cache: the same for every variant of a case, so `gbps` is the effective rate; `weight_bytes` is the storage.
"""
from __future__ import annotations

import copy
from typing import Any

import torch

import quant
from deploy import ort_quant
from harness.registry import Requires, Skip, Suite
from models import data, digits, evaluate, zoo
from suites import _lm

QUALITY_BYTES = None           # held-out bytes scored per quality row: the whole split (46,080 bytes)
TEST_QUALITY_BYTES = 2048
GREEDY_TOKENS = 32              # per prompt of models.evaluate.PROMPTS (8 on the `test` model)


_spec = _lm.model_spec


def _name(p: dict) -> str:
    return "digits" if p["kind"] == "digits" else _lm.case_name(p)


def _tolerances(case):
    # Logits of a quantized model against the float32 one. A quantized model is meant to differ: on the tiny
    # model int4 g64 moves single logits by up to 5.0 (one window position of 16,384; mean 0.18), so the bound is
    # one on gross error: breaking a method (nibbles swapped, scales doubled, groups reversed) gives errors of
    # 9.5-38 there (tests/test_quant.py). Each method's exactness is checked per layer, in float64.
    if case.kind == "digits":           # its logits are ~10x larger (pixel values 0..16 in, no normalization)
        return {"float32": (4.0, 0.2), "bfloat16": (5.0, 0.2)}
    return {"float32": (6.0, 0.1), "bfloat16": (7.0, 0.1)}


SUITE = Suite(
    name="quant",
    description="quantization methods on a whole model: quality (bits per byte, greedy agreement, digits "
                "accuracy), weight bytes, prefill and decode tokens/s",
    baseline="none",
    dtypes=("float32", "bfloat16"),
    tolerances=_tolerances,
    compute_class="matmul",
    case_name=_name,
)
_prefill, _decode = _lm.prefill, _lm.decode

SUITE.add_cases("test", [_prefill(2, 17, model="test"), _decode(3, 9, model="test"),
                         dict(kind="quality", b=4, n=64, model="test"), dict(kind="digits", b=450, n=64)])
SUITE.add_cases("quick", [_prefill(1, 64), _prefill(8, 64), _decode(1, 48), _decode(16, 48), _decode(64, 48),
                          dict(kind="quality", b=8, n=64), dict(kind="digits", b=450, n=64)])
SUITE.add_cases("full", [_prefill(1, 64), _prefill(8, 64), _prefill(32, 64), _decode(1, 48), _decode(8, 48),
                         _decode(32, 48), dict(kind="quality", b=8, n=64), dict(kind="digits", b=450, n=64)])


# ---- models, loaded and quantized once per process ----------------------------------------------------------
_LM: dict[tuple, zoo.LM] = {}
_Q: dict[tuple, Any] = {}


def lm_for(case, dtype: torch.dtype | None = None) -> zoo.LM:
    return _lm.load(_LM, _spec(case.params), case.device, dtype or case.dtype)


def digits_model(device: str, dtype: torch.dtype):
    key = ("digits", device, dtype)
    if key not in _LM:
        with torch.enable_grad():            # the reference runs under no_grad; training needs gradients
            _LM[key] = digits.train().to(device, dtype)
    return _LM[key]


def quantized(case, method: str):
    """The model of `case` quantized with `method` (cached); Skip with the one-line reason when it cannot be."""
    key = (_spec(case.params) if case.kind != "digits" else "digits", case.device, case.dtype, method)
    if key not in _Q:
        if len(_Q) > 6:
            _Q.clear()
        try:
            if case.kind == "digits":
                xtr = data.digits()[0].to(case.device, case.dtype)
                _Q[key] = quant.quantize(digits_model(case.device, case.dtype), method, case.device,
                                         calibrate=lambda m: m(xtr))
            else:
                _Q[key] = quant.quantize(lm_for(case), method, case.device)
        except quant.QuantError as exc:
            _Q[key] = exc
    got = _Q[key]
    if isinstance(got, quant.QuantError):
        raise Skip(str(got))
    return got


def _fp32(case):
    return case.with_(dtype="float32")


# ---- inputs, work, reference ----------------------------------------------------------------------------
@SUITE.inputs
def make_inputs(case, rng):
    g = _lm.generator(rng)
    if case.kind == "digits":            # the test images, in a seeded order
        x, _ = digits.test_split()
        return {"x": x[torch.randperm(len(x), generator=g)[:case.b]].to(case.device, case.dtype)}
    ids = _lm.held_out_windows(g, case.b, _n(case) + (1 if case.kind == "decode" else 0))
    return {"input_ids": _lm.token_ids(lm_for(_fp32(case)), ids).to(case.device)}


def _n(case) -> int:
    return min(case.n, lm_for(_fp32(case)).context) if case.kind == "quality" else case.n


@SUITE.flops
def flops(case):
    if case.kind == "digits":
        return 2 * case.b * sum(p.numel() for n, p in digits_model("cpu", torch.float32).named_parameters()
                                if n.endswith("weight"))
    model = lm_for(_fp32(case)).model
    return _lm.flops(_lm.shape(model), _lm.n_params(model), case.kind, case.b, _n(case))


@SUITE.bytes
def nbytes(case):
    if case.kind == "digits":
        m = digits_model("cpu", torch.float32)
        return sum(p.numel() for p in m.parameters()) * case.itemsize + case.b * (64 + 10) * case.itemsize
    model = lm_for(_fp32(case)).model
    return _lm.n_params(model) * case.itemsize + _lm.kv_bytes(_lm.shape(model), case.b, _n(case), case.itemsize)


def tokens(case) -> int:
    return case.b if case.kind == "digits" else _lm.tokens(case.kind, case.b, _n(case))


@SUITE.reference
def reference(case, input_ids=None, x=None):
    """The unquantized float32 model's logits (decode: an uncached forward, last position)."""
    if case.kind == "digits":
        return copy.deepcopy(digits_model("cpu", torch.float32)).double()(x.cpu())
    lm = lm_for(_fp32(case), torch.float32)
    with torch.no_grad():
        logits = lm.model(input_ids=input_ids).logits
    return _lm.last_if_decode(case.kind, logits)


# ---- variants: one per method ---------------------------------------------------------------------------
def _setup(method: str):
    def setup(case, input_ids=None, x=None):
        model = quantized(case, method)
        if case.kind == "digits":
            return _lm.Launcher(lambda: model(x), model=model, method=method)
        with torch.no_grad():            # decode: the cache is filled here, outside the timing
            run = _lm.runner(model, case.kind, input_ids, case.n)
        return _lm.Launcher(run, model=model, method=method)
    setup.__doc__ = quant.METHODS[method].description
    return setup


def _requires(method: str) -> Requires:
    m = quant.METHODS[method]

    def check(case) -> str | None:
        if method == "torch_dynamic_int8" and case.dtype != torch.float32:
            return "quantize_dynamic takes float32 models only"
        return m.why_not(case.device)
    check.__doc__ = f"{m.family} method" + (": needs its package or device" if m.missing else "")
    return Requires(check=check)


for _m in quant.METHODS:
    SUITE.variant(_m, requires=_requires(_m), config=lambda launcher: launcher.method)(_setup(_m))
# ONNX Runtime int8 (deploy/ort_quant.py): the exported float32 graphs quantized by quantize_dynamic, and by
# quantize_static calibrated on training text; float32 language-model rows (digits: skipped with the reason).
ort_quant.register(SUITE)


# ---- model-level columns ------------------------------------------------------------------------------------
_REF: dict[tuple, Any] = {}


def _bits_per_weight(case, model) -> float:
    """Storage of the quantized layers (weights, scales, zero points) per quantized weight, from the totals, so
    that every method (our modules, torchao's tensor subclasses, torch.ao's packed layers) is counted alike."""
    base = digits_model(case.device, case.dtype) if case.kind == "digits" else lm_for(case).model
    lins = list(quant.decoder_linears(base))
    n = sum(lin.weight.numel() for _, lin in lins)
    rest = quant.weight_bytes(base) - sum(quant.common.tensor_bytes(lin.weight) for _, lin in lins)
    return 8.0 * (quant.weight_bytes(model) - rest) / n


def _greedy_uncached(lm: zoo.LM, new_tokens: int) -> list[list[int]]:
    """models.evaluate.greedy_tokens for a graph without a cache interface (the ORT rows): each step runs the
    whole sequence so far (the same greedy tokens; slower, outside the timing)."""
    out = []
    for prompt in evaluate.PROMPTS:
        ids = lm.encode(prompt)[None]
        for _ in range(new_tokens):
            ids = torch.cat([ids, lm.model(input_ids=ids).logits[:, -1].argmax(-1)[:, None]], 1)
        out.append(ids[0, -new_tokens:].tolist())
    return out


def _quality(case, forward, cached: bool = True) -> dict[str, Any]:
    lm = lm_for(case)
    test = _spec(case.params) == "test"
    limit, new = (TEST_QUALITY_BYTES, 8) if test else (QUALITY_BYTES, GREEDY_TOKENS)
    key = (_spec(case.params), case.device, case.dtype, limit)
    if key not in _REF:
        _REF[key] = (evaluate.bits_per_byte(lm, limit=limit), evaluate.greedy_tokens(lm, new_tokens=new))
    ref_bpb, ref_tokens = _REF[key]
    scored = _lm.scored(lm, forward)
    value = evaluate.bits_per_byte(scored, limit=limit)
    if cached:
        agree = evaluate.greedy_agreement(scored, ref_tokens, new_tokens=new)
    else:
        got = _greedy_uncached(scored, new)
        agree = sum(a == b for r, g in zip(ref_tokens, got) for a, b in zip(r, g)) / sum(map(len, ref_tokens))
    return dict(quality_metric="heldout_bpb", quality_value=value, quality_ref=ref_bpb,
                quality_delta=value - ref_bpb, quality_delta_pct=100.0 * (value - ref_bpb) / ref_bpb,
                greedy_agreement=agree)


def _digits_accuracy(case, launcher) -> dict[str, Any]:
    x, y = digits.test_split()
    x = x.to(case.device, case.dtype)
    ref = evaluate.accuracy(digits_model(case.device, torch.float32), x.float(), y.to(case.device))
    acc = evaluate.accuracy(launcher.model, x, y.to(case.device))
    return dict(quality_metric="digits_accuracy", quality_value=acc, quality_ref=ref, quality_delta=acc - ref,
                quality_delta_pct=100.0 * (acc - ref) / ref)


def _ort_columns(case, launcher, row: dict[str, Any]) -> dict[str, Any]:
    """An ONNX Runtime int8 row: storage of the quantized graph's initializers (the int8 weights, their scales
    and zero points, the float32 rest: `bits_per_weight` left empty, as the graph also quantizes a copy of the
    tied output head), quality scored on the graph itself."""
    cols: dict[str, Any] = dict(model=lm_for(case).name, **_lm.speed_columns(case.kind, row["median_ms"], tokens(case)),
                                weight_bytes=ort_quant.graph_bytes(launcher.graph), bits_per_weight=None,
                                method_family="onnxruntime", peak_mem_mb=_lm.peak_mem_mb(launcher, case.device))
    if case.kind == "quality":
        cols.update(_quality(case, launcher.forward, cached=False))
    return cols


@SUITE.model_columns
def model_columns(case, launcher, row: dict[str, Any]) -> dict[str, Any]:
    if getattr(launcher, "graph", None) is not None:
        return _ort_columns(case, launcher, row)
    model = launcher.model
    n_tok = tokens(case)
    cols: dict[str, Any] = dict(model="digits" if case.kind == "digits" else lm_for(case).name,
                                **_lm.speed_columns(case.kind, row["median_ms"], n_tok),
                                weight_bytes=quant.weight_bytes(model), bits_per_weight=_bits_per_weight(case, model),
                                method_family=quant.METHODS[launcher.method].family,
                                peak_mem_mb=_lm.peak_mem_mb(launcher, case.device))
    if case.kind == "quality":
        cols.update(_quality(case, launcher.model))
    elif case.kind == "digits":
        cols.update(_digits_accuracy(case, launcher))
    return cols
