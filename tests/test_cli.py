"""Bad input: one line, the valid choices, exit code 2, no traceback. And the happy paths of the CLI."""
import pytest
import torch

from tests.helpers import bench

BAD = [
    (["--suite", "nope"], "unknown suite 'nope'; choose from: attention"),
    (["--suite", "softmax", "--variant", "nope"], "unknown variant 'nope'; choose from:"),
    (["--device", "tpu"], "unknown device 'tpu'; choose from: auto, cpu, cuda"),
    (["--suite", "softmax", "--dtype", "int7"], "unknown dtype 'int7'; choose from: float32"),
    (["--suite", "softmax", "--filter", "no-such-case"], "nothing to run matching --filter"),
    (["--suite", "all,softmax"], "--suite all cannot be combined"),
    (["--quick", "--full"], "not allowed with argument"),
    (["--threads", "0"], "--threads must be between 1 and 4096"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["gate", "--bogus"], ""),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_and_exit_2(args, message):
    p = bench(*args, timeout=120)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and "Warning" not in ln]
    assert len(lines) == 1, p.stderr
    assert message in lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_says_so():
    p = bench("--device", "cuda", timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "no CUDA GPU is visible" in p.stderr and "--device cpu" in p.stderr


def test_list_shows_every_suite_variant_and_requirement():
    p = bench("--list", timeout=120)
    assert p.returncode == 0, p.stderr
    for word in ("attention", "softmax", "norm", "gemm", "peak", "sdpa_flash", "sdpa_cudnn", "sm>=80",
                 "torch_compile", "(baseline)"):
        assert word in p.stdout, word


def test_several_suites_in_one_run_and_the_table(tmp_path):
    p = bench("--suite", "softmax,gemm", "--test-shapes", "--filter", "1x127,1x127x129", "--budget", "0.05",
              "--no-progress", "--out", str(tmp_path), timeout=300)
    assert p.returncode == 0, p.stderr
    assert "softmax" in p.stdout and "gemm" in p.stdout and "torch_matmul" in p.stdout
    assert "ok" in p.stdout and "results in" in p.stderr


def test_reset_peaks_unknown_probe_is_one_line_and_exit_2():
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "bench.py", "--suite", "softmax", "--reset-peaks", "nope"], cwd=root,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown probe 'nope'" in r.stderr
