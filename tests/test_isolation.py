"""Isolated workers: a crash, an abort, a hang or an over-allocation is one `error` row and the run goes on.

The faulty suite (tests/faulty_suite.py) is registered through KB_EXTRA_SUITES, so bench.py itself runs it.
"""
import json
import os
import subprocess
import sys

import pytest

from harness.results import load
from harness.row import RowContext, measure_row
from harness.timing import TimingConfig
from harness.worker import WorkerPool, WorkerSpec, describe_exit, task_for, telling_line
from tests import faulty_suite
from tests.helpers import ROOT

FAULTY_ENV = {"KB_EXTRA_SUITES": "tests.faulty_suite"}


def bench_env(**extra):
    return {**os.environ, "PYTHONUNBUFFERED": "1", **FAULTY_ENV, **extra}


def test_each_fault_is_an_error_row_and_the_rows_after_it_are_measured(tmp_path):
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, str(ROOT / "bench.py"), "--suite", "faulty", "--test-shapes", "--budget",
                        "0.05", "--no-progress", "--row-timeout", "5", "--worker-memory", "1", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, env=bench_env())
    assert p.returncode == 0, p.stderr
    df = load(out).set_index("variant")
    assert list(df.index) == ["good", "segfault", "abort", "hang", "oom", "raises", "also_good"]
    assert df.loc["good", "status"] == df.loc["also_good", "status"] == "ok"      # before and after
    assert df.loc["also_good", "speedup"] > 0                                       # derived in the parent
    reasons = df.reason.to_dict()
    assert reasons["segfault"].startswith("worker crashed: SIGSEGV (signal 11)")
    assert "Segmentation fault" in reasons["segfault"]                              # from the stderr tail
    assert reasons["abort"].startswith("worker crashed: SIGABRT (signal 6)")
    assert reasons["hang"] == "timed out after 5 s (the worker was killed)"
    assert "can't allocate memory" in reasons["oom"] and "worker memory limit 1.0 GiB" in reasons["oom"]
    assert reasons["raises"] == "RuntimeError: kernel exploded"
    assert (df.drop(index=["good", "also_good"]).status == "error").all()
    log = (out / "errors.log").read_text()
    for v in ("segfault", "abort", "hang", "oom", "raises"):
        assert f"/ {v} /" in log
    assert "faulty_suite.py" in log and "in run" in log          # the worker's Python stack at the crash
    m = json.loads((out / "manifest.json").read_text())
    assert m["interrupted"] is False and m["rows"] == 7
    assert m["isolation"] == {"isolated": True, "row_timeout_s": 5.0, "worker_memory_bytes": 1 << 30}
    assert not list(out.glob(".*"))                               # no temporary file left


def test_a_killed_bench_takes_its_hanging_worker_with_it(tmp_path):
    """SIGKILL gives bench.py no chance to clean up: the worker must die by itself (PR_SET_PDEATHSIG)."""
    import signal
    import time
    mark = tmp_path / "hanging"
    p = subprocess.Popen([sys.executable, str(ROOT / "bench.py"), "--suite", "faulty", "--variant", "hang",
                          "--test-shapes", "--no-progress", "--row-timeout", "600", "--out", str(tmp_path / "r")],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=bench_env(KB_FAULTY_HANG_MARK=str(mark)))
    deadline = time.time() + 300
    while not mark.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.1)
    assert mark.exists(), "the worker never reached the hang"
    time.sleep(0.2)
    worker = int(mark.read_text())
    p.kill()
    p.wait()
    deadline = time.time() + 10
    while _alive(worker) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(worker)


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _case(n=127):
    return faulty_suite.SUITE.cases("test", "cpu", "float32")[0] if n == 127 else None


def test_worker_is_reused_across_rows_and_replaced_after_a_failure():
    suite, case = faulty_suite.SUITE, _case()
    timing = TimingConfig(budget_s=0.02, min_samples=3)
    pool = WorkerPool(WorkerSpec(device="cpu", threads=1))
    try:
        first = pool.run(task_for(suite, case, suite.variants["good"], 0, timing), timeout=120)
        pid = pool.worker.info["pid"]
        second = pool.run(task_for(suite, case, suite.variants["also_good"], 0, timing), timeout=120)
        assert first.status == second.status == "ok" and pool.started == 1 and pool.worker.info["pid"] == pid
        assert first.fields["threads"] == 1                        # the worker's thread count, set as asked
        bad = pool.run(task_for(suite, case, suite.variants["raises"], 0, timing), timeout=120)
        assert bad.status == "error" and "kernel exploded" in bad.traceback
        assert pool.started == 2                                   # replaced at once, in the background
        again = pool.run(task_for(suite, case, suite.variants["good"], 0, timing), timeout=120)
        assert again.status == "ok" and pool.worker.info["pid"] != pid
    finally:
        pool.close()


def test_a_forked_worker_measures_and_is_replaced_by_a_fresh_interpreter():
    """bench.py forks its first CPU worker (torch already imported: no second import); after a failure this
    process may run threads (progress bar, telemetry), so the replacement is a fresh interpreter."""
    suite, case = faulty_suite.SUITE, _case()
    timing = TimingConfig(budget_s=0.02, min_samples=3)
    pool = WorkerPool(WorkerSpec(device="cpu", start="fork"))
    try:
        ok = pool.run(task_for(suite, case, suite.variants["good"], 0, timing), timeout=120)
        assert ok.status == "ok" and ok.fields["max_abs_err"] >= 0
        crash = pool.run(task_for(suite, case, suite.variants["segfault"], 0, timing), timeout=120)
        assert crash.fields["reason"].startswith("worker crashed: SIGSEGV")
        assert pool.spec.start == "exec" and pool.started == 2
        assert pool.run(task_for(suite, case, suite.variants["also_good"], 0, timing), timeout=120).status == "ok"
    finally:
        pool.close()


def test_in_process_and_worker_rows_come_from_the_same_function():
    """--no-isolate calls measure_row here; the worker calls it there: the same fields, the same check."""
    suite, case = faulty_suite.SUITE, _case()
    timing = TimingConfig(budget_s=0.02, min_samples=3)
    here = measure_row(suite, case, suite.variants["good"], RowContext("cpu", 0, timing))
    pool = WorkerPool(WorkerSpec(device="cpu"))
    try:
        there = pool.run(task_for(suite, case, suite.variants["good"], 0, timing), timeout=120)
    finally:
        pool.close()
    assert here.status == there.status == "ok"
    assert set(here.fields) == set(there.fields)
    assert here.fields["max_abs_err"] == there.fields["max_abs_err"]     # same seed, same inputs, same output


def test_a_worker_that_cannot_start_is_an_error_row_not_a_hang(tmp_path):
    suite, case = faulty_suite.SUITE, _case()
    broken = tmp_path / "tree" / "harness"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("")
    (broken / "worker.py").write_text("raise SystemExit('this tree cannot run workers')\n")
    pool = WorkerPool(WorkerSpec(device="cpu", root=tmp_path / "tree"), startup_timeout=60)
    try:
        out = pool.run(task_for(suite, case, suite.variants["good"], 0, TimingConfig()), timeout=60)
    finally:
        pool.close()
    assert out.status == "error" and out.fields["reason"].startswith("worker failed to start")
    assert "this tree cannot run workers" in out.traceback


@pytest.mark.parametrize("rc,text", [(-11, "worker crashed: SIGSEGV (signal 11)"),
                                     (-9, "SIGKILL (signal 9) (killed from outside"),
                                     (3, "worker exited with status 3")])
def test_exit_descriptions(rc, text):
    assert text in describe_exit(rc)


def test_the_telling_line_of_a_stderr_tail():
    tail = 'Traceback...\n  File "x.py", line 3 in run\nRuntimeError: CUDA error: an illegal memory access\n'
    assert telling_line(tail) == "RuntimeError: CUDA error: an illegal memory access"
    assert telling_line("Fatal Python error: Aborted\n\n  File \"a.py\", line 1 in f\n") == \
        "Fatal Python error: Aborted"
