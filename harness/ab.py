"""`bench.py ab --baseline-ref REF [--current-ref REF] --suite ...`: both trees measured in one job, interleaved.

The recommended CI gate. Both refs are checked out (git worktrees, harness/ab_trees.py) and built; a pool
of worker processes per tree (harness/ab_worker.py, --workers, 3) imports that tree's suites and kernels,
and round r of a row runs in worker r mod 3 (a process's own state is then sampled, not constant). Row by row, each
worker checks the row against the float64 reference, then the row is timed in rounds: round i measures it
once in each worker, back to back, in alternating order (ABBA: base-cur, cur-base, ...), each slot a short
fixed time budget, on inputs and a launcher built afresh in every round (a setup's luck - alignment, pages,
a library's choice of path - would otherwise bias every round of one side alike: measured here, one such row
came out 8.6x slower between two trees of the same commit when the launcher was built once per row).
Drift, thermal state and neighbours hit both sides of a round equally, so the per-round
log-ratio log(cur_i / base_i) is free of them; its spread across rounds is the noise, measured in the same job.

Decision (harness/gate_verdicts.py): paired moderated t-test per row, Holm's correction over every row of the run
(family-wise false alarm <= alpha: 0.01 by default here, 0.05 in `bench.py gate`), a row failing when it is slower
than max(threshold, its noise floor) and significant. With --noise FILE (harness/gate_noise.py) each row is tested
instead on the 20%-trimmed mean of its rounds, its noise learned from its earlier A/A runs on this device
(--learn-noise appends this run's estimates to FILE). Broken rows fail: `incorrect`/`error` in the current tree, a
worker that crashed on the row, NaN or non-positive times; rows the baseline tree has that the current one lacks
fail unless --allow-missing; an interrupted ab run fails (exit 130). Bad input (unknown ref, a tree that does not
build, no such suite in either tree) is one line and exit 2.

Second stage (harness/ab_confirm.py; --confirm-rounds, 16 by default, 0 for none): the rows the first rounds call
slower - a regression, or a mean, trimmed-mean or median ratio above the threshold, significant or not - are
measured again in worker processes started afresh and judged on the new rounds alone (25%-trimmed mean, Holm over
those rows). Only a confirmed slowdown fails; the family-wise error stays at most alpha, and a slowdown hidden in
the first rounds by one round in another speed of the machine is caught by the second.

Writes <out>/ (default results/ab-<time>/): slots.parquet (every slot of the first stage: row, round, side, order,
median, n), confirm-slots.parquet (the second stage's), verdicts.json, gate.md, manifest.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from harness import ab_confirm as C
from harness import ab_trees as T
from harness import gate_noise as N
from harness import gate_stats as S
from harness import result_sets as RS
from harness.gate import add_decision_options, config_from_args, write_outputs
from harness.gate_md import render
from harness.gate_verdicts import KEY, GateConfig, blank, decide, failed

WORKER = Path(__file__).resolve().parent / "ab_worker.py"

AB_ALPHA = 0.01        # ab's default family-wise error rate (the stored gate's is 0.05): see _parser


class WorkerDied(Exception):
    pass


class Side:
    """A worker process of one tree; restarted after a crash (plan re-sent)."""

    def __init__(self, tree: T.Tree, side: str, env: dict, log: Path):
        self.tree, self.side, self.env, self.log = tree, side, env, log
        self.proc: subprocess.Popen | None = None
        self.plan_req: dict | None = None

    def start(self) -> None:
        err = open(self.log, "a")
        self.proc = subprocess.Popen([sys.executable, str(WORKER), str(self.tree.path), self.side],
                                     cwd=self.tree.path, env=self.env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1,
                                     start_new_session=True)         # Ctrl-C reaches ab, which stops them
        err.close()

    def ask(self, req: dict) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
            if self.plan_req and req is not self.plan_req:
                self.ask(self.plan_req)
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            code = self.proc.wait()
            self.proc = None
            raise WorkerDied(f"{self.side} worker died (exit {code}; log {self.log})")
        return json.loads(line)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"op": "exit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def worker_env(tree: T.Tree, allocator_name: str = "system") -> dict:
    """The environment of a worker of `tree`, under allocator `allocator_name` (LD_PRELOAD; see choose_allocator)."""
    from harness import allocator
    env = allocator.worker_env(allocator_name, dict(os.environ))
    env.update(PYTHONPATH=str(tree.path), PYTHONUNBUFFERED="1",
               TORCHINDUCTOR_CACHE_DIR=str(tree.path / ".cache" / "inductor"),
               TRITON_CACHE_DIR=str(tree.path / ".cache" / "triton"))
    env.pop("KB_GATE_INJECT", None)           # the injection spec travels in the plan request, per side
    return env


def choose_allocator(name: str) -> str:
    """`auto`: tcmalloc where it is installed, else glibc. Measured on the 2-core EPYC (gate evidence of
    2026-11-30): under glibc the per-round log ratios of two rounds in the same worker process co-varied
    (+2.1e-2, against -1.6e-2 for rounds in different workers: a process-level state, 0 or 4096 page faults per
    call on 16 MiB outputs, that pairing cannot cancel); under tcmalloc the two were equal (-1.8e-3, -2.2e-3)."""
    from harness import allocator
    if name == "auto":
        try:
            allocator.library("tcmalloc")
            return "tcmalloc"
        except allocator.AllocatorError:
            return "system"
    try:
        allocator.worker_env(name, {})
    except allocator.AllocatorError as e:
        raise RS.BadInput(str(e)) from None
    return name


def _note(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def measure_row(idx: dict[str, int], j: int, key: dict, pools: dict[str, list[Side]], rounds: int, budget: float,
                seed: int, slots: list[dict]) -> dict:
    """Prepare the row (its index in each tree's plan) in both trees, then `rounds` rounds in alternating order,
    starting with the baseline on even rows j. Round r runs in worker r % P of each side's pool of P processes,
    so that a process's own state (its allocator's mode, say) is sampled across rounds and counts as noise
    instead of shifting every round of one side. Returns the row's outcome."""
    st = {}
    for name in ("base", "current"):
        try:
            st[name] = pools[name][0].ask({"op": "prepare", "row": idx[name], "seed": seed})
        except WorkerDied as e:
            st[name] = {"status": "crashed", "reason": str(e)}
    if st["current"]["status"] in ("incorrect", "error", "crashed"):
        return {"verdict": "broken", "note": f"current {st['current']['status']}: {st['current']['reason']}"[:300]}
    if st["current"]["status"] == "skipped":
        return {"verdict": "skipped", "note": f"skipped now ({st['current']['reason']}); baseline "
                                              f"{st['base']['status']}"[:300]}
    if st["base"]["status"] != "ok":
        return {"verdict": "fixed" if st["base"]["status"] in ("incorrect", "error") else "not compared",
                "note": f"baseline {st['base']['status']}: {st['base']['reason']}"[:300]}
    med = time_rounds(idx, j, key, pools, rounds, budget, seed, slots, prepared=True)
    if "verdict" in med:
        return med
    b, c = np.asarray(med["base"]), np.asarray(med["current"])
    lr = np.log(c) - np.log(b)
    return {"base_ms": float(np.exp(np.log(b).mean())), "cur_ms": float(np.exp(np.log(c).mean())),
            "n_base": rounds, "n_cur": rounds, "_stats": S.paired(lr), "_lr": lr}


def time_rounds(idx: dict[str, int], j: int, key: dict, pools: dict[str, list[Side]], rounds: int, budget: float,
                seed: int, slots: list[dict], prepared: bool = False, first_round: int = 0) -> dict:
    """`rounds` paired rounds of one row: {"base": [medians], "current": [medians]}, or an outcome with a
    verdict when a side fails. Round i runs in worker i % P of each pool, in ABBA order from row j's parity; a
    worker prepares (checks) the row on its first round and rebuilds its inputs on every later one. `prepared`:
    worker 0 of each side has just prepared the row. Slots are numbered from `first_round`."""
    med = {"base": [], "current": []}
    for i in range(rounds):
        r = first_round + i
        order = ("base", "current") if (r + j) % 2 == 0 else ("current", "base")
        for pos, name in enumerate(order):
            pool = pools[name]
            w = pool[i % len(pool)]
            try:
                if i == 0 and prepared:
                    ans = {"status": "ok"}                                   # prepared by the caller
                elif i < len(pool):                                          # this worker's first round of the row
                    ans = w.ask({"op": "prepare", "row": idx[name], "seed": seed})
                else:
                    ans = w.ask({"op": "rebuild"})                           # new allocations every round
                if ans["status"] == "ok":
                    ans = w.ask({"op": "measure", "budget": budget})
            except WorkerDied as e:
                ans = {"status": "crashed", "reason": str(e)}
            if ans["status"] != "ok":
                if name == "current":
                    return {"verdict": "broken", "note": f"current {ans['status']} while timing: {ans['reason']}"[:300]}
                why = f"baseline {ans['status']} while timing: {ans['reason']}"
                return {"verdict": "not compared", "note": why[:300]}
            m = ans["median_ms"]
            if not (isinstance(m, (int, float)) and math.isfinite(m) and m > 0):
                if name == "current":
                    return {"verdict": "broken", "note": f"current time {m} ms (NaN or non-positive)"}
                return {"verdict": "not compared", "note": f"baseline time {m} ms (NaN or non-positive)"}
            med[name].append(m)
            slots.append(dict(key, round=r, side=name, order=pos, median_ms=m, n=ans["n"],
                              samples_ms=ans.get("samples_ms")))
    for s in (w for pool in pools.values() for w in pool[:rounds]):
        try:
            s.ask({"op": "release"})
        except WorkerDied:
            pass
    return med


def make_pools(trees: dict[str, T.Tree], out: Path, workers: int, rounds: int, allocator_name: str,
               tag: str = "") -> dict[str, list[Side]]:
    return {n: [Side(trees[n], n, worker_env(trees[n], allocator_name), out / f"worker-{n}{tag}-{i}.log")
                for i in range(max(1, min(workers, rounds)))] for n in ("base", "current")}


def run_confirm(trees: dict[str, T.Tree], plan_req: dict, plans: dict[str, dict], candidates: list[tuple],
                rounds: int, budget: float, seed: int, out: Path, workers: int = 3, allocator_name: str = "system",
                progress: bool = True) -> tuple[dict, dict, pd.DataFrame, dict[tuple, str], bool]:
    """The confirming stage (harness/ab_confirm.py): `rounds` new paired rounds of each candidate row in worker
    processes started afresh (no state of the first stage carried over). Returns ({KEY tuple: log-ratios},
    {KEY tuple: (baseline, current) geometric mean ms}, slots, {KEY tuple: note} for candidates that could not be
    re-measured, interrupted)."""
    pools = make_pools(trees, out, workers, rounds, allocator_name, tag="-confirm")
    for s in (w for p in pools.values() for w in p):
        s.plan_req = plan_req
    keys = {n: [tuple(k[c] for c in KEY) for k in plans[n]["rows"]] for n in ("base", "current")}
    lrs: dict[tuple, np.ndarray] = {}
    ms: dict[tuple, tuple[float, float]] = {}
    failed_notes: dict[tuple, str] = {}
    slots: list[dict] = []
    interrupted = False
    try:
        for j, k in enumerate(candidates):
            if progress:
                print(f"[confirm {j + 1}/{len(candidates)}] {' '.join(k[:4])}", file=sys.stderr, flush=True)
            idx = {n: keys[n].index(k) for n in ("base", "current")}
            med = time_rounds(idx, j, dict(zip(KEY, k)), pools, rounds, budget, seed + 1, slots)
            if "verdict" in med:
                failed_notes[k] = med["note"]
                continue
            lb, lc = np.log(np.asarray(med["base"])), np.log(np.asarray(med["current"]))
            lrs[k] = lc - lb
            ms[k] = (float(np.exp(lb.mean())), float(np.exp(lc.mean())))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        for s in (w for p in pools.values() for w in p):
            s.stop()
    return lrs, ms, pd.DataFrame(slots), failed_notes, interrupted


def run_ab(trees: dict[str, T.Tree], plan_req: dict, rounds: int, budget: float, seed: int, out: Path,
           cfg: GateConfig, progress: bool = True, workers: int = 3, allocator_name: str = "system") \
        -> tuple[list[dict], pd.DataFrame, bool, dict]:
    """Measure every row in both trees; returns (row outcomes for decide, slots, interrupted, worker envs)."""
    pools = make_pools(trees, out, workers, rounds, allocator_name)
    sides = {n: p[0] for n, p in pools.items()}
    rows: list[dict] = []
    slots: list[dict] = []
    interrupted = False
    plans: dict[str, dict] = {}
    try:
        for s in (w for p in pools.values() for w in p[1:]):
            s.plan_req = plan_req                       # planned when first asked (a worker starts on demand)
        for n, s in sides.items():
            s.plan_req = plan_req
            try:
                plans[n] = s.ask(plan_req)
            except WorkerDied as e:
                raise RS.BadInput(f"the {trees[n].label} tree cannot load its suites: {e}") from None
            if "rows" not in plans[n]:
                raise RS.BadInput(f"the {trees[n].label} tree cannot load its suites: {plans[n].get('reason')}")
        unknown = [n for n in plan_req["suites"]
                   if n in plans["base"].get("unknown", ()) and n in plans["current"].get("unknown", ())]
        if unknown:
            raise RS.BadInput(f"unknown suite {', '.join(unknown)} (in neither tree)")
        bkeys = [tuple(k[c] for c in KEY) for k in plans["base"]["rows"]]
        ckeys = [tuple(k[c] for c in KEY) for k in plans["current"]["rows"]]
        if not bkeys and not ckeys:
            raise RS.BadInput(f"nothing to run: no row of {', '.join(plan_req['suites'])} selected in either tree")
        bidx = {k: j for j, k in enumerate(bkeys)}
        todo = [k for k in ckeys if k in bidx]
        for k in bkeys:
            if k not in set(ckeys):
                rows.append(blank(dict(zip(KEY, k)), verdict="missing",
                                  note="in the baseline tree, not in the current"))
        for k in ckeys:
            if k not in bidx:
                rows.append(blank(dict(zip(KEY, k)), verdict="new", note="not in the baseline tree"))
        for j, k in enumerate(todo):
            if progress:
                print(f"[{j + 1}/{len(todo)}] {' '.join(k[:4])}", file=sys.stderr, flush=True)
            key = dict(zip(KEY, k))
            res = measure_row({"base": bidx[k], "current": ckeys.index(k)}, j, key, pools, rounds, budget, seed,
                              slots)
            row = blank(key, threshold=cfg.threshold_for(k[0]))
            row.update(res)
            rows.append(row)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        for s in (w for p in pools.values() for w in p):
            s.stop()
    return rows, pd.DataFrame(slots), interrupted, plans


def _parser() -> argparse.ArgumentParser:
    p = RS.Parser(prog="bench.py ab", description=__doc__.split("\n\n")[0],
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline-ref", required=True, help="git ref of the baseline (main, a tag, a commit)")
    p.add_argument("--current-ref", help="git ref of the current side (default: this working tree as it is)")
    p.add_argument("--suite", default="attention", help="suite(s), comma-separated (default: attention)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="default cpu")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="mode", const="quick", help="quick shapes (default)")
    size.add_argument("--full", action="store_const", dest="mode", const="full")
    size.add_argument("--test-shapes", action="store_const", dest="mode", const="test")
    p.set_defaults(mode="quick")
    p.add_argument("--dtype", help="dtype(s), comma-separated (default: per suite and device)")
    p.add_argument("--filter", help="cases or variants containing one of these (comma-separated; globs ok)")
    p.add_argument("--variant", help="only these variants (comma-separated exact names)")
    p.add_argument("--rounds", type=int, default=6, help="paired rounds per row (default 6)")
    p.add_argument("--budget", type=float, default=0.1, help="seconds of timing per row, side and round (0.1)")
    p.add_argument("--threads", type=int, help="CPU threads of both workers")
    p.add_argument("--workers", type=int, default=3,
                   help="worker processes per tree; round r runs in worker r %% N (default 3)")
    p.add_argument("--allocator", default="auto",
                   help="allocator of the workers: auto (tcmalloc where installed, else system: one page-fault "
                        "regime in every worker process), system (glibc), jemalloc, tcmalloc")
    p.add_argument("--confirm-rounds", type=int, default=C.CONFIRM_ROUNDS,
                   help="rounds of the second stage: rows the first rounds call slower are re-measured in fresh "
                        "workers and judged on these rounds alone (harness/ab_confirm.py; default "
                        f"{C.CONFIRM_ROUNDS}; 0: one stage)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", metavar="FILE",
                   help="per-row noise learned from earlier A/A ab runs on this device (harness/gate_noise.py): "
                        "each row is then tested on the 20%%-trimmed mean of its rounds with the spread of that "
                        "estimate over its learned runs (rows never seen: a conservative default)")
    p.add_argument("--learn-noise", action="store_true",
                   help="append this run's per-row estimates to --noise FILE (created if absent); for A/A runs "
                        "(the same code on both sides), e.g. a nightly main-against-main job")
    p.add_argument("--out", help="output directory (default results/ab-<time>/)")
    p.add_argument("--cmake-arg", action="append", default=[],
                   help="extra CMake argument when a tree's build is first configured, e.g. -DKB_NO_CUDA=ON "
                        "(repeatable)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="build parallelism")
    p.add_argument("--no-build", action="store_true", help="use the trees' existing builds")
    p.add_argument("--no-progress", action="store_true")
    # 0.01, not the stored gate's 0.05: issue 12's goal for ab is no false alarm in 20 runs, and over the 60
    # recorded evidence runs (docs/gate-evidence.md) 0.05 gave 2 and 0.01 none, +10% still caught in 93%
    add_decision_options(p, alpha=AB_ALPHA)
    return p


def _split(s: str | None) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()] if s else []


def expand_suites(names: list[str]) -> list[str]:
    """Suite names with aliases (`norm` -> rmsnorm, layernorm) expanded, in order, once each: the workers
    look suites up by name, so an alias left as it is would select no row (the gate evidence lost its norm
    rows that way)."""
    from harness.registry import ALIASES
    out: list[str] = []
    for n in names:
        out += [m for m in ALIASES.get(n, (n,)) if m not in out]
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        a = _parser().parse_args(argv)
        a.ignore_env, a.prior_sd = "", None
        cfg = config_from_args(a)
        if a.rounds < 3 or a.budget <= 0 or a.workers < 1 or (a.confirm_rounds and a.confirm_rounds < 5):
            raise RS.BadInput("--rounds must be at least 3, --confirm-rounds 0 or at least 5, --budget positive and "
                              "--workers at least 1")
        if a.learn_noise and not a.noise:
            raise RS.BadInput("--learn-noise needs --noise FILE (the file to learn into)")
        noise = None
        if a.noise:
            try:
                noise = N.Noise.load(a.noise, missing_ok=a.learn_noise)
            except N.NoiseFileError as e:
                raise RS.BadInput(str(e)) from None
        inject = os.environ.get("KB_GATE_INJECT", "")
        parents: dict = {}
        if inject:
            from harness import inject as I
            try:
                parents = I.parents(inject)
            except ValueError as e:
                raise RS.BadInput(str(e)) from None
        trees = {"base": T.worktree(a.baseline_ref, "baseline"),
                 "current": T.worktree(a.current_ref, "current") if a.current_ref else T.working_tree()}
        if not a.no_build:
            for t in trees.values():
                T.build(t, a.cmake_arg, a.jobs)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path(a.out) if a.out else RS.results_root() / f"ab-{stamp}"
        out.mkdir(parents=True, exist_ok=True)
        plan_req = dict(op="plan", suites=expand_suites(_split(a.suite)), device=a.device, mode=a.mode,
                        dtypes=_split(a.dtype) or None,
                        filters=_split(a.filter), variants=_split(a.variant) or None, inject=inject,
                        threads=a.threads)
        alloc = choose_allocator(a.allocator)
        t0 = time.time()
        old = signal.signal(signal.SIGTERM, signal.default_int_handler)   # a CI cancel is an interrupt too
        cands, cslots = [], pd.DataFrame()
        try:
            rows, slots, interrupted, plans = run_ab(trees, plan_req, a.rounds, a.budget, a.seed, out, cfg,
                                                     not a.no_progress, a.workers, alloc)
            envs = {n: p.get("env", {}) for n, p in plans.items()}
            noise_text = ""
            dev = N.device_id(a.device) if noise is not None else ""
            if noise is not None:
                used = N.apply(rows, noise, dev, a.rounds, cfg.alpha, parents)
                noise_text = (f"; per-row noise learned from A/A runs ({a.noise}, device {dev}, {a.rounds} rounds, "
                              f"up to {noise.learned_runs(dev, a.rounds)} runs per row): 20%-trimmed mean of the "
                              f"rounds, se = max(the row's learned run-level sd, its own): {used['learned']} rows "
                              f"learned, {used['own']} by their own wider spread, {used['default']} at the default "
                              f"sd {noise.default_sd(dev, a.rounds):.1%}")
            verdicts, summary = decide(rows, cfg)
            if a.confirm_rounds and not interrupted:
                cands = C.screen(rows, cfg)
            if cands:
                hists = dflt = None
                if noise is not None:
                    hists = {k: noise.history(dev, N.history_row(dict(zip(KEY, k)), parents), a.rounds)
                             for k in cands}
                    dflt = noise.default_sd(dev, a.rounds)
                lrs2, ms2, cslots, fails, interrupted = run_confirm(trees, plan_req, plans, cands, a.confirm_rounds,
                                                               a.budget, a.seed, out, a.workers, alloc,
                                                               not a.no_progress)
                verdicts = C.decide_confirmed(verdicts, lrs2, cfg, summary["pooled_sd"], hists, dflt, fails, ms2)
        finally:
            signal.signal(signal.SIGTERM, old)
        confirm_text = (f"; second stage: the {len(cands)} row(s) the first rounds called slower (a regression, or a "
                        f"mean, trimmed-mean or median ratio above the threshold) re-measured in {a.confirm_rounds} "
                        f"new rounds in fresh workers and judged on those alone (trimmed mean, Holm over the "
                        f"candidates; harness/ab_confirm.py)" if a.confirm_rounds else "; no second stage")
        if noise is not None and a.learn_noise and not interrupted:
            N.learn(rows, noise, dev, a.rounds, parents)
            try:
                noise.save()
            except OSError as e:
                raise RS.BadInput(f"cannot write the noise file {a.noise}: {e}") from None
        incomplete = [f"ab run interrupted after {len(rows)} rows"] if interrupted else []
        design = (f"paired, interleaved in one job: {a.rounds} rounds per row, ABBA order, {a.budget:g} s per "
                  f"slot, round r in worker process r mod {min(a.workers, a.rounds)} of each tree, allocator "
                  f"{alloc}; per-round log(current/baseline)" + noise_text + confirm_text)
        header = [f"- baseline: {T.describe(trees['base'])}", f"- current: {T.describe(trees['current'])}",
                  f"- load average {os.getloadavg()[0]:.1f} at the end on {os.cpu_count()} CPUs; "
                  f"{time.time() - t0:.0f} s of measuring"]
        md = render(verdicts, cfg, summary, design, header, incomplete, n_label="rounds")
        cfg_fail = failed(verdicts, cfg, incomplete) or interrupted
        if len(slots):
            slots.to_parquet(out / "slots.parquet", index=False)
        if len(cslots):
            cslots.to_parquet(out / "confirm-slots.parquet", index=False)
        (out / "gate.md").write_text(md)
        verdicts.to_json(out / "verdicts.json", orient="records", indent=1)
        (out / "manifest.json").write_text(json.dumps(dict(
            kind="ab", argv=sys.argv, baseline=vars(trees["base"]) | {"path": str(trees["base"].path)},
            current=vars(trees["current"]) | {"path": str(trees["current"].path)}, rounds=a.rounds,
            budget_s=a.budget, confirm_rounds=a.confirm_rounds, candidates=[list(k) for k in cands], workers=envs,
            allocator=alloc, inject=inject or None, interrupted=interrupted,
            finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), failed=bool(cfg_fail)),
            indent=2, default=str))
    except RS.BadInput as e:
        print(f"bench.py ab: error: {e}", file=sys.stderr)
        return 2
    rc = write_outputs(md, verdicts, a, "bench.py ab")
    if interrupted:
        return 130
    return rc or (1 if cfg_fail else 0)


if __name__ == "__main__":
    sys.exit(main())
