"""Device telemetry beside each timed variant: power, energy, clocks, temperature, utilization, throttling.

GPU (NVML through nvidia-ml-py): a background thread samples every `period_s` (default 20 ms) power,
SM and memory clocks, temperature, utilization, memory used and the clock-event (throttle) reasons. Energy
comes from the total-energy counter (`nvmlDeviceGetTotalEnergyConsumption`, mJ since the driver loaded,
Volta and newer) read at the start and end of the timed loop; where the GPU has no counter the power
samples are integrated over time (trapezoids). NVML's instantaneous power is itself a ~1 s moving average on
many boards, so a loop shorter than a second gets its energy from the counter or not at all, precisely.

CPU: what Linux exposes: utilization from /proc/stat deltas, frequency from
/sys/devices/system/cpu/cpu*/cpufreq/scaling_cur_freq (else /proc/cpuinfo "cpu MHz", which virtual machines
often report as a constant), package energy from RAPL (/sys/class/powercap/intel-rapl:*/energy_uj, often
readable by root only), temperature from /sys/class/thermal, thermal throttling from the kernel's
thermal_throttle counters. Whatever cannot be read stays empty and `Sampler.info()` says why.

Modules: base.py (columns, measurement window, sampler interface), nvml.py, cpu.py, procfs.py (/proc
readers), timeseries.py (telemetry.parquet). Contract (docs/CONTRACTS.md §6): `make_sampler(device, index)`, `Sampler.info()`, `with s.measure() as m`,
`m.summary(calls)` -> one value per `TELEMETRY_COLUMNS` name. Nothing here raises: a failing read disables
that metric and is reported in `info()`; NVML missing, no driver, or no permission -> one warning, empty
columns. `write_timeseries(run_dir, entries)` writes every sample with its timestamp to telemetry.parquet.
"""
from __future__ import annotations

import os

from harness.telemetry import base
from harness.telemetry.base import (_THROTTLE_MASK, TELEMETRY_COLUMNS, TIMESERIES_METRICS, Measurement, Sampler,
                                    empty_summary, reason_names)
from harness.telemetry.cpu import CpuSampler
from harness.telemetry.nvml import NvmlSampler, _nvml_sampler
from harness.telemetry.timeseries import write_timeseries

__all__ = ["TELEMETRY_COLUMNS", "TIMESERIES_METRICS", "Measurement", "Sampler", "CpuSampler", "NvmlSampler",
           "make_sampler", "write_timeseries", "empty_summary", "reason_names", "base"]


def make_sampler(device: str, index: int = 0) -> Sampler:
    """The sampler for `device` ("cuda" | "cpu"). Never raises; KB_TELEMETRY=0 disables telemetry."""
    try:
        if os.environ.get("KB_TELEMETRY", "1").strip().lower() in ("0", "off", "false", "no"):
            return Sampler(reason="disabled by KB_TELEMETRY=0")
        if str(device).startswith("cuda"):
            return _nvml_sampler(index)
        if device == "cpu":
            return CpuSampler()
        return Sampler(reason=f"no telemetry for device {device!r}")
    except Exception as e:                                 # noqa: BLE001
        return Sampler(reason=f"telemetry failed to start: {type(e).__name__}: {e}")
