"""bench.py under torchrun (harness/distributed.py), the collectives and train suites.

The default run (about 60 s on 2 loaded cores) launches one real 2-rank torchrun job (gloo) and checks the merged
run directory; the failure modes (a rank that hangs, a rank that dies) launch one job each and are
slow-marked (make test-slow, about 40 s each).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import ROOT

TORCHRUN = Path(sys.executable).with_name("torchrun")


def torchrun(out: Path, *args: str, nproc: int = 2, timeout: float = 400, extra_env: dict | None = None):
    if not TORCHRUN.exists():
        pytest.skip(f"torchrun not found beside {sys.executable}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "KB_AUTO_PEAK": "0", **(extra_env or {})}
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", str(nproc), str(ROOT / "bench.py"),
           "--no-progress", "--out", str(out), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    """One 2-rank job: collectives (all_reduce, all_gather, reduce_scatter at the test sizes) and train (DDP, FSDP2)."""
    out = tmp_path_factory.mktemp("dist") / "run"
    p = torchrun(out, "--suite", "collectives,train", "--test-shapes", "--budget", "0.2", "--rank-timeout", "120",
                 "--filter", "all_reduce,all_gather,reduce_scatter,broadcast,ddp,fsdp2")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return out, p


def test_two_ranks_one_merged_table(two_rank_run):
    out, _ = two_rank_run
    df = pd.read_parquet(out / "results.parquet")
    assert sorted(df["rank"].unique()) == [0, 1]
    assert set(df["world_size"]) == {2} and set(df["local_rank"]) == {0, 1}
    assert df["host"].notna().all() and df["run_id"].nunique() == 1
    per_rank = df.groupby("rank").size()
    assert per_rank[0] == per_rank[1] == len(df) // 2            # the same plan on both ranks
    assert (df["status"] == "ok").all(), df[df["status"] != "ok"][["case", "variant", "rank", "reason"]]
    # lockstep: both ranks made the same number of samples of every collective row
    coll = df[df["suite"] == "collectives"].pivot_table(index="case", columns="rank", values="n")
    assert (coll[0] == coll[1]).all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["rank"] for r in manifest["ranks"]] == [0, 1]
    assert all(r["status"] == "ok" and r["telemetry"]["source"] for r in manifest["ranks"])
    assert manifest["world_size"] == 2 and manifest["backend"] == "gloo"
    tel = pd.read_parquet(out / "telemetry.parquet")
    assert set(tel["rank"].dropna().astype(int)) == {0, 1}          # per-rank telemetry samples


def test_collectives_busbw_as_nccl_tests(two_rank_run):
    out, _ = two_rank_run
    df = pd.read_parquet(out / "results.parquet")
    c = df[df["suite"] == "collectives"]
    assert set(c["config"]) == {"gloo"} and (c["max_abs_err"] == 0).all()   # exact on integer-valued inputs
    algbw = c["bytes"] / (c["median_ms"] / 1e3) / 1e9
    factor = c["case"].str.split("-").str[0].map({"all_reduce": 1.0, "all_gather": 0.5, "reduce_scatter": 0.5,
                                                   "broadcast": 1.0})        # 2(n-1)/n, (n-1)/n, 1 for n = 2
    assert ((c["busbw_gbps"] - algbw * factor).abs() <= 1e-9 * algbw).all()
    assert ((c["gbps"] - algbw).abs() <= 1e-9 * algbw).all()


def test_ddp_and_fsdp2_match_one_process(two_rank_run):
    out, _ = two_rank_run
    df = pd.read_parquet(out / "results.parquet")
    t = df[df["suite"] == "train"]
    assert set(t["variant"]) == {"ddp", "fsdp2"} and (t["status"] == "ok").all()
    # the checked step (loss + every gradient) matched the float64 one-process step on the global batch
    assert (t["max_abs_err"] < 2e-5).all()
    assert (t["quality_delta"].abs() < 1e-4).all() and (t["quality_metric"] == "train_loss").all()
    assert (t["tokens_per_s"] > 0).all()


def test_single_process_collectives_are_skipped_with_the_reason():
    from harness.registry import all_suites
    suite = all_suites()["collectives"]
    case = suite.cases("test")[0]
    assert "world_size >= 2" in suite.variants["torch_dist"].requires.missing(case)
    train = all_suites()["train"]
    tcase = train.cases("test")[0]
    assert "world_size >= 2" in train.variants["ddp"].requires.missing(tcase)
    assert train.variants["single"].requires.missing(tcase) is None


def test_world_size_the_suite_cannot_use_is_refused(monkeypatch, capsys):
    from harness import cli
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert cli.main(["--suite", "train", "--test-shapes", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot run on 3 rank(s)" in err[0] and "split evenly" in err[0]


def test_more_ranks_than_gpus_is_refused(monkeypatch):
    from harness import distributed
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert "only 2 GPU(s) visible" in distributed.pin_device("auto")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,5,7")
    assert distributed.pin_device("auto") is None and os.environ["CUDA_VISIBLE_DEVICES"] == "7"


class _FakeLockstep:
    """Another rank that always wants one more sample and ends the warm-up late: the loop must follow it."""

    def __init__(self):
        self.decisions = 0

    def all(self, flag):
        self.decisions += 1
        return False                      # the other rank has not converged / not warmed up

    def any(self, flag):
        self.decisions += 1
        return flag

    def max(self, x):
        return max(x, 7)                  # the other rank wants 7 calls per sample


def test_timing_loop_follows_the_other_ranks():
    from harness.timing import TimingConfig, measure
    calls = [0]

    def fn():
        calls[0] += 1
    lock = _FakeLockstep()
    cfg = TimingConfig(warmup_s=0.0, budget_s=0.05, min_samples=3, min_sample_s=1e-9, target_rel_ci=1.0)
    stats = measure(fn, "cpu", cfg, lockstep=lock)
    assert stats.calls_per_sample == 7                 # agreed, not this rank's own 1
    assert stats.stop_reason == "budget"               # never 'converged': the other rank was not
    assert lock.decisions > stats.n
    alone = measure(fn, "cpu", cfg)
    assert alone.stop_reason == "converged" and alone.calls_per_sample == 1


@pytest.mark.slow
def test_a_hung_rank_is_reported_not_waited_for(tmp_path):
    out = tmp_path / "run"
    p = torchrun(out, "--suite", "dist_faulty", "--variant", "good,rank1_hangs", "--rank-timeout", "8",
                 extra_env={"KB_EXTRA_SUITES": "tests.dist_faulty_suite"}, timeout=300)
    assert p.returncode != 0
    assert "rank 1" in p.stderr and "no report within 8 s" in p.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["ranks"][1]["status"].startswith("no report") and manifest["ranks"][1]["rows"] == 1
    df = pd.read_parquet(out / "results.parquet")
    assert len(df[df["rank"] == 1]) == 1                     # rank 1's row before it hung is kept
    hung = df[(df["rank"] == 0) & (df["variant"] == "rank1_hangs")]
    assert hung["status"].tolist() == ["error"] and "Timed out" in hung["reason"].iloc[0]


@pytest.mark.slow
def test_a_dead_rank_is_reported_and_rows_kept(tmp_path):
    out = tmp_path / "run"
    p = torchrun(out, "--suite", "dist_faulty", "--variant", "good,rank1_dies", "--rank-timeout", "60",
                 extra_env={"KB_EXTRA_SUITES": "tests.dist_faulty_suite"}, timeout=300)
    assert p.returncode != 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["ranks"][1]["status"].startswith("no report"), manifest["ranks"]
    df = pd.read_parquet(out / "results.parquet")
    assert set(df[df["variant"] == "good"]["rank"]) == {0, 1}


@pytest.mark.slow
def test_resume_under_torchrun_measures_only_missing_rows(tmp_path):
    out = tmp_path / "run"
    common = ("--suite", "collectives", "--test-shapes", "--budget", "0.1", "--rank-timeout", "120")
    p = torchrun(out, *common, "--filter", "all_reduce")
    assert p.returncode == 0, p.stderr[-2000:]
    first = pd.read_parquet(out / "results.parquet")
    p = torchrun(out, *common, "--filter", "all_reduce,broadcast", "--resume")
    assert p.returncode == 0, p.stderr[-2000:]
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 2 * len(first) and not df.duplicated(["case", "rank"]).any()
    kept = df[df["case"].str.startswith("all_reduce")].sort_values(["case", "rank"])
    assert kept["timestamp"].tolist() == first.sort_values(["case", "rank"])["timestamp"].tolist()
    assert set(df[df["case"].str.startswith("broadcast")]["rank"]) == {0, 1}
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["sessions"]) == 2


def test_shard_splits_kernel_rows_and_keeps_spanning_rows_on_every_rank():
    from types import SimpleNamespace as NS

    from harness import distributed
    kernel, spanning = NS(distributed=None), NS(distributed=lambda w: None)
    plan = [NS(suite=kernel, i=i) for i in range(5)] + [NS(suite=spanning, i=5)]
    d = [NS(rank=r, world_size=2) for r in (0, 1)]
    mine = [[p.i for p in distributed.shard(plan, d[r], "shard")] for r in (0, 1)]
    assert mine == [[0, 2, 4, 5], [1, 3, 5]]
    assert distributed.shard(plan, d[1], "same") == plan
