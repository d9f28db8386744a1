"""Side-by-side CPU time of the C++ paged decode kernels: int8 KV against the KV in the dtype, each rung of the
ladder (`cpp`, `cpp_v1`), one thread, in one process, interleaved (round-robin over the rows, min and median
of `time.thread_time` per call; wall clock with --threads > 1), so that the ratios share the machine's load. The
issue-18 targets are the int8/bf16 ratio of the same kernel and the bandwidth against a read ceiling; bytes are
the suite's (KV at its width + scales + q + out).

    taskset -c 1 python scripts/decode_ratio.py [--ctx 2048,8192] [--b 8] [--reps 15] [--variants cpp,cpp_v1]
        [--cold] [--base-lib OLD/libkb_cpp.so] [--threads 1]

`--cold` evicts the caches before every timed call (a 64 MiB write, untimed): what a decode step of a model sees,
the other layers' weights and KV having passed through the caches since. `--base-lib` adds the rows `cpp@base`:
the same `cpp` entry point from another build of libkb_cpp (an earlier commit), for an A/B in one process.
Every case also times `read`: a sequential read of as many bytes as the case's, in the same round-robin, by the
peak suite's read probe (kernels/cpp/probes.cpp kb_cpp_probe_read: xor of every word, AVX-512 loads, on the same
threads; a numpy sum where the library lacks it) -- the read ceiling that `% read` compares with.
`--threads T` (both cores: `--threads 2`, unpinned, e.g. `nice -n 10 python scripts/decode_ratio.py --cold
--threads 2`) runs the kernels and the read on T threads and times wall clock (time.perf_counter), since one
thread's CPU time no longer covers the call; T = 1 (the default) times the calling thread's CPU time.

Prints one line per (variant, case): min and median ms, GB/s at the min, % of the read row's GB/s, then
int8/native per context.
"""
from __future__ import annotations

import argparse
import os
import random
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
    k = cpp.DECODE_PAGED
    loaded = cpp.LIB.bind(path, kernels=[k])       # an older build may lack entry points added since
    out = torch.empty(case.b, case.sq, case.h, case.d, dtype=inputs["q"].dtype)
    return k.bind(loaded, case, inputs, out)


def _reader(nbytes, threads):
    """A sequential read of `nbytes` on `threads` threads: the read probe, else a numpy sum (one thread)."""
    buf = torch.randn(max(int(nbytes) // 4, 16))
    try:
        from kernels.cpp import probes
        if probes.missing_reason() is None:
            out = torch.zeros(1, dtype=torch.int32)
            return probes.bound(probes.READ, a=buf, out=out, threads=threads)
    except (ImportError, AttributeError, ValueError):
        pass
    arr = buf.numpy()
    return lambda: float(arr.sum())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ctx", default="2048,8192")
    ap.add_argument("--b", type=int, default=8)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--variants", default="cpp,cpp_v1")
    ap.add_argument("--cold", action="store_true", help="evict the caches before every timed call")
    ap.add_argument("--base-lib", help="another libkb_cpp.so: rows `cpp@base` (its kb_cpp_decode_paged)")
    ap.add_argument("--threads", type=int, default=1,
                    help="threads of the kernels and the read (> 1: wall clock instead of one thread's CPU time)")
    args = ap.parse_args(argv)
    if args.threads < 1:
        print("decode_ratio: --threads must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    print(f"{args.threads} thread(s), {'CPU time of the calling thread' if args.threads == 1 else 'wall clock'}"
          f"{', caches evicted before each call' if args.cold else ''}; load average {os.getloadavg()[0]:.1f}")
    names = args.variants.split(",") + (["cpp@base"] if args.base_lib else []) + ["read"]
    rows = []
    for ctx in (int(c) for c in args.ctx.split(",")):
        for kv in ("native", "int8"):
            case = _case(args.b, ctx, kv, args.dtype)
            inputs = decode.SUITE.make_inputs(case, 0)
            ref = None
            for name in names:
                if name == "read":
                    run = _reader(decode.SUITE.work(case)[1], args.threads)
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
    for rep in range(args.reps):                  # round-robin: every row sees the same load; the order shuffled
        order = rows[:]                           # each round (a row's place in the round moved cold times by
        random.Random(rep).shuffle(order)         # 6-10% at b8 ctx2048: the last row of a case ran fastest)
        for *_, run, times in order:
            if args.cold:
                evict += 1.0
            t0 = clock()
            run()
            times.append(clock() - t0)
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
