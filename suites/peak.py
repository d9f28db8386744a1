"""Peak: what this device can do, measured, so results report % of a ceiling this machine reaches.

Two ceilings: memory bandwidth (a large tensor copy: read N + write N bytes, N well beyond the last-level
cache) and matrix throughput per dtype (a square matmul big enough to be compute-bound). After a run the
best figure of each is stored under results/peaks/<device>.json, where every later run finds it and
reports `pct_peak_measured` (and `pct_peak` too where no datasheet figure is known, as on CPUs).
"""
from __future__ import annotations

import math

import torch

from harness import env, peaks
from harness.registry import Suite


def _tolerances(case):
    s = math.sqrt(case.n) if case.op == "matmul" else 1.0
    return {"float32": (2e-5 * s, 1e-4), "bfloat16": (1e-2 * s, 1.6e-2), "float16": (2e-3 * s, 2e-3)}


def _store(rows: list[dict]) -> None:
    ok = [r for r in rows if r["status"] == "ok"]
    found: dict[str, float] = {}
    for r in ok:
        if r["case"].startswith("copy"):
            found["bw_gbs"] = max(found.get("bw_gbs", 0.0), r["gbps"])
        else:
            found[r["dtype"]] = max(found.get(r["dtype"], 0.0), r["tflops"])
    if found:
        name = ok[0]["device_name"]
        path = peaks.store_measured(name, {**found, "measured_commit": env.git_commit(),
                                           "measured_at": ok[0].get("timestamp")})
        print(f"peak: stored {', '.join(f'{k}={v:.4g}' for k, v in found.items() if isinstance(v, float))} "
              f"in {path}")


SUITE = Suite(
    name="peak",
    description="measured copy bandwidth and matmul throughput of this device (stored for % of peak)",
    baseline="torch",
    dtypes=("float32", "bfloat16", "float16"),
    tolerances=_tolerances,
    default_dtype={"cpu": "float32,bfloat16", "cuda": "bfloat16,float16,float32"},
    after_run=_store,
    compute_class="matmul",          # the bf16 matmul is held against the bf16 ceiling, not fp32's
    case_name=lambda p: f"{p['op']}-{p['n']}",
)
SUITE.add_cases("test", [dict(op="copy", n=1000), dict(op="matmul", n=129)])
# CPU: 2^27 elements (512 MiB fp32 in, 512 MiB out) go well past the caches a VM of this kind can use.
SUITE.add_cases("quick", [dict(op="copy", n=1 << 27), dict(op="matmul", n=2048)], devices=("cpu",))
SUITE.add_cases("full", [dict(op="copy", n=1 << 27), dict(op="matmul", n=4096)], devices=("cpu",))
SUITE.add_cases("quick", [dict(op="copy", n=1 << 30), dict(op="matmul", n=8192)], devices=("cuda",))
SUITE.add_cases("full", [dict(op="copy", n=1 << 30), dict(op="matmul", n=8192)], devices=("cuda",))


@SUITE.inputs
def make_inputs(case, rng):
    shape = (case.n,) if case.op == "copy" else (case.n, case.n)
    def randn():
        return torch.randn(*shape, generator=rng, device=case.device, dtype=torch.float32).to(case.dtype)
    return {"a": randn(), "b": randn() if case.op == "matmul" else None}


@SUITE.flops
def flops(case):
    return 2 * case.n ** 3 if case.op == "matmul" else 0


@SUITE.bytes
def nbytes(case):
    return (2 * case.n if case.op == "copy" else 3 * case.n * case.n) * case.itemsize


@SUITE.reference
def reference(case, a, b):
    return a.clone() if case.op == "copy" else a @ b


@SUITE.variant("torch")
def torch_peak(case, a, b):
    """a copy into a preallocated buffer, or torch.matmul"""
    if case.op == "copy":
        out = torch.empty_like(a)
        return lambda: out.copy_(a)
    return lambda: torch.matmul(a, b)
