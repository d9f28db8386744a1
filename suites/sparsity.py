"""A pruned model, measured whole (issue 17): quality and speed per sparsity pattern and density.

The model: `--model tiny|small|PATH` as the `model` suite (models/; test shapes use the `test` model). Every
case names a pattern (sparsity/masks.py) applied to all linear layers of the decoder blocks:
`dense`; `2:4` (magnitude), `2:4-wanda`, `2:4-wanda-rec` (Wanda, then RECOVERY_STEPS of fine-tuning with the
masks kept, sparsity/recover.py); `block16-d50/25/10`, `block32-d50/25/10` (magnitude); `unstructured-d50/25/10`
(magnitude: the quality ceiling at each density); `block16-d50-rec`, `unstructured-d50-rec` (the same recovery
for the other two families at 50%: quality rows only). Kinds, as the `model` suite: `prefill-b{b}-p{p}` (tokens/s
of one forward over b prompts of p tokens, fresh DynamicCache), `decode-b{b}-ctx{c}` (one KV-cached step,
ms/token), `quality` (the quality columns below).

Variants: `masked_dense` (the baseline: the pruned weights as dense nn.Linear, zeros multiplied: what pruning
alone gives) and `sparse_kernels` (the pruned layers replaced by sparsity.modules.SparseLinear: the project's
C++ 2:4 and BSR kernels, torch CSR for unstructured; `speedup` is sparse over dense execution of the same
weights). The reference is the pruned model in float64; both variants must match its logits.

Quality rows (kind `quality`), beside the contract's columns (`quality_metric` heldout_bpb, the pruned
model's held-out bits per byte; `quality_ref` the dense model's; `quality_delta`): `bpb_delta_pct` (100 *
delta / dense), `greedy_agreement` (models.evaluate, 8 prompts x 32 greedy tokens against the dense model),
`digits_accuracy` (the digits MLP pruned with the same pattern, models/digits.py; `digits_accuracy_dense`),
`weight_bytes` (all parameters as the variant stores them: compressed for sparse_kernels,
sparsity.prune.weight_bytes; dense for masked_dense) and
`weight_bytes_dense`, `density` (kept share of the pruned layers' weights), `skipped_layers` (layers the
pattern does not fit, left dense, with the reason). The quality target (2:4 Wanda + recovery within 5% bits
per byte of dense) is judged on the `2:4-wanda-rec` quality row.
"""
from __future__ import annotations

import copy
from typing import Any

import torch

from harness.registry import Requires, Skip, Suite
from models import data, digits, evaluate, zoo
from sparsity import modules, prune, recover
from sparsity.masks import Pattern
from suites import _lm

RECOVERY_STEPS = {"test": 5}          # per model; others: recover.STEPS (200)
QUALITY_LIMIT = {"test": 4096}        # held-out bytes scored; others: all of them
DIGITS_RECOVERY_STEPS = 100
DIGITS_STEPS = {"test": 30}           # digits MLP training steps beside the `test` model; others: models.digits.STEPS

PATTERNS: dict[str, tuple[Pattern | None, bool]] = {"dense": (None, False),
                                                    "2:4": (Pattern("2:4"), False),
                                                    "2:4-wanda": (Pattern("2:4", score="wanda"), False),
                                                    "2:4-wanda-rec": (Pattern("2:4", score="wanda"), True)}
for _b in (16, 32):
    for _d in (0.5, 0.25, 0.1):
        PATTERNS[f"block{_b}-d{round(_d * 100)}"] = (Pattern("block", _d, _b), False)
for _d in (0.5, 0.25, 0.1):
    PATTERNS[f"unstructured-d{round(_d * 100)}"] = (Pattern("unstructured", _d), False)
# recovery at 50% for the other two families too, so each has its quality before and after (quality rows only:
# the speed of a recovered pattern is its unrecovered twin's, same masks' shapes and density)
RECOVERED_ONLY = {"block16-d50-rec": (Pattern("block", 0.5, 16), True),
                  "unstructured-d50-rec": (Pattern("unstructured", 0.5), True)}
PATTERNS.update(RECOVERED_ONLY)


_spec = _lm.model_spec


def _name(p: dict) -> str:
    kind = "quality" if p["kind"] == "quality" else _lm.kind_label(p)
    return f"{_lm.model_label(_spec(p))}:{p['pattern']}:{kind}"


SUITE = Suite(
    name="sparsity",
    description="a pruned model (2:4, blocks, unstructured): quality vs dense, weight bytes, tokens/s sparse",
    baseline="masked_dense",
    dtypes=("float32", "bfloat16"),
    # logits against the pruned model in float64: float32 differs by summation order; bf16 runs the whole
    # model in bf16 (as the model suite's bounds)
    tolerances={"float32": (2e-3, 2e-3), "bfloat16": (0.35, 0.1)},
    compute_class="matmul",
    case_name=_name,
    applies=lambda case, variant: not (variant == "sparse_kernels" and case.pattern == "dense"),
)


def _cases(patterns, kinds, **kw):
    return [dict(pattern=p, **k, **kw) for p in patterns for k in kinds]


_PREFILL, _DECODE, _QUALITY = dict(kind="prefill", b=8, n=64), dict(kind="decode", b=1, n=32), \
    dict(kind="quality", b=4, n=64)
SUITE.add_cases("test", _cases(["dense", "2:4-wanda-rec", "block16-d25", "block32-d10", "unstructured-d50"],
                               [dict(kind="prefill", b=2, n=17), dict(kind="decode", b=1, n=9), _QUALITY],
                               model="test"))
_TIMED = [p for p in PATTERNS if p not in RECOVERED_ONLY]
SUITE.add_cases("quick", _cases(_TIMED, [_PREFILL, _DECODE, _QUALITY]) + _cases(RECOVERED_ONLY, [_QUALITY]))
SUITE.add_cases("full", _cases(_TIMED, [_PREFILL, _DECODE, dict(kind="decode", b=8, n=32), _QUALITY])
                + _cases(RECOVERED_ONLY, [_QUALITY]))


# ---- models: dense (loaded once), pruned per pattern (cached in the process) -------------------------------
_DENSE: dict[str, zoo.LM] = {}
_PRUNED: dict[tuple, tuple[zoo.LM, Any]] = {}
_NORMS: dict[str, dict] = {}
_QUALITY_CACHE: dict[tuple, dict] = {}


def dense_lm(spec: str) -> zoo.LM:
    if spec not in _DENSE:
        with torch.enable_grad():        # a first use trains the model (the reference runs under no_grad)
            _DENSE[spec] = zoo.load(spec, device="cpu", dtype=torch.float32, attn="sdpa", progress=False)
    return _DENSE[spec]


def pruned(spec: str, pattern_name: str) -> tuple[zoo.LM, Any]:
    """(the pruned float32 LM, its PruneReport or None for dense); recovery fine-tuning included when named."""
    key = (spec, pattern_name)
    if key not in _PRUNED:
        if pattern_name not in PATTERNS:
            raise Skip(f"unknown pattern {pattern_name!r}; choose from {', '.join(PATTERNS)}")
        pattern, rec = PATTERNS[pattern_name]
        base = dense_lm(spec)
        lm = copy.copy(base)
        lm.model = copy.deepcopy(base.model)
        report = None
        if pattern is not None:
            norms = None
            if pattern.score == "wanda":
                if spec not in _NORMS:
                    _NORMS[spec] = prune.calibrate(base)
                norms = _NORMS[spec]
            report = prune.prune_model(lm.model, pattern, norms)
            if rec:
                recover.finetune(lm, report.masks, steps=RECOVERY_STEPS.get(spec, recover.STEPS))
        lm.model.eval()
        _PRUNED[key] = (lm, report)
    return _PRUNED[key]


def _lm_as(lm: zoo.LM, dtype: torch.dtype, sparse_report=None) -> zoo.LM:
    out = copy.copy(lm)
    out.model = copy.deepcopy(lm.model).to(dtype)
    if sparse_report is not None:
        report = copy.copy(sparse_report)
        report.masks = sparse_report.masks
        modules.sparsify(out.model, report)
    out.model.eval()
    return out


@SUITE.inputs
def make_inputs(case, rng):
    return {"input_ids": _lm.held_out_windows(_lm.generator(rng), case.b,
                                              case.n + (1 if case.kind == "decode" else 0))}


def _plan(case):
    """(dense LM, {layer: (kept, units)}) from the shapes alone: flops and bytes never prune (the main process
    plans every case; pruning and recovery happen once, in the process that measures)."""
    lm = dense_lm(_spec(case.params))
    if case.pattern not in PATTERNS:
        raise Skip(f"unknown pattern {case.pattern!r}; choose from {', '.join(PATTERNS)}")
    return lm, prune.planned(lm.model, PATTERNS[case.pattern][0])


@SUITE.flops
def flops(case):
    # 2 FLOPs per stored weight per token (pruned weights skipped: what the sparse kernels do) + attention
    lm, plan = _plan(case)
    params = _lm.n_params(lm.model) - sum(
        dict(lm.model.named_modules())[n].weight.numel() - kept for n, (kept, _) in plan.items())
    return _lm.flops(_lm.shape(lm.model), params, case.kind, case.b, case.n)


@SUITE.bytes
def nbytes(case):
    lm, plan = _plan(case)
    pattern = PATTERNS[case.pattern][0]
    weights = prune.stored_bytes(lm.model, pattern, {n: u for n, (_, u) in plan.items()}, case.itemsize)
    return weights + _lm.kv_bytes(_lm.shape(lm.model), case.b, case.n, case.itemsize)


@SUITE.reference
def reference(case, input_ids):
    """Logits of the pruned model in float64 (decode: the uncached forward, last position)."""
    lm, _ = pruned(_spec(case.params), case.pattern)
    m64 = copy.deepcopy(lm.model).to(torch.float64)
    with torch.no_grad():
        logits = m64(input_ids=input_ids).logits
    return _lm.last_if_decode(case.kind, logits)


def _launcher(case, input_ids, sparse: bool) -> _lm.Launcher:
    """A zero-argument call of the (pruned) model for one case; its `lm` is the model the call runs."""
    lm32, report = pruned(_spec(case.params), case.pattern)
    if sparse:
        if report is None:
            raise Skip("the dense pattern has no sparse layers (its sparse_kernels row would be masked_dense)")
        why = modules.missing_reason(report.pattern, case.dtype, case.device)
        if why:
            raise Skip(why)
    lm = _lm_as(lm32, case.dtype, report if sparse else None)
    with torch.no_grad():                # decode: the cache is filled here, outside the timing
        run = _lm.runner(lm.model, case.kind, input_ids, case.n)
    kernels = "dense" if not sparse else {"2:4": "cpp_24", "block": "cpp_bsr", "unstructured": "torch_csr"}[
        report.pattern.kind]
    return _lm.Launcher(run, lm=lm, config=f"pattern={case.pattern},layers={kernels}", sparse=sparse)


def _config(launcher) -> str:
    return launcher.config


@SUITE.variant("masked_dense", config=_config)
def masked_dense(case, input_ids):
    """the pruned weights as dense nn.Linear (zeros multiplied): what pruning alone gives"""
    return _launcher(case, input_ids, sparse=False)


@SUITE.variant("sparse_kernels", requires=Requires(devices=("cpu",)), config=_config)
def sparse_kernels(case, input_ids):
    """pruned layers on the project's C++ 2:4 / BSR kernels (torch CSR for unstructured)"""
    return _launcher(case, input_ids, sparse=True)


# ---- quality and the model-level columns ------------------------------------------------------------------
_DIGITS: dict[int, torch.nn.Module] = {}


def _digits_net(steps: int) -> torch.nn.Module:
    """The trained digits MLP (trained once per process and step count; callers get a copy)."""
    if steps not in _DIGITS:
        with torch.enable_grad():
            _DIGITS[steps] = digits.train(steps=steps)
    return copy.deepcopy(_DIGITS[steps])


def _digits_accuracy(pattern: Pattern | None, rec: bool, steps: int = digits.STEPS) -> float:
    net = _digits_net(steps)
    xte, yte = digits.test_split()
    if pattern is None:
        return evaluate.accuracy(net, xte, yte)
    xtr, ytr, _, _ = data.digits()
    layers = [m for m in net if isinstance(m, torch.nn.Linear)]
    norms: dict[int, torch.Tensor] = {}
    if pattern.score == "wanda":
        h = xtr
        with torch.no_grad():
            for mod in net:
                if isinstance(mod, torch.nn.Linear):
                    norms[id(mod)] = h.norm(dim=0)
                h = mod(h)
    masks = {}
    from sparsity.masks import PatternError, mask_for
    with torch.no_grad():
        for mod in layers:
            try:
                masks[mod] = mask_for(mod.weight, pattern, norms.get(id(mod)))
            except PatternError:
                continue                      # e.g. block 16 on the 10-class output layer: left dense
            mod.weight.mul_(masks[mod])
    if rec and masks:
        with torch.enable_grad():          # the caller may sit under no_grad
            opt = torch.optim.Adam(net.parameters(), lr=1e-3)
            net.train()
            for _ in range(DIGITS_RECOVERY_STEPS if steps == digits.STEPS else 10):
                loss = torch.nn.functional.cross_entropy(net(xtr), ytr)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for mod, m in masks.items():
                        mod.weight.mul_(m)
        net.eval()
    return evaluate.accuracy(net, xte, yte)


def quality(spec: str, pattern_name: str) -> dict[str, Any]:
    """The quality columns of a pattern (cached): bits per byte against dense, agreement, digits, bytes."""
    key = (spec, pattern_name)
    if key in _QUALITY_CACHE:
        return _QUALITY_CACHE[key]
    dense = dense_lm(spec)
    limit = QUALITY_LIMIT.get(spec)
    dsteps = DIGITS_STEPS.get(spec, digits.STEPS)
    if (spec, "_ref") not in _QUALITY_CACHE:
        ref_tokens = evaluate.greedy_tokens(dense)
        _QUALITY_CACHE[(spec, "_ref")] = dict(bpb=evaluate.bits_per_byte(dense, limit=limit), tokens=ref_tokens,
                                              digits=_digits_accuracy(None, False, dsteps))
    ref = _QUALITY_CACHE[(spec, "_ref")]
    lm, report = pruned(spec, pattern_name)
    pattern, rec = PATTERNS[pattern_name]
    bpb = evaluate.bits_per_byte(lm, limit=limit)
    cols = dict(quality_metric="heldout_bpb", quality_value=bpb, quality_ref=ref["bpb"],
                quality_delta=bpb - ref["bpb"], bpb_delta_pct=100.0 * (bpb - ref["bpb"]) / ref["bpb"],
                greedy_agreement=evaluate.greedy_agreement(lm, ref["tokens"]),
                digits_accuracy=_digits_accuracy(pattern, rec, dsteps), digits_accuracy_dense=ref["digits"],
                density=report.density if report else 1.0,
                skipped_layers="; ".join(f"{n}: {why}" for n, why in report.skipped) if report else "")
    _QUALITY_CACHE[key] = cols
    return cols


@SUITE.model_columns
def model_columns(case, launcher, row: dict[str, Any]) -> dict[str, Any]:
    spec = _spec(case.params)
    lm32, report = pruned(spec, case.pattern)
    cols: dict[str, Any] = dict(model=lm32.name,
                                **_lm.speed_columns(case.kind, row["median_ms"], _lm.tokens(case.kind, case.b, case.n)),
                                # as this variant stores them: compressed (sparse_kernels) or dense (masked_dense)
                                weight_bytes=prune.weight_bytes(lm32.model, report if launcher.sparse else None,
                                                                case.itemsize),
                                weight_bytes_dense=prune.weight_bytes(lm32.model, None, case.itemsize),
                                peak_mem_mb=_lm.peak_mem_mb(launcher, case.device))
    if case.kind == "quality":
        cols.update(quality(spec, case.pattern))
    return cols
