"""scripts/before_after.py (issue 11: a refactor leaves rows, columns and figures alone): its comparison finds a
missing row, a row that is not ok, a changed column set and a separated row, and maps the norm split back."""
import importlib.util
import subprocess
import sys

import pandas as pd

from tests.helpers import ROOT

_spec = importlib.util.spec_from_file_location("before_after", ROOT / "scripts" / "before_after.py")
ba = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ba)


def _run(rows, extra_col=None):
    df = pd.DataFrame(rows, columns=["suite", "case", "variant", "dtype", "status", "median_ms"])
    if extra_col:
        df[extra_col] = 1
    return df


OLD = [("norm", "rms-4096x1024", "cpp", "float32", "ok", 1.0), ("norm", "layer-127x129", "cpp", "float32", "ok", 2.0),
       ("gemm", "1000x1000x1000", "cpp", "float32", "ok", 10.0)]
NEW = [("rmsnorm", "4096x1024", "cpp", "float32", "ok", 1.0), ("layernorm", "127x129", "cpp", "float32", "ok", 2.0),
       ("gemm", "1000x1000x1000", "cpp", "float32", "ok", 10.0)]


def test_norm_split_maps_back_and_identical_runs_compare_equal():
    res = ba.compare({"before": [_run(OLD, "norm")] * 3, "after": [_run(NEW)] * 3})
    assert res["missing"] == {"before": [], "after": []} and res["not_ok"] == []
    assert res["columns"] == {"after": (["norm"], [])}
    assert len(res["rows"]) == 3
    assert (res["rows"]["after/before"] == 1.0).all() and not res["rows"]["after_separated"].any()


def test_missing_row_not_ok_row_and_new_column_are_reported():
    new = [r for r in NEW if r[0] != "layernorm"] + [("softmax", "8x8", "cpp", "float32", "incorrect", float("nan"))]
    res = ba.compare({"before": [_run(OLD)], "after": [_run(new, "minflt_per_call")]})
    assert res["missing"]["after"] == [("norm", "layer-127x129", "cpp", "float32")]
    assert res["missing"]["before"] == [("softmax", "8x8", "cpp", "float32")]
    assert res["not_ok"] == [(("softmax", "8x8", "cpp", "float32"), "after", 0, "incorrect")]
    assert res["columns"]["after"] == ([], ["minflt_per_call"])


def test_separated_only_when_every_round_of_one_tree_is_faster():
    def rounds(ms):
        return [_run([("gemm", "1000x1000x1000", "cpp", "float32", "ok", m)]) for m in ms]
    apart = ba.compare({"before": rounds([10, 11, 12]), "after": rounds([12.5, 13, 14])})["rows"].iloc[0]
    assert apart["after_separated"] and abs(apart["after/before"] - 13 / 11) < 1e-12
    assert abs(apart["before_spread"] - 2 / 11) < 1e-12 and apart["after_rounds"] == 3
    overlap = ba.compare({"before": rounds([10, 11, 12]), "after": rounds([11.5, 13, 14])})["rows"].iloc[0]
    assert not overlap["after_separated"]


def test_markdown_names_every_row_and_the_summary():
    res = ba.compare({"before": [_run(OLD)] * 2, "after": [_run(NEW)] * 2})
    md = ba.markdown(res, ["header"])
    assert md.count("\n| norm |") == 2 and "geometric mean of the ratios **1.000**" in md


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    for args in (["--ref", "before=HEAD"], ["--ref", "a=HEAD", "--ref", "b=no-such-ref-xyz"],
                 ["--compare-only", "--ref", "a=x", "--ref", "b=y", "--out", str(tmp_path)]):
        r = subprocess.run([sys.executable, "scripts/before_after.py", *args], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
