"""Peak throughput of a device: vendor datasheet figures, and what `bench.py --suite peak` measured here.

Datasheet figures are dense (no 2:4 sparsity), boost clocks, from NVIDIA's product pages and architecture
whitepapers: TFLOP/s per dtype (float32 = non-tensor-core FMA; bfloat16/float16 = tensor cores with fp32
accumulation) and memory bandwidth in GB/s. Matched by substring of the GPU name, most specific first.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from harness.result_sets import results_root
from harness.results import atomic_write

DATASHEET: list[tuple[str, dict[str, float]]] = [
    # pattern in torch.cuda.get_device_name()   GB/s,          TFLOP/s per dtype
    ("H200",        {"bw_gbs": 4800, "float32": 67.0, "bfloat16": 989.4, "float16": 989.4}),
    ("GH200",       {"bw_gbs": 4000, "float32": 67.0, "bfloat16": 989.4, "float16": 989.4}),
    ("H100 NVL",    {"bw_gbs": 3900, "float32": 60.0, "bfloat16": 835.0, "float16": 835.0}),
    ("H100 PCIe",   {"bw_gbs": 2000, "float32": 51.0, "bfloat16": 756.0, "float16": 756.0}),
    ("H100",        {"bw_gbs": 3350, "float32": 67.0, "bfloat16": 989.4, "float16": 989.4}),   # SXM5
    ("B200",        {"bw_gbs": 8000, "float32": 80.0, "bfloat16": 2250.0, "float16": 2250.0}),
    ("A100-SXM4-80GB", {"bw_gbs": 2039, "float32": 19.5, "bfloat16": 312.0, "float16": 312.0}),
    ("A100 80GB PCIe", {"bw_gbs": 1935, "float32": 19.5, "bfloat16": 312.0, "float16": 312.0}),
    ("A100",        {"bw_gbs": 1555, "float32": 19.5, "bfloat16": 312.0, "float16": 312.0}),   # 40 GB
    ("L40S",        {"bw_gbs": 864, "float32": 91.6, "bfloat16": 362.0, "float16": 362.0}),
    ("L4",          {"bw_gbs": 300, "float32": 30.3, "bfloat16": 121.0, "float16": 121.0}),
    ("A10G",        {"bw_gbs": 600, "float32": 31.2, "bfloat16": 70.0, "float16": 70.0}),
    ("A10",         {"bw_gbs": 600, "float32": 31.2, "bfloat16": 125.0, "float16": 125.0}),
    ("RTX 4090",    {"bw_gbs": 1008, "float32": 82.6, "bfloat16": 165.2, "float16": 165.2}),
    ("RTX 3090",    {"bw_gbs": 936, "float32": 35.6, "bfloat16": 71.0, "float16": 71.0}),
    ("V100",        {"bw_gbs": 900, "float32": 15.7, "float16": 125.0}),
    ("T4",          {"bw_gbs": 320, "float32": 8.1, "float16": 65.0}),
]

PEAKS_DIR = Path(os.environ.get("KB_PEAKS_DIR") or results_root() / "peaks")   # results root: $KB_RESULTS_DIR


def datasheet(device_name: str) -> tuple[str, dict[str, float]] | None:
    for pattern, peaks in DATASHEET:
        if pattern.lower() in device_name.lower():
            return pattern, peaks
    return None


def _slug(device_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", device_name).strip("-").lower() or "unknown"


def measured_path(device_name: str) -> Path:
    return PEAKS_DIR / f"{_slug(device_name)}.json"


def load_measured(device_name: str) -> dict[str, float] | None:
    try:
        return json.loads(measured_path(device_name).read_text())
    except (OSError, ValueError):
        return None


def store_measured(device_name: str, peaks: dict[str, float]) -> Path:
    """Merge `peaks` into this device's file (atomically replaced)."""
    path = measured_path(device_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = {**(load_measured(device_name) or {}), **peaks, "device_name": device_name}
    atomic_write(path, lambda p: p.write_text(json.dumps(merged, indent=2, sort_keys=True)))
    return path


def roofline_pct(flops: float, nbytes: float, seconds: float, peaks: dict[str, float] | None,
                 dtype: str) -> float:
    """% of the roofline: the least time the device could take (compute or memory bound) / measured time."""
    if not peaks or not seconds or seconds <= 0 or math.isnan(seconds):
        return float("nan")
    tflops, bw = peaks.get(dtype), peaks.get("bw_gbs")
    if (flops > 0 and not tflops) or (nbytes > 0 and not bw):
        return float("nan")   # a missing ceiling would overstate the fraction
    t_min = max(flops / (tflops * 1e12) if flops > 0 else 0.0, nbytes / (bw * 1e9) if nbytes > 0 else 0.0)
    return 100.0 * t_min / seconds if t_min > 0 else float("nan")
