"""ONNX Runtime sessions for the exported graphs: the CPU, CUDA and TensorRT execution providers.

`Session(path, provider, opt_level, threads)` wraps an `onnxruntime.InferenceSession`; `run(**tensors)`
takes and returns torch tensors. On the CPU the inputs are handed over as numpy views (no copy) and ORT
allocates the outputs. On a GPU (CUDA / TensorRT EPs) the call goes through I/O binding: inputs are bound at
their CUDA addresses and outputs are written into torch tensors preallocated on the GPU from the graph's
symbolic output shapes, so no host copy is timed. `config` names what was chosen (provider, optimization
level, threads, binding) for the results' `config` column.

The CPU session gets `intra_op_num_threads = torch.get_num_threads()` (what `--threads` set), so ORT and
eager PyTorch run on the same cores; the graph optimization level defaults to ORT_ENABLE_ALL (constant
folding, node fusions: the MatMul + Add, SkipLayerNorm-style and attention fusions ORT knows) and may be
set per process with `$KB_ORT_OPT` = disable | basic | extended | all.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
OPT_LEVELS = ("disable", "basic", "extended", "all")
_NP = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(float16)": np.float16,
       "tensor(int32)": np.int32}
_TORCH = {np.float32: torch.float32, np.int64: torch.int64, np.float16: torch.float16, np.int32: torch.int32}


def opt_level() -> str:
    level = os.environ.get("KB_ORT_OPT", "all").lower()
    if level not in OPT_LEVELS:
        raise ValueError(f"KB_ORT_OPT={level!r}: choose from {', '.join(OPT_LEVELS)}")
    return level


def _graph_opt(ort, level: str):
    return {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]


class Session:
    """One ONNX Runtime session of one graph on one execution provider."""

    def __init__(self, path: Path | str, provider: str = "cpu", level: str | None = None,
                 threads: int | None = None, provider_options: dict | None = None):
        import onnxruntime as ort
        if provider not in PROVIDERS:
            raise ValueError(f"unknown provider {provider!r}; choose from {', '.join(PROVIDERS)}")
        self.path, self.provider, self.level = Path(path), provider, level or opt_level()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = _graph_opt(ort, self.level)
        opts.log_severity_level = 3
        self.threads = threads or torch.get_num_threads()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers: list[Any] = [(PROVIDERS[provider], provider_options or {})]
        if provider != "cpu":
            providers.append("CPUExecutionProvider")          # nodes an accelerator EP does not take
        self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
        used = self.session.get_providers()
        if used[0] != PROVIDERS[provider]:
            raise RuntimeError(f"onnxruntime did not take {PROVIDERS[provider]} (session runs on {used})")
        self.inputs = [(i.name, i.type) for i in self.session.get_inputs()]
        self.outputs = [(o.name, o.type, o.shape) for o in self.session.get_outputs()]
        self.binding = provider != "cpu"

    @property
    def config(self) -> str:
        return (f"ort={PROVIDERS[self.provider]},opt={self.level},threads={self.threads}"
                + (",iobinding" if self.binding else ""))

    def run(self, **tensors: torch.Tensor) -> list[torch.Tensor]:
        """Run the graph on named torch tensors; returns its outputs in order as torch tensors."""
        if self.binding:
            return self._run_bound(tensors)
        feeds = {name: tensors[name].detach().contiguous().numpy() for name, _ in self.inputs}
        return [torch.from_numpy(a) for a in self.session.run(None, feeds)]

    # ---- GPU: I/O binding ---------------------------------------------------------------------------------
    def output_shapes(self, tensors: dict[str, torch.Tensor]) -> list[tuple[int, ...]]:
        """Concrete output shapes from the graph's symbolic ones ('batch', 'seq', 'past + seq'), the symbols
        read off the inputs' shapes."""
        symbols: dict[str, int] = {}
        for i in self.session.get_inputs():
            for dim, size in zip(i.shape, tensors[i.name].shape):
                if isinstance(dim, str):
                    symbols[dim] = int(size)
        return [tuple(_evaluate(d, symbols) for d in shape) for _, _, shape in self.outputs]

    def _run_bound(self, tensors: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        binding = self.session.io_binding()
        device_id = torch.cuda.current_device()
        keep = []
        for name, typ in self.inputs:
            t = tensors[name].detach().contiguous()
            keep.append(t)
            binding.bind_input(name, "cuda", device_id, _NP[typ], tuple(t.shape), t.data_ptr())
        outs = []
        for (name, typ, _), shape in zip(self.outputs, self.output_shapes(tensors)):
            out = torch.empty(shape, dtype=_TORCH[_NP[typ]], device="cuda")
            binding.bind_output(name, "cuda", device_id, _NP[typ], shape, out.data_ptr())
            outs.append(out)
        torch.cuda.current_stream().synchronize()     # inputs written on torch's stream before ORT's reads
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return outs


_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _evaluate(dim: Any, symbols: dict[str, int]) -> int:
    """A dimension of an ORT shape: an int, a symbol, or an expression of symbols ('past + seq')."""
    if isinstance(dim, int):
        return dim
    unknown = [m for m in _SYMBOL.findall(str(dim)) if m not in symbols]
    if unknown:
        raise ValueError(f"cannot size output dimension {dim!r}: {', '.join(unknown)} not among the inputs' "
                         f"dimensions {symbols}")
    expr = _SYMBOL.sub(lambda m: str(symbols[m.group(0)]), str(dim))
    if not re.fullmatch(r"[0-9+\-* ()]+", expr):
        raise ValueError(f"cannot size output dimension {dim!r} from inputs {symbols}")
    return int(eval(expr, {"__builtins__": {}}))      # digits and + - * ( ) only (checked above)
