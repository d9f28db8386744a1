"""One side of `bench.py ab`: a process that measures rows of ONE tree, on request, over a pipe.

    python <current tree>/harness/ab_worker.py TREE SIDE          (started by harness/ab.py, cwd = TREE)

This file always comes from the *current* tree, but imports the suites, kernels and timing of TREE, which may
be an older commit that has never heard of `bench.py ab`. So it relies only on what every tree has had since
the harness began: harness.registry (all_suites, Suite.variants/cases/make_inputs/compute_reference/
tolerance/default_dtype/dtypes/baseline), harness.timing (measure, TimingConfig, sync) and harness.check
(compare; a float64 allclose stands in where it is missing). The slowdown injection (harness/inject.py) is
loaded by path from beside this file, for the same reason.

Protocol: one JSON object per line on stdin, one JSON answer per line on a private copy of the original
stdout (fd 1 is pointed at stderr, so whatever a kernel or compiler prints cannot corrupt the answers).
    {"op": "plan", "suites": [...], "device", "mode", "dtypes", "filters", "variants", "inject", "threads"}
        -> {"rows": [{"suite", "case", "variant", "dtype", "device"}, ...], "env": {...}}
    {"op": "prepare", "row": i, "seed": s}    check row i against the float64 reference on fresh inputs, then
        -> {"status": "ok" | "incorrect" | "error" | "skipped", "reason"}     build its launcher on other inputs
    {"op": "rebuild"}                         fresh timing inputs and launcher for the prepared row
    {"op": "measure", "budget": seconds}      time the prepared launcher -> {"median_ms", "n", "samples_ms"}
    {"op": "release"}                         drop the launcher and its inputs
Errors inside a request are answers ({"status": "error", "reason"}), never a dead worker; a crash (a
segfaulting kernel) is seen by harness/ab.py as a closed pipe, and it starts a fresh worker.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import gc
import importlib.util
import json
import os
import platform
import sys
import traceback
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def _match(pattern: str, name: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) if any(c in pattern for c in "*?[") else pattern in name


def _seed(seed: int, *parts) -> int:
    return (seed * 1_000_003 + zlib.crc32("/".join(map(str, parts)).encode())) % (2**63 - 1)


def _allclose(out, ref, atol, rtol):
    import torch
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(ref.shape):
        return False, f"output {type(out).__name__} {getattr(out, 'shape', '')} != reference {tuple(ref.shape)}"
    o, r = out.detach().to("cpu", torch.float64), ref.detach().to("cpu", torch.float64)
    bad = ((o - r).abs() > atol + rtol * r.abs()) | (torch.isnan(o) & ~torch.isnan(r))
    return (not bool(bad.any())), f"{int(bad.sum())}/{o.numel()} elements outside atol={atol:g} rtol={rtol:g}"


class Worker:
    def __init__(self, tree: str, side: str):
        self.tree, self.side = tree, side
        self.rows: list = []
        self.launcher = self._inputs = self._timed = None
        self.device = "cpu"

    def plan(self, req: dict) -> dict:
        import torch

        from harness.registry import all_suites
        if req.get("threads"):
            torch.set_num_threads(int(req["threads"]))
        self.device = req["device"]
        suites = all_suites()
        if req.get("inject"):
            _own("inject").apply(suites, req["inject"], delays=self.side == "current")
        self.rows, keys = [], []
        unknown = [n for n in req["suites"] if n not in suites]
        for name in req["suites"]:
            if name not in suites:
                continue                                   # a suite this tree lacks: its rows are absent
            s = suites[name]
            variants = sorted(s.variants.values(), key=lambda v: v.name != s.baseline)
            if req.get("variants"):
                variants = [v for v in variants if v.name in req["variants"]]
            dtypes = req.get("dtypes") or s.default_dtype[self.device].split(",")
            for dtype in [d for d in dtypes if d in s.dtypes]:
                for case in s.cases(req["mode"], self.device, dtype):
                    for v in variants:
                        f = req.get("filters") or []
                        if f and not any(_match(p, case.name) or _match(p, v.name) for p in f):
                            continue
                        self.rows.append((s, case, v))
                        keys.append(dict(suite=s.name, case=case.name, variant=v.name, dtype=dtype,
                                         device=self.device))
        import harness
        env = {"harness": os.path.dirname(os.path.abspath(harness.__file__)), "torch": torch.__version__,
               "python": platform.python_version(), "threads": torch.get_num_threads(),
               "allocator": _own("allocator").loaded()}
        return {"rows": keys, "env": env, "unknown": unknown}

    def prepare(self, req: dict) -> dict:
        self.release({})
        s, case, v = self.rows[req["row"]]
        missing = v.requires.missing(case)
        if missing:
            return {"status": "skipped", "reason": missing}
        try:
            from harness.registry import Skip
        except ImportError:                                # pragma: no cover - every tree has it
            Skip = ()                                       # noqa: N806
        try:
            from harness.timing import sync
            seed = req.get("seed", 0)
            inputs = s.make_inputs(case, _seed(seed, s.name, case.name, case.dtype_name, v.name, "check"))
            ref = s.compute_reference(case, inputs)
            out = v.setup(case, **inputs)()
            sync(self.device)
            atol, rtol = s.tolerance(case)
            try:
                from harness.check import compare
                res = compare(out, ref, atol, rtol)
                ok, why = res.ok, res.message
            except ImportError:
                ok, why = _allclose(out, ref, atol, rtol)
            del inputs, ref, out
            if not ok:
                return {"status": "incorrect", "reason": why[:500]}
            self._timed = (s, case, v, seed)
            return self.rebuild({})
        except Skip as exc:
            return {"status": "skipped", "reason": str(exc)}
        except Exception as exc:                           # noqa: BLE001 - a failing kernel is an answer
            traceback.print_exc()
            return {"status": "error", "reason": _first_line(exc)}

    def rebuild(self, req: dict) -> dict:
        """Fresh timing inputs and launcher for the prepared row (same seed, new allocations): done every round,
        so that what one setup happens to get (alignment, pages, a kernel's choice of path) is sampled anew
        each round instead of biasing every round of one side the same way."""
        s, case, v, seed = self._timed
        self.launcher = self._inputs = None
        gc.collect()
        try:
            inputs = s.make_inputs(case, _seed(seed, s.name, case.name, case.dtype_name, v.name, "time"))
            self.launcher = v.setup(case, **inputs)
        except Exception as exc:                           # noqa: BLE001
            traceback.print_exc()
            return {"status": "error", "reason": _first_line(exc)}
        self._inputs = inputs
        return {"status": "ok", "reason": None}

    def measure(self, req: dict) -> dict:
        from harness.timing import TimingConfig, measure
        fields = {f.name for f in dataclasses.fields(TimingConfig)}
        want = dict(budget_s=float(req["budget"]), target_rel_ci=0.0, min_samples=5, warmup_s=0.02)
        cfg = TimingConfig(**{k: x for k, x in want.items() if k in fields})
        try:
            st = measure(self.launcher, self.device, cfg)
        except Exception as exc:                           # noqa: BLE001
            traceback.print_exc()
            return {"status": "error", "reason": _first_line(exc)}
        return {"status": "ok", "median_ms": float(st.median_ms), "n": int(st.n),
                "samples_ms": [float(x) for x in st.samples_ms]}

    def release(self, req: dict) -> dict:
        self.launcher = self._inputs = None
        gc.collect()
        if self.device == "cuda":
            import torch
            torch.cuda.empty_cache()
        return {"status": "ok"}


def _own(name: str):
    """Module harness/<name>.py of THIS tree (the measured tree may predate it), loaded by path under its own name."""
    spec = importlib.util.spec_from_file_location(f"kb_ab_{name}", os.path.join(HERE, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    tree, side = os.path.abspath(sys.argv[1]), sys.argv[2]
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)                                          # stray prints go to stderr, not into the protocol
    sys.stdout = sys.stderr
    os.chdir(tree)
    sys.path[:] = [tree] + [p for p in sys.path if os.path.abspath(p or ".") not in (HERE, tree)]
    w = Worker(tree, side)
    for line in sys.stdin:
        req = json.loads(line)
        op = req.get("op")
        if op == "exit":
            break
        try:
            ans = getattr(w, op)(req)
        except Exception as exc:                           # noqa: BLE001 - bad request or broken tree
            traceback.print_exc()
            ans = {"status": "error", "reason": _first_line(exc)}
        answers.write(json.dumps(ans) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
