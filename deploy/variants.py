"""The deployment variants of the model suite (suites/model.py) and of the digits suite (suites/digits.py).

Each is a setup function `setup(case, **inputs) -> launcher` as every variant (docs/CONTRACTS.md §1), built
from the exported graphs (deploy/export.py) outside the timed region; the suites register them in one line.
The graphs are float32: the check compares their outputs with the eager float32 model under the suite's
float32 tolerance before anything is timed.

Model suite, per case kind:
- prefill: the `prefill` graph over the prompt, which returns the logits and fills the KV cache (present_*),
  as the eager prefill fills its DynamicCache;
- decode: the cache of c tokens is made once by the `prefill` graph (outside the timing); each timed call runs
  the `decode` graph on one new token per sequence with that cache in, returning the logits of the new token
  and the cache of c + 1 tokens (the same concatenation DynamicCache does), so every call does the same work;
- quality: the `prefill` graph's logits; its `forward` scores the held-out text (models/evaluate.py).
"""
from __future__ import annotations

import contextlib
from functools import lru_cache
from types import SimpleNamespace
from typing import Callable

import torch

from deploy import export, guards
from deploy.ort import Session

_SESSIONS: dict[tuple, Session] = {}


def session(path, provider: str) -> Session:
    """One session per (graph, provider, optimization level, threads) in this process."""
    from deploy.ort import opt_level
    key = (str(path), provider, opt_level(), torch.get_num_threads())
    if key not in _SESSIONS:
        if len(_SESSIONS) > 8:
            _SESSIONS.clear()
        _SESSIONS[key] = Session(path, provider)
    return _SESSIONS[key]


def provider_for(case, accelerator: str | None = None) -> str:
    """The ORT execution provider of a case: the CPU EP on the CPU, CUDA (or TensorRT) EP on a GPU."""
    return "cpu" if case.device == "cpu" else (accelerator or "cuda")


def ort_reason(accelerator: str | None = None) -> Callable:
    """A Requires check: onnxruntime installed and, on a GPU, the execution provider there."""
    def check(case) -> str | None:
        if case.device == "cpu" and accelerator == "tensorrt":
            return "the TensorRT execution provider runs on CUDA GPUs only"
        return guards.missing("onnxruntime" if provider_for(case, accelerator) == "cpu"
                              else f"ort_{provider_for(case, accelerator)}")
    check.__doc__ = ("onnxruntime with the " + (accelerator or "CPU / CUDA") + " execution provider"
                     " (pip install -e .; make gpu for onnxruntime-gpu)")
    return check


class GraphLM:
    """An exported LM graph called like a transformers model (`model(input_ids=...).logits`), so
    models/evaluate.py scores it as it scores the eager model (it reads the device off `parameters()`)."""

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], device: str):
        self._run, self._device = run, device

    def __call__(self, input_ids: torch.Tensor, **_):
        return SimpleNamespace(logits=self._run(input_ids))

    def parameters(self):
        yield torch.empty(0, device=self._device)


def lm_launcher(case, input_ids, prefill_run: Callable, decode_run: Callable | None, config: str, layers: int,
                make_launcher):
    """The model suite's launcher for graph runners: `prefill_run(ids) -> [logits, *present]`,
    `decode_run(ids, present) -> [logits, *present]`; `make_launcher(run, forward, context, config)`."""
    ids = input_ids
    if case.kind == "decode":
        ctx = case.n
        past = prefill_run(ids[:, :ctx])[1:]                    # the cache of c tokens, outside the timing
        assert len(past) == 2 * layers, f"graph returned {len(past)} cache tensors for {layers} layers"
        tok = ids[:, ctx:ctx + 1].contiguous()

        def run():
            return decode_run(tok, past)[0][:, -1]
    else:
        def run():
            return prefill_run(ids)[0]
    forward = GraphLM(lambda x: prefill_run(x)[0], case.device)
    return make_launcher(run, forward, contextlib.nullcontext, config)


def ort_model_setup(accelerator: str | None = None):
    """Setup of the model suite's ONNX Runtime variant on the case's device (CPU EP, or `accelerator`)."""
    def setup(case, input_ids):
        from suites import model as model_suite
        lm = model_suite.lm_for(case)
        provider = provider_for(case, accelerator)
        pre = session(export.export_lm(lm, "prefill"), provider)
        layers = export.kv_shape(lm.model)[0]
        names = export.kv_names(layers, "past")
        dec = session(export.export_lm(lm, "decode"), provider) if case.kind == "decode" else None
        return lm_launcher(case, input_ids, lambda ids: pre.run(input_ids=ids),
                           dec and (lambda ids, past: dec.run(input_ids=ids, **dict(zip(names, past)))),
                           pre.config, layers, model_suite.Launcher)
    setup.__doc__ = ("ONNX Runtime on the dynamo-exported graphs, "
                     + (f"{accelerator} execution provider" if accelerator else "CPU EP here, CUDA EP on a GPU"))
    return setup


# ---- digits ------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def digits_model() -> torch.nn.Module:
    """The digits MLP (models/digits.py), trained once per process (deterministic: seed 0) on one thread: the
    same weights (and so the same cached graph) whatever `--threads` is, and 8 s instead of 82 s for its
    300 small full-batch steps on this 2-core machine under load (two threads' barriers stall there)."""
    from models import digits
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.enable_grad(), torch.inference_mode(False):     # setups may run under no_grad
            return digits.train()
    finally:
        torch.set_num_threads(threads)


def ort_digits_setup(accelerator: str | None = None):
    def setup(case, x):
        provider = provider_for(case, accelerator)
        sess = session(export.export_digits(digits_model()), provider)
        return Call(lambda: sess.run(x=x)[0], sess.config, forward=lambda xs: sess.run(x=xs)[0])
    setup.__doc__ = ("ONNX Runtime on the exported digits MLP, "
                     + (f"{accelerator} execution provider" if accelerator else "CPU EP here, CUDA EP on a GPU"))
    return setup


class Call:
    """A zero-argument launcher with the configuration it ran under and, for the quality columns, the
    variant's model as a function of a batch (`forward(x) -> logits`)."""

    def __init__(self, fn: Callable[[], torch.Tensor], config: str, forward: Callable | None = None):
        self.fn, self.config, self.forward = fn, config, forward

    def __call__(self):
        return self.fn()


def config_of(launcher) -> str:
    return getattr(launcher, "config", "")
