"""Regression gate against stored runs: decisions on synthetic tables, error control, the CLI, baselines."""
from __future__ import annotations

import json
import os
import re
import sys

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import results_factory as F  # noqa: E402

from harness import gate as G  # noqa: E402
from harness import gate_stats as S  # noqa: E402
from harness.gate_md import render  # noqa: E402
from harness.gate_verdicts import GateConfig, failed  # noqa: E402


def runs(n, sigma_run=0.02, seed=0, scale=None, **kw):
    """n runs of the standard tables, each run's medians shifted by a between-run factor exp(N(0, sigma_run))."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        rows = F.standard_run(f"r{seed}-{i}", seed=seed * 1000 + 17 * i, sigma=0.01)
        for r in rows:
            f = float(np.exp(rng.normal(0, sigma_run))) * (scale or {}).get(r["variant"], 1.0)
            rows[rows.index(r)] = F.row(r["suite"], r["case"], r["variant"], r["dtype"], median_ms=r["median_ms"] * f,
                                        sigma=0.01, seed=rng.integers(1 << 30), run_id=r["run_id"],
                                        env=F.H100)
        out.append(F.frame(rows))
    return out


def gate(bases, currents, **cfg):
    return G.gate_tables(bases, currents, GateConfig(**cfg))


def _one(v, **key):
    sel = v
    for k, x in key.items():
        sel = sel[sel[k] == x]
    assert len(sel) == 1, sel
    return sel.iloc[0]


# ---------------------------------------------------------------------------------------------- statistics

def test_holm_and_bh_match_their_definitions():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # Holm: sorted 0.005*4, 0.01*3, 0.03*2, 0.04*1, made monotone
    assert S.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert S.adjust(p, "fdr") == pytest.approx([0.02, 0.04, 0.04, 0.02])
    with pytest.raises(ValueError):
        S.adjust(p, "none")


def test_noise_floor_comes_from_repeated_runs_and_never_shrinks_a_noisy_row():
    quiet = S.two_groups(np.log([1.0, 1.01, 0.99]), np.log([1.0]))
    noisy = S.two_groups(np.log([1.0, 1.3, 0.8]), np.log([1.0]))
    pool, _ = S.pooled_variance([quiet] * 10 + [noisy])
    tq, tn = S.moderated_t(quiet, pool), S.moderated_t(noisy, pool)
    assert tq.floor < 0.05 < tn.floor                     # a row's floor follows its own between-run spread
    assert tn.sd ** 2 >= noisy.s2 - 1e-12                  # a noisy row keeps (at least) its own variance


def _simulated_gate_runs(trials, rows, design, effect=None, sd=0.03, correction="holm", alpha=0.05, seed=0):
    """(runs with any false alarm, catches of the slowed row 0) over `trials` simulated gate runs. Each row has
    its own noise (sd x lognormal spread); design 'stored': 3 baseline runs + 1 current; 'paired': 6 rounds."""
    rng = np.random.default_rng(seed)
    cfg = GateConfig(correction=correction, alpha=alpha)
    from harness.gate_verdicts import blank, decide
    fa = caught = 0
    for _ in range(trials):
        rs = []
        sds = sd * np.exp(rng.normal(0, 0.4, rows))
        for i in range(rows):
            shift = np.log1p(effect) if (effect and i == 0) else 0.0
            if design == "stored":
                st = S.two_groups(rng.normal(0, sds[i], 3), rng.normal(shift, sds[i], 1))
            else:
                st = S.paired(rng.normal(shift, sds[i], 6))
            rs.append(blank(dict(suite="s", case=str(i), variant="v", dtype="f", device="cpu"), _stats=st))
        v, _ = decide(rs, cfg)
        bad = v[v["verdict"] == "regression"]["case"].tolist()
        fa += any(c != "0" for c in bad) or (not effect and bool(bad))
        caught += "0" in bad and bool(effect)
    return fa, caught


@pytest.mark.parametrize("design", ["stored", "paired"])
def test_family_wise_false_alarms_held_at_alpha_over_many_rows(design):
    fa, _ = _simulated_gate_runs(200, 40, design, sd=0.04)
    assert fa <= 0.075 * 200, fa                           # Holm over 40 rows: <= 5% of gate runs (+ chance)
    # without the correction (alpha per row), the same runs raise far more alarms: the correction is what holds
    fa_raw, _ = _simulated_gate_runs(100, 40, design, sd=0.04, alpha=0.05 * 40, correction="holm")
    assert fa_raw > max(fa, 5), (fa, fa_raw)


def test_paired_design_catches_ten_percent_among_40_rows():
    _, caught = _simulated_gate_runs(200, 40, "paired", effect=0.10, sd=0.02, seed=3)
    assert caught >= 0.9 * 200, caught
    _, caught20 = _simulated_gate_runs(100, 40, "paired", effect=0.20, sd=0.02, seed=4)
    assert caught20 == 100


# ------------------------------------------------------------------------------------ decisions (synthetic)

def test_repeated_runs_of_the_same_code_pass():
    v, summary, inc = gate(runs(3, seed=1), runs(1, seed=2))
    assert set(v["verdict"]) == {"unchanged"} and not inc
    assert not failed(v, GateConfig())
    assert summary["compared"] == 10 and summary["pooled_sd"] > 0
    assert (v["n_base"] == 3).all() and (v["n_cur"] == 1).all()


def test_slowdown_is_a_regression_and_the_output_names_the_error_control():
    v, summary, _ = gate(runs(3, seed=1), runs(1, seed=2, scale={"cuda_v2": 1.3}))
    reg = v[v["verdict"] == "regression"]
    assert set(reg["variant"]) == {"cuda_v2"} and (reg["ratio"] > 1.2).all() and (reg["p_adj"] <= 0.05).all()
    md = render(v, GateConfig(), summary, G.DESIGN_STORED, [])
    assert md.startswith("## Benchmark gate: FAIL (2 regression)")
    assert "family-wise error rate (any false alarm among the 10 compared rows) held at 5% by Holm" in md
    md = render(v, GateConfig(correction="fdr"), summary, G.DESIGN_STORED, [])
    assert "false discovery rate over the 10 compared rows" in md


def test_noisy_row_threshold_is_its_noise_floor():
    # baselines: 'triton' rows jump +-15% between runs; a +12% current run is inside their floor, but the
    # same +12% on a quiet row is a regression
    rng = np.random.default_rng(5)
    bases = runs(4, sigma_run=0.005, seed=6)
    for b in bases:
        m = b["variant"] == "triton"
        b.loc[m, "median_ms"] = b.loc[m, "median_ms"] * float(np.exp(rng.normal(0, 0.15)))
    v, _, _ = gate(bases, runs(1, sigma_run=0.005, seed=7, scale={"triton": 1.12, "torch": 1.12}))
    noisy = v[v["variant"] == "triton"]
    assert (noisy["verdict"] == "unchanged").all() and (noisy["threshold"] > 0.12).all()
    assert noisy["note"].str.contains("noise floor").any()
    assert (v[v["variant"] == "torch"]["verdict"] == "regression").all()
    assert (v["threshold"] >= 0.05).all()                  # the bar is never below the configured threshold


def test_small_significant_change_below_threshold_passes():
    v, _, _ = gate(runs(4, sigma_run=0.002, seed=1), runs(1, sigma_run=0.002, seed=2, scale={"torch": 1.03}))
    r = v[v["variant"] == "torch"]
    assert (r["verdict"] == "unchanged").all() and (r["ratio"] > 1.02).all()


def test_per_suite_threshold_and_improvement():
    b, c = runs(3, sigma_run=0.003, seed=1), runs(1, sigma_run=0.003, seed=2, scale={"torch": 1.08, "triton": 0.7})
    v, _, _ = gate(b, c)
    assert set(v[v["variant"] == "torch"]["verdict"]) == {"regression"}
    assert set(v[(v["variant"] == "triton") & (v["suite"] == "gemm")]["verdict"]) == {"improved"}
    v, _, _ = gate(b, c, suite_thresholds={"gemm": 0.10})
    assert set(v[v["variant"] == "torch"]["verdict"]) == {"unchanged"}
    assert not failed(v, GateConfig(suite_thresholds={"gemm": 0.10}))


@pytest.mark.parametrize("status", ["incorrect", "error"])
def test_broken_rows_always_fail(status):
    v, _, _ = gate([F.frame([F.row(median_ms=1.0)])], [F.frame([F.row(status=status, run_id="b")])])
    assert v.iloc[0]["verdict"] == "broken" and status in v.iloc[0]["note"]
    assert failed(v, GateConfig())
    v, _, _ = gate([F.frame([F.row(variant="x")])],
                   [F.frame([F.row(variant="x", run_id="b"), F.row(variant="new", status=status, run_id="b")])])
    assert failed(v, GateConfig()) and _one(v, variant="new")["verdict"] == "broken"


@pytest.mark.parametrize("bad", [float("nan"), 0.0, -1.0])
def test_nan_or_non_positive_times_are_broken(bad):
    cur = F.row(variant="x", run_id="b", seed=3)
    cur["median_ms"] = bad
    v, _, _ = gate([F.frame([F.row(variant="x"), F.row(variant="y")])],
                   [F.frame([cur, F.row(variant="y", run_id="b", seed=4)])])
    assert _one(v, variant="x")["verdict"] == "broken" and "median_ms" in _one(v, variant="x")["note"]
    assert failed(v, GateConfig())
    cur = F.row(variant="x", run_id="b", seed=3)
    cur["samples_ms"] = cur["samples_ms"][:-1] + [bad]
    v, _, _ = gate([F.frame([F.row(variant="x")])], [F.frame([cur])])
    assert v.iloc[0]["verdict"] == "broken" and "samples" in v.iloc[0]["note"]


def test_missing_rows_fail_by_default_and_allow_missing_relaxes():
    base = [F.row(variant="gone"), F.row(variant="now_skipped"), F.row(variant="was_error", status="error"),
            F.row(variant="same")]
    cur = [F.row(variant="now_skipped", status="skipped", run_id="b"), F.row(variant="was_error", run_id="b"),
           F.row(variant="brand_new", run_id="b"), F.row(variant="same", seed=9, run_id="b")]
    v, s, _ = gate([F.frame(base)], [F.frame(cur)])
    got = dict(zip(v["variant"], v["verdict"]))
    assert got == {"gone": "missing", "now_skipped": "skipped", "was_error": "fixed", "brand_new": "new",
                   "same": "unchanged"}
    assert failed(v, GateConfig())
    md = render(v, GateConfig(), s, "", [])
    assert "FAIL (1 missing)" in md and re.search(r"\| gone \|.*\| \*\*missing\*\* \|", md)
    assert not failed(v, GateConfig(allow_missing=True))
    assert failed(v[v["variant"] != "same"], GateConfig(allow_missing=True))   # nothing compared: fails


@pytest.mark.parametrize("manifest,why", [({"interrupted": True, "rows": 3}, "interrupted"),
                                          ({"finished": None}, "did not finish")])
def test_unfinished_current_run_fails(tmp_path, capsys, manifest, why):
    base = F.write_run(tmp_path / "base", F.standard_run("base"))
    cur = F.write_run(tmp_path / "cur", F.standard_run("cur", seed=3), manifest)
    if "finished" in manifest:
        m = json.loads((cur / "manifest.json").read_text())
        del m["finished"]
        (cur / "manifest.json").write_text(json.dumps(m))
    assert G.main(["--baseline", str(base), "--current", str(cur), "--no-step-summary"]) == 1
    out = capsys.readouterr().out
    assert "1 unfinished run(s)" in out.splitlines()[0] and why in out
    assert G.main(["--baseline", str(base), "--current", str(cur), "--no-step-summary", "--allow-missing"]) == 0


@pytest.mark.parametrize("field,value", [("device_name", "NVIDIA A100-SXM4-80GB"), ("torch", "2.14.0"),
                                         ("driver", "580.1"), ("cuda_graph", True)])
def test_different_gpu_or_software_not_compared(field, value):
    cur = F.row(median_ms=2.0, seed=1, run_id="b", **{field: value})
    v, s, _ = gate([F.frame([F.row(median_ms=1.0)])], [F.frame([cur])])
    assert v.iloc[0]["verdict"] == "not compared" and field in v.iloc[0]["note"]
    assert failed(v, GateConfig()) and "no row could be compared" in render(v, GateConfig(), s, "", [])
    if field != "device_name":
        v2, _, _ = gate([F.frame([F.row(median_ms=1.0), F.row(median_ms=1.0, seed=5, run_id="a2")])], [F.frame([cur])],
                        ignore_env=(field,))
        assert v2.iloc[0]["verdict"] == "regression"


def test_one_run_per_side_assumes_the_noise_and_says_so():
    v, s, _ = gate([F.frame(F.standard_run("a"))], [F.frame(F.standard_run("b", seed=5))])
    assert s["assumed_sd"] == 0.03 and set(v["verdict"]) == {"unchanged"}
    assert "*assumed*" in render(v, GateConfig(), s, "", [])
    v, s, _ = gate(runs(2, seed=1), runs(1, seed=2))
    assert s["assumed_sd"] is None


def test_latest_row_per_run_counts():
    old = F.row(median_ms=5.0, timestamp="2026-11-24T00:00:00+00:00")
    new = F.row(median_ms=1.0, seed=7, timestamp="2026-11-25T00:00:00+00:00")
    v, _, _ = gate([F.frame([old, new])], [F.frame([F.row(median_ms=1.0, seed=8, run_id="b")])])
    assert v.iloc[0]["verdict"] == "unchanged" and v.iloc[0]["n_base"] == 1


def test_throttled_or_contended_rows_are_flagged():
    base = [F.row(median_ms=1.0, cpu_others_pct=65.0, env=F.CPU), F.row(variant="v2", median_ms=1.0, env=F.CPU)]
    cur = [F.row(median_ms=1.2, seed=1, run_id="b", env=F.CPU, cpu_others_pct=3.0),
           F.row(variant="v2", median_ms=1.0, seed=2, run_id="b", env=F.CPU, throttled=True,
                 throttle_reasons="thermal")]
    v, s, _ = gate([F.frame(base)], [F.frame(cur)])
    r = _one(v, variant="torch_eager")
    assert r["verdict"] == "not compared" and "contended (other processes used 65%" in r["note"]
    r2 = _one(v, variant="v2")
    assert r2["verdict"] == "unchanged" and "current throttled (thermal)" in r2["note"]
    assert "**warning**: 1 compared row(s)" in render(v, GateConfig(), s, "", [])
    v, s, _ = gate([F.frame(base)], [F.frame(cur)], allow_contended=True)
    assert _one(v, variant="torch_eager")["verdict"] in ("unchanged", "regression")
    assert "**warning**: 2 compared row(s)" in render(v, GateConfig(allow_contended=True), s, "", [])


# --------------------------------------------------------------------------------------------------- CLI

def test_cli_pass_fail_markdown(tmp_path, capsys, monkeypatch):
    bdirs = []
    for i, b in enumerate(runs(3, seed=1)):
        bdirs.append(str(F.write_run(tmp_path / "results" / f"base{i}", b.to_dict("records"))))
    cur_rows = runs(1, seed=2, scale={"cuda_v2": 1.25})[0].to_dict("records")
    cur_rows[3] = F.row("softmax", "rows=8192,cols=4096", "torch_eager", status="incorrect", run_id="cur")
    cur = F.write_run(tmp_path / "results" / "cur", cur_rows)
    summary = tmp_path / "step_summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    rc = G.main(["--baseline", *bdirs, "--current", str(cur), "--markdown", str(tmp_path / "gate.md"),
                 "--json", str(tmp_path / "gate.json")])
    out = capsys.readouterr().out
    assert rc == 1
    assert out.startswith("## Benchmark gate: FAIL (1 broken, 2 regression)"), out[:200]
    assert "| **regression** |" in out and "| **broken** |" in out and "| 3/1 |" in out
    assert re.search(r"cuda_v2 \| float32 \| cuda \| [0-9.]+ \| [0-9.]+ \| \+2[0-9]\.[0-9]% \| \[1\.", out)
    assert (tmp_path / "gate.md").read_text() == out == summary.read_text()
    verdicts = json.loads((tmp_path / "gate.json").read_text())
    assert {r["verdict"] for r in verdicts} == {"regression", "broken", "unchanged"}
    rc = G.main(["--baseline", bdirs[0], bdirs[1], "--current", bdirs[2], "--no-step-summary"])
    assert rc == 0 and capsys.readouterr().out.startswith("## Benchmark gate: PASS")


def test_cli_baseline_name_and_config(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KB_RESULTS_DIR", str(tmp_path / "results"))
    b = pd.concat(runs(3, sigma_run=0.003, seed=1), ignore_index=True)
    F.write_run(tmp_path / "results" / "baselines" / "nightly", b.to_dict("records"))
    c = runs(1, sigma_run=0.003, seed=2, scale={"triton": 1.08})[0]
    F.write_run(tmp_path / "results" / "cur", c.to_dict("records"))
    cfg = tmp_path / "gate.json"
    cfg.write_text(json.dumps({"threshold": "5%", "suites": {"gemm": 0.10, "softmax": 0.10}}))
    assert G.main(["--baseline", "nightly", "--current", "cur", "--config", str(cfg)]) == 0
    assert "gemm 10%" in capsys.readouterr().out
    assert G.main(["--baseline", "nightly", "--current", "cur"]) == 1


@pytest.mark.parametrize("argv,msg", [
    (["--baseline", "nope", "--current", "nope"], "no such results"),
    (["--current", "x"], "required"),
    (["--baseline", "{b}", "--current", "{b}", "--threshold", "five"], "bad threshold"),
    (["--baseline", "{b}", "--current", "{b}", "--ignore-env", "colour"], "unknown field"),
    (["--baseline", "{b}", "--current", "{b}", "--alpha", "0.7"], "--alpha"),
    (["--baseline", "{b}", "--current", "{b}", "--correction", "none"], "invalid choice"),
    (["--baseline", "{junk}", "--current", "{b}"], "cannot read results"),
    (["--baseline", "{notres}", "--current", "{b}"], "not a results table"),
    (["--baseline", "{b}", "--current", "{other}"], "share no suite"),
])
def test_cli_bad_input_one_line_exit_2(tmp_path, capsys, argv, msg):
    b = F.write_run(tmp_path / "b", F.standard_run())
    other = F.write_run(tmp_path / "o", [F.row("norm", "x", "torch_eager", run_id="o")])
    (tmp_path / "junk.parquet").write_text("not parquet")
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "notres.parquet")
    argv = [a.format(b=b, junk=tmp_path / "junk.parquet", notres=tmp_path / "notres.parquet", other=other)
            for a in argv]
    assert G.main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1 and "Traceback" not in err


# ----------------------------------------------------------------------------------------------- baselines

def test_baseline_save_list_show_rm_and_gate_by_name(tmp_path, capsys, monkeypatch):
    from harness import baseline as B
    root = tmp_path / "results"
    monkeypatch.setenv("KB_RESULTS_DIR", str(root))
    assert B.main(["save", "nightly"]) == 2                                     # nothing to save yet
    assert "no run under" in capsys.readouterr().err
    old = F.write_run(root / "20261125-080000-cuda", F.standard_run("old"))
    new = F.write_run(root / "20261125-090000-cuda", F.standard_run("new", seed=50))
    F.write_telemetry(new, F.standard_run("new", seed=50))
    os.utime(old / "manifest.json", (1, 1))                                     # 'new' is the latest
    assert B.main(["save", "nightly"]) == 0
    assert "from new" in capsys.readouterr().out
    d = root / "baselines" / "nightly"
    assert {p.name for p in d.iterdir()} == {"results.parquet", "results.csv", "manifest.json",
                                             "telemetry.parquet", "baseline.json"}
    assert json.loads((d / "baseline.json").read_text())["rows"] == 10
    assert B.main(["save", "nightly", str(old)]) == 2                           # exists
    assert "--force" in capsys.readouterr().err
    assert B.main(["save", "nightly", str(old), "--force"]) == 0
    assert B.main(["save", "both", str(old), str(new)]) == 0                    # two runs, one baseline
    capsys.readouterr()
    assert B.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "nightly" in out and "both" in out and "20 rows" in out
    assert B.main(["show", "nightly"]) == 0 and "torch_eager" in capsys.readouterr().out
    # the gate finds a baseline by name; the results/ directory itself holds two runs (latest per row wins)
    assert G.main(["--baseline", "nightly", "--current", str(old), "--no-step-summary"]) == 0
    assert G.main(["--baseline", "nightly", "--current", str(root), "--no-step-summary"]) == 0
    capsys.readouterr()
    assert B.main(["rm", "both"]) == 0 and not (root / "baselines" / "both").exists()
    for argv in (["save", "../evil"], ["show", "nope"], ["rm", "nope"], ["frobnicate"]):
        assert B.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("bench.py baseline: error:") and err.count("\n") == 1, argv


def test_subcommands_through_bench_py(tmp_path):
    """bench.py dispatches gate/compare/report/baseline to these modules (harness/cli.py)."""
    import subprocess
    root = tmp_path / "results"
    a = F.write_run(root / "a", F.standard_run("a"))
    b = F.write_run(root / "b", F.standard_run("b", seed=77))
    env = {**os.environ, "KB_RESULTS_DIR": str(root)}
    bench = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench.py")
    if not os.path.exists(bench):
        pytest.skip("bench.py not in this checkout")

    def run(*args):
        return subprocess.run([sys.executable, bench, *args], capture_output=True, text=True, env=env, timeout=300)
    r = run("baseline", "save", "ci", str(a))
    assert r.returncode == 0, r.stderr
    r = run("gate", "--baseline", "ci", "--current", str(b), "--no-step-summary")
    assert r.returncode == 0 and "PASS" in r.stdout, r.stdout + r.stderr
    r = run("compare", str(a), str(b))
    assert r.returncode == 0 and "median_ms A/B" in r.stdout
    r = run("report", str(a), "--out", str(tmp_path / "r.html"))
    assert r.returncode == 0 and (tmp_path / "r.html").stat().st_size > 10_000
    r = run("gate", "--baseline", "missing-name", "--current", str(b))
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1


