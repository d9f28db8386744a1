"""The CPU timing regime: the allocator is a setting, its page faults are a column, the system is recorded."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import allocator, env

ROOT = Path(__file__).resolve().parent.parent

# One allocating op per call: a fresh 16 MiB tensor (4096 pages), written, then freed.
PROBE = """
import json, torch
from harness import allocator
from harness.timing import TimingConfig, measure
x = None
def call():
    return torch.empty(4 << 20).fill_(1.0)
s = measure(call, "cpu", TimingConfig(budget_s=0.2, min_samples=5, target_rel_ci=0.0))
print(json.dumps({"loaded": allocator.loaded(), **s.regime()}))
"""


def _faults(name, **extra_env):
    try:
        e = allocator.worker_env(name)
    except allocator.AllocatorError as exc:
        pytest.skip(str(exc))
    e.update(extra_env, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=e, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_page_faults_per_call_follow_the_allocator():
    """tcmalloc keeps a freed 16 MiB block for the next call (0 faults per call); glibc with a fixed mmap
    threshold maps and unmaps it every call (one fault per 4 KiB page: 4096); jemalloc 5 purges blocks above
    its 8 MiB oversize threshold at once, so it faults on every page every call too. glibc's default (a
    dynamic threshold) gives 0 or 4096 depending on its history: the regime the column exposes."""
    tc = _faults("tcmalloc")
    fixed = _faults("system", MALLOC_MMAP_THRESHOLD_="131072")
    je = _faults("jemalloc")
    assert tc["loaded"] == "tcmalloc" and je["loaded"] == "jemalloc" and fixed["loaded"] == "system"
    assert tc["minflt_per_call"] < 50
    assert fixed["minflt_per_call"] > 1000 and je["minflt_per_call"] > 1000
    assert tc["ctx_switches_per_call"] >= 0 and tc["invol_ctx_switches_per_call"] >= 0


def test_bench_restarts_under_the_allocator_and_records_it(tmp_path):
    try:
        lib = allocator.library("tcmalloc")
    except allocator.AllocatorError as exc:
        pytest.skip(str(exc))
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "bench.py", "--suite", "softmax", "--variant", "torch_eager", "--test-shapes",
                        "--no-progress", "--budget", "0.05", "--allocator", "tcmalloc", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["allocator"]["name"] == "tcmalloc" and m["allocator"]["library"] == str(lib)
    assert m["argv"][-4:] == ["--allocator", "tcmalloc", "--out", str(out)]
    import pandas as pd
    df = pd.read_parquet(out / "results.parquet")
    assert df["minflt_per_call"].notna().all() and df["ctx_switches_per_call"].notna().all()


@pytest.mark.parametrize("args,msg", [(["--allocator", "tcmalloc"], "libtcmalloc_minimal.so.4 not found"),
                                      (["--allocator", "hoard"], "unknown allocator 'hoard'")])
def test_missing_or_unknown_allocator_is_one_line_and_exit_2(args, msg):
    e = {**allocator.worker_env("system"), "KB_ALLOCATOR_DIRS": "/nonexistent", "KB_ALLOCATOR": ""}
    r = subprocess.run([sys.executable, "bench.py", "--suite", "softmax", *args], cwd=ROOT, env=e,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and msg in r.stderr, r.stderr
    if "not found" in msg:
        assert "libtcmalloc-minimal4" in r.stderr          # names the package to install


def test_regime_warns_when_threads_exceed_the_cpus_and_records_the_rest():
    info, warn = env.cpu_regime(threads=10_000)
    assert any("oversubscribed" in w for w in warn)
    assert info["torch_threads"] == 10_000 and info["cpus_allowed"] >= 1
    for key in ("affinity", "governor", "turbo", "load1", "isolated_cpus", "virtual_machine"):
        assert key in info
    _, warn1 = env.cpu_regime(threads=1)
    assert not any("oversubscribed" in w for w in warn1)
