"""`bench.py slurm` (harness/slurm.py) through submitit.

The bad-input tests run everywhere (sbatch missing is simulated with an empty PATH). The end-to-end tests
need a SLURM cluster: CI starts a real single-node one with scripts/slurm_local.sh (.ci/run); elsewhere they
skip with the reason. A 2-task job and a 2-job array: about 40 s each on 2 loaded cores.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pandas as pd
import pytest

from tests.helpers import ROOT, bench


def _cluster_reason() -> str | None:
    if shutil.which("sbatch") is None:
        return "sbatch not found: no SLURM here (scripts/slurm_local.sh start sets up a local cluster)"
    try:
        p = subprocess.run(["sinfo", "-h", "-o", "%P %t"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo failed: {exc}"
    if p.returncode != 0 or not p.stdout.strip():
        why = (p.stderr or p.stdout).strip()[:120]
        return f"no SLURM cluster answering (sinfo: {why}); scripts/slurm_local.sh start"
    if "debug" not in p.stdout:
        return "no partition 'debug' (the one scripts/slurm_local.sh sets up)"
    return None


CLUSTER = _cluster_reason()
needs_cluster = pytest.mark.skipif(CLUSTER is not None, reason=CLUSTER or "")


def _one_line_exit_2(p):
    assert p.returncode == 2, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    return lines[0]


def test_missing_sbatch_is_one_line(tmp_path):
    env_path = tmp_path / "empty-bin"
    env_path.mkdir()
    p = subprocess.run([sys.executable, str(ROOT / "bench.py"), "slurm", "--partition", "debug", "--", "--suite",
                        "softmax"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PATH": str(env_path)})
    assert "sbatch not found" in _one_line_exit_2(p)


def test_sweep_and_time_parsing():
    from harness.slurm import SlurmUsage, parse_time, sweep_values
    assert parse_time("90") == 90 and parse_time("01:30:00") == 90 and parse_time("1-00:00:30") == 1441
    with pytest.raises(SlurmUsage):
        parse_time("soon")
    assert sweep_values(["suite=gemm,softmax", "dtype=float32,bfloat16"]) == [
        ["--suite", "gemm", "--dtype", "float32"], ["--suite", "gemm", "--dtype", "bfloat16"],
        ["--suite", "softmax", "--dtype", "float32"], ["--suite", "softmax", "--dtype", "bfloat16"]]
    with pytest.raises(SlurmUsage):
        sweep_values(["suite"])


@pytest.mark.skipif(shutil.which("sbatch") is None, reason="sbatch not found: no SLURM client here")
def test_world_size_the_suite_cannot_use(tmp_path):
    p = bench("slurm", "--partition", "debug", "--tasks-per-node", "3", "--out", str(tmp_path / "o"), "--",
              "--suite", "train", timeout=120)
    assert "cannot run on 3 rank(s)" in _one_line_exit_2(p)


@needs_cluster
def test_unknown_partition_and_too_many_gpus(tmp_path):
    line = _one_line_exit_2(bench("slurm", "--partition", "nosuch", "--", "--suite", "softmax", timeout=120))
    assert "unknown partition 'nosuch'" in line and "debug" in line
    line = _one_line_exit_2(bench("slurm", "--partition", "debug", "--gpus-per-node", "8", "--", "--suite",
                                  "softmax", timeout=120))
    assert "--gpus-per-node 8" in line and "0 GPU(s)" in line


@needs_cluster
def test_two_task_job_gathers_both_ranks(tmp_path):
    out = tmp_path / "run"
    p = bench("slurm", "--nodes", "1", "--tasks-per-node", "2", "--gpus-per-node", "0", "--partition", "debug",
              "--time", "5", "--poll", "1", "--out", str(out), "--", "--suite", "collectives", "--test-shapes",
              "--filter", "all_reduce", "--budget", "0.2", "--no-auto-peak", timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "COMPLETED" in p.stdout
    df = pd.read_parquet(out / "results.parquet")
    assert sorted(df["rank"].unique()) == [0, 1] and (df["status"] == "ok").all()
    assert df["slurm_job_id"].nunique() == 1 and (df["busbw_gbps"] > 0).all()
    jobs = json.loads((out / "slurm.json").read_text())["jobs"]
    assert [j["state"] for j in jobs] == ["COMPLETED"]


@needs_cluster
def test_job_array_sweep_gathers_every_job(tmp_path):
    out = tmp_path / "run"
    p = bench("slurm", "--partition", "debug", "--gpus-per-node", "0", "--time", "5", "--poll", "1", "--out", str(out),
              "--sweep", "suite=softmax,rmsnorm", "--", "--test-shapes", "--variant", "torch_eager", "--budget", "0.05",
              "--filter", "127", "--no-auto-peak", timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "array of 2 jobs" in p.stdout
    df = pd.read_parquet(out / "results.parquet")
    assert set(df["suite"]) == {"softmax", "rmsnorm"} and set(df["job"]) == {"suite=softmax", "suite=rmsnorm"}
    assert df["slurm_job_id"].str.contains("_").all() and (df["status"] == "ok").all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"] == len(df) and {j["state"] for j in manifest["jobs"]} == {"COMPLETED"}


@needs_cluster
@pytest.mark.slow
def test_preempted_job_is_reported_and_resumed(tmp_path):
    """SIGTERM to the job's tasks (what a time limit or a preemption sends) mid-run: INTERRUPTED, then --resume."""
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "bench.py"), "slurm", "--partition", "debug", "--gpus-per-node", "0",
           "--time", "5", "--poll", "0.5", "--out", str(out), "--", "--suite", "softmax", "--test-shapes",
           "--variant", "torch_eager", "--budget", "1", "--no-auto-peak"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        csv = out / "jobs" / "job" / "results.csv"
        while time.time() < deadline and not (csv.exists() and len(pd.read_csv(csv)) >= 2):
            time.sleep(0.5)
        job_id = json.loads((out / "slurm.json").read_text())["jobs"][0]["job_id"]
        subprocess.run(["scancel", "--signal=TERM", job_id], check=True)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1 and "INTERRUPTED" in stdout and "--resume" in stderr, stdout + stderr
    kept = len(pd.read_parquet(out / "results.parquet"))
    assert 2 <= kept < 10
    p = bench("slurm", "--resume", "--out", str(out), timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 10 and df[["case", "variant"]].drop_duplicates().shape[0] == 10
