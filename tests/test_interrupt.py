"""Ctrl-C during a run keeps every row measured so far, in complete files, and exits 130."""
import json
import os
import signal
import subprocess
import sys
import time

from harness.results import load
from tests.helpers import ROOT


def test_sigint_keeps_rows(tmp_path):
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, str(ROOT / "bench.py"), "--suite", "attention", "--test-shapes",
                          "--dtype", "float32,bfloat16", "--no-progress", "--budget", "0.5", "--out", str(out)],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            if len(load(out)) >= 3:
                break
        except (FileNotFoundError, OSError, ValueError):
            pass
        time.sleep(0.2)
    else:
        p.kill()
        raise AssertionError("no rows appeared")
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stderr
    assert "Traceback" not in stderr
    df = load(out)
    m = json.loads((out / "manifest.json").read_text())
    assert m["interrupted"] is True and m["rows"] == len(df) >= 3
    assert len(df) < 2 * 5 * 6                      # it really stopped early
    assert "interrupted" in stderr
