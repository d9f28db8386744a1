"""bench.py report: a self-contained HTML page, rendered by headless Chromium and checked like a person would."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import results_factory as F  # noqa: E402

from harness import report as R  # noqa: E402

CHROMIUM = next((shutil.which(c) for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None)


@pytest.fixture
def runs(tmp_path):
    rows = F.standard_run("h100run", env=F.H100)
    rows[1].update(throttled=True, throttle_reasons="sw_power_cap")
    rows.append(F.row(variant="broken_v", status="incorrect", run_id="h100run"))
    h = F.write_run(tmp_path / "h100", rows)
    F.write_telemetry(h, rows, seconds_per_row=0.5, throttle_variant="triton")
    a = F.write_run(tmp_path / "a100", F.standard_run("a100run", env=F.A100, scale=1.6, seed=5))
    c = F.write_run(tmp_path / "cpu", F.standard_run("cpurun", env=F.CPU, scale=300, seed=7))
    return h, a, c


def test_report_is_self_contained(runs, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert R.main([*map(str, runs), "--out", str(out)]) == 0
    page = out.read_text()
    # 3 rooflines (one per device), 2 speedup charts (softmax, gemm), 1 telemetry chart
    imgs = re.findall(r'<img class="plot" alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert sorted(a.split()[0] for a, _ in imgs) == ["roofline"] * 3 + ["speedup"] * 2 + ["telemetry"]
    assert not re.search(r'(src|href)="(http|//|file:)', page)          # nothing fetched from elsewhere
    import base64
    import io

    from PIL import Image
    for alt, b64 in imgs:
        im = Image.open(io.BytesIO(base64.b64decode(b64)))
        assert im.size[0] > 300 and im.size[1] > 150, alt
    assert "THROTTLED" in page and 'class="throttled"' in page and 'class="bad"' in page
    assert "datasheet:H100" in page and "inferred from the rows&#x27; pct_peak" in page   # CPU: from its rows
    assert "report:" in capsys.readouterr().out


def test_ceilings_inferred_from_rows_match_truth():
    df = F.frame(F.standard_run("x", env=F.CPU))
    pk, src = R.ceilings("some cpu", df.assign(device="cpu"), [])
    assert "inferred" in src
    assert pk["bw_gbs"] == pytest.approx(F.PEAKS[F.CPU["device_name"]]["bw_gbs"], rel=1e-6)   # softmax is memory-bound
    assert pk["bfloat16"] == pytest.approx(F.PEAKS[F.CPU["device_name"]]["bfloat16"], rel=1e-6)  # gemm compute-bound
    assert "float32" not in pk                  # float32 rows are all memory-bound: only a lower bound, left out


def test_report_without_telemetry_says_why(tmp_path):
    d = F.write_run(tmp_path / "r", F.standard_run("r"), manifest={"telemetry": {"reason": "NVML unavailable (x)"}})
    out = tmp_path / "r.html"
    assert R.main([str(d), "-o", str(out)]) == 0
    assert "No telemetry recorded: NVML unavailable (x)" in out.read_text()


def test_report_bad_input(tmp_path, capsys):
    assert R.main([str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench.py report: error:") and err.count("\n") == 1


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(runs, tmp_path):
    out = tmp_path / "report.html"
    assert R.main([*map(str, runs), "--out", str(out)]) == 0
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--virtual-time-budget=5000", f"--user-data-dir={tmp_path / 'profile'}"]
    # 1. The page's own check: every <img> decoded with a nonzero size once loaded.
    dom = subprocess.run(base + ["--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120).stdout
    m = re.search(r'<body data-images="(\d+)" data-images-decoded="(\d+)"', dom)
    assert m, dom[:500]
    assert int(m.group(1)) == 6 and int(m.group(2)) == 6
    # 2. A screenshot, as a person would look at it: not blank, and the plots' colours are on it.
    shot = tmp_path / "report.png"
    subprocess.run(base + ["--window-size=1200,2600", f"--screenshot={shot}", out.as_uri()],
                   capture_output=True, text=True, timeout=120)
    assert shot.is_file()
    from PIL import Image
    px = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert px.shape[:2] == (2600, 1200)
    nonwhite = (px.sum(axis=2) < 720).mean()
    assert 0.03 < nonwhite < 0.9, nonwhite                         # text and plots, not a blank page
    # matplotlib's default blue (#1f77b4) and orange (#ff7f0e) from the roofline ceilings and bars
    for rgb in ((31, 119, 180), (255, 127, 14)):
        close = (np.abs(px - np.array(rgb)).sum(axis=2) < 30).sum()
        assert close > 200, (rgb, close)
    keep = os.environ.get("KB_REPORT_SCREENSHOT")                  # to look at it: KB_REPORT_SCREENSHOT=/tmp/x.png
    if keep:
        shutil.copy(shot, keep)
