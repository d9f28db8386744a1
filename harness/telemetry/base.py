"""Telemetry base: the columns, one measurement window, the sampler interface every device implements.

A Sampler reads nothing; NvmlSampler (nvml.py) and CpuSampler (cpu.py) override `_sample`,
`_window_state`, `_summarize` and `info`. `Measurement` runs the sampling thread of one
`with sampler.measure()` block and turns its samples into one value per TELEMETRY_COLUMNS name.
"""
from __future__ import annotations

import math
import os
import threading
import time
import warnings
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

# One value per row of the results table (docs/CONTRACTS.md §5). Numbers are NaN and strings "" when
# nothing could be read; `throttled` is None when unknown.
TELEMETRY_COLUMNS: tuple[str, ...] = (
    "tel_source",          # "nvml" | "cpu" | "" (nothing readable)
    "tel_samples",         # samples taken during the timed loop
    "tel_window_s",        # length of the sampled window (s)
    "power_mean_w",        # mean power over the window (energy counter / time where there is one)
    "energy_per_call_j",   # energy of the window / calls (J)
    "energy_source",       # "nvml_counter" | "nvml_power_integrated" | "rapl" | ""
    "sm_clock_min_mhz",    # GPU SM clock (min, max over samples)
    "sm_clock_max_mhz",
    "mem_clock_mhz",       # GPU memory clock (mean)
    "temp_max_c",          # GPU temperature, or the hottest CPU thermal zone
    "gpu_util_pct",        # NVML utilization.gpu, mean
    "mem_util_pct",        # NVML utilization.memory, mean
    "mem_used_max_mib",    # GPU memory used, max
    "cpu_mhz_mean",        # CPU frequency, mean over CPUs and samples
    "cpu_util_pct",        # CPU busy time / total, whole machine, over the window
    "cpu_others_pct",      # share of the machine's CPU time used by OTHER processes over the window
    "throttled",           # True when any sample was slowed by power or heat
    "throttle_reasons",    # every non-idle clock-event reason seen, comma-separated
    # The CPU timing regime of the timed loop alone (warm-up excluded; harness/timing.py, getrusage of the
    # measuring process): page faults say whether each call maps fresh memory (an allocating op under a
    # malloc that returns memory to the OS), context switches whether the loop was preempted or waited.
    "minflt_per_call",     # minor page faults per call
    "ctx_switches_per_call",        # voluntary + involuntary context switches per call
    "invol_ctx_switches_per_call",  # involuntary only: preempted by other processes (contention)
)
_STRING_COLUMNS = {"tel_source", "energy_source", "throttle_reasons"}

# Metrics kept per sample in the time series (telemetry.parquet), beside run_id/suite/case/variant/t_s.
TIMESERIES_METRICS: tuple[str, ...] = (
    "power_w", "sm_clock_mhz", "mem_clock_mhz", "temp_c", "gpu_util_pct", "mem_util_pct",
    "mem_used_mib", "cpu_mhz", "cpu_util_pct", "cpu_others_pct", "throttle_mask",
)

# NVML clock-event reason bits (nvml.h, nvmlClocksEventReason*); getattr below prefers the library's names.
_REASON_BITS = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
    "display_clock_setting": 0x100,
}
# Slowdowns by power or heat: these mark a row `throttled`. Idle, application clocks, sync boost and the
# display clock are reported in throttle_reasons but do not mean the kernel ran slower than it could.
_THROTTLING = ("sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown",
               "hw_power_brake_slowdown")
_THROTTLE_MASK = sum(_REASON_BITS[r] for r in _THROTTLING)

_warned: set[str] = set()


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def reason_names(mask: int) -> list[str]:
    """Names of the clock-event reasons set in `mask`, idle excluded."""
    return [name for name, bit in _REASON_BITS.items() if mask & bit and name != "gpu_idle"]


def empty_summary() -> dict[str, Any]:
    return {c: ("" if c in _STRING_COLUMNS else None if c == "throttled" else math.nan)
            for c in TELEMETRY_COLUMNS}


def _period_s(default: float) -> float:
    try:
        ms = float(os.environ.get("KB_TELEMETRY_PERIOD_MS", ""))
        return min(max(ms, 5.0), 1000.0) / 1000.0
    except ValueError:
        return default


# --------------------------------------------------------------------------------------------- measurement

class Measurement:
    """Samples taken during one `with sampler.measure()` block; `summary(calls)` turns them into a row."""

    def __init__(self, sampler: "Sampler") -> None:
        self._sampler = sampler
        self.samples: list[dict[str, float]] = []   # each has "t" (time.time()) and TIMESERIES_METRICS keys
        self.t_start = math.nan
        self.t_end = math.nan
        self.start_state: dict[str, Any] = {}
        self.end_state: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # The sampling loop runs on a daemon thread; every read is guarded, nothing escapes.
    def _add(self) -> None:
        try:
            s = self._sampler._sample()
        except Exception:                                  # noqa: BLE001 - telemetry never raises
            return
        if s:
            with self._lock:
                self.samples.append(s)

    def _loop(self) -> None:
        period = self._sampler.period_s
        while not self._stop.wait(period):
            self._add()

    def _begin(self) -> None:
        try:
            self.start_state = self._sampler._window_state()
        except Exception:                                  # noqa: BLE001
            self.start_state = {}
        self.t_start = time.time()
        self._add()
        if self._sampler.period_s > 0:
            self._thread = threading.Thread(target=self._loop, name="kb-telemetry", daemon=True)
            self._thread.start()

    def _finish(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._add()
        self.t_end = time.time()
        try:
            self.end_state = self._sampler._window_state()
        except Exception:                                  # noqa: BLE001
            self.end_state = {}

    def summary(self, calls: int) -> dict[str, Any]:
        """One value per TELEMETRY_COLUMNS name; `calls` = launcher calls made inside the block."""
        try:
            return self._sampler._summarize(self, max(int(calls or 0), 0))
        except Exception:                                  # noqa: BLE001
            return empty_summary()

    def timeseries(self, **keys: Any) -> list[dict[str, Any]]:
        """The samples as rows: `keys` (run_id, suite, case, variant...) + t_unix + the metrics."""
        with self._lock:
            samples = list(self.samples)
        return [{**keys, "t_unix": s["t"], **{m: s.get(m, math.nan) for m in TIMESERIES_METRICS}}
                for s in samples]


class Sampler:
    """Base sampler: reads nothing. Subclasses override _sample, _window_state, _summarize, info."""

    source = ""
    period_s = 0.0

    def __init__(self, reason: str = "telemetry disabled") -> None:
        self.reason = reason

    def info(self) -> dict[str, Any]:
        return {"source": self.source or None, "reason": self.reason, "columns": list(TELEMETRY_COLUMNS)}

    @contextmanager
    def measure(self) -> Iterator[Measurement]:
        m = Measurement(self)
        try:
            m._begin()
        except Exception:                                  # noqa: BLE001
            pass
        try:
            yield m
        finally:
            try:
                m._finish()
            except Exception:                              # noqa: BLE001
                pass

    # hooks
    def _sample(self) -> dict[str, float] | None:
        return None

    def _window_state(self) -> dict[str, Any]:
        return {}

    def _summarize(self, m: Measurement, calls: int) -> dict[str, Any]:
        return empty_summary()


def _nanmean(xs: Iterable[float]) -> float:
    v = [x for x in xs if x is not None and not math.isnan(x)]
    return sum(v) / len(v) if v else math.nan


def _nanmax(xs: Iterable[float]) -> float:
    v = [x for x in xs if x is not None and not math.isnan(x)]
    return max(v) if v else math.nan


def _nanmin(xs: Iterable[float]) -> float:
    v = [x for x in xs if x is not None and not math.isnan(x)]
    return min(v) if v else math.nan


def _integrate_power_j(samples: list[dict[str, float]]) -> float:
    """Trapezoidal integral of power_w over the samples' timestamps (J)."""
    pts = [(s["t"], s["power_w"]) for s in samples if not math.isnan(s.get("power_w", math.nan))]
    if len(pts) < 2:
        return math.nan
    return sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(pts, pts[1:]))
