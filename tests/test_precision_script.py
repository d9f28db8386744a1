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


def _script():
    import importlib.util
    spec = importlib.util.spec_from_file_location("precision", ROOT / "scripts" / "precision.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_spread_permutation_p_tells_a_real_difference_from_chance():
    p = _script()
    tight = [1.00, 1.01, 0.99, 1.00, 1.02, 0.98, 1.01, 0.99, 1.00, 1.00]
    wide = [1.00, 1.30, 0.75, 1.10, 0.85, 1.40, 0.90, 1.20, 0.80, 1.05]
    assert p.spread_p(tight, wide) < 0.01 and p.spread_p(wide, tight) < 0.01
    assert p.spread_p(tight, [5 * x for x in wide]) < 0.01      # each tool judged around its own median
    # the same spread at another scale is no difference at all
    assert p.spread_p(wide, [2 * x for x in wide]) > 0.9
    # two draws of one distribution: no small p (seeded, so this is deterministic)
    import random
    r = random.Random(3)
    a, b = [r.gauss(1, 0.1) for _ in range(10)], [r.gauss(1, 0.1) for _ in range(10)]
    assert p.spread_p(a, b) > 0.05
