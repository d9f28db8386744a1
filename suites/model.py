"""A whole model, measured as inference engineers do (optimum-benchmark, gpt-fast): prefill throughput,
KV-cached decode throughput and latency, peak memory, energy per token, and quality on held-out text.

The model: `bench.py --suite model --model tiny|small|PATH` (default tiny, models/: trained here on first use;
a checkpoint directory loads the same way). Test shapes always use the `test` model (seconds to train).
Cases:
- `prefill-b{b}-p{p}`: one forward over b prompts of p tokens from an empty DynamicCache (the cache is
  filled, as in serving); tokens per call = b * p.
- `decode-b{b}-ctx{c}`: one decode step (one new token for each of b sequences) against a cache already
  holding c tokens; the launcher crops the DynamicCache back after the step (a StaticCache just rewrites
  slot c), so every timed call does the same work. tokens per call = b; `ms_per_token` = the step's time
  (the latency each sequence sees per generated token).
- `quality`: a forward over held-out windows; the row's quality columns give the variant's held-out bits
  per byte (first QUALITY_BYTES bytes of the held-out split) against the eager float32 model's.
Inputs are real held-out text at seeded random offsets (never zeros), fresh per check and per timing.

Correctness: each variant's logits against the eager model's in float32 (the reference; for decode the
reference is the uncached forward over all c + 1 tokens, so a broken cache fails), before timing.
Work: 2 FLOPs per matmul weight per token (the tied embedding counts once, as the output projection) plus
attention, 4 * layers * heads * head_dim FLOPs per (query, visible key) pair; bytes: every weight read once
per call plus the KV cache read (decode) or written (prefill).
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch

from deploy import tensorrt as trt
from deploy import variants as deploy
from harness.registry import Requires, Skip, Suite
from models import attention as kb_attention
from models import evaluate, zoo
from suites import _lm

QUALITY_BYTES = 8192        # held-out bytes scored per quality row (seconds on the tiny model)


SUITE = Suite(
    name="model",
    description="a whole causal LM: prefill and KV-cached decode tokens/s, peak memory, energy, quality",
    baseline="eager",
    dtypes=("float32", "bfloat16", "float16"),
    # Logits against the eager float32 model. float32: attention backends differ in summation order only.
    # bfloat16/float16: the whole model runs in that dtype (weights and activations), so the error is the
    # dtype's, compounded over the layers; the bounds are what a correct half-precision model meets.
    tolerances={"float32": (2e-3, 2e-3), "bfloat16": (0.35, 0.1), "float16": (0.1, 0.05)},
    compute_class="matmul",
    case_name=_lm.case_name,
)
_prefill, _decode = _lm.prefill, _lm.decode

SUITE.add_cases("test", [_prefill(2, 17, model="test"), _decode(3, 9, model="test"),
                         dict(kind="quality", b=4, n=64, model="test")])
SUITE.add_cases("quick", [_prefill(1, 64), _prefill(1, 256), _prefill(8, 256),
                          _decode(1, 128), _decode(8, 128), _decode(32, 128), dict(kind="quality", b=8, n=256)])
SUITE.add_cases("full", [_prefill(1, 32), _prefill(1, 128), _prefill(1, 512), _prefill(8, 256), _prefill(32, 256),
                         _decode(1, 128), _decode(8, 128), _decode(32, 128), _decode(1, 512), _decode(8, 512),
                         _decode(32, 512), dict(kind="quality", b=8, n=256)], devices=("cpu",))
SUITE.add_cases("full", [_prefill(1, 128), _prefill(1, 512), _prefill(1, 2048), _prefill(8, 512), _prefill(32, 512),
                         _decode(1, 512), _decode(8, 512), _decode(32, 512), _decode(1, 2048), _decode(8, 2048),
                         _decode(32, 2048), dict(kind="quality", b=8, n=512)], devices=("cuda",))


# ---- the model, loaded once per (model, device, dtype) ----------------------------------------------------
_LOADED: dict[tuple, zoo.LM] = {}
_REF_BPB: dict[tuple, float] = {}


def lm_for(case, dtype: torch.dtype | None = None) -> zoo.LM:
    return _lm.load(_LOADED, _lm.model_spec(case.params), case.device, dtype or case.dtype, keep=4)


def _fp32_case(case):
    return case.with_(dtype="float32")


@SUITE.inputs
def make_inputs(case, rng):
    n = case.n + (1 if case.kind == "decode" else 0)        # decode: c cached tokens + the new one
    if case.kind == "quality":
        n = _n(case)
    ids = _lm.held_out_windows(_lm.generator(rng), case.b, n)
    return {"input_ids": _lm.token_ids(lm_for(_fp32_case(case)), ids).to(case.device)}


def _n(case) -> int:
    """Tokens per sequence: the prompt (prefill), the cache (decode), the window (quality: the model's context
    at most)."""
    return min(case.n, lm_for(_fp32_case(case)).context) if case.kind == "quality" else case.n


@SUITE.flops
def flops(case):
    model = lm_for(_fp32_case(case)).model
    return _lm.flops(_lm.shape(model), _lm.n_params(model), case.kind, case.b, _n(case))


@SUITE.bytes
def nbytes(case):
    model = lm_for(_fp32_case(case)).model
    return _lm.n_params(model) * case.itemsize + _lm.kv_bytes(_lm.shape(model), case.b, _n(case), case.itemsize)


def tokens(case) -> int:
    """Tokens processed per call (the tokens/s numerator)."""
    return _lm.tokens(case.kind, case.b, _n(case))


@SUITE.reference
def reference(case, input_ids):
    """Logits of the eager float32 model (decode: uncached forward over all c + 1 tokens, last position)."""
    lm = lm_for(_fp32_case(case), torch.float32)
    with _attn(lm.model, "eager"), torch.no_grad():
        logits = lm.model(input_ids=input_ids).logits
    return _lm.last_if_decode(case.kind, logits)


# ---- variants ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _attn(model, impl: str):
    """Route the model's attention through `impl` for the duration (the loaded model is shared)."""
    before = model.config._attn_implementation
    model.set_attn_implementation(impl)
    try:
        yield
    finally:
        model.set_attn_implementation(before)


class Launcher(_lm.Launcher):
    """A zero-argument call of the model for one case; `forward(ids)` and `context()` serve the quality
    metric (the same attention and backend as the timed call); `config` names what was chosen."""

    def __init__(self, run, forward, context, config: str):
        super().__init__(run, context, forward=forward, config=config)


def _make(impl: str, backend: str | None = None, compiled: bool = False):
    def setup(case, input_ids):
        lm = lm_for(case)
        if impl.startswith("kb_"):
            kb_attention.register()
        model = lm.model

        @contextlib.contextmanager
        def context():
            stack = contextlib.ExitStack()
            with stack:
                stack.enter_context(_attn(model, impl))
                if backend is not None:
                    from torch.nn.attention import SDPBackend, sdpa_kernel
                    stack.enter_context(sdpa_kernel(getattr(SDPBackend, backend)))
                stack.enter_context(torch.no_grad())
                yield

        fwd = torch.compile(model, dynamic=False) if compiled else model
        cache_kind = "static" if compiled else "dynamic"
        with context():                  # decode: the cache is filled here, outside the timing
            run = _lm.runner(model, case.kind, input_ids, case.n, fwd=fwd, cache=cache_kind)
        try:
            with context():
                run()          # refusals (a backend, a kernel) surface here, before the check
        except RuntimeError as exc:
            if "No available kernel" in str(exc):
                raise Skip(f"sdpa {backend.lower()} backend refuses this model: "
                           f"{str(exc).strip().splitlines()[0][:160]}") from None
            raise
        return Launcher(run, fwd, context, f"attn={impl}" + (f",sdpa={backend.lower()}" if backend else "")
                        + f",cache={cache_kind}" + (",compiled" if compiled else ""))
    setup.__doc__ = (f"transformers attention '{impl}'" + (f", sdpa forced to {backend.lower()}" if backend else "")
                     + (", torch.compile with a StaticCache" if compiled else ", DynamicCache"))
    return setup


def _config(launcher) -> str:
    return launcher.config


CUDA_ONLY = Requires(devices=("cuda",))
SUITE.variant("eager", config=_config)(_make("eager"))
SUITE.variant("sdpa", config=_config)(_make("sdpa"))
SUITE.variant("sdpa_math", config=_config)(_make("sdpa", "MATH"))
SUITE.variant("sdpa_flash", config=_config)(_make("sdpa", "FLASH_ATTENTION"))
SUITE.variant("sdpa_efficient", requires=CUDA_ONLY, config=_config)(_make("sdpa", "EFFICIENT_ATTENTION"))
SUITE.variant("sdpa_cudnn", requires=Requires(devices=("cuda",), min_cc=(8, 0)),
              config=_config)(_make("sdpa", "CUDNN_ATTENTION"))
def _compile_reason(case) -> str | None:
    """not on the `test` model on a CPU (minutes of compilation; tests/test_models.py checks it, slow)"""
    if case.device == "cpu" and _lm.model_spec(case.params) == "test":
        return ("compiling a whole model takes minutes on a 2-core CPU; the compiled StaticCache path is "
                "checked by tests/test_models.py::test_compiled_static_cache_matches_eager (slow)")
    return None


SUITE.variant("torch_compile", compiled=True, requires=Requires(check=_compile_reason),
              config=_config)(_make("sdpa", compiled=True))
def _kernel_reason(name: str):
    def check(case) -> str | None:
        return kb_attention.missing_reason(name, case.device)
    check.__doc__ = f"the project's {name} attention kernel built and loadable"
    return check


SUITE.variant("cpp", requires=Requires(devices=("cpu",), check=_kernel_reason("kb_cpp")),
              config=_config)(_make("kb_cpp"))
SUITE.variant("cuda_flash", requires=Requires(devices=("cuda",), min_cc=(8, 0), check=_kernel_reason("kb_cuda_flash")),
              config=_config)(_make("kb_cuda_flash"))
SUITE.variant("triton", requires=Requires(check=_kernel_reason("kb_triton")), compiled=True,
              config=_config)(_make("kb_triton"))
# Deployment backends (deploy/, docs/backends.md): the model exported to ONNX and run elsewhere, float32 graphs.
SUITE.variant("onnxruntime", requires=Requires(dtypes=("float32",), check=deploy.ort_reason()),
              config=_config)(deploy.ort_model_setup())
SUITE.variant("ort_tensorrt", requires=Requires(dtypes=("float32",), check=deploy.ort_reason("tensorrt")),
              config=_config)(deploy.ort_model_setup("tensorrt"))
for _p in trt.PRECISIONS:     # engines in reduced precision: the float16 rows, checked at the float16 tolerance
    SUITE.variant(f"tensorrt_{_p}", requires=Requires(dtypes=("float16",), check=trt.precision_reason(_p)),
                  config=_config)(trt.model_setup(_p))


# ---- the model-level columns (docs/CONTRACTS.md §5) ------------------------------------------------------
def _reference_bpb(case) -> float:
    lm = lm_for(_fp32_case(case), torch.float32)
    key = (_lm.model_spec(case.params), case.device)
    if key not in _REF_BPB:
        with _attn(lm.model, "eager"):
            _REF_BPB[key] = evaluate.bits_per_byte(lm, limit=QUALITY_BYTES)
    return _REF_BPB[key]


@SUITE.model_columns
def model_columns(case, launcher, row: dict[str, Any]) -> dict[str, Any]:
    lm = lm_for(case)
    n_tok = tokens(case)
    cols: dict[str, Any] = dict(model=lm.name, **_lm.speed_columns(case.kind, row["median_ms"], n_tok),
                                peak_mem_mb=_lm.peak_mem_mb(launcher, case.device), energy_per_token_j=None)
    energy = row.get("energy_per_call_j")
    if energy is not None and energy == energy:
        cols["energy_per_token_j"] = energy / n_tok
    if case.kind == "quality":
        with launcher.context():
            value = evaluate.bits_per_byte(_lm.scored(lm, launcher.forward), limit=QUALITY_BYTES)
        ref = _reference_bpb(case)
        cols.update(quality_metric="heldout_bpb", quality_value=value, quality_ref=ref, quality_delta=value - ref)
    return cols
