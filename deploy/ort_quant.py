"""ONNX Runtime int8 quantization of the exported graphs: dynamic, and static with calibration text.

- `dynamic`: `onnxruntime.quantization.quantize_dynamic`, MatMul weights int8 per output channel (symmetric);
  activations quantized per call (DynamicQuantizeLinear, uint8) and multiplied by MatMulInteger. The tied
  embedding's Gather stays float32 (it is a lookup, not a product).
- `static`: `quantize_static` in the QDQ format, MatMul weights int8 per channel, activations int8 with
  scales calibrated (MinMax) on CALIBRATION_WINDOWS windows of the *training* text (never the held-out text
  the quality is scored on). The QDQ graph is also what TensorRT builds an explicitly quantized int8 or fp8
  engine from (deploy/tensorrt.py).

The known trap: `quantize_dynamic` fails on dynamo-exported graphs with a ShapeInferenceError because
`graph.value_info` carries entries for initializers (the exporter annotates every value, weights included,
and the quantizer's shape inference then meets two declarations of a weight it has replaced).
`strip_initializer_value_info` removes those entries before quantizing (always: with onnxruntime 1.32 and
onnx 1.23 the error no longer shows on these graphs, but older pairs still raise it).

Quantized graphs are cached next to their source graph: `<source stem>.<method>.onnx`, with a `.json` record
(source SHA-256, method, options, calibration, versions); a stale or corrupt one is made again.

`lm_forward(lm, method)` returns the quantized model as a callable the evaluation code scores
(models/evaluate.py), and `model_setup(method)` a model-suite-style setup; a quant suite registers both
methods in one line: `ort_quant.register(SUITE)`.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from deploy import export

METHODS = ("dynamic", "static", "static_fp8")
LM_KINDS = ("prefill", "decode", "quality")          # the case kinds of suites/model.py the graphs serve
CALIBRATION_WINDOWS = 32
CALIBRATION_LEN = 64
QUANT_VERSION = 3          # bump when the options below change: the cached graphs are made again


def strip_initializer_value_info(model) -> int:
    """Remove graph.value_info entries that name initializers (the dynamo exporter's); returns how many."""
    inits = {i.name for i in model.graph.initializer}
    keep = [v for v in model.graph.value_info if v.name not in inits]
    removed = len(model.graph.value_info) - len(keep)
    if removed:
        del model.graph.value_info[:]
        model.graph.value_info.extend(keep)
    return removed


def weight_matmuls(model) -> list[str]:
    """Names of the MatMul nodes that multiply by a weight (an initializer): the projections and the output
    head. The attention products (Q K^T, P V: activations by activations) stay float32: quantizing them
    statically moved the decode logits by 0.26 on the test model, against 0.0024 without them."""
    inits = {i.name for i in model.graph.initializer}
    names = [n.name for n in model.graph.node if n.op_type == "MatMul" and any(i in inits for i in n.input)]
    if not names:           # an empty nodes_to_quantize means *every* node to onnxruntime: never pass one
        raise ValueError("no MatMul by a weight in the graph: nothing to quantize")
    return names


def calibration_windows(n: int = CALIBRATION_WINDOWS, length: int = CALIBRATION_LEN, seed: int = 0) -> np.ndarray:
    """n windows of `length` bytes of the training split at seeded offsets: int64 [n, length]."""
    from models import data
    train = data.as_tensor(data.split()[0])
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(train) - length, (n,), generator=g)
    return train[starts[:, None] + torch.arange(length)].numpy().astype(np.int64)


def calibration_feeds(lm, graph: str, windows: np.ndarray | None = None) -> list[dict[str, np.ndarray]]:
    """The calibration inputs of an LM graph, one window each: the window itself (prefill), or its last byte
    with the cache of the bytes before it, made by the float32 prefill graph (decode)."""
    from deploy.ort import Session
    windows = calibration_windows() if windows is None else windows
    if graph == "prefill":
        return [{"input_ids": w[None]} for w in windows]
    pre = Session(export.export_lm(lm, "prefill"))
    names = export.kv_names(export.kv_shape(lm.model)[0], "past")
    feeds = []
    for w in windows:
        past = pre.run(input_ids=torch.from_numpy(w[None, :-1]))[1:]
        feeds.append({"input_ids": w[None, -1:], **{n: p.numpy() for n, p in zip(names, past)}})
    return feeds


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.items: Iterator = iter(feeds)

    def get_next(self):
        return next(self.items, None)

    def rewind(self):  # pragma: no cover - only some calibrators call it
        pass


def _record_ok(path: Path, want: dict) -> bool:
    try:
        rec = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return False
    return path.is_file() and {k: rec.get(k) for k in want} == want and rec.get("sha256") == export._sha256(path)


def quantize(src: Path, method: str, feeds: list[dict[str, np.ndarray]] | None = None) -> Path:
    """The `method` (METHODS) int8 graph of the float32 graph `src`, made now unless cached; static methods
    calibrate on `feeds` (a list of input dicts; default: calibration windows, for graphs whose one input is
    input_ids)."""
    import onnx
    import onnxruntime
    from onnxruntime import quantization as q
    if method not in METHODS:
        raise ValueError(f"unknown quantization {method!r}; choose from {', '.join(METHODS)}")
    src = Path(src)
    dst = src.with_name(f"{src.stem}.{method}.onnx")
    cal = None
    if method.startswith("static"):
        cal = feeds if feeds is not None else [{"input_ids": w[None]} for w in calibration_windows()]
    digest = hashlib.sha256()
    for feed in cal or []:
        for k in sorted(feed):
            digest.update(k.encode() + np.ascontiguousarray(feed[k]).tobytes())
    want = {"source_sha256": export._sha256(src), "method": method, "version": QUANT_VERSION,
            "onnxruntime": onnxruntime.__version__,
            "calibration_sha256": digest.hexdigest() if cal is not None else None}
    with export._lock(src.parent, dst.stem):
        if _record_ok(dst, want):
            return dst
        model = onnx.load(str(src))
        stripped = strip_initializer_value_info(model)
        weights = weight_matmuls(model)
        tmp_in = src.with_name(f".{dst.stem}.in{os.getpid()}.onnx")
        tmp = src.with_name(f".{dst.stem}.tmp{os.getpid()}.onnx")
        onnx.save(model, str(tmp_in))
        try:
            if method == "dynamic":
                q.quantize_dynamic(str(tmp_in), str(tmp), weight_type=q.QuantType.QInt8, per_channel=True,
                                   op_types_to_quantize=["MatMul"], nodes_to_quantize=weights)
            else:
                fp8 = method == "static_fp8"
                q.quantize_static(str(tmp_in), str(tmp), _Reader(cal), quant_format=q.QuantFormat.QDQ,
                                  per_channel=not fp8, op_types_to_quantize=["MatMul"], nodes_to_quantize=weights,
                                  activation_type=q.QuantType.QFLOAT8E4M3FN if fp8 else q.QuantType.QInt8,
                                  weight_type=q.QuantType.QFLOAT8E4M3FN if fp8 else q.QuantType.QInt8,
                                  calibrate_method=(q.CalibrationMethod.Distribution if fp8    # fp8: only
                                                    else q.CalibrationMethod.MinMax),              # that one
                                  extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
            export.check(tmp)
            rec = {**want, "sha256": export._sha256(tmp), "value_info_stripped": stripped,
                   "calibration": f"{len(cal)} feeds" if cal is not None else None}
            dst.with_suffix(".json").write_text(json.dumps(rec, indent=1))
            os.replace(tmp, dst)
        finally:
            tmp_in.unlink(missing_ok=True)
            tmp.unlink(missing_ok=True)
        return dst


def lm_forward(lm, method: str, provider: str = "cpu"):
    """The quantized prefill graph of `lm` as a model the evaluation code scores (`model(input_ids).logits`)."""
    from deploy import variants
    sess = variants.session(quantize(export.export_lm(lm, "prefill"), method, calibration_feeds(lm, "prefill")),
                            provider)
    return variants.GraphLM(lambda ids: sess.run(input_ids=ids)[0], "cpu" if provider == "cpu" else "cuda"), sess


def model_setup(method: str) -> Callable:
    """A setup `(case, input_ids) -> launcher` for a model-level suite built like suites/model.py (cases of
    kind prefill / decode / quality): the quantized graphs on ONNX Runtime (CPU EP; CUDA EP on a GPU)."""
    def setup(case, input_ids):
        from deploy import variants
        from suites import model as model_suite
        lm = model_suite.lm_for(case.with_(dtype="float32"))
        provider = variants.provider_for(case)
        pre = variants.session(quantize(export.export_lm(lm, "prefill"), method, calibration_feeds(lm, "prefill")),
                               provider)
        layers = export.kv_shape(lm.model)[0]
        names = export.kv_names(layers, "past")
        dec = (variants.session(quantize(export.export_lm(lm, "decode"), method, calibration_feeds(lm, "decode")),
                                provider) if case.kind == "decode" else None)
        launcher = variants.lm_launcher(case, input_ids, lambda ids: pre.run(input_ids=ids),
                                        dec and (lambda ids, past: dec.run(input_ids=ids, **dict(zip(names, past)))),
                                        f"{pre.config},int8={method}", layers, model_suite.Launcher)
        launcher.graph, launcher.ort_method = pre.path, method     # what a suite's model columns read
        return launcher
    setup.__doc__ = f"ONNX Runtime int8 ({method} quantization) of the exported graphs"
    return setup


def register(suite, methods: tuple[str, ...] = ("dynamic", "static")) -> None:
    """The one registration line of a quant suite: `ort_quant.register(SUITE)` adds `ort_int8_dynamic` and
    `ort_int8_static` (ONNX Runtime, CPU EP / CUDA EP), skipped with the reason where onnxruntime is missing.
    Its language-model cases (kinds prefill/decode/quality) must have suites/model.py's inputs; the float32 rows
    only (the graphs are float32 before quantization); other kinds (the quant suite's `digits`) are skipped rows
    with the reason. Each launcher carries `graph` (the quantized prefill graph) and `ort_method`."""
    from deploy import variants
    from harness.registry import Requires
    ort = variants.ort_reason()

    def check(case) -> str | None:
        if case.params.get("kind") not in LM_KINDS:
            return (f"the int8 graphs are the exported language model's (cases {', '.join(LM_KINDS)}); "
                    f"a {case.params.get('kind')!r} case has none")
        return ort(case)
    check.__doc__ = ort.__doc__ + "; language-model cases only"
    for m in methods:
        suite.variant(f"ort_int8_{m}", requires=Requires(dtypes=("float32",), check=check),
                      config=variants.config_of)(model_setup(m))


def graph_bytes(path) -> int:
    """Bytes of a graph's initializers as stored (int8 weights, their scales and zero points, float32 rest)."""
    import onnx
    from onnx import numpy_helper
    return sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer)
