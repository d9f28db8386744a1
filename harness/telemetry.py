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

Contract (docs/CONTRACTS.md §6): `make_sampler(device, index)`, `Sampler.info()`, `with s.measure() as m`,
`m.summary(calls)` -> one value per `TELEMETRY_COLUMNS` name. Nothing here raises: a failing read disables
that metric and is reported in `info()`; NVML missing, no driver, or no permission -> one warning, empty
columns. `write_timeseries(run_dir, entries)` writes every sample with its timestamp to telemetry.parquet.
"""
from __future__ import annotations

import glob
import math
import os
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

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


# --------------------------------------------------------------------------------------------------- NVML

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
        _warn_once("nvml", why)
        return Sampler(reason=why)
    return NvmlSampler(nvml, handle, index, name, _period_s(0.02))


# ---------------------------------------------------------------------------------------------------- CPU

def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _proc_stat_cpu(text: str | None) -> tuple[int, int] | None:
    """(busy, total) jiffies from the aggregate 'cpu' line of /proc/stat."""
    if not text:
        return None
    for line in text.splitlines():
        if line.startswith("cpu "):
            v = [int(x) for x in line.split()[1:]]
            idle = v[3] + (v[4] if len(v) > 4 else 0)          # idle + iowait
            total = sum(v[:8])                                 # guest time is already inside user/nice
            return total - idle, total
    return None


def _self_ticks(text: str | None) -> int | None:
    """utime + stime of this process (all threads), in clock ticks, from /proc/self/stat."""
    if not text:
        return None
    try:
        f = text[text.rindex(")") + 2:].split()           # fields after "pid (comm) "
        return int(f[11]) + int(f[12])                     # fields 14 and 15 of proc(5)
    except (ValueError, IndexError):
        return None


def _others_pct(st1, own1: int, st0, own0: int) -> float:
    """% of all CPU time between two /proc/stat readings that went to other processes (>= 0).

    Both files count in USER_HZ ticks; /proc/stat sums every CPU, so the total is cpus x elapsed ticks."""
    total = st1[1] - st0[1]
    if total <= 0:
        return math.nan
    return max(0.0, 100.0 * ((st1[0] - st0[0]) - (own1 - own0)) / total)


class CpuSampler(Sampler):
    source = "cpu"

    def __init__(self, root: str = "/", period_s: float | None = None) -> None:
        super().__init__(reason="")
        self.root = root.rstrip("/")
        self.period_s = _period_s(0.1) if period_s is None else period_s
        self.unavailable: dict[str, str] = {}
        self.sources: dict[str, str] = {}
        self._freq_files = sorted(glob.glob(self._p("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq")))
        if self._freq_files and self._freq_mhz_sysfs() is not None:
            self.sources["cpu_mhz"] = "sysfs cpufreq scaling_cur_freq"
            self._freq = self._freq_mhz_sysfs
        elif self._freq_mhz_cpuinfo() is not None:
            self.sources["cpu_mhz"] = "/proc/cpuinfo 'cpu MHz' (may be a constant under virtualization)"
            self._freq = self._freq_mhz_cpuinfo
        else:
            self.unavailable["cpu_mhz"] = "no cpufreq in sysfs and no 'cpu MHz' in /proc/cpuinfo"
            self._freq = lambda: None
        if _proc_stat_cpu(_read(self._p("/proc/stat"))) is not None:
            self.sources["cpu_util"] = "/proc/stat"
            if _self_ticks(_read(self._p("/proc/self/stat"))) is not None:
                self.sources["cpu_others"] = "/proc/stat minus /proc/self/stat"
        else:
            self.unavailable["cpu_util"] = "/proc/stat unreadable"
        self._rapl = self._find_rapl()
        self._temp_files = self._find_thermal()
        self._throttle_files = sorted(glob.glob(self._p(
            "/sys/devices/system/cpu/cpu[0-9]*/thermal_throttle/package_throttle_count")))
        if self._throttle_files and self._throttle_count() is not None:
            self.sources["throttle"] = "sysfs thermal_throttle/package_throttle_count"
        else:
            self.unavailable["throttle"] = "no readable /sys/devices/system/cpu/*/thermal_throttle counters"
        self.unavailable.setdefault("sm_clock", "not a GPU")

    def _p(self, path: str) -> str:
        return self.root + path

    # frequency
    def _freq_mhz_sysfs(self) -> float | None:
        v = [int(t) / 1000.0 for t in (_read(f) for f in self._freq_files) if t and t.strip().isdigit()]
        return sum(v) / len(v) if v else None

    def _freq_mhz_cpuinfo(self) -> float | None:
        text = _read(self._p("/proc/cpuinfo")) or ""
        v = []
        for line in text.splitlines():
            if line.startswith("cpu MHz"):
                try:
                    v.append(float(line.split(":", 1)[1]))
                except ValueError:
                    pass
        return sum(v) / len(v) if v else None

    # RAPL package energy
    def _find_rapl(self) -> list[tuple[str, float]]:
        zones = []
        base = self._p("/sys/class/powercap")
        if not os.path.isdir(base):
            self.unavailable["energy"] = "no /sys/class/powercap (RAPL not exposed: VM, non-Intel/AMD, or no driver)"
            return zones
        problems = []
        for d in sorted(glob.glob(base + "/intel-rapl:*")):
            if os.path.basename(d).count(":") != 1:        # sub-zones (core, uncore, dram) are inside packages
                continue
            name = (_read(d + "/name") or "").strip()
            if not name.startswith("package"):
                continue
            e = _read(d + "/energy_uj")
            if e is None or not e.strip().isdigit():
                problems.append(f"{d}/energy_uj unreadable (root only since CVE-2020-8694?)")
                continue
            rng = _read(d + "/max_energy_range_uj")
            zones.append((d + "/energy_uj", float(rng) if rng and rng.strip().isdigit() else 0.0))
        if zones:
            self.sources["energy"] = "RAPL " + ", ".join(z[0] for z in zones)
        else:
            self.unavailable["energy"] = "; ".join(problems) or "no RAPL package zone under /sys/class/powercap"
        return zones

    def _rapl_uj(self) -> list[float] | None:
        if not self._rapl:
            return None
        v = []
        for path, _ in self._rapl:
            t = _read(path)
            if t is None or not t.strip().isdigit():
                return None
            v.append(float(t))
        return v

    def _find_thermal(self) -> list[str]:
        files = []
        for d in sorted(glob.glob(self._p("/sys/class/thermal/thermal_zone*"))):
            kind = (_read(d + "/type") or "").strip()
            if kind in ("x86_pkg_temp", "cpu-thermal", "cpu_thermal", "k10temp", "coretemp") or "cpu" in kind:
                t = _read(d + "/temp")
                if t and t.strip().lstrip("-").isdigit():
                    files.append(d + "/temp")
        if files:
            self.sources["temp"] = "sysfs thermal zones " + ", ".join(files)
        else:
            self.unavailable["temp"] = "no readable CPU thermal zone in /sys/class/thermal"
        return files

    def _temp_c(self) -> float:
        v = [int(t) / 1000.0 for t in (_read(f) for f in self._temp_files) if t and t.strip().lstrip("-").isdigit()]
        return max(v) if v else math.nan

    def _throttle_count(self) -> int | None:
        v = [int(t) for t in (_read(f) for f in self._throttle_files) if t and t.strip().isdigit()]
        return sum(v) if v else None

    def _sample(self) -> dict[str, float]:
        s = {"t": time.time()}
        f = self._freq()
        s["cpu_mhz"] = math.nan if f is None else f
        s["temp_c"] = self._temp_c() if self._temp_files else math.nan
        st = _proc_stat_cpu(_read(self._p("/proc/stat")))
        own = _self_ticks(_read(self._p("/proc/self/stat")))
        prev = getattr(self, "_last_stat", None)
        s["cpu_util_pct"] = s["cpu_others_pct"] = math.nan
        if st is not None:
            if prev is not None and st[1] > prev[1]:
                s["cpu_util_pct"] = 100.0 * (st[0] - prev[0]) / (st[1] - prev[1])
                if own is not None and prev[2] is not None:
                    s["cpu_others_pct"] = _others_pct(st, own, prev[:2], prev[2])
            self._last_stat = (st[0], st[1], own)
        uj = self._rapl_uj()
        prev_e = getattr(self, "_last_rapl", None)
        s["power_w"] = math.nan
        if uj is not None:
            if prev_e is not None and s["t"] > prev_e[0]:
                s["power_w"] = self._rapl_delta_j(prev_e[1], uj) / (s["t"] - prev_e[0])
            self._last_rapl = (s["t"], uj)
        return s

    def _rapl_delta_j(self, a: list[float], b: list[float]) -> float:
        tot = 0.0
        for (x0, x1, (_, rng)) in zip(a, b, self._rapl):
            d = x1 - x0
            if d < 0 and rng > 0:                          # the counter wrapped around
                d += rng
            tot += d
        return tot / 1e6

    def _window_state(self) -> dict[str, Any]:
        self._last_stat = None
        self._last_rapl = None
        return {"t": time.time(), "stat": _proc_stat_cpu(_read(self._p("/proc/stat"))),
                "self": _self_ticks(_read(self._p("/proc/self/stat"))),
                "rapl_uj": self._rapl_uj(),
                "throttle": self._throttle_count() if self._throttle_files else None}

    def _summarize(self, m: Measurement, calls: int) -> dict[str, Any]:
        out = empty_summary()
        with m._lock:
            ss = list(m.samples)
        a, b = m.start_state, m.end_state
        window = m.t_end - m.t_start
        out.update(tel_source="cpu", tel_samples=len(ss), tel_window_s=window)
        out["cpu_mhz_mean"] = _nanmean(s["cpu_mhz"] for s in ss)
        out["temp_max_c"] = _nanmax(s["temp_c"] for s in ss)
        if a.get("stat") and b.get("stat") and b["stat"][1] > a["stat"][1]:
            out["cpu_util_pct"] = 100.0 * (b["stat"][0] - a["stat"][0]) / (b["stat"][1] - a["stat"][1])
            if a.get("self") is not None and b.get("self") is not None:
                out["cpu_others_pct"] = _others_pct(b["stat"], b["self"], a["stat"], a["self"])
        if a.get("rapl_uj") is not None and b.get("rapl_uj") is not None:
            energy = self._rapl_delta_j(a["rapl_uj"], b["rapl_uj"])
            dt = b["t"] - a["t"]
            out["energy_source"] = "rapl"
            out["power_mean_w"] = energy / dt if dt > 0 else math.nan
            if calls > 0:
                out["energy_per_call_j"] = energy / calls
        if a.get("throttle") is not None and b.get("throttle") is not None:
            hot = b["throttle"] > a["throttle"]
            out["throttled"] = hot
            out["throttle_reasons"] = "thermal" if hot else ""
        return out

    def info(self) -> dict[str, Any]:
        return {"source": "cpu", "reason": "", "period_s": self.period_s, "sources": dict(self.sources),
                "unavailable": dict(self.unavailable), "columns": list(TELEMETRY_COLUMNS)}


# ------------------------------------------------------------------------------------------------- public

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


def write_timeseries(run_dir: str | os.PathLike, entries: Iterable[tuple[dict[str, Any], Measurement]]) -> Path | None:
    """Write every telemetry sample of a run to `run_dir/telemetry.parquet`; returns the path (None if empty).

    `entries`: (keys, measurement) pairs, keys = {"run_id", "suite", "case", "variant", "dtype"} of the row
    the measurement belongs to. Columns: the keys, `t_s` (seconds since the run's first sample), `t_unix`,
    and TIMESERIES_METRICS. Rewrites the whole file (call it after each row or once at the end). Never raises.
    """
    try:
        import pandas as pd
        rows: list[dict[str, Any]] = []
        for keys, m in entries:
            if m is not None:
                rows.extend(m.timeseries(**keys))
        if not rows:
            return None
        df = pd.DataFrame(rows)
        df.insert(0, "t_s", df["t_unix"] - df["t_unix"].min())
        lead = [c for c in ("run_id", "suite", "case", "variant", "dtype") if c in df.columns]
        df = df[lead + [c for c in df.columns if c not in lead]]
        from harness.results import atomic_write
        path = Path(run_dir) / "telemetry.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda p: df.to_parquet(p, index=False))
        return path
    except Exception as e:                                 # noqa: BLE001
        _warn_once("timeseries", f"telemetry.parquet not written: {type(e).__name__}: {e}")
        return None
