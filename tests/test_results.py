"""Results files: schema, parquet and CSV agree, manifest, atomic replacement."""
import json

import pandas as pd

from harness.results import COLUMNS, ResultWriter, load
from tests.helpers import bench


def test_written_files_and_schema(tmp_path):
    out = tmp_path / "r"
    p = bench("--suite", "softmax", "--test-shapes", "--filter", "1x127,129x1000", "--no-progress",
              "--variant", "torch_eager,torch_compile",
              "--budget", "0.05", "--out", str(out))
    assert p.returncode == 0, p.stderr
    pq, csv = load(out / "results.parquet"), load(out / "results.csv")
    assert len(pq) == len(csv) == 4
    assert list(pq.columns[:len(COLUMNS)]) == COLUMNS
    assert {"rows", "cols"} <= set(pq.columns)
    for col in ("suite", "case", "variant", "device", "dtype", "status", "median_ms", "p20_ms", "p80_ms", "n",
                "cv", "tflops", "gbps", "pct_peak", "speedup", "max_abs_err"):
        assert col in pq.columns
    assert (pq.status == "ok").all()
    assert pq.samples_ms.map(len).tolist() == pq.n.tolist() == csv.n.tolist()
    pd.testing.assert_series_equal(pq.median_ms, csv.median_ms, check_exact=False, rtol=1e-9)
    assert pq.compile_s.notna().tolist() == (pq.variant == "torch_compile").tolist()
    m = json.loads((out / "manifest.json").read_text())
    for key in ("command", "commit", "started", "finished", "cpu", "device_name", "torch", "triton", "cuda",
                "driver", "run_id", "rows"):
        assert key in m, key
    assert m["rows"] == 4 and m["interrupted"] is False
    assert "--suite softmax" in m["command"]
    assert not list(out.glob(".*.tmp"))          # no temporary file left behind


def test_writer_keeps_earlier_rows_on_every_flush(tmp_path):
    w = ResultWriter(tmp_path, {"x": 1})
    for i in range(3):
        w.add({"suite": "s", "case": str(i), "variant": "v", "status": "ok", "samples_ms": [1.0, 2.0], "n": 2})
        assert len(load(tmp_path)) == i + 1
    assert load(tmp_path / "results.csv").samples_ms[2] == [1.0, 2.0]
