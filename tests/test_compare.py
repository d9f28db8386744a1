"""bench.py compare: alignment across machines, ratios, % of each device's peak, bad input."""
from __future__ import annotations

import math
import os
import sys

import pandas as pd
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import results_factory as F  # noqa: E402

from harness import compare as C  # noqa: E402


@pytest.fixture
def two_gpus(tmp_path):
    h = F.write_run(tmp_path / "h100", F.standard_run("h100run", env=F.H100,)
                    + [F.row(variant="only_on_h100", run_id="h100run")])
    a_rows = F.standard_run("a100run", env=F.A100, scale=1.6, seed=5)
    a_rows[1] = F.row("softmax", "rows=4096,cols=1024", "triton", status="skipped", run_id="a100run", env=F.A100)
    a = F.write_run(tmp_path / "a100", a_rows)
    return h, a


def test_ratios_and_peak_side_by_side(two_gpus):
    h, a = two_gpus
    df = C.RS.load([str(h), str(a)])
    table, ss = C.compare_frame(df, ("median_ms", "pct_peak", "gbps"))
    assert [s["label"] for s in ss] == ["A", "B"] and "H100" in ss[0]["device_name"] and "A100" in ss[1]["device_name"]
    r = table[(table["suite"] == "softmax") & (table["variant"] == "torch_eager")
              & (table["case"] == "rows=4096,cols=1024")].iloc[0]
    # time ratio A/B: the A100 run is 1.6x slower; gbps ratio B/A is the same number
    assert r["median_ms ratio B"] == pytest.approx(r["median_ms A"] / r["median_ms B"])
    assert r["median_ms ratio B"] == pytest.approx(1 / 1.6, rel=0.05)
    assert r["gbps ratio B"] == pytest.approx(r["median_ms ratio B"], rel=1e-9)
    # % of peak: each against its own device. Softmax is bandwidth-bound: 1.6x slower on a device with
    # 2039/3350 of the bandwidth is about the same fraction of peak.
    assert r["pct_peak B"] / r["pct_peak A"] == pytest.approx((3350 / 2039) / 1.6, rel=0.05)
    sk = table[(table["variant"] == "triton") & (table["case"] == "rows=4096,cols=1024")].iloc[0]
    assert sk["status B"] == "skipped" and math.isnan(sk["median_ms B"]) and math.isnan(sk["median_ms ratio B"])
    only = table[table["variant"] == "only_on_h100"].iloc[0]
    assert only["status B"] == "absent" and only["_present"] == 1


def test_cli_text_markdown_csv(two_gpus, capsys, tmp_path):
    h, a = two_gpus
    assert C.main([str(h), str(a)]) == 0
    out = capsys.readouterr().out
    assert "A: NVIDIA H100 80GB HBM3 [cuda] run h100run" in out and "B: NVIDIA A100-SXM4-80GB" in out
    assert "median_ms A/B" in out and "pct_peak B/A" in out
    assert "energy_per_call_j" not in out               # no run has energy: left out by default
    assert "only_on_h100" not in out                     # rows in one run only need --all
    assert "skipped" in out
    assert C.main([str(h), str(a), "--all", "--format", "markdown", "--metrics", "median_ms,tflops"]) == 0
    md = capsys.readouterr().out
    assert "| suite | case | variant | dtype | median_ms A | median_ms B | median_ms A/B | tflops A | tflops B | tflops B/A |" in md
    assert "only_on_h100" in md and "absent" in md
    out_csv = tmp_path / "c.csv"
    assert C.main([str(h), str(a), "--format", "csv", "--out", str(out_csv)]) == 0
    df = pd.read_csv(out_csv)
    assert len(df) == 10 and "median_ms A/B" in df.columns


def test_cpu_versus_gpu_and_three_sides(tmp_path, capsys):
    runs = tmp_path / "results"
    F.write_run(runs / "gpu", F.standard_run("gpu", env=F.H100))
    F.write_run(runs / "cpu", F.standard_run("cpu", env=F.CPU, scale=200))
    F.write_run(runs / "a100", F.standard_run("a100", env=F.A100, scale=1.6))
    assert C.main([str(runs)]) == 0                      # a directory of runs: each run is a side
    out = capsys.readouterr().out
    assert " C: " in out and "[cpu]" in out
    df = C.RS.load(str(runs))
    table, ss = C.compare_frame(df, ("median_ms", "pct_peak"))
    cpu = [s["label"] for s in ss if s["device"] == "cpu"][0]
    assert (table[f"pct_peak {cpu}"] > 0).all()         # the CPU against its own peak, not the GPU's


@pytest.mark.parametrize("argv,msg", [
    (["nope", "nada"], "no such results"),
    (["{h}"], "at least two runs"),
    (["{h}", "{a}", "--metrics", "median_ms,warp_speed"], "unknown metric"),
    (["{h}", "{a}", "--format", "pdf"], "invalid choice"),
])
def test_bad_input(two_gpus, capsys, argv, msg):
    h, a = two_gpus
    assert C.main([x.format(h=h, a=a) for x in argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1
