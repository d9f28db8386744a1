"""GPU telemetry through NVML (nvidia-ml-py): power, energy counter, clocks, temperature, utilization,
clock-event (throttle) reasons, sampled on a thread every `period_s`; the host CPUs' share too."""
from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable

from harness.telemetry import base
from harness.telemetry.base import (TELEMETRY_COLUMNS, _THROTTLE_MASK, Measurement, Sampler, _integrate_power_j,
                                    _nanmax, _nanmean, _nanmin, _period_s, empty_summary, reason_names)
from harness.telemetry.procfs import _others_pct, _proc_stat_cpu, _read, _self_ticks

class NvmlSampler(Sampler):
    source = "nvml"

    def __init__(self, nvml: Any, handle: Any, index: int, name: str, period_s: float) -> None:
        super().__init__(reason="")
        self.nvml, self.handle, self.index, self.name = nvml, handle, index, name
        self.period_s = period_s
        self.unavailable: dict[str, str] = {}   # metric -> why it cannot be read
        self._readers: dict[str, Callable[[], float]] = self._make_readers()
        self.has_energy_counter = self._try("energy_counter", self._energy_mj) is not None

    def _make_readers(self) -> dict[str, Callable[[], float]]:
        n, h = self.nvml, self.handle
        clock_sm = getattr(n, "NVML_CLOCK_SM", 1)
        clock_mem = getattr(n, "NVML_CLOCK_MEM", 2)
        temp_gpu = getattr(n, "NVML_TEMPERATURE_GPU", 0)
        reasons = (getattr(n, "nvmlDeviceGetCurrentClocksEventReasons", None)
                   or getattr(n, "nvmlDeviceGetCurrentClocksThrottleReasons"))
        return {
            "power_w": lambda: n.nvmlDeviceGetPowerUsage(h) / 1000.0,          # mW
            "sm_clock_mhz": lambda: float(n.nvmlDeviceGetClockInfo(h, clock_sm)),
            "mem_clock_mhz": lambda: float(n.nvmlDeviceGetClockInfo(h, clock_mem)),
            "temp_c": lambda: float(n.nvmlDeviceGetTemperature(h, temp_gpu)),
            "gpu_util_pct": lambda: float(n.nvmlDeviceGetUtilizationRates(h).gpu),
            "mem_util_pct": lambda: float(n.nvmlDeviceGetUtilizationRates(h).memory),
            "mem_used_mib": lambda: n.nvmlDeviceGetMemoryInfo(h).used / 2**20,
            "throttle_mask": lambda: float(int(reasons(h))),
        }

    def _energy_mj(self) -> float:
        return float(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))

    def _try(self, metric: str, fn: Callable[[], float]) -> float | None:
        """Read one metric; the first failure disables it for good, with its reason."""
        if metric in self.unavailable:
            return None
        try:
            return fn()
        except Exception as e:                             # noqa: BLE001 - NVMLError_NotSupported etc.
            self.unavailable[metric] = f"{type(e).__name__}: {e}"
            return None

    def _sample(self) -> dict[str, float]:
        s = {"t": time.time()}
        for metric, fn in self._readers.items():
            v = self._try(metric, fn)
            s[metric] = math.nan if v is None else v
        return s

    def _window_state(self) -> dict[str, Any]:
        e = self._try("energy_counter", self._energy_mj) if self.has_energy_counter else None
        # The host's CPUs too: launch-bound kernels slow down when other processes hold the cores.
        return {"energy_mj": e, "t": time.time(), "stat": _proc_stat_cpu(_read("/proc/stat")),
                "self": _self_ticks(_read("/proc/self/stat"))}

    def _summarize(self, m: Measurement, calls: int) -> dict[str, Any]:
        out = empty_summary()
        with m._lock:
            ss = list(m.samples)
        window = m.t_end - m.t_start
        out.update(tel_source="nvml", tel_samples=len(ss), tel_window_s=window)
        e0, e1 = m.start_state.get("energy_mj"), m.end_state.get("energy_mj")
        energy_j = math.nan
        if e0 is not None and e1 is not None and e1 >= e0:
            energy_j = (e1 - e0) / 1000.0
            out["energy_source"] = "nvml_counter"
            dt = m.end_state["t"] - m.start_state["t"]
            out["power_mean_w"] = energy_j / dt if dt > 0 else _nanmean(s["power_w"] for s in ss)
        else:
            energy_j = _integrate_power_j(ss)
            out["power_mean_w"] = _nanmean(s["power_w"] for s in ss)
            if not math.isnan(energy_j):
                out["energy_source"] = "nvml_power_integrated"
        if calls > 0 and not math.isnan(energy_j):
            out["energy_per_call_j"] = energy_j / calls
        out["sm_clock_min_mhz"] = _nanmin(s["sm_clock_mhz"] for s in ss)
        out["sm_clock_max_mhz"] = _nanmax(s["sm_clock_mhz"] for s in ss)
        out["mem_clock_mhz"] = _nanmean(s["mem_clock_mhz"] for s in ss)
        out["temp_max_c"] = _nanmax(s["temp_c"] for s in ss)
        out["gpu_util_pct"] = _nanmean(s["gpu_util_pct"] for s in ss)
        out["mem_util_pct"] = _nanmean(s["mem_util_pct"] for s in ss)
        out["mem_used_max_mib"] = _nanmax(s["mem_used_mib"] for s in ss)
        a, b = m.start_state, m.end_state
        if a.get("stat") and b.get("stat") and b["stat"][1] > a["stat"][1]:
            out["cpu_util_pct"] = 100.0 * (b["stat"][0] - a["stat"][0]) / (b["stat"][1] - a["stat"][1])
            if a.get("self") is not None and b.get("self") is not None:
                out["cpu_others_pct"] = _others_pct(b["stat"], b["self"], a["stat"], a["self"])
        masks = [int(s["throttle_mask"]) for s in ss if not math.isnan(s["throttle_mask"])]
        if masks:
            union = 0
            for x in masks:
                union |= x
            out["throttled"] = bool(union & _THROTTLE_MASK)
            out["throttle_reasons"] = ",".join(reason_names(union))
        return out

    def info(self) -> dict[str, Any]:
        return {"source": "nvml", "reason": "", "device_index": self.index, "device_name": self.name,
                "period_s": self.period_s, "energy": "nvml_counter" if self.has_energy_counter
                else "nvml_power_integrated", "unavailable": dict(self.unavailable),
                "columns": list(TELEMETRY_COLUMNS)}


def _nvml_handle(nvml: Any, index: int) -> Any:
    """NVML's device for CUDA device `index`: by UUID (CUDA_VISIBLE_DEVICES reorders), else by index."""
    try:
        import sys
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            uuid = str(torch.cuda.get_device_properties(index).uuid)
            return nvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}")
    except Exception:                                      # noqa: BLE001
        pass
    return nvml.nvmlDeviceGetHandleByIndex(index)


_nvml_init_lock = threading.Lock()


def _nvml_sampler(index: int, nvml: Any = None) -> Sampler:
    try:
        if nvml is None:
            import pynvml as nvml                          # nvidia-ml-py
        with _nvml_init_lock:
            nvml.nvmlInit()
        handle = _nvml_handle(nvml, index)
        name = nvml.nvmlDeviceGetName(handle)
        name = name.decode() if isinstance(name, bytes) else str(name)
    except Exception as e:                                 # noqa: BLE001 - ImportError, NVMLError_*
        why = f"NVML unavailable ({type(e).__name__}: {e}); GPU telemetry columns left empty"
        base._warn_once("nvml", why)
        return Sampler(reason=why)
    return NvmlSampler(nvml, handle, index, name, _period_s(0.02))
