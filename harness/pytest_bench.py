"""Run the suites' cases as pytest-benchmark tests, for teams that gate with `--benchmark-compare-fail`.

In a test module (see benchmarks/test_suites_bench.py):

    from harness.pytest_bench import bench_params, run_case

    @pytest.mark.parametrize("item", bench_params("softmax", mode="quick"))
    def test_softmax(benchmark, item):
        run_case(benchmark, item)

`bench_params(suite, mode, device, dtypes, variants)` gives one pytest parameter per (case, dtype, variant),
ids like `softmax/4096x1024/float32/torch_eager`. `run_case` does what `bench.py` does before timing:
skips a variant whose requirements are missing (with the reason), checks its output on fresh seeded inputs
against the float64 reference with the suite's tolerances (the test fails on a mismatch, with the worst
elements), builds the launcher on other fresh inputs, and then lets pytest-benchmark time it (CUDA calls
are followed by a synchronize, so the time is the kernel's, not the launch's). `benchmark.extra_info`
gets the suite keys, declared FLOPs and bytes, TFLOP/s and GB/s at the median, and the telemetry summary
(harness.telemetry) of the timed rounds.

Options (this module as a plugin: `pytest -p harness.pytest_bench`, or imported into a conftest):
`--kb-mode quick|test|full`, `--kb-device auto|cpu|cuda`; `bench_params` reads them through the
environment (KB_BENCH_MODE, KB_BENCH_DEVICE) because parametrization happens at import time.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import pytest


@dataclass(frozen=True)
class BenchItem:
    suite: str
    mode: str
    device: str
    dtype: str
    case_index: int
    case_name: str
    variant: str

    def __str__(self) -> str:
        return f"{self.suite}/{self.case_name}/{self.dtype}/{self.variant}"


def _device(device: str | None) -> str:
    device = device or os.environ.get("KB_BENCH_DEVICE", "auto")
    if device == "auto":
        from harness.env import best_device
        return best_device()
    return device


def bench_params(suite: str, mode: str | None = None, device: str | None = None,
                 dtypes: list[str] | None = None, variants: list[str] | None = None) -> list[Any]:
    """pytest parameters, one per (case, dtype, variant) of `suite` in `mode` on `device`."""
    from harness.registry import get_suite
    from harness.runner import suite_dtypes
    mode = mode or os.environ.get("KB_BENCH_MODE", "quick")
    dev = _device(device)
    s = get_suite(suite)
    out = []
    for dtype in suite_dtypes(s, dev, dtypes):
        for i, case in enumerate(s.cases(mode, dev, dtype)):
            for v in s.variants.values():
                if variants and v.name not in variants:
                    continue
                item = BenchItem(s.name, mode, dev, dtype, i, case.name, v.name)
                out.append(pytest.param(item, id=str(item)))
    return out


def _resolve(item: BenchItem):
    from harness.registry import get_suite
    s = get_suite(item.suite)
    case = s.cases(item.mode, item.device, item.dtype)[item.case_index]
    return s, case, s.variants[item.variant]


def check_case(suite, case, variant, seed: int = 0):
    """The variant's output on fresh seeded inputs against the float64 reference (harness.check.check_variant,
    the check bench.py runs)."""
    from harness.check import check_variant
    return check_variant(suite, case, variant, seed).result


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "item"):
        return v.item()
    return v


def run_case(benchmark, item: BenchItem, seed: int = 0, rounds: int | None = None) -> Any:
    """Check `item`, then time it with pytest-benchmark's `benchmark` fixture; returns the last output."""
    from harness import telemetry
    from harness.registry import Skip
    from harness.check import derive_seed
    from harness.timing import sync
    suite, case, variant = _resolve(item)
    missing = variant.requires.missing(case)
    if missing:
        pytest.skip(missing)
    try:
        res = check_case(suite, case, variant, seed)
    except Skip as e:
        pytest.skip(str(e))
    if not res.ok:
        pytest.fail(f"{item}: incorrect against the float64 reference: {res.message}", pytrace=False)
    inputs = suite.make_inputs(case, derive_seed(seed, suite.name, case.name, case.dtype_name, variant.name, "time"))
    launcher = variant.setup(case, **inputs)
    launcher()                                       # the first call compiles (compiled=True variants)
    sync(case.device)
    calls = [0]

    def call():
        calls[0] += 1
        out = launcher()
        sync(case.device)                            # CUDA: time the kernel, not its launch
        return out

    sampler = telemetry.make_sampler(case.device)
    with sampler.measure() as m:
        if rounds:
            out = benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=1)
        else:
            out = benchmark(call)
    flops, nbytes = suite.work(case)
    info = dict(suite=suite.name, case=case.name, variant=variant.name, dtype=case.dtype_name,
                device=case.device, flops=flops, bytes=nbytes, max_abs_err=res.max_abs_err)
    try:
        from harness.env import device_name
        info["device_name"] = device_name(case.device)
        med = benchmark.stats.stats.median                       # seconds
        info["tflops"] = flops / med / 1e12 if flops and med > 0 else None
        info["gbps"] = nbytes / med / 1e9 if nbytes and med > 0 else None
    except Exception:                                            # noqa: BLE001 - --benchmark-disable
        pass
    info.update(m.summary(calls[0]))
    benchmark.extra_info.update({k: _jsonable(v) for k, v in info.items()})
    return out


# ---- plugin hooks: `pytest -p harness.pytest_bench` ---------------------------------------------------------

def pytest_addoption(parser):
    g = parser.getgroup("kbench", "kernel benchmark suites under pytest-benchmark")
    g.addoption("--kb-mode", default=None, choices=("test", "quick", "full"),
                help="suite case set for bench_params (default quick; env KB_BENCH_MODE)")
    g.addoption("--kb-device", default=None, choices=("auto", "cpu", "cuda"),
                help="device for bench_params (default auto; env KB_BENCH_DEVICE)")


def pytest_configure(config):
    for opt, env in (("--kb-mode", "KB_BENCH_MODE"), ("--kb-device", "KB_BENCH_DEVICE")):
        try:
            v = config.getoption(opt)
        except ValueError:
            v = None
        if v:
            os.environ[env] = v
