"""One row's work: requirements, correctness against the float64 reference, timing. A plain function.

`measure_row(suite, case, variant, ctx)` is what both execution modes call: the isolated worker
(harness/worker.py, the default) calls it inside its own process, `--no-isolate` calls it in bench.py's
process. It returns the *measured* fields of the row (status, reason, errors, timing statistics, telemetry
summary, threads) plus the traceback of an exception and the telemetry samples; the run loop adds the keys
and the derived figures (rates, % of peak, speedup: `harness.runner.derive`), so the two modes cannot
measure differently. Nothing here writes files or knows about other rows.
"""
from __future__ import annotations

import dataclasses
import time
import traceback
from dataclasses import dataclass
from typing import Any

import torch

from harness import telemetry
from harness.check import check_variant, derive_seed  # noqa: F401  (derive_seed: the runner's API)
from harness.registry import Case, Skip, Suite, Variant
from harness.timing import CacheFlusher, TimingConfig, measure


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def configure_compile() -> None:
    """torch.compile variants recompile once per case shape; dynamo's default limit (8) would silently fall
    back to eager for the later cases of a --full run and misreport them. Raise the limit, and make a hit
    an error (an `error` row) rather than a silent fallback. Called in every process that measures rows."""
    try:
        import torch._dynamo.config as dcfg
    except ImportError:   # pragma: no cover
        return
    for name, value in (("recompile_limit", 512), ("accumulated_recompile_limit", 8192),
                        ("fail_on_recompile_limit_hit", True)):
        if hasattr(dcfg, name):
            setattr(dcfg, name, value)


@dataclass
class RowContext:
    """What one process needs to measure rows: its device, the seed and timing settings, a sampler."""
    device: str
    seed: int = 0
    timing: TimingConfig = dataclasses.field(default_factory=TimingConfig)
    sampler: Any = None                      # telemetry.Sampler; made on first use
    flusher: CacheFlusher | None = None      # made on the first cold row
    lockstep: Any = None                     # harness.distributed.Lockstep under torchrun (distributed suites)

    def get_sampler(self):
        if self.sampler is None:
            self.sampler = telemetry.make_sampler(self.device)
        return self.sampler


@dataclass
class RowOutcome:
    """The measured fields of one row, the traceback of a failure (for errors.log), telemetry samples."""
    fields: dict[str, Any]
    traceback: str | None = None
    timeseries: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def status(self) -> str:
        return self.fields["status"]

    def to_message(self) -> dict[str, Any]:
        return {"fields": self.fields, "traceback": self.traceback, "timeseries": self.timeseries}

    @classmethod
    def from_message(cls, msg: dict[str, Any]) -> "RowOutcome":
        return cls(msg["fields"], msg.get("traceback"), msg.get("timeseries") or [])


def measure_row(suite: Suite, case: Case, v: Variant, ctx: RowContext) -> RowOutcome:
    """Check then time one (case, variant): every outcome is a row, never an exception (but Ctrl-C)."""
    threads = torch.get_num_threads() if ctx.device == "cpu" else None
    base = {"threads": threads}
    missing = v.requires.missing(case)
    if missing:
        return RowOutcome({**base, "status": "skipped", "reason": missing})
    try:
        return _check_and_time(suite, case, v, ctx, base)
    except Skip as exc:
        return RowOutcome({**base, "status": "skipped", "reason": str(exc)})
    except KeyboardInterrupt:
        raise
    except Exception as exc:   # a failing kernel is a row, and the run goes on
        tb = traceback.format_exc()
        if ctx.device == "cuda":
            try:
                torch.cuda.empty_cache()
            except Exception:   # noqa: BLE001 - a poisoned CUDA context; the worker is replaced anyway
                pass
        return RowOutcome({**base, "status": "error", "reason": first_line(exc)}, traceback=tb)


def _check_and_time(suite: Suite, case: Case, v: Variant, ctx: RowContext, row: dict) -> RowOutcome:
    # 1. Correctness on fresh inputs, poisoned outputs, against the float64 reference.
    checked = check_variant(suite, case, v, ctx.seed)
    res = checked.result
    row.update(max_abs_err=res.max_abs_err, max_rel_err=res.max_rel_err,
               compile_s=checked.first_call_s if v.compiled else None)
    if v.config is not None:
        row["config"] = checked.config
    if not res.ok:
        return RowOutcome({**row, "status": "incorrect", "reason": res.message})

    # 2. Timing on other fresh inputs (never a cached answer), setup outside the timed region.
    inputs = suite.make_inputs(case, derive_seed(ctx.seed, suite.name, case.name, case.dtype_name, v.name, "time"))
    launcher = v.setup(case, **inputs)
    cfg = ctx.timing
    if bool(case.get("cold", suite.cold)) and not cfg.cold:
        cfg = dataclasses.replace(cfg, cold=True)
    flush = None
    if cfg.cold:
        ctx.flusher = ctx.flusher or CacheFlusher(ctx.device)
        flush = ctx.flusher
    with ctx.get_sampler().measure() as m:
        stats = measure(launcher, ctx.device, cfg, flush,
                        lockstep=ctx.lockstep if suite.distributed is not None else None)
    row.update(m.summary(stats.n * stats.calls_per_sample))
    row.update(stats.regime())                           # page faults, context switches per call
    row.update(status="ok", reason=None if stats.stop_reason != "budget" else
               f"time budget ended before the median's CI reached {cfg.target_rel_ci:.0%} "
               f"(reached {stats.rel_ci:.1%})",
               median_ms=stats.median_ms, p20_ms=stats.p20_ms, p80_ms=stats.p80_ms, min_ms=stats.min_ms,
               n=stats.n, cv=stats.cv, samples_ms=[float(x) for x in stats.samples_ms])
    row.update(suite.row_model_columns(case, launcher, row))     # tokens/s, memory, quality (model suites)
    return RowOutcome(row, timeseries=m.timeseries())
