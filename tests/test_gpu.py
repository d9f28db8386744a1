"""The harness on a CUDA GPU: event timing, L2 flush, graph replay, a suite end to end. Skipped without one."""
import json
import time

import pytest
import torch

from harness.results import load
from harness.timing import CacheFlusher, TimingConfig, measure
from tests.helpers import bench

pytestmark = pytest.mark.gpu


def test_event_timing_matches_a_known_gpu_workload():
    torch.cuda.synchronize()
    cycles = 2_000_000
    t0 = time.perf_counter()
    for _ in range(20):
        torch.cuda._sleep(cycles)
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - t0) / 20 * 1e3
    st = measure(lambda: torch.cuda._sleep(cycles), "cuda", TimingConfig(budget_s=0.5))
    assert 0.8 * wall_ms <= st.median_ms <= 1.2 * wall_ms, (st.median_ms, wall_ms)


def test_cuda_graph_replay_and_cold_flush():
    x = torch.randn(1 << 20, device="cuda")
    st = measure(lambda: x.mul_(1.0), "cuda", TimingConfig(budget_s=0.3, cuda_graph=True))
    assert st.median_ms > 0 and st.n >= 3
    flush = CacheFlusher("cuda")
    assert flush.buf.numel() * 4 >= 2 * torch.cuda.get_device_properties(0).L2_cache_size
    cold = measure(lambda: x.mul_(1.0), "cuda", TimingConfig(budget_s=0.3, cold=True), flush)
    assert cold.calls_per_sample == 1 and cold.median_ms > 0


def test_attention_suite_on_the_gpu(tmp_path):
    p = bench("--suite", "attention", "--device", "cuda", "--test-shapes", "--dtype", "bf16,fp16",
              "--budget", "0.2", "--no-progress", "--out", str(tmp_path))
    assert p.returncode == 0, p.stderr
    df = load(tmp_path)
    assert not (df.status.isin(["incorrect", "error"])).any(), df[df.status != "ok"][["case", "variant", "reason"]]
    ok = df[df.status == "ok"]
    assert {"eager", "sdpa_flash", "sdpa_math"} <= set(ok.variant)
    from harness.peaks import datasheet
    if datasheet(torch.cuda.get_device_name()):        # a GPU of the datasheet table: % of its peak
        assert ok.pct_peak.notna().all() and ok.peak_source.str.startswith("datasheet").all()
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["device_name"] and m["cuda"] and m["driver"]
