"""Every optional deployment backend, guarded once: `missing(name)` is None when the backend can run here,
else the reason (a `skipped` row's text). Probes never raise and are computed once per process.

onnxruntime (CPU) and onnxruntime-gpu install the same module and must not share an environment: the CPU
set-up (pyproject's dependencies) installs the first, `make gpu` uninstalls it and installs the second.
"""
from __future__ import annotations

import importlib
import importlib.util
from functools import lru_cache

BACKENDS = ("onnx", "onnxruntime", "ort_cuda", "ort_tensorrt", "tensorrt", "cupy")


def _import_reason(module: str, install: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return f"package {module!r} is not installed ({install})"
    try:
        importlib.import_module(module)
    except Exception as exc:  # a wheel that installs but does not load is a reason, not a crash
        return f"{module} does not import: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}"
    return None


def _provider_reason(provider: str, gpu_hint: str) -> str | None:
    reason = missing("onnxruntime")
    if reason:
        return reason
    import onnxruntime as ort
    if provider not in ort.get_available_providers():
        return (f"onnxruntime {ort.__version__} has no {provider} (this build offers "
                f"{', '.join(ort.get_available_providers())}; {gpu_hint})")
    return None


@lru_cache(maxsize=None)
def missing(name: str) -> str | None:
    """None when backend `name` (one of BACKENDS) can run here, else why not."""
    if name == "onnx":
        return _import_reason("onnx", "pip install -e . installs it") or _import_reason(
            "onnxscript", "the dynamo exporter needs it; pip install -e . installs it")
    if name == "onnxruntime":
        return missing("onnx") or _import_reason("onnxruntime", "pip install -e . installs it")
    if name == "ort_cuda":
        return _provider_reason("CUDAExecutionProvider", "make gpu installs onnxruntime-gpu")
    if name == "ort_tensorrt":
        return _provider_reason("TensorrtExecutionProvider", "make gpu installs onnxruntime-gpu and tensorrt")
    if name == "tensorrt":
        return missing("onnx") or _import_reason(
            "tensorrt", "its wheels come from NVIDIA's own index and cannot be installed on the CPU machines; "
                        "make gpu installs it") or _cuda_reason()
    if name == "cupy":
        return _import_reason("cupy", "make gpu installs cupy-cuda<CUDA major>x") or _cupy_device_reason()
    raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")


def _cuda_reason() -> str | None:
    import torch
    if not torch.cuda.is_available():
        return "no CUDA GPU" + (" (torch is a CPU-only build)" if torch.version.cuda is None else "")
    return None


def _cupy_device_reason() -> str | None:
    """CuPy imports without a GPU; it has no driver to compile for and launch on."""
    try:
        import cupy
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"cupy imports but has no usable CUDA driver: {type(exc).__name__}: " \
               f"{str(exc).strip().splitlines()[0][:160]}"
    return None if n > 0 else "cupy imports but sees no CUDA device"


def require(name: str) -> None:
    """Raise harness Skip with the reason when backend `name` is missing (inside a setup function)."""
    reason = missing(name)
    if reason:
        from harness.registry import Skip
        raise Skip(reason)
