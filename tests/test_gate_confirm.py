"""`bench.py gate --confirm N` (harness/gate_confirm.py): the screen, the re-run command, the final verdicts, and
end to end: a real bench.py run gated against fabricated baselines, its candidates re-run in this tree."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import gate as G
from harness import gate_confirm as GC
from harness import result_sets as RS
from harness.gate_verdicts import KEY, GateConfig

ROOT = Path(__file__).resolve().parent.parent


def test_rerun_argv_replaces_the_row_selection_and_keeps_the_settings(tmp_path):
    argv = ["--suite", "attention,softmax", "--device", "cpu", "--quick", "--budget", "0.3", "--variant=cpp,eager",
            "--filter", "1024", "--threads", "1", "--reset-peaks", "--resume", "--out", "/x/y", "--no-progress",
            "--allocator", "tcmalloc", "--reset-peaks", "copy", "--dtype", "float32"]
    cands = [("softmax", "1024x4096", "cpp", "float32", "cpu"), ("norm", "4096x1024", "cpp", "float32", "cpu"),
             ("softmax", "4096x1024", "torch_eager", "float32", "cpu")]
    got = GC.rerun_argv(argv, cands, tmp_path / "o")
    assert got == ["--device", "cpu", "--quick", "--budget", "0.3", "--threads", "1", "--allocator", "tcmalloc",
                   "--dtype", "float32", "--suite", "softmax,norm", "--variant", "cpp,torch_eager",
                   "--filter", "1024x4096,4096x1024", "--out", str(tmp_path / "o"), "--no-progress"]


def _table(run_id: str, medians: dict[str, float], status: str = "ok") -> pd.DataFrame:
    rows = [dict(run_id=run_id, suite="softmax", case=c, variant="cpp", dtype="float32", device="cpu",
                 status=status if c == "broken" else "ok", median_ms=m, reason="", timestamp=i)
            for i, (c, m) in enumerate(medians.items())]
    return pd.DataFrame(rows)


CASES = ["two_speed", "real", "steady", "broken"]


def _bases(rng) -> list[pd.DataFrame]:
    return [_table(f"b{i}", {c: float(np.exp(rng.normal(0, 0.01))) for c in CASES}) for i in range(3)]


def test_a_two_speed_row_is_not_confirmed_and_a_real_slowdown_is(tmp_path):
    rng = np.random.default_rng(0)
    bases = _bases(rng)
    cur = _table("c", {"two_speed": 1.6, "real": 1.25, "steady": 1.0, "broken": 1.3})
    cfg = GateConfig()
    first, _, _ = G.gate_tables(bases, [cur], cfg)
    assert set(first[first["verdict"] == "regression"]["case"]) == {"two_speed", "real", "broken"}
    cands = GC.screen(first, cfg)
    assert {k[1] for k in cands} == {"two_speed", "real", "broken"}
    confirm = [_table(f"k{i}", {"two_speed": float(np.exp(rng.normal(0, 0.01))), "real": 1.25 * (1 + 0.01 * i),
                                "broken": 1.0}, status="incorrect") for i in range(3)]
    out = GC.decide_confirmed(first, pd.concat(bases), confirm, cands, cfg)
    by = out.set_index("case")
    assert by.at["two_speed", "verdict"] == "unchanged"
    assert "not confirmed by 3 fresh run(s)" in by.at["two_speed", "note"]
    assert by.at["real", "verdict"] == "regression" and "confirmed by 3" in by.at["real", "note"]
    assert by.at["real", "n_cur"] == 3 and 1.2 < by.at["real", "ratio"] < 1.3
    assert by.at["broken", "verdict"] == "broken"                    # incorrect in a re-run fails
    assert by.at["steady", "verdict"] == "unchanged" and "screened" not in by.at["steady", "note"]
    assert out["verdict"].tolist()[:2] == ["broken", "regression"]


def test_screen_takes_slower_unchanged_rows_but_not_faster_ones():
    v = pd.DataFrame([dict(suite="s", case=c, variant="v", dtype="f", device="cpu", verdict=verdict, ratio=ratio)
                      for c, verdict, ratio in [("a", "regression", 1.3), ("b", "unchanged", 1.08),
                                                ("c", "unchanged", 1.02), ("d", "improved", 0.7),
                                                ("e", "broken", np.nan), ("f", "unchanged", np.nan)]])
    assert [k[1] for k in GC.screen(v, GateConfig())] == ["a", "b"]


def test_a_run_from_another_commit_cannot_be_confirmed_here(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    _table("c", {"x": 1.0}).to_parquet(d / "results.parquet")
    (d / "manifest.json").write_text(json.dumps({"argv": ["--suite", "softmax"], "commit": "0123456789ab"}))
    with pytest.raises(RS.BadInput, match="made by commit 0123456789ab"):
        GC.current_argv(RS.load(str(d)))
    (d / "manifest.json").write_text(json.dumps({"commit": "0123456789ab"}))
    with pytest.raises(RS.BadInput, match="no manifest with its command"):
        GC.current_argv(RS.load(str(d)))


def _bench(*args, env):
    return subprocess.run([sys.executable, str(ROOT / "bench.py"), *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=600)


def test_gate_confirm_end_to_end(tmp_path):
    """A real run R of softmax torch_eager. Gated against baselines 2.5x faster than R, R's slowdown is confirmed by
    a fresh re-run (exit 1). A current run fabricated 2.5x slower than R (a slow state of one run), gated against R's
    own times, is not confirmed by the re-run (exit 0), where the one-stage gate fails it."""
    env = {**os.environ, "KB_RESULTS_DIR": str(tmp_path / "results")}
    run = tmp_path / "results" / "r"
    r = _bench("--suite", "softmax", "--device", "cpu", "--test-shapes", "--variant", "torch_eager", "--budget",
               "0.05", "--threads", "1", "--no-progress", "--out", str(run), env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    t = pd.read_parquet(run / "results.parquet")
    assert (t["status"] == "ok").all() and len(t) >= 2

    def fake(name: str, factor: float, jitter: float = 0.0) -> str:
        d = tmp_path / "results" / name
        shutil.copytree(run, d)
        x = t.copy()
        x["median_ms"] = x["median_ms"] * factor * (1 + jitter)
        x["run_id"] = name
        x.to_parquet(d / "results.parquet")
        return str(d)
    fast = [fake(f"fast{i}", 1 / 2.5, 0.1 * (i - 1)) for i in range(3)]
    gate = ["gate", "--no-step-summary", "--allow-contended", "--confirm", "1"]
    r = _bench(*gate, "--baseline", *fast, "--current", str(run), env=env)
    assert r.returncode == 1 and "confirmed by 1 fresh run" in r.stdout and "not confirmed" not in r.stdout, \
        r.stdout[-3000:] + r.stderr[-2000:]
    same = [fake(f"same{i}", 1.0, 0.1 * (i - 1)) for i in range(3)]      # a between-run spread of 10%
    slow = fake("slow", 2.5)
    r1 = _bench("gate", "--no-step-summary", "--allow-contended", "--baseline", *same, "--current", slow, env=env)
    assert r1.returncode == 1, r1.stdout[-2000:]                   # one stage: a false alarm
    r = _bench(*gate, "--baseline", *same, "--current", slow, env=env)
    assert r.returncode == 0 and "not confirmed by 1 fresh run" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]
    reruns = list((tmp_path / "results").glob("gate-confirm-*/run-0/results.parquet"))
    assert len(reruns) == 2                                      # the re-runs are kept as ordinary runs
    assert set(pd.read_parquet(reruns[0])[KEY[:3]].apply(tuple, axis=1)) <= set(t[KEY[:3]].apply(tuple, axis=1))
