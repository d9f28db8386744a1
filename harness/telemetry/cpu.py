"""CPU telemetry from Linux: /proc/stat utilization and others' share, cpufreq or /proc/cpuinfo frequency,
RAPL package energy, thermal zones, thermal-throttle counters."""
from __future__ import annotations

import glob
import math
import os
import time
from typing import Any

from harness.telemetry.base import (TELEMETRY_COLUMNS, Measurement, Sampler, _nanmax, _nanmean, _period_s,
                                    empty_summary)
from harness.telemetry.procfs import _others_pct, _proc_stat_cpu, _read, _self_ticks

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
