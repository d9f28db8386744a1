"""Telemetry sampler: NVML path against a fake NVML library, CPU path against this machine and a fake sysfs."""
from __future__ import annotations

import math
import time
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from harness import telemetry as T


class FakeNvml:
    """Just enough of pynvml: a board drawing `watts`, with an energy counter unless `counter=False`."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

    class NVMLError_NotSupported(Exception):
        pass

    def __init__(self, watts=300.0, counter=True, reasons=0x0, fail_init=None):
        self.watts, self.counter, self.reasons, self.fail_init = watts, counter, reasons, fail_init
        self.t0 = time.time()
        self.calls = 0

    def nvmlInit(self):
        if self.fail_init:
            raise self.fail_init

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("handle", i)

    def nvmlDeviceGetHandleByUUID(self, u):
        raise RuntimeError("no torch device here")

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetPowerUsage(self, h):
        self.calls += 1
        return int(self.watts * 1000)

    def nvmlDeviceGetClockInfo(self, h, which):
        return 1980 if which == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetTemperature(self, h, which):
        return 61

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=97, memory=80)

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=3 * 2**30, total=80 * 2**30)

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        return self.reasons

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if not self.counter:
            raise self.NVMLError_NotSupported("Not Supported")
        return int((time.time() - self.t0) * self.watts * 1000)     # mJ


def _measure(sampler, seconds=0.25, calls=50):
    with sampler.measure() as m:
        time.sleep(seconds)
    return m, m.summary(calls)


def test_columns_complete_and_unique():
    assert len(set(T.TELEMETRY_COLUMNS)) == len(T.TELEMETRY_COLUMNS)
    e = T.empty_summary()
    assert list(e) == list(T.TELEMETRY_COLUMNS)
    assert e["throttled"] is None and e["tel_source"] == "" and math.isnan(e["power_mean_w"])


def test_nvml_energy_counter_and_summary(monkeypatch):
    monkeypatch.setenv("KB_TELEMETRY_PERIOD_MS", "10")
    fake = FakeNvml(watts=300.0)
    s = T._nvml_sampler(0, nvml=fake)
    assert isinstance(s, T.NvmlSampler)
    info = s.info()
    assert info["source"] == "nvml" and info["energy"] == "nvml_counter" and info["device_name"].startswith("NVIDIA H100")
    m, out = _measure(s, 0.25, calls=50)
    assert list(out) == list(T.TELEMETRY_COLUMNS)
    assert out["tel_source"] == "nvml" and out["energy_source"] == "nvml_counter"
    # background thread at 10 ms over 250 ms: ~25 samples (slack for a loaded machine)
    assert out["tel_samples"] >= 8
    assert out["power_mean_w"] == pytest.approx(300.0, rel=0.05)
    assert out["energy_per_call_j"] == pytest.approx(300.0 * out["tel_window_s"] / 50, rel=0.1)
    assert out["sm_clock_min_mhz"] == out["sm_clock_max_mhz"] == 1980
    assert out["mem_clock_mhz"] == 2619 and out["temp_max_c"] == 61
    assert out["gpu_util_pct"] == 97 and out["mem_used_max_mib"] == pytest.approx(3072)
    assert out["throttled"] is False and out["throttle_reasons"] == ""
    assert 0.0 <= out["cpu_others_pct"] <= 100.0                   # the host's CPUs, read beside NVML
    ts = np.array([x["t"] for x in m.samples])
    assert np.all(np.diff(ts) > 0)                                 # timestamps ordered


def test_nvml_without_counter_integrates_power(monkeypatch):
    monkeypatch.setenv("KB_TELEMETRY_PERIOD_MS", "10")
    s = T._nvml_sampler(0, nvml=FakeNvml(watts=200.0, counter=False))
    assert s.info()["energy"] == "nvml_power_integrated"
    assert "energy_counter" in s.info()["unavailable"]
    m, out = _measure(s, 0.2, calls=10)
    assert out["energy_source"] == "nvml_power_integrated"
    span = m.samples[-1]["t"] - m.samples[0]["t"]
    assert out["energy_per_call_j"] == pytest.approx(200.0 * span / 10, rel=1e-6)
    assert out["power_mean_w"] == pytest.approx(200.0)


@pytest.mark.parametrize("mask,throttled,names", [
    (0x1, False, ""),                                              # idle is not throttling
    (0x4, True, "sw_power_cap"),
    (0x1 | 0x40, True, "hw_thermal_slowdown"),
    (0x10, False, "sync_boost"),
])
def test_nvml_throttle_reasons(monkeypatch, mask, throttled, names):
    monkeypatch.setenv("KB_TELEMETRY_PERIOD_MS", "10")
    s = T._nvml_sampler(0, nvml=FakeNvml(reasons=mask))
    _, out = _measure(s, 0.05, calls=1)
    assert out["throttled"] is throttled
    assert out["throttle_reasons"] == names


def test_nvml_metric_failure_disables_only_that_metric(monkeypatch):
    fake = FakeNvml()
    def broken(h):
        raise fake.NVMLError_NotSupported("Not Supported")
    fake.nvmlDeviceGetUtilizationRates = broken
    s = T._nvml_sampler(0, nvml=fake)
    _, out = _measure(s, 0.05, calls=1)
    assert math.isnan(out["gpu_util_pct"]) and out["power_mean_w"] > 0
    assert "gpu_util_pct" in s.info()["unavailable"]


def test_nvml_missing_warns_once_and_run_goes_on(monkeypatch):
    monkeypatch.setattr(T.base, "_warned", set())
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        samplers = [T._nvml_sampler(0, nvml=FakeNvml(fail_init=OSError("NVML Shared Library Not Found")))
                    for _ in range(3)]
    assert len([x for x in w if "NVML unavailable" in str(x.message)]) == 1
    s = samplers[0]
    assert "NVML Shared Library Not Found" in s.info()["reason"]
    _, out = _measure(s, 0.01, calls=5)
    assert out["tel_source"] == "" and math.isnan(out["energy_per_call_j"]) and out["throttled"] is None


def test_make_sampler_cuda_without_driver_never_raises(monkeypatch):
    # This machine has no NVIDIA driver: a CUDA sampler degrades to empty columns.
    monkeypatch.setattr(T.base, "_warned", set())
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        s = T.make_sampler("cuda", 0)
    _, out = _measure(s, 0.01, calls=1)
    assert list(out) == list(T.TELEMETRY_COLUMNS)


def test_disabled_by_env(monkeypatch):
    monkeypatch.setenv("KB_TELEMETRY", "0")
    s = T.make_sampler("cpu")
    assert "KB_TELEMETRY" in s.info()["reason"]


def test_cpu_sampler_on_this_machine():
    """A real CPU load: utilization is high, frequency is read, unreadable metrics have reasons."""
    s = T.make_sampler("cpu")
    info = s.info()
    assert info["source"] == "cpu"
    a = np.random.default_rng(0).standard_normal((600, 600))
    with s.measure() as m:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.3:
            a @ a
    out = m.summary(10)
    assert out["tel_source"] == "cpu" and out["tel_samples"] >= 2
    assert 20.0 <= out["cpu_util_pct"] <= 100.0           # this process kept at least one core busy
    assert 0.0 <= out["cpu_others_pct"] <= out["cpu_util_pct"] + 1e-9
    if "cpu_mhz" in info["sources"]:
        assert out["cpu_mhz_mean"] > 100
    for metric in ("energy", "temp", "throttle"):          # either read or explained
        assert metric in info["sources"] or info["unavailable"].get(metric)
    if "energy" not in info["sources"]:
        assert math.isnan(out["energy_per_call_j"]) and out["energy_source"] == ""


def _fake_sysfs(root, energy_uj=1_000_000, rng=2**32, throttle=5, readable=True):
    def w(path, text):
        p = root / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return p
    w("/proc/stat", "cpu  100 0 50 800 10 0 0 0 0 0\ncpu0 50 0 25 400 5 0 0 0 0 0\n")
    w("/proc/cpuinfo", "processor\t: 0\ncpu MHz\t\t: 2000.0\n")
    w("/proc/self/stat", "4242 (python (x)) R 1 2 3 4 5 6 7 8 9 10 20 10 0 0 20 0 3\n")   # utime 20, stime 10
    for c in (0, 1):
        w(f"/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_cur_freq", f"{3000000 + c * 200000}\n")
        w(f"/sys/devices/system/cpu/cpu{c}/thermal_throttle/package_throttle_count", f"{throttle}\n")
    z = "/sys/class/powercap/intel-rapl:0"
    w(z + "/name", "package-0\n")
    e = w(z + "/energy_uj", f"{energy_uj}\n")
    w(z + "/max_energy_range_uj", f"{rng}\n")
    w(z + ":0/name", "core\n")                              # a sub-zone: must not be counted
    w(z + ":0/energy_uj", "7\n")
    w("/sys/class/thermal/thermal_zone0/type", "x86_pkg_temp\n")
    w("/sys/class/thermal/thermal_zone0/temp", "55000\n")
    if not readable:
        e.write_text("")                                   # what a non-root read of energy_uj returns
    return e


def test_cpu_sampler_fake_sysfs_rapl_freq_thermal(tmp_path):
    e = _fake_sysfs(tmp_path)
    s = T.CpuSampler(root=str(tmp_path), period_s=0.01)
    info = s.info()
    assert "energy" in info["sources"] and "cpufreq" in info["sources"]["cpu_mhz"]
    stat = tmp_path / "proc/stat"
    me = tmp_path / "proc/self/stat"
    thr = tmp_path / "sys/devices/system/cpu/cpu0/thermal_throttle/package_throttle_count"
    with s.measure() as m:
        time.sleep(0.05)
        # 2 J consumed; 300 of 400 new jiffies busy; one throttle event
        e.write_text("3000000\n")
        stat.write_text("cpu  400 0 50 900 10 0 0 0 0 0\n")
        me.write_text("4242 (python (x)) R 1 2 3 4 5 6 7 8 9 10 220 10 0 0 20 0 3\n")   # we used 200 of them
        thr.write_text("6\n")
        time.sleep(0.05)
    out = m.summary(calls=4)
    assert out["tel_source"] == "cpu" and out["energy_source"] == "rapl"
    assert out["energy_per_call_j"] == pytest.approx(2.0 / 4)            # (3e6 - 1e6) uJ = 2 J
    assert out["power_mean_w"] == pytest.approx(2.0 / out["tel_window_s"], rel=0.2)
    assert out["cpu_util_pct"] == pytest.approx(75.0)
    assert out["cpu_others_pct"] == pytest.approx(25.0)          # (300 busy - 200 ours) / 400
    assert out["cpu_mhz_mean"] == pytest.approx(3100.0)
    assert out["temp_max_c"] == 55.0
    assert out["throttled"] is True and out["throttle_reasons"] == "thermal"


def test_cpu_rapl_wraparound(tmp_path):
    e = _fake_sysfs(tmp_path, energy_uj=2**32 - 1_000_000)
    s = T.CpuSampler(root=str(tmp_path), period_s=0)
    with s.measure() as m:
        e.write_text("500000\n")                            # wrapped: 1.5 J consumed
    out = m.summary(calls=3)
    assert out["energy_per_call_j"] == pytest.approx(0.5)
    assert out["throttled"] is False


def test_cpu_rapl_unreadable_has_reason(tmp_path):
    _fake_sysfs(tmp_path, readable=False)
    s = T.CpuSampler(root=str(tmp_path), period_s=0)
    assert "energy" not in s.info()["sources"]
    assert "unreadable" in s.info()["unavailable"]["energy"]
    with s.measure() as m:
        pass
    out = m.summary(1)
    assert math.isnan(out["energy_per_call_j"]) and out["energy_source"] == ""


def test_write_timeseries(tmp_path, monkeypatch):
    monkeypatch.setenv("KB_TELEMETRY_PERIOD_MS", "10")
    s = T._nvml_sampler(0, nvml=FakeNvml())
    entries = []
    for v in ("torch_eager", "triton"):
        m, _ = _measure(s, 0.06)
        entries.append((dict(run_id="r1", suite="softmax", case="rows=4096,cols=1024", variant=v, dtype="float32"), m))
    path = T.write_timeseries(tmp_path, entries)
    assert path == tmp_path / "telemetry.parquet"
    df = pd.read_parquet(path)
    assert list(df.columns[:6]) == ["run_id", "suite", "case", "variant", "dtype", "t_s"]
    assert set(T.TIMESERIES_METRICS) <= set(df.columns)
    assert df["t_s"].min() == 0.0 and df["t_s"].is_monotonic_increasing
    assert set(df["variant"]) == {"torch_eager", "triton"}
    assert (df["power_w"] == 300.0).all()
    assert T.write_timeseries(tmp_path / "empty", []) is None


def test_summary_never_raises():
    s = T.make_sampler("cpu")
    with s.measure() as m:
        pass
    m._sampler = None                                         # a broken sampler
    out = m.summary(1)
    assert list(out) == list(T.TELEMETRY_COLUMNS)


@pytest.mark.gpu
def test_nvml_on_a_real_gpu(tmp_path):
    """On a CUDA machine: NVML reads power, energy, clocks and utilization while a matmul loop runs."""
    import torch
    s = T.make_sampler("cuda", torch.cuda.current_device())
    info = s.info()
    assert info["source"] == "nvml", info
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    calls = 0
    with s.measure() as m:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 1.0:
            a @ a
            calls += 1
            if calls % 50 == 0:
                torch.cuda.synchronize()
        torch.cuda.synchronize()
    out = m.summary(calls)
    assert out["tel_source"] == "nvml" and out["tel_samples"] >= 10
    assert out["power_mean_w"] > 30 and out["energy_per_call_j"] > 0
    assert out["energy_source"] in ("nvml_counter", "nvml_power_integrated")
    assert out["sm_clock_max_mhz"] > 300 and out["gpu_util_pct"] > 20 and out["mem_used_max_mib"] > 32
    assert out["throttled"] in (True, False) and isinstance(out["throttle_reasons"], str)
    path = T.write_timeseries(tmp_path, [(dict(run_id="r", suite="s", case="c", variant="v", dtype="bf16"), m)])
    df = pd.read_parquet(path)
    assert len(df) == out["tel_samples"] and (df["power_w"] > 0).all()
