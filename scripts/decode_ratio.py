"""Side-by-side CPU time of the C++ paged decode kernels: int8 KV against the KV in the dtype, each rung of the
ladder (`cpp`, `cpp_v1`), one thread, in one process, interleaved (round-robin over the rows, min and median
of `time.thread_time` per call), so that the ratios share the machine's load. The issue-18 target is the
int8/bf16 ratio of the same kernel; bytes are the suite's (KV at its width + scales + q + out).

    taskset -c 1 python scripts/decode_ratio.py [--ctx 2048,8192] [--b 8] [--reps 15] [--variants cpp,cpp_v1]

Prints one line per (variant, case): min and median ms, GB/s at the min, and int8/native per context.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this tree's suites and kernels
from harness.registry import Case  # noqa: E402
from suites import decode  # noqa: E402


def _case(b, ctx, kv, dtype):
    p = decode._case(b, ctx, kv=kv)
    return Case("decode", p, "cpu", dtype, decode._name(p))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ctx", default="2048,8192")
    ap.add_argument("--b", type=int, default=8)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--variants", default="cpp,cpp_v1")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = []
    for ctx in (int(c) for c in args.ctx.split(",")):
        for kv in ("native", "int8"):
            case = _case(args.b, ctx, kv, args.dtype)
            inputs = decode.SUITE.make_inputs(case, 0)
            for name in args.variants.split(","):
                v = decode.SUITE.variants[name]
                run = v.setup(case, **inputs)
                run()
                rows.append((name, ctx, kv, case, run, []))
    for _ in range(args.reps):                    # round-robin: every row sees the same load
        for *_, run, times in rows:
            t0 = time.thread_time()
            run()
            times.append(time.thread_time() - t0)
    best = {}
    for name, ctx, kv, case, _, times in rows:
        nbytes = decode.SUITE.work(case)[1]
        t = min(times)
        best[name, ctx, kv] = t
        print(f"{name:8s} {case.name:28s} min {t * 1e3:7.3f} ms  median {statistics.median(times) * 1e3:7.3f} ms  "
              f"{nbytes / t / 1e9:6.2f} GB/s")
    for name in args.variants.split(","):
        for ctx in (int(c) for c in args.ctx.split(",")):
            ratio = best[name, ctx, "native"] / best[name, ctx, "int8"]
            print(f"{name:8s} ctx{ctx}: int8 / {args.dtype} KV speedup {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
