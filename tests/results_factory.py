"""Synthetic result tables in the schema of docs/CONTRACTS.md §5, for the gate/compare/report/baseline tests.

`row(...)` builds one row with every contract column; `write_run(dir, rows, manifest)` writes a run directory
(results.parquet, results.csv, manifest.json) the way the runner does.
"""
from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.results import COLUMNS
from harness.telemetry import TELEMETRY_COLUMNS, empty_summary

H100 = dict(device="cuda", device_name="NVIDIA H100 80GB HBM3", cuda="12.8", driver="570.86", threads=None)
A100 = dict(device="cuda", device_name="NVIDIA A100-SXM4-80GB", cuda="12.8", driver="570.86", threads=None)
CPU = dict(device="cpu", device_name="Fake Test CPU (2 cpus)", cuda=None, driver=None, threads=2)
PEAKS = {  # bw GB/s, TFLOP/s per dtype: what the report's roofline ceilings use for these fake devices
    H100["device_name"]: {"bw_gbs": 3350, "float32": 67.0, "bfloat16": 989.4},
    A100["device_name"]: {"bw_gbs": 2039, "float32": 19.5, "bfloat16": 312.0},
    CPU["device_name"]: {"bw_gbs": 20.0, "float32": 1.5, "bfloat16": 3.0},
}


def samples(median_ms: float, n: int = 60, sigma: float = 0.02, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(median_ms * np.exp(rng.normal(0.0, sigma, n)))


def row(suite="softmax", case="rows=4096,cols=1024", variant="torch_eager", dtype="float32", status="ok",
        median_ms=1.0, sigma=0.02, n=60, seed=0, flops=None, nbytes=None, run_id="run-a", env=H100,
        samples_ms=None, telemetry: dict | None = None, speedup=math.nan, **extra: Any) -> dict:
    s = samples_ms if samples_ms is not None else (samples(median_ms, n, sigma, seed) if status == "ok" else [])
    x = np.asarray(s, dtype=float)
    flops = 4 * 4096 * 1024 if flops is None else flops
    nbytes = 2 * 4096 * 1024 * 4 if nbytes is None else nbytes
    med = float(np.median(x)) if x.size else math.nan
    t = med / 1e3
    peaks = PEAKS.get(env["device_name"], {})
    pct = math.nan
    if peaks and x.size:
        tmin = max(flops / (peaks.get(dtype, peaks["float32"]) * 1e12), nbytes / (peaks["bw_gbs"] * 1e9))
        pct = 100 * tmin / t
    r = dict(run_id=run_id, suite=suite, case=case, variant=variant, device=env["device"],
             device_name=env["device_name"], dtype=dtype, status=status,
             reason="" if status == "ok" else f"{status}: synthetic",
             median_ms=med, p20_ms=float(np.percentile(x, 20)) if x.size else math.nan,
             p80_ms=float(np.percentile(x, 80)) if x.size else math.nan,
             min_ms=float(x.min()) if x.size else math.nan, n=int(x.size),
             cv=float(x.std() / x.mean()) if x.size else math.nan, samples_ms=[float(v) for v in s],
             compile_s=math.nan, flops=float(flops), bytes=float(nbytes),
             tflops=flops / t / 1e12 if x.size else math.nan, gbps=nbytes / t / 1e9 if x.size else math.nan,
             pct_peak=pct, peak_source=f"datasheet:{env['device_name']}", pct_peak_measured=math.nan,
             speedup=speedup, max_abs_err=1e-7, max_rel_err=1e-6, config="", threads=env["threads"],
             cold=False, cuda_graph=False, commit="abc123", host="host1", torch="2.13.0", triton="3.7.1",
             cuda=env["cuda"], driver=env["driver"],
             timestamp=dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.timezone.utc).isoformat())
    tel = empty_summary()
    tel.update(telemetry or {})
    r.update(tel)
    r.update(extra)
    return r


def frame(rows: list[dict]) -> pd.DataFrame:
    cols = COLUMNS + [c for c in TELEMETRY_COLUMNS] + sorted({k for r in rows for k in r} - set(COLUMNS) - set(TELEMETRY_COLUMNS))
    df = pd.DataFrame(rows, columns=cols)
    df["n"] = df["n"].astype("Int64")
    df["threads"] = df["threads"].astype("Int64")
    return df


def write_run(run_dir: Path, rows: list[dict], manifest: dict | None = None) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    df = frame(rows)
    df.to_parquet(run_dir / "results.parquet", index=False)
    csv = df.copy()
    csv["samples_ms"] = csv["samples_ms"].map(lambda s: json.dumps([round(float(v), 6) for v in s]))
    csv.to_csv(run_dir / "results.csv", index=False)
    m = {"run_id": rows[0]["run_id"] if rows else "", "device_name": rows[0]["device_name"] if rows else "",
         "finished": "2026-11-25T09:05:00+00:00", "interrupted": False}
    m.update(manifest or {})
    (run_dir / "manifest.json").write_text(json.dumps(m, indent=2))
    return run_dir


def standard_run(run_id="run-a", env=H100, scale=1.0, seed=0, sigma=0.02) -> list[dict]:
    """Two suites, a few cases and variants: softmax (memory-bound) and gemm (compute-bound)."""
    rows = []
    for i, (case, base_ms) in enumerate([("rows=4096,cols=1024", 0.05), ("rows=8192,cols=4096", 0.35)]):
        rows_, cols = (int(case.split(",")[0].split("=")[1]), int(case.split(",")[1].split("=")[1]))
        for j, (variant, f) in enumerate([("torch_eager", 1.0), ("triton", 0.8), ("cuda_v2", 0.7)]):
            rows.append(row("softmax", case, variant, median_ms=base_ms * f * scale, seed=seed + 10 * i + j,
                            sigma=sigma, run_id=run_id, env=env, flops=4 * rows_ * cols,
                            nbytes=2 * rows_ * cols * 4, speedup=1.0 / f))
    for i, n_ in enumerate([1024, 4096]):
        for j, (variant, f) in enumerate([("torch", 1.0), ("triton", 1.1)]):
            t = 2 * n_**3 / 400e12 * 1e3
            rows.append(row("gemm", f"m={n_},n={n_},k={n_}", variant, dtype="bfloat16", median_ms=t * f * scale,
                            seed=seed + 100 + 10 * i + j, sigma=sigma, run_id=run_id, env=env,
                            flops=2 * n_**3, nbytes=3 * n_ * n_ * 2, speedup=1.0 / f))
    return rows


def write_telemetry(run_dir: Path, rows: list[dict], seconds_per_row: float = 1.0, hz: float = 20,
                    throttle_variant: str | None = None, seed: int = 0) -> Path | None:
    """A telemetry.parquet for `rows` through the real writer: GPU-like power/clock/temperature traces;
    samples of `throttle_variant` carry the sw_power_cap reason and a lowered SM clock."""
    from harness import telemetry as T
    rng = np.random.default_rng(seed)
    entries, t = [], 1.7e9
    for r in rows:
        if r["status"] != "ok":
            continue
        m = T.Measurement(T.Sampler())
        hot = r["variant"] == throttle_variant
        for i in range(int(seconds_per_row * hz)):
            t += 1 / hz
            m.samples.append(dict(t=t, power_w=(650 if hot else 420) + rng.normal(0, 15),
                                  sm_clock_mhz=1650.0 if hot else 1980.0, mem_clock_mhz=2619.0,
                                  temp_c=55 + 20 * i / (seconds_per_row * hz) + (8 if hot else 0),
                                  gpu_util_pct=98.0, mem_util_pct=70.0, mem_used_mib=3000.0,
                                  cpu_mhz=math.nan, cpu_util_pct=math.nan, throttle_mask=4.0 if hot else 0.0))
        t += 0.3                                                     # the correctness check between rows
        entries.append(({k: r[k] for k in ("run_id", "suite", "case", "variant", "dtype")}, m))
    return T.write_timeseries(run_dir, entries)
