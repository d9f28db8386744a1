"""pytest-benchmark runs of the suites (not part of `pytest tests/`): `pytest benchmarks/ ...`.

Loads the harness's pytest plugin (its --kb-mode / --kb-device options) and puts the repository on sys.path.
"""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / ".cache" / "inductor"))
os.environ.setdefault("TRITON_CACHE_DIR", str(ROOT / ".cache" / "triton"))

from harness.pytest_bench import pytest_addoption, pytest_configure  # noqa: E402,F401 - plugin hooks
