"""The run loop: for each (suite, dtype, case, variant): requirements, correctness, timing, one results row.

Order per case: the baseline variant first, so every later row gets its speedup. A variant is timed only
after its output on fresh, seeded inputs (poisoned outputs) matched the float64 reference; the timing runs
on other fresh inputs. Every outcome is a row: `ok`, `incorrect` (with the worst mismatches), `error`
(the exception; traceback in errors.log) or `skipped` (the missing requirement). Rows are written as they
come, so Ctrl-C keeps everything measured so far.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import fnmatch
import time
import traceback
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from harness import env, peaks, telemetry
from harness.check import compare
from harness.registry import Case, Skip, Suite, Variant
from harness.results import ResultWriter, param_column
from harness.timing import CacheFlusher, TimingConfig, measure, sync



@dataclass
class Plan:
    suite: Suite
    case: Case
    variant: Variant


@dataclass
class RunOptions:
    suites: list[Suite]
    device: str
    dtypes: list[str] | None             # None: each suite's default for the device
    mode: str = "quick"
    filters: list[str] = field(default_factory=list)
    variants: list[str] | None = None
    seed: int = 0
    out: Path | None = None
    threads: int | None = None
    timing: TimingConfig = field(default_factory=TimingConfig)
    progress: bool = True
    reset_peaks: list[str] | None = None  # None: keep the stored peaks; []: forget all; [probe...]: those
    auto_peak: bool = True                # no ceiling known for this device: measure one first (seconds)


def derive_seed(seed: int, *parts: Any) -> int:
    """A distinct, reproducible seed per (case, variant, purpose): fresh inputs for every check."""
    return (seed * 1_000_003 + zlib.crc32("/".join(map(str, parts)).encode())) % (2**63 - 1)


def _match(pattern: str, name: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) if any(c in pattern for c in "*?[") else pattern in name


def suite_dtypes(suite: Suite, device: str, asked: list[str] | None) -> list[str]:
    if asked is None:
        return [d for d in suite.default_dtype[device].split(",") if d in suite.dtypes]
    return [d for d in asked if d in suite.dtypes]


def build_plan(opts: RunOptions) -> list[Plan]:
    plan: list[Plan] = []
    for suite in opts.suites:
        variants = list(suite.variants.values())
        variants.sort(key=lambda v: v.name != suite.baseline)      # baseline first
        if opts.variants:
            variants = [v for v in variants if v.name in opts.variants]
        for dtype in suite_dtypes(suite, opts.device, opts.dtypes):
            for case in suite.cases(opts.mode, opts.device, dtype):
                for v in variants:
                    if suite.applies is not None and not suite.applies(case, v.name):
                        continue
                    if opts.filters and not any(_match(f, case.name) or _match(f, v.name) for f in opts.filters):
                        continue
                    plan.append(Plan(suite, case, v))
    return plan


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def configure_compile() -> None:
    """torch.compile variants recompile once per case shape; dynamo's default limit (8) would silently fall
    back to eager for the later cases of a --full run and misreport them. Raise the limit, and make a hit
    an error (an `error` row) rather than a silent fallback."""
    try:
        import torch._dynamo.config as dcfg
    except ImportError:   # pragma: no cover
        return
    for name, value in (("recompile_limit", 512), ("accumulated_recompile_limit", 8192),
                        ("fail_on_recompile_limit_hit", True)):
        if hasattr(dcfg, name):
            setattr(dcfg, name, value)


class Runner:
    def __init__(self, opts: RunOptions, argv: list[str]):
        self.opts = opts
        configure_compile()
        self.device = opts.device
        if opts.threads:
            torch.set_num_threads(opts.threads)
        self.run_id = _dt.datetime.now().strftime("%Y%m%d-%H%M%S") + f"-{self.device}"
        out = opts.out or (env.ROOT / "results" / self.run_id)
        manifest = env.manifest(self.device, argv)
        manifest.update(run_id=self.run_id, mode=opts.mode, seed=opts.seed,
                        suites=[s.name for s in opts.suites], timing=vars(opts.timing))
        self.sampler = telemetry.make_sampler(self.device)     # never raises; empty columns where unreadable
        manifest["telemetry"] = self.sampler.info()
        self.writer = ResultWriter(Path(out), manifest, telemetry.TELEMETRY_COLUMNS)
        self.keys = env.row_keys(manifest)
        self.peaks = self._choose_peaks(opts)
        self.writer.write_manifest(peaks=self.peaks.manifest())   # what every row's % peak is against (report)
        self.baseline_ms: dict[tuple, float] = {}
        self.flusher: CacheFlusher | None = None
        self.errors_log = self.writer.dir / "errors.log"
        self.telemetry_entries: list = []     # (row keys, measurement): the samples over time

    def _choose_peaks(self, opts: RunOptions) -> peaks.PeakChoice:
        """The ceilings of this run (harness/peaks.py chooses); on a first run with none known, a quick probe."""
        name = self.keys["device_name"]
        if opts.reset_peaks is not None:
            gone = peaks.reset(name, opts.reset_peaks or None)
            print(f"peak: forgot {len(gone)} stored figure(s) of {name}" + (f" ({', '.join(gone)})" if gone else ""))
        choice = peaks.choose(self.device, name)
        if peaks.needs_probe(choice) and opts.mode != "test" and opts.auto_peak and \
                not any(s.name == "peak" for s in opts.suites):
            from harness import autopeak
            autopeak.probe(self.device, name)
            choice = peaks.choose(self.device, name)
        return choice

    # ---- one (case, variant) ----------------------------------------------------------------------------
    def run_one(self, p: Plan) -> dict[str, Any]:
        suite, case, v = p.suite, p.case, p.variant
        flops, nbytes = suite.work(case)
        row: dict[str, Any] = dict(run_id=self.run_id, suite=suite.name, case=case.name, variant=v.name,
                                   device=self.device, dtype=case.dtype_name, flops=flops, bytes=nbytes,
                                   threads=torch.get_num_threads() if self.device == "cpu" else None,
                                   cold=bool(case.get("cold", suite.cold)),
                                   cuda_graph=bool(self.opts.timing.cuda_graph and self.device == "cuda"),
                                   **self.keys)
        for k, val in case.params.items():
            row[param_column(k)] = val
        missing = v.requires.missing(case)
        if missing:
            return {**row, "status": "skipped", "reason": missing}
        try:
            return self._check_and_time(suite, case, v, row, flops, nbytes)
        except Skip as exc:
            return {**row, "status": "skipped", "reason": str(exc)}
        except KeyboardInterrupt:
            raise
        except Exception as exc:   # a failing kernel is a row, and the run goes on
            with open(self.errors_log, "a") as f:
                f.write(f"--- {suite.name} / {case.name} / {v.name} / {case.dtype_name}\n")
                f.write(traceback.format_exc())
            if self.device == "cuda":
                torch.cuda.empty_cache()
            return {**row, "status": "error", "reason": _first_line(exc)}

    def _check_and_time(self, suite: Suite, case: Case, v: Variant, row: dict, flops: float,
                        nbytes: float) -> dict[str, Any]:
        # 1. Correctness on fresh inputs, poisoned outputs, against the float64 reference.
        inputs = suite.make_inputs(case, derive_seed(self.opts.seed, suite.name, case.name, case.dtype_name,
                                                     v.name, "check"))
        ref = suite.compute_reference(case, inputs)
        launcher = v.setup(case, **inputs)
        t0 = time.perf_counter()
        out = launcher()
        sync(self.device)
        first_call_s = time.perf_counter() - t0
        atol, rtol = suite.tolerance(case)
        res = compare(out, ref, atol, rtol)
        row.update(max_abs_err=res.max_abs_err, max_rel_err=res.max_rel_err,
                   compile_s=first_call_s if v.compiled else None)
        if v.config is not None:
            row["config"] = v.config(launcher)
        del out, ref, launcher, inputs
        if not res.ok:
            return {**row, "status": "incorrect", "reason": res.message}

        # 2. Timing on other fresh inputs (never a cached answer), setup outside the timed region.
        inputs = suite.make_inputs(case, derive_seed(self.opts.seed, suite.name, case.name, case.dtype_name,
                                                     v.name, "time"))
        launcher = v.setup(case, **inputs)
        cfg = self.opts.timing
        if row["cold"] and not cfg.cold:
            cfg = dataclasses.replace(cfg, cold=True)
        flush = None
        if cfg.cold:
            self.flusher = self.flusher or CacheFlusher(self.device)
            flush = self.flusher
        with self.sampler.measure() as m:
            stats = measure(launcher, self.device, cfg, flush)
        row.update(m.summary(stats.n * stats.calls_per_sample))
        row.update(stats.regime())                           # page faults, context switches per call
        self.telemetry_entries.append((dict(run_id=self.run_id, suite=suite.name, case=case.name,
                                            variant=v.name, dtype=case.dtype_name), m))
        telemetry.write_timeseries(self.writer.dir, self.telemetry_entries)
        sec = stats.median_ms / 1e3
        row.update(status="ok", reason=None if stats.stop_reason != "budget" else
                   f"time budget ended before the median's CI reached {cfg.target_rel_ci:.0%} "
                   f"(reached {stats.rel_ci:.1%})",
                   median_ms=stats.median_ms, p20_ms=stats.p20_ms, p80_ms=stats.p80_ms, min_ms=stats.min_ms,
                   n=stats.n, cv=stats.cv, samples_ms=[float(x) for x in stats.samples_ms],
                   tflops=flops / sec / 1e12 if flops else None, gbps=nbytes / sec / 1e9 if nbytes else None)
        peak_dtype = case.dtype_name if suite.compute_class == "matmul" else "float32"
        row.update(peaks.row_columns(self.peaks, flops, nbytes, sec, peak_dtype))
        bkey = (suite.name, case.name, case.dtype_name)
        if v.name == suite.baseline:
            self.baseline_ms[bkey] = stats.median_ms
        if bkey in self.baseline_ms:
            row["speedup"] = self.baseline_ms[bkey] / stats.median_ms
        row.update(suite.row_model_columns(case, launcher, row))     # tokens/s, memory, quality (model suites)
        return row

    # ---- the whole run -----------------------------------------------------------------------------------
    def run(self, plan: list[Plan], on_row: Callable[[dict], None] | None = None) -> int:
        from harness.ui import progress
        interrupted = False
        with progress(len(plan), enabled=self.opts.progress) as advance:
            try:
                for p in plan:
                    advance(f"{p.suite.name} {p.case.name} {p.variant.name} {p.case.dtype_name}")
                    row = self.run_one(p)
                    self.writer.add(row)
                    if on_row:
                        on_row(row)
            except KeyboardInterrupt:
                interrupted = True
                # Ctrl-C may land inside writer.add, after the row joined the list but before the files
                # were replaced: write them again so the files hold every row measured.
                self.writer.flush()
        for suite in self.opts.suites:
            if suite.after_run and not interrupted and self.opts.mode != "test":   # test shapes: no figures
                suite.after_run([r for r in self.writer.rows if r["suite"] == suite.name], self.opts.mode)
        self.writer.write_manifest(finished=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                                   interrupted=interrupted, rows=len(self.writer.rows))
        return 130 if interrupted else 0
