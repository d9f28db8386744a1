"""ONNX export of the models of models/ with `torch.onnx.export(dynamo=True)`, validated by `onnx.checker`,
cached by model hash.

Graphs (float32, dynamic batch and sequence dimensions):
- `prefill`: the byte-level Llama without a cache in: `input_ids [b, n]` -> `logits [b, n, vocab]` and, per
  layer, `present_key_i` / `present_value_i [b, kv_heads, n, head_dim]` (the cache a prefill fills, so it does
  the same work as the eager model's prefill into an empty DynamicCache);
- `decode`: the same model with the KV cache as inputs and outputs: `input_ids [b, n]`, `past_key_i` /
  `past_value_i [b, kv_heads, p, head_dim]` -> `logits [b, n, vocab]`, `present_* [b, kv_heads, p + n,
  head_dim]` (positions p..p+n-1, causal over the cache and the new tokens);
- `digits`: the digits MLP, `x [b, 64]` -> `logits [b, 10]`.

Cache: `<repo>/.cache/onnx/` (or `$KB_ONNX_CACHE`), one `<model>-<graph>-<key>.onnx` and its `.json`
(what was hashed, export time, SHA-256 of the file). `key` hashes the weights (every tensor's bytes), the
model's config, the graph kind, the torch / onnx / onnxscript versions and EXPORT_VERSION, so new weights
or a new exporter give a new file. A cached file whose SHA-256 does not match its record is exported again,
never used. Files are written to a temporary name and renamed; a file lock keeps two processes from
exporting the same graph at once. The tiny model's export takes ~15 s on this CPU (2 cores, contended).
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
EXPORT_VERSION = 1            # bump when the wrappers below change what a graph computes
GRAPHS = ("prefill", "decode", "digits")


class ExportError(RuntimeError):
    """The exporter or the checker refused a model (the message says which step and why)."""


def cache_root() -> Path:
    return Path(os.environ.get("KB_ONNX_CACHE", ROOT / ".cache" / "onnx"))


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer (name, dtype, shape, bytes): the model's identity."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import onnx
    import onnxscript
    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxscript": onnxscript.__version__,
            "export_version": str(EXPORT_VERSION)}


def graph_key(model: torch.nn.Module, graph: str) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    return {"graph": graph, "weights": weights_digest(model),
            "config": cfg.to_json_string(use_diff=False) if cfg is not None else repr(model), **_versions()}


# ---- the wrappers: flat tensors in, flat tensors out (what an ONNX graph can express) ----------------------
class _LlamaGraph(torch.nn.Module):
    """A transformers causal LM as a function of flat tensors: (input_ids, *past) -> (logits, *present)."""

    def __init__(self, model, with_past: bool):
        super().__init__()
        self.model, self.with_past = model, with_past
        self.layers = model.config.num_hidden_layers

    def forward(self, input_ids, *past):
        from transformers import DynamicCache
        cache = DynamicCache(config=self.model.config)
        start = 0
        if self.with_past:
            for i in range(self.layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            start = past[0].shape[2]
        pos = torch.arange(input_ids.shape[1], device=input_ids.device) + start
        out = self.model(input_ids=input_ids, cache=cache, cache_position=pos, use_cache=True)
        present = []
        for layer in cache.layers[: self.layers]:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


class _LlamaPrefill(_LlamaGraph):
    """The graph without a cache in (torch.export needs a signature without the empty *past)."""

    def __init__(self, model):
        super().__init__(model, with_past=False)

    def forward(self, input_ids):
        return super().forward(input_ids)


def kv_names(layers: int, prefix: str) -> list[str]:
    return [f"{prefix}_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]


def kv_shape(model) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of a transformers LM's cache."""
    c = model.config
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return c.num_hidden_layers, c.num_key_value_heads, hd


def _llama_export_args(model, graph: str):
    layers, kvh, hd = kv_shape(model)
    b, n, p = 2, 5, 7                     # example sizes: none is 0 or 1, which torch.export would specialize
    ids = torch.randint(0, model.config.vocab_size, (b, n))
    B, S, P = torch.export.Dim("batch"), torch.export.Dim("seq"), torch.export.Dim("past")
    if graph == "prefill":
        return (_LlamaPrefill(model), (ids,), {"input_ids": {0: B, 1: S}}, ["input_ids"],
                ["logits", *kv_names(layers, "present")])
    past = tuple(torch.randn(b, kvh, p, hd) for _ in range(2 * layers))
    return (_LlamaGraph(model, True), (ids, *past),
            {"input_ids": {0: B, 1: S}, "past": tuple({0: B, 2: P} for _ in past)},
            ["input_ids", *kv_names(layers, "past")], ["logits", *kv_names(layers, "present")])


def _digits_export_args(model):
    B = torch.export.Dim("batch")
    return model, (torch.rand(3, 64),), ({0: B},), ["x"], ["logits"]


# ---- export, check, cache -----------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _lock(root: Path, name: str):
    """The model cache's per-entry file lock (models/zoo.py), so concurrent exports of one graph wait."""
    from models.zoo import _lock as zoo_lock
    return zoo_lock(root, name)


def verify(path: Path) -> str | None:
    """None when the cached graph at `path` is whole (its SHA-256 matches its record), else what is wrong."""
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError) as exc:
        return f"record unreadable ({type(exc).__name__})"
    if not path.is_file():
        return "graph file missing"
    if meta.get("sha256") != _sha256(path):
        return "graph file does not match the SHA-256 in its record"
    return None


def check(path: Path) -> None:
    """onnx.checker on the saved file, with full shape inference; ExportError with the checker's words."""
    import onnx
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker rejects {path.name}: {str(exc).strip().splitlines()[0][:300]}") from None


def _run_export(wrapper, args, dynamic_shapes, inputs, outputs, dest: Path) -> None:
    import warnings
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(wrapper, args, dynamo=True, dynamic_shapes=dynamic_shapes,
                                     input_names=inputs, output_names=outputs, verbose=False)
            prog.save(str(dest), external_data=False)
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed: {_summary(exc)}") from exc


def _summary(exc: BaseException) -> str:
    """One line of the exporter's long message: its exception summary where it has one."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if ln.startswith("## Exception summary") and i + 1 < len(lines):
            return lines[i + 1][:300]
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def export(model: torch.nn.Module, graph: str, name: str, force: bool = False) -> Path:
    """The checked ONNX file of `model` as `graph` (GRAPHS), exported now unless cached; returns its path."""
    if graph not in GRAPHS:
        raise ValueError(f"unknown graph {graph!r}; choose from {', '.join(GRAPHS)}")
    key = graph_key(model, graph)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    root = cache_root()
    path = root / f"{name}-{graph}-{digest}.onnx"
    with _lock(root, path.stem):
        if not force and path.exists() and verify(path) is None:
            return path
        cpu = copy.deepcopy(model).to("cpu", torch.float32).eval()     # export from a float32 CPU copy
        wrapper, args, shapes, inputs, outputs = (_digits_export_args(cpu) if graph == "digits"
                                                  else _llama_export_args(cpu, graph))
        tmp = root / f".{path.stem}.tmp{os.getpid()}.onnx"
        t0 = time.perf_counter()
        try:
            _run_export(wrapper, args, shapes, inputs, outputs, tmp)
            check(tmp)
            meta = {**{k: v for k, v in key.items() if k != "config"}, "name": name, "inputs": inputs,
                    "outputs": outputs, "export_s": round(time.perf_counter() - t0, 2), "sha256": _sha256(tmp),
                    "checker": "onnx.checker.check_model(full_check=True)"}
            path.with_suffix(".json").write_text(json.dumps(meta, indent=1))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path


def export_lm(lm, graph: str) -> Path:
    """A models.zoo.LM (any transformers causal LM) as the `prefill` or `decode` graph."""
    return export(lm.model, graph, lm.name.replace("/", "_"))


def export_digits(model: torch.nn.Module) -> Path:
    return export(model, "digits", "digits")


def record(path: Path) -> dict[str, Any]:
    """The cache record of an exported graph (inputs, outputs, export time, hashes)."""
    return json.loads(Path(path).with_suffix(".json").read_text())

