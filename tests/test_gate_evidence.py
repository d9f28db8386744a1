"""The gate's evidence script, reduced: 2 gate runs per mode of the real bench.py, end to end.

The full evidence (20 runs per mode, the quick CPU suites) is `python scripts/gate_evidence.py`; its figures
are in docs/gate-evidence.md. This test keeps the mechanism from rotting: `bench.py ab` (worktree, two
workers, paired rounds), `bench.py` runs saved as a baseline of several runs, `bench.py gate`, the slowed
copies, and the report. About 1-3 minutes on 2 shared cores.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness.result_sets import ROOT


@pytest.mark.slow
def test_evidence_script_reduced(tmp_path):
    cache = tmp_path / "ab"
    out = tmp_path / "ev.md"
    cmd = [sys.executable, str(ROOT / "scripts" / "gate_evidence.py"), "--runs", "2", "--modes", "ab,stored",
           "--suites", "softmax", "--variants", "torch_eager", "--inject", "softmax/torch_eager=slow100:1.0",
           "--rounds", "3", "--budget", "0.03", "--stored-budget", "0.1", "--baseline-runs", "2",
           "--stored-confirm", "1", "--no-build",
           "--work", str(tmp_path / "work"), "--out", str(out)]
    load0 = os.getloadavg()[0]
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                           env={**os.environ, "KB_AB_CACHE": str(cache)})
    finally:
        for d in cache.glob("*") if cache.exists() else []:
            subprocess.run(["git", "worktree", "remove", "--force", str(d)], cwd=ROOT, capture_output=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    data = json.loads(out.with_suffix(".json").read_text())
    md = out.read_text()
    assert "| ab (bench.py's own verdicts, two stages: learned noise, prequential) | 2 |" in md
    assert "| stored (bench.py gate --confirm 1) | 2 |" in md
    assert "slowed copies" in md and "| ab, re-decided offline: loo | 2 |" in md
    assert (tmp_path / "ev-ab-slots.parquet").exists()                 # the slots, for --redecide
    assert (tmp_path / "ev-ab-confirm-slots.parquet").exists()         # the second stage's (x2 copies: candidates)
    assert json.loads((tmp_path / "work" / "ab-noise.json").read_text())["kind"] == "kbench-ab-noise"
    for mode in ("ab", "stored", "stored/one-stage", "ab/old", "ab/loo", "ab/prequential"):
        runs = data["runs"][mode]
        assert len(runs) == 2
        for run in runs:
            assert run["compared"] == 2                        # softmax quick: 2 cases of torch_eager, both compared
            copies = run["copies"]["torch_eager_slow100"]
            assert len(copies) == 2 and all(c["verdict"] in ("regression", "unchanged") for c in copies)
    ratio = data["figures"]["ab"]["torch_eager_slow100"]["median_measured_ratio"]
    busy = max(load0, os.getloadavg()[0]) > 2 * (os.cpu_count() or 1)
    if not 1.4 < ratio < 2.8:
        if busy:
            pytest.skip(f"machine overloaded (load {load0:.1f}); the +100% copy measured x{ratio:.2f}")
        pytest.fail(f"the +100% copy measured x{ratio:.2f} in ab mode")
