"""harness.pytest_bench: suite cases as pytest-benchmark tests, checked first, gated by --benchmark-compare-fail."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness import pytest_bench as PB
from harness import registry
from harness.registry import Requires, Suite

ROOT = Path(__file__).resolve().parent.parent


def _toy_suite(wrong: bool):
    s = Suite(name="toy", description="x*2", baseline="good", tolerances={"float32": (1e-6, 1e-6)})
    s.add_cases("test", [dict(n=127), dict(n=1000)])
    s.inputs(lambda case, rng: {"x": torch.randn(case.n, generator=rng, device=case.device)})
    s.flops(lambda case: case.n)
    s.bytes(lambda case: 8 * case.n)
    s.reference(lambda case, x: x * 2)
    s.variant("good")(lambda case, x: (lambda: x * 2))
    s.variant("bad")(lambda case, x: (lambda: x * 2 + (1e-3 if wrong else 0)))
    s.variant("gpu_only", requires=Requires(devices=("cuda",)))(lambda case, x: (lambda: x * 2))
    return s


class FakeBenchmark:
    """What run_case uses of pytest-benchmark's fixture."""

    def __init__(self):
        self.extra_info = {}
        self.stats = None

    def __call__(self, fn):
        for _ in range(5):
            out = fn()
        self.stats = type("S", (), {"stats": type("T", (), {"median": 1e-4})()})()
        return out


@pytest.fixture
def toy(monkeypatch):
    suite = _toy_suite(wrong=True)
    monkeypatch.setattr(registry, "get_suite", lambda name: suite)
    return suite


def test_params_ids(toy):
    ids = [p.id for p in PB.bench_params("toy", mode="test", device="cpu")]
    assert ids == ["toy/n=127/float32/good", "toy/n=127/float32/bad", "toy/n=127/float32/gpu_only",
                   "toy/n=1000/float32/good", "toy/n=1000/float32/bad", "toy/n=1000/float32/gpu_only"]


def test_run_case_checks_times_and_records(toy):
    good, bad, gpu = [p.values[0] for p in PB.bench_params("toy", mode="test", device="cpu")][:3]
    b = FakeBenchmark()
    PB.run_case(b, good)
    info = b.extra_info
    assert info["suite"] == "toy" and info["variant"] == "good" and info["flops"] == 127
    assert info["gbps"] == pytest.approx(8 * 127 / 1e-4 / 1e9)
    assert info["tel_source"] == "cpu" and "throttled" in info
    json.dumps(info)                                            # pytest-benchmark stores it as JSON
    with pytest.raises(pytest.fail.Exception, match="incorrect against the float64 reference"):
        PB.run_case(FakeBenchmark(), bad)
    with pytest.raises(pytest.skip.Exception, match="cuda"):
        PB.run_case(FakeBenchmark(), gpu)


def _pytest(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(ROOT / "benchmarks" / "test_suites_bench.py"), "-k", "softmax and torch_eager",
                           "--kb-mode", "test", "--kb-device", "cpu", "--benchmark-max-time=0.05",
                           "--benchmark-min-rounds=5", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


def test_example_file_and_compare_fail(tmp_path):
    store = f"file://{tmp_path / 'store'}"
    r = _pytest("--benchmark-autosave", f"--benchmark-storage={store}")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    from harness.registry import get_suite
    shapes = {c.name for c in get_suite("softmax").cases("test", "cpu")}     # the odd test shapes of softmax
    assert f"{len(shapes)} passed" in r.stdout
    saved = glob.glob(str(tmp_path / "store" / "*" / "0001_*.json"))
    assert len(saved) == 1
    data = json.loads(Path(saved[0]).read_text())
    names = {b["extra_info"]["case"] for b in data["benchmarks"]}
    assert names == shapes and {"1x127", "129x1000", "127x4099", "1000x129", "3x1"} <= names
    # Make the stored run look 100x faster than anything measurable: the comparison must fail the session.
    for b in data["benchmarks"]:
        for k in ("min", "max", "mean", "median", "q1", "q3", "iqr", "stddev"):
            b["stats"][k] = b["stats"][k] / 100
    Path(saved[0]).write_text(json.dumps(data))
    r = _pytest("--benchmark-compare=0001", "--benchmark-compare-fail=median:5%", f"--benchmark-storage={store}")
    assert r.returncode != 0 and "Performance has regressed" in r.stdout + r.stderr, r.stdout[-2000:]
