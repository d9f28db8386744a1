"""Side-by-side CPU time of the C++ paged decode kernels: int8 KV against the KV in the dtype, each rung of the
ladder (`cpp`, `cpp_v1`), one thread, in one process, interleaved (round-robin over the rows, min and median
of `time.thread_time` per call), so that the ratios share the machine's load. The issue-18 targets are the
int8/bf16 ratio of the same kernel and the bandwidth against a read ceiling; bytes are the suite's (KV at its
width + scales + q + out).

    taskset -c 1 python scripts/decode_ratio.py [--ctx 2048,8192] [--b 8] [--reps 15] [--variants cpp,cpp_v1]
        [--cold] [--base-lib OLD/libkb_cpp.so]

`--cold` evicts the caches before every timed call (a 64 MiB write, untimed): what a decode step of a model sees,
the other layers' weights and KV having passed through the caches since. `--base-lib` adds the rows `cpp@base`:
the same `cpp` entry point from another build of libkb_cpp (an earlier commit), for an A/B in one process.
Every case also times `read`: a sequential read (numpy sum of float32) of as many bytes as the case's, in the
same round-robin -- the read ceiling that `% read` compares with (the stored peak of harness/peaks.py is a
streaming-store copy, not a read; there is no read probe yet).

Prints one line per (variant, case): min and median ms, GB/s at the min, % of the read row's GB/s, then
int8/native per context.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this tree's suites and kernels
from harness.registry import Case, Skip  # noqa: E402
from kernels.cpp import lib as cpp  # noqa: E402
from suites import decode  # noqa: E402


def _case(b, ctx, kv, dtype):
    p = decode._case(b, ctx, kv=kv)
    return Case("decode", p, "cpu", dtype, decode._name(p))


def _base_run(path, case, inputs):
    """`cpp` bound to another build of the library (Kernel.bind on a second Loaded): the A/B's base."""
    loaded = cpp.LIB.bind(path)
    k = cpp.DECODE_PAGED
    out = torch.empty(case.b, case.sq, case.h, case.d, dtype=inputs["q"].dtype)
    return k.bind(loaded, case, inputs, out)


def _reader(nbytes):
    buf = np.ones(max(int(nbytes) // 4, 16), dtype=np.float32)
    return lambda: float(buf.sum())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ctx", default="2048,8192")
    ap.add_argument("--b", type=int, default=8)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--variants", default="cpp,cpp_v1")
    ap.add_argument("--cold", action="store_true", help="evict the caches before every timed call")
    ap.add_argument("--base-lib", help="another libkb_cpp.so: rows `cpp@base` (its kb_cpp_decode_paged)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    names = args.variants.split(",") + (["cpp@base"] if args.base_lib else []) + ["read"]
    rows = []
    for ctx in (int(c) for c in args.ctx.split(",")):
        for kv in ("native", "int8"):
            case = _case(args.b, ctx, kv, args.dtype)
            inputs = decode.SUITE.make_inputs(case, 0)
            ref = None
            for name in names:
                if name == "read":
                    run = _reader(decode.SUITE.work(case)[1])
                elif name == "cpp@base":
                    run = _base_run(args.base_lib, case, inputs)
                else:
                    try:
                        run = decode.SUITE.variants[name].setup(case, **inputs)
                    except Skip as why:
                        print(f"{name:8s} {case.name:28s} skipped: {why}")
                        continue
                got = run()
                if name != "read":     # every kernel row gives the same answer (the suite's tests check `cpp`)
                    ref = got if ref is None else ref
                    torch.testing.assert_close(got.float(), ref.float(), atol=2e-2, rtol=2e-2)
                rows.append((name, ctx, kv, case, run, []))
    evict = np.zeros(16 << 20, dtype=np.float32)                  # 64 MiB > L2 + L3 here (1 + 32 MiB)
    for _ in range(args.reps):                    # round-robin: every row sees the same load
        for *_, run, times in rows:
            if args.cold:
                evict += 1.0
            t0 = time.thread_time()
            run()
            times.append(time.thread_time() - t0)
    best = {}
    for name, ctx, kv, case, _, times in rows:
        best[name, ctx, kv] = min(times)
    for name, ctx, kv, case, _, times in rows:
        if name != "read" and (name, ctx, kv) not in best:
            continue
        nbytes = decode.SUITE.work(case)[1]
        t = best[name, ctx, kv]
        pct = 100 * best["read", ctx, kv] / t
        print(f"{name:8s} {case.name:28s} min {t * 1e3:7.3f} ms  median {statistics.median(times) * 1e3:7.3f} ms  "
              f"{nbytes / t / 1e9:6.2f} GB/s  {pct:5.1f}% read")
    for name in names[:-1]:
        for ctx in (int(c) for c in args.ctx.split(",")):
            if (name, ctx, "native") not in best or (name, ctx, "int8") not in best:
                continue
            ratio = best[name, ctx, "native"] / best[name, ctx, "int8"]
            print(f"{name:8s} ctx{ctx}: int8 / {args.dtype} KV speedup {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
