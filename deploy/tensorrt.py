"""TensorRT engines from the exported ONNX graphs, behind one small interface, cached on disk.

The interface (`Backend`) is the only place that touches the TensorRT Python API:
- `version`, `device_name()`: what the engine cache is keyed by, with the model and the flags;
- `build(onnx_path, flags, shapes) -> bytes`: parse the graph (trt.OnnxParser), set the precision flags, one
  optimization profile (min, opt, max) per input: opt = the case's shape, so the engine is tuned for it;
  `build_serialized_network`;
- `load(engine) -> Runner`: deserialize; `Runner.run(**tensors)` binds CUDA tensors by address
  (set_tensor_address), sizes the outputs from the context, `execute_async_v3` on torch's current stream.
`TensorRT` implements it with the `tensorrt` package; the tests implement it with a fake (ONNX Runtime on
the CPU behind the same calls), so everything but the TensorRT calls is exercised here.

Precisions (`Flags.precision`), each built from the graph it needs:
- `fp16`: the float32 graph with BuilderFlag.FP16 (TensorRT picks fp16 or fp32 per layer);
- `int8`: the QDQ graph of deploy/ort_quant.py's static method (weights per channel, activations calibrated
  on training text): explicit quantization, TensorRT's current path (its implicit IInt8Calibrator is
  deprecated), with BuilderFlag.INT8 (and FP16 for the layers left in float);
- `fp8`: the e4m3 QDQ graph (ort_quant `static_fp8`), BuilderFlag.FP8; needs compute capability 8.9+ (Ada,
  Hopper).
Engine cache: `<repo>/.cache/tensorrt/` (or `$KB_TRT_CACHE`), `<name>-<key>.engine` + `.json`, `key` = hash
of (the ONNX file's SHA-256, GPU name, TensorRT version, flags, shapes). A file whose SHA-256 does not match
its record is built again.

TensorRT cannot be installed on the CPU machines (its wheels come from NVIDIA); `make gpu` installs it. Here
every TensorRT variant is a `skipped` row with that reason (deploy/guards.py).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from deploy import export, guards

ROOT = Path(__file__).resolve().parent.parent
PRECISIONS = ("fp16", "int8", "fp8")
QUANT_GRAPH = {"fp16": None, "int8": "static", "fp8": "static_fp8"}     # which ONNX graph each builds from
MIN_CC = {"fp16": (7, 0), "int8": (7, 5), "fp8": (8, 9)}


@dataclass(frozen=True)
class Flags:
    precision: str = "fp16"
    workspace_mib: int = 4096

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown TensorRT precision {self.precision!r}; choose from {', '.join(PRECISIONS)}")

    def describe(self) -> str:
        return f"trt={self.precision},workspace={self.workspace_mib}MiB"


Shape = tuple[int, ...]
Shapes = dict[str, tuple[Shape, Shape, Shape]]   # input name -> (min, opt, max) of the optimization profile


class Runner(Protocol):
    def run(self, **tensors: torch.Tensor) -> list[torch.Tensor]: ...


class Backend(Protocol):
    version: str

    def device_name(self) -> str: ...

    def build(self, onnx_path: Path, flags: Flags, shapes: Shapes) -> bytes: ...

    def load(self, engine: bytes) -> Runner: ...


# ---- the real backend: the TensorRT Python API (GPU machines) ----------------------------------------------
class TensorRT:
    """`Backend` on the `tensorrt` package (TensorRT 10+: named I/O tensors, execute_async_v3)."""

    def __init__(self):
        import tensorrt as trt
        self.trt = trt
        self.version = trt.__version__
        self.logger = trt.Logger(trt.Logger.WARNING)

    def device_name(self) -> str:
        return torch.cuda.get_device_name()

    def build(self, onnx_path: Path, flags: Flags, shapes: Shapes) -> bytes:
        trt = self.trt
        builder = trt.Builder(self.logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT's ONNX parser refused {Path(onnx_path).name}: {errors[:300]}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, flags.workspace_mib << 20)
        wanted = {"fp16": ["FP16"], "int8": ["INT8", "FP16"], "fp8": ["FP8", "FP16"]}[flags.precision]
        for name in wanted:
            flag = getattr(trt.BuilderFlag, name, None)
            if flag is None:
                raise RuntimeError(f"TensorRT {self.version} has no BuilderFlag.{name} (weakly typed networks "
                                   f"removed?): build from a graph typed in {flags.precision} instead")
            config.set_flag(flag)
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        engine = builder.build_serialized_network(network, config)
        if engine is None:
            raise RuntimeError(f"TensorRT {self.version} failed to build {Path(onnx_path).name} ({flags.describe()})")
        return bytes(engine)

    def load(self, engine: bytes) -> Runner:
        return _TRTRunner(self.trt, self.trt.Runtime(self.logger).deserialize_cuda_engine(engine))


class _TRTRunner:
    def __init__(self, trt, engine):
        self.trt, self.engine = trt, engine
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) != mode]

    def _dtype(self, name: str) -> torch.dtype:
        t = self.trt.DataType
        return {t.FLOAT: torch.float32, t.HALF: torch.float16, t.INT64: torch.int64, t.INT32: torch.int32,
                t.BF16: torch.bfloat16}[self.engine.get_tensor_dtype(name)]

    def run(self, **tensors: torch.Tensor) -> list[torch.Tensor]:
        keep = []
        for name in self.inputs:
            t = tensors[name].to(self._dtype(name)).contiguous()
            keep.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outs = []
        for name in self.outputs:
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._dtype(name), device="cuda")
            self.context.set_tensor_address(name, out.data_ptr())
            outs.append(out)
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        return outs


# ---- the backend in use, and the engine cache ---------------------------------------------------------------
_BACKEND: Backend | None = None


def backend() -> Backend:
    """The TensorRT backend (tests install a fake with `set_backend`); Skip with the reason where missing."""
    global _BACKEND
    if _BACKEND is None:
        guards.require("tensorrt")
        _BACKEND = TensorRT()
    return _BACKEND


def set_backend(b: Backend | None) -> None:
    global _BACKEND
    _BACKEND = b


def cache_root() -> Path:
    return Path(os.environ.get("KB_TRT_CACHE", ROOT / ".cache" / "tensorrt"))


def engine_key(onnx_path: Path, gpu: str, version: str, flags: Flags, shapes: Shapes) -> dict[str, Any]:
    return {"onnx_sha256": export._sha256(Path(onnx_path)), "gpu": gpu, "tensorrt": version,
            "flags": asdict(flags), "shapes": {k: [list(s) for s in v] for k, v in sorted(shapes.items())}}


def engine(onnx_path: Path, flags: Flags, shapes: Shapes, name: str, b: Backend | None = None) -> Runner:
    """A loaded engine of `onnx_path` for (this GPU, this TensorRT, flags, shapes): from the cache, else built."""
    b = b or backend()
    key = engine_key(onnx_path, b.device_name(), b.version, flags, shapes)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    root = cache_root()
    path = root / f"{name}-{flags.precision}-{digest}.engine"
    with export._lock(root, path.stem):
        if not (path.exists() and export.verify(path) is None):
            blob = b.build(Path(onnx_path), flags, shapes)
            tmp = root / f".{path.stem}.tmp{os.getpid()}"
            tmp.write_bytes(blob)
            path.with_suffix(".json").write_text(json.dumps({**key, "sha256": export._sha256(tmp)}, indent=1))
            os.replace(tmp, path)
        return b.load(path.read_bytes())


def precision_reason(precision: str) -> Any:
    """A Requires check: TensorRT installed, a GPU, and the compute capability the precision needs."""
    def check(case) -> str | None:
        if case.device != "cuda":
            return "TensorRT runs on CUDA GPUs only"
        reason = guards.missing("tensorrt")
        if reason:
            return reason
        cc = torch.cuda.get_device_capability()
        need = MIN_CC[precision]
        if tuple(cc) < need:
            return f"TensorRT {precision} needs compute capability >= {need[0]}.{need[1]}, GPU has {cc[0]}.{cc[1]}"
        return None
    check.__doc__ = f"TensorRT ({precision}) on a CUDA GPU (make gpu installs tensorrt)"
    return check


def graph_for(lm, graph: str, precision: str) -> Path:
    """The ONNX graph a precision builds from: float32, or the calibrated QDQ graph (deploy/ort_quant.py)."""
    path = export.export_lm(lm, graph)
    method = QUANT_GRAPH[precision]
    if method is None:
        return path
    from deploy import ort_quant
    return ort_quant.quantize(path, method, ort_quant.calibration_feeds(lm, graph))


def model_setup(precision: str):
    """Setup of the model suite's TensorRT variant: engines of the prefill (and decode) graphs tuned for the
    case's shapes; the decode cache is made by the prefill engine outside the timing. The prefill profile
    also admits the quality metric's batches (up to 16 windows of the model's context)."""
    flags = Flags(precision)

    def setup(case, input_ids):
        from deploy import variants
        from suites import model as model_suite
        b = backend()
        lm = model_suite.lm_for(case.with_(dtype="float32"))
        layers, kvh, hd = export.kv_shape(lm.model)
        names = export.kv_names(layers, "past")
        bsz = input_ids.shape[0]
        n_pre = case.n if case.kind == "decode" else input_ids.shape[1]
        hi = (max(bsz, 16), max(n_pre, lm.context))
        pre = engine(graph_for(lm, "prefill", precision), flags, {"input_ids": ((1, 1), (bsz, n_pre), hi)},
                     lm.name, b)
        dec = None
        if case.kind == "decode":
            past = (bsz, kvh, case.n, hd)
            shapes = {"input_ids": ((bsz, 1),) * 3, **{n: (past, past, past) for n in names}}
            dec = engine(graph_for(lm, "decode", precision), flags, shapes, lm.name, b)
        ids = input_ids if case.device == "cpu" else input_ids.cuda()
        return variants.lm_launcher(case, ids, lambda x: pre.run(input_ids=x),
                                    dec and (lambda x, past: dec.run(input_ids=x, **dict(zip(names, past)))),
                                    f"{flags.describe()},tensorrt={b.version}", layers, model_suite.Launcher)
    setup.__doc__ = f"TensorRT {precision} engine built from the exported ONNX graph"
    return setup
