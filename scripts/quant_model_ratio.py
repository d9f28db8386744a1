"""Side-by-side CPU time of the quantized models of suite `quant`: each method's model on the suite's own cases
(prefill, decode at batch 1 and 64), one thread, one process, interleaved (round-robin over every (method, case),
`time.thread_time` per call, min and median), so that the ratios share the machine's load and a call's time
excludes the time other processes held the core (preemption), which the suite's wall clock cannot on a shared
core. The models, inputs and timed calls are the suite's (suites/quant.py `quantized`, `make_inputs`, the
variants' setup), so a figure here is the CPU time of the call the suite's row times.

    taskset -c 1 python scripts/quant_model_ratio.py [--methods none,w8a8_cpp,torchao_w8a8] [--rounds 15]
        [--cases prefill-b8-p64,decode-b1-ctx48,decode-b64-ctx48] [--dtype float32] [--model tiny] [--v2]

`--v2` adds `w8a8_cpp@v2` and `int4_g64_cpp@v2`: the same quantized models with their layers switched to the rung
below (int8 v2 `GEMM_W8A8_V2`, int4 v2 `GEMM_W4A16` on the layer's own storage), the before/after of the kernels in
one process.

Prints one line per (case, method): min and median ms per call, tokens/s at the median, the ratio of the first
method's median (`none` by default) to this one's; then the W8A8 batch-64 line of issue 15 (w8a8_cpp against
torchao_w8a8) when both ran.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this tree's suites and kernels
import quant  # noqa: E402
from harness.registry import Case, Skip  # noqa: E402
from suites import _lm  # noqa: E402
from suites import quant as sq  # noqa: E402

METHODS = "none,int8_wo,int4_g64,gptq_g64,w8a8,w8a8_cpp,int4_g64_cpp,torchao_int8_wo,torchao_w8a8"
CASES = "prefill-b8-p64,decode-b1-ctx48,decode-b64-ctx48"


def _case(name: str, model: str, dtype: str) -> Case:
    kind, b, n = name.split("-")
    params = dict(kind=kind, b=int(b[1:]), n=int(n.lstrip("pctx")), model=model)
    return Case("quant", params, "cpu", dtype, _lm.case_name(params))


def _v2(case, method: str, inputs):
    """The suite's model of `method` (a copy), its C++ layers switched to the v2 kernels, as the variant's call."""
    from quant.cpp_kernels import Int4CppLinear, W8A8CppLinear
    model = copy.deepcopy(sq.quantized(case, method))
    n = 0
    for mod in model.modules():
        if isinstance(mod, W8A8CppLinear):
            mod.kernel = "GEMM_W8A8_V2"
        elif isinstance(mod, Int4CppLinear):
            mod.w4p = None                                # Int4CppLinear.forward: v2 on the layer's own storage
        else:
            continue
        n += 1
    assert n, method
    with torch.no_grad():
        return _lm.Launcher(_lm.runner(model, case.kind, inputs["input_ids"], case.n))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--cases", default=CASES)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=3, help="timed calls per (method, case) and round")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--v2", action="store_true", help="add the cpp methods on the v2 kernels")
    a = ap.parse_args(argv)
    methods, cases = a.methods.split(","), a.cases.split(",")
    bad = [m for m in methods if m not in quant.METHODS]
    if a.v2:
        methods += [f"{m}@v2" for m in ("w8a8_cpp", "int4_g64_cpp") if m in methods]
    if bad:
        print(f"quant_model_ratio: unknown method(s) {', '.join(bad)}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    runs: dict[tuple[str, str], object] = {}
    for cname in cases:
        case = _case(cname, a.model, a.dtype)
        inputs = sq.make_inputs(case, torch.Generator().manual_seed(0))
        for m in methods:
            try:
                runs[cname, m] = _v2(case, m.removesuffix("@v2"), inputs) if m.endswith("@v2") else \
                    sq._setup(m)(case, **inputs)
            except Skip as exc:
                print(f"{cname:18s} {m:16s} skipped: {exc}")
    times: dict[tuple[str, str], list[float]] = {k: [] for k in runs}
    for key, run in runs.items():                     # warm-up: one call each
        run()
    for _ in range(a.rounds):
        for key, run in runs.items():
            for _ in range(a.calls):
                t0 = time.thread_time_ns()
                run()
                times[key].append((time.thread_time_ns() - t0) / 1e6)
    for cname in cases:
        tok = sq.tokens(_case(cname, a.model, a.dtype))
        base = statistics.median(times[cname, methods[0]]) if (cname, methods[0]) in times else None
        for m in methods:
            if (cname, m) not in times:
                continue
            t = times[cname, m]
            med = statistics.median(t)
            ratio = f"{base / med:5.2f}x" if base else "  -  "
            print(f"{cname:18s} {m:16s} min {min(t):8.3f} ms  median {med:8.3f} ms  {tok / med * 1e3:10.0f} tok/s  "
                  f"{methods[0]}/this {ratio}  n={len(t)}")
    key_a, key_b = ("decode-b64-ctx48", "w8a8_cpp"), ("decode-b64-ctx48", "torchao_w8a8")
    if key_a in times and key_b in times:
        ma, mb = statistics.median(times[key_a]), statistics.median(times[key_b])
        print(f"W8A8 batch 64 (issue 15): w8a8_cpp {ma:.3f} ms, torchao_w8a8 {mb:.3f} ms per step: {mb / ma:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
