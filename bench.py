#!/usr/bin/env python3
"""Benchmark hand-written kernels against PyTorch baselines: `python bench.py --suite attention`.

See README.md; `python bench.py --help` and `python bench.py --list`.
"""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
# Compiler caches inside the repository's ignored .cache/, set before torch or triton is imported.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / ".cache" / "inductor"))
os.environ.setdefault("TRITON_CACHE_DIR", str(ROOT / ".cache" / "triton"))
sys.path.insert(0, str(ROOT))

if __name__ == "__main__":
    from harness.cli import main
    try:
        sys.exit(main())
    except KeyboardInterrupt as exc:   # interrupted outside the run loop (which keeps its rows itself)
        signum = getattr(exc, "signum", 2)          # SIGTERM/SIGHUP arrive as harness.runner.Interrupted
        print(f"bench.py: interrupted ({exc or 'SIGINT'})", file=sys.stderr)
        sys.exit(128 + signum)
