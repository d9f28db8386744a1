"""scripts/precision.py (issue 23's run-to-run spread against adaptive_autorange) runs end to end: a reduced run
over the `norm` alias (it broke when norm was split into rmsnorm and layernorm, and nothing noticed)."""
import subprocess
import sys

import pandas as pd

from tests.helpers import ROOT


def test_precision_script_reduced(tmp_path):
    out = tmp_path / "p.csv"
    r = subprocess.run([sys.executable, "scripts/precision.py", "--rounds", "2", "--budget", "0.02", "--threads", "1",
                        "--filter", "norm/torch_eager", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    df = pd.read_csv(out)
    assert set(df["suite"]) == {"rmsnorm", "layernorm"} and (df["rounds"] == 2).all()
    assert (df["suite_median_ms"] > 0).all() and (df["timer_median_ms"] > 0).all()
    assert df["suite_spread_pct"].notna().all() and df["timer_spread_pct"].notna().all()
