"""The first-run peak probe: when no ceiling is known for this device, measure one in seconds.

Without it `% peak` stays empty until the user discovers `bench.py --suite peak` (issue 11). The probe runs
the peak suite's quick probes (suites/peak.py AUTO_CASES: the native streaming-store copy and FMA chains,
AMX where present, a small torch matmul; torch's copy where the C++ library is not built), each checked
against its closed form and timed for a short budget, offers the figures to the store with mode "auto"
(harness/peaks.py keeps them only until a more credible or higher figure arrives) and prints one line.
"""
from __future__ import annotations

import time

from harness import env, peaks, telemetry
from harness.check import compare
from harness.registry import Case, get_suite
from harness.timing import TimingConfig, measure, sync

BUDGET_S = 0.3


def probe(device: str, device_name: str, budget_s: float = BUDGET_S) -> list[str]:
    """Measure and store quick ceilings; returns the messages (also printed, once)."""
    suite = get_suite("peak")
    sampler = telemetry.make_sampler(device)
    t0 = time.perf_counter()
    found: dict[str, str] = {}
    msgs: list[str] = []
    import suites.peak as peak_suite
    for params in peak_suite.AUTO_CASES:
        for dtype in ("float32", "bfloat16", "int8"):
            case = Case("peak", params, device, dtype)
            for vname in ("cpp", "torch"):
                v = suite.variants[vname]
                probe_name = f"{vname}_{params['op']}"
                if not suite.applies(case, vname):
                    continue
                ck = peaks.ceiling_key(probe_name, dtype)
                if found.get(ck) or v.requires.missing(case):
                    continue
                try:
                    value, others = _measure_one(suite, case, v, device, budget_s, sampler)
                except Exception as exc:       # noqa: BLE001 - a failing probe leaves that ceiling unknown
                    msgs.append(f"{probe_name}/{dtype} failed: {type(exc).__name__}: {exc}")
                    continue
                if value is None:
                    msgs.append(f"{probe_name}/{dtype}: wrong result, not used")
                    continue
                _, msg = peaks.record(device_name, probe_name, dtype, value, mode="auto",
                                      commit=env.git_commit(), others_pct=others)
                found[ck] = msg
    took = time.perf_counter() - t0
    print(f"peak: no measured ceiling stored for {device_name}; quick probe ({took:.1f} s, "
          f"`bench.py --suite peak --full` measures it properly): " + "; ".join(list(found.values()) + msgs))
    return list(found.values()) + msgs


def _measure_one(suite, case, v, device, budget_s, sampler) -> tuple[float | None, float | None]:
    # Checked like any variant (a copy or a read on a 64 Ki-element slice of the shape: its float64 reference of the
    # timed size would take 256 MiB), then timed for `budget_s` on other inputs.
    check = Case("peak", {**case.params, "n": min(case.n, 1 << 16)}, device, case.dtype_name) \
        if case.op in ("copy", "read", "read1") else case
    inputs = suite.make_inputs(check, 12345)
    out = v.setup(check, **inputs)()
    sync(device)
    atol, rtol = suite.tolerance(check)
    if not compare(out, suite.compute_reference(check, inputs), atol, rtol).ok:
        return None, None
    del out
    launcher = v.setup(case, **suite.make_inputs(case, 54321))
    with sampler.measure() as m:
        stats = measure(launcher, device, TimingConfig(budget_s=budget_s, warmup_s=0.02))
    others = m.summary(stats.n * stats.calls_per_sample).get("cpu_others_pct")
    flops, nbytes = suite.work(case)
    sec = stats.median_ms / 1e3
    value = nbytes / sec / 1e9 if case.op in ("copy", "read", "read1") else flops / sec / 1e12
    return value, others
