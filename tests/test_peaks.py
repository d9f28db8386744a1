"""Peaks: datasheet lookup, measured peaks stored and reloaded, and the roofline fraction."""
import math

import pytest

from harness import peaks
from harness.registry import all_suites


def test_datasheet_matches_the_most_specific_name():
    assert peaks.datasheet("NVIDIA H100 80GB HBM3")[0] == "H100"
    assert peaks.datasheet("NVIDIA H100 PCIe")[0] == "H100 PCIe"
    assert peaks.datasheet("NVIDIA H200")[0] == "H200"
    assert peaks.datasheet("NVIDIA A100-SXM4-80GB")[1]["bw_gbs"] == 2039
    assert peaks.datasheet("Intel(R) Xeon(R) Processor") is None


def test_roofline_fraction():
    p = {"bw_gbs": 100.0, "float32": 1.0}
    # memory-bound: 1 GB at 100 GB/s takes 10 ms at best; measured 20 ms -> 50%
    assert peaks.roofline_pct(1e6, 1e9, 0.020, p, "float32") == pytest.approx(50.0)
    # compute-bound: 1 TFLOP at 1 TFLOP/s takes 1 s at best; measured 4 s -> 25%
    assert peaks.roofline_pct(1e12, 1e6, 4.0, p, "float32") == pytest.approx(25.0)
    assert math.isnan(peaks.roofline_pct(1e12, 1e6, 4.0, p, "bfloat16"))    # no ceiling: no figure
    assert math.isnan(peaks.roofline_pct(1e12, 1e6, 4.0, None, "float32"))


def test_measured_peaks_are_merged_and_reloaded(tmp_path, monkeypatch):
    monkeypatch.setattr(peaks, "PEAKS_DIR", tmp_path)
    peaks.store_measured("Some GPU", {"bw_gbs": 10.0})
    peaks.store_measured("Some GPU", {"bfloat16": 5.0})
    assert peaks.load_measured("Some GPU") == {"bw_gbs": 10.0, "bfloat16": 5.0, "device_name": "Some GPU"}
    assert peaks.load_measured("Other") is None


def test_matmul_suites_use_the_matrix_ceiling_of_their_dtype():
    suites = all_suites()
    assert {n for n, s in suites.items() if s.compute_class == "matmul"} == {"attention", "gemm", "peak"}
