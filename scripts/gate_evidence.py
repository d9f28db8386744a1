#!/usr/bin/env python3
"""Evidence for the regression gate, reproduced end to end with the real `bench.py` (issue 12).

For each mode it makes N gate runs of the same code in which one variant has test-only copies that are
slowed by a calibrated busy-wait (harness/inject.py; default softmax/torch_eager +10% and +20%), so one set
of runs yields both figures:

- the family-wise false-alarm rate: the share of gate runs in which ANY other row (all the untouched rows of
  the suites: an A/A comparison) failed the gate;
- the catch rate: the share of slowed rows (each case of each copy) that the gate called a regression.

Modes:
  ab      `bench.py ab --baseline-ref HEAD` (the working tree against its own commit: identical suites and
          kernels), N times; the baseline tree is built once and reused.
  stored  `bench.py` K times with the copies undelayed, saved as one baseline of K runs
          (`bench.py baseline save`); then `bench.py` N times with the delays, each gated with `bench.py gate
          --confirm M` (the rows called slower re-run M times; --stored-confirm, default 3) and, for the
          side-by-side, gated again in one stage (`stored/one-stage`).

In `ab` mode bench.py ab runs its two stages (the rows the first rounds call slower re-measured in fresh
workers, harness/ab_confirm.py; --confirm-rounds); the offline re-decisions below are of the first stage's
rounds (its slots), so `ab/old` is the one-stage rule on the same measurements.

In `ab` mode each run learns into WORK/ab-noise.json (emptied first; `bench.py ab --noise --learn-noise`) and
is gated on the runs before it; afterwards every run is re-decided offline from its slots under the old rule
(no noise file), leave-one-out (noise learned from the other N-1 runs) and prequential (from the runs before).

Writes a markdown report (--out, default docs/gate-evidence.md) with the command, the date, the machine's
load before and after every run, and the figures, plus the raw per-run outcome as JSON beside it and, in `ab`
mode, every slot of every run in one parquet (<out>-ab-slots.parquet; `--redecide` reads it back).

    python scripts/gate_evidence.py                      # the full evidence: 20 runs per mode (long)
    python scripts/gate_evidence.py --runs 3 --modes ab  # a reduced one
    python scripts/gate_evidence.py --redecide docs/gate-evidence-2026-11-30-ab-slots.parquet --out /tmp/r.md
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITES = "attention,softmax,norm,gemm"
# Everything the quick CPU suites time except torch.compile (each compile costs 5-180 s on this machine, per
# worker and row, which is setup, not what the gate measures) and the GPU-only variants (skipped anyway).
VARIANTS = "eager,sdpa_math,sdpa_flash,cpp,torch_eager,torch_matmul"
INJECT = "softmax/torch_eager=slow10:0.10,slow20:0.20"


def parse_inject(spec: str) -> dict[str, float]:
    """{'torch_eager_slow10': 0.10, ...}: the variant names of the slowed copies and their slowdowns."""
    sys.path.insert(0, str(ROOT))
    from harness.inject import parse
    return {f"{v}_{name}": frac for _, v, items in parse(spec) for name, frac in items}


def parents(spec: str) -> dict[tuple[str, str], str]:
    """{(suite, copy variant): the variant it copies} (harness.inject.parents)."""
    sys.path.insert(0, str(ROOT))
    from harness.inject import parents as p
    return p(spec)


def zero(spec: str) -> str:
    """The same copies with no delay: what the stored baseline's runs get."""
    out = []
    for part in spec.split(";"):
        target, _, copies = part.partition("=")
        out.append(target + "=" + ",".join(c.split(":")[0] + ":0" for c in copies.split(",")))
    return ";".join(out)


def run(cmd: list[str], env: dict, log) -> int:
    t0 = time.time()
    load0 = os.getloadavg()[0]
    log.write(f"$ {shlex.join(cmd)}\n")
    log.flush()
    r = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.write(f"# exit {r.returncode}, {time.time() - t0:.0f} s, load {load0:.1f} -> {os.getloadavg()[0]:.1f}\n")
    log.flush()
    return r.returncode


def outcome(verdicts_file: Path, copies: dict[str, float], rc: int) -> dict:
    """One gate run: did any untouched row fail (a family-wise false alarm), and which slowed rows were caught."""
    return verdict_outcome(json.loads(verdicts_file.read_text()), copies, rc)


def verdict_outcome(rows: list[dict], copies: dict[str, float], rc: int | None) -> dict:
    other = [r for r in rows if r["variant"] not in copies]
    false = [f"{r['suite']} {r['case']} {r['variant']}: {r['verdict']} {(r.get('ratio') or 0) - 1:+.1%}"
             for r in other if r["verdict"] in ("regression", "broken", "missing")]
    caught = {}
    for r in rows:
        if r["variant"] in copies:
            caught.setdefault(r["variant"], []).append(
                {"case": r["case"], "caught": r["verdict"] == "regression", "ratio": r.get("ratio"),
                 "bar": r.get("threshold"), "verdict": r["verdict"]})
    return {"rc": rc, "compared": sum(r["verdict"] in ("regression", "improved", "unchanged") for r in other),
            "false_alarms": false, "copies": caught, "load": os.getloadavg()[0] if rc is not None else None}


RULES = {"old": "moderated t on the mean of the rounds, variance pooled with the run's other rows (no history)",
         "prequential": "learned noise, from the runs before this one only (what CI with --learn-noise does; "
                        "the first runs at the default)",
         "loo": "learned noise, leave-one-out: from the other N-1 runs of this evidence"}


def redecide(runs: list[dict], rule: str, copies: dict[str, float], rounds: int,
             parents: dict[tuple[str, str], str] | None = None, alpha: float | None = None) -> list[dict]:
    """Each run's verdicts again from its per-round log-ratios ({KEY tuple: array}, from slots.parquet) under
    `rule` (RULES); the same outcome records as `outcome`. The learned rules learn the untouched rows of the
    other runs; a slowed copy takes the history of the row it copies (`parents`, harness/inject.parents), as
    bench.py ab does: a real regression is judged on its row's A/A history from before it."""
    from harness import gate_noise as N
    from harness import gate_stats as S
    from harness.ab import AB_ALPHA
    from harness.gate_verdicts import KEY, GateConfig, blank, decide
    alpha = AB_ALPHA if alpha is None else alpha           # bench.py ab's default family-wise error rate
    dev = "evidence"
    out = []
    for i, lrs in enumerate(runs):
        rows = []
        for k, lr in lrs.items():
            r = blank(dict(zip(KEY, k)), threshold=0.05)
            r.update(_stats=S.paired(lr), _lr=lr, n_base=len(lr), n_cur=len(lr))
            rows.append(r)
        if rule != "old":
            noise = N.Noise()
            for j, other in enumerate(runs):
                if (j != i) if rule == "loo" else (j < i):
                    learned = [blank(dict(zip(KEY, k))) | {"_lr": lr} for k, lr in other.items()]
                    N.learn(learned, noise, dev, rounds, parents)
            N.apply(rows, noise, dev, rounds, alpha, parents=parents)
        v, _ = decide(rows, GateConfig(alpha=alpha))
        out.append(verdict_outcome(v.to_dict("records"), copies, None))
    return out


def run_lrs(d: Path) -> dict:
    import pandas as pd

    from harness import gate_noise as N
    return N.log_ratios(pd.read_parquet(d / "slots.parquet"))


SLOT_COLS = ["run", "suite", "case", "variant", "dtype", "device", "round", "side", "order", "median_ms", "n"]


def export_slots(dirs: list[Path], path: Path) -> None:
    """Every slot of the ab runs in one compact parquet (a `run` column; no per-sample times), from which
    `--redecide FILE` reproduces every figure of the re-decision."""
    import pandas as pd
    t = pd.concat([pd.read_parquet(d / "slots.parquet").assign(run=i) for i, d in enumerate(dirs)])
    t[SLOT_COLS].to_parquet(path, index=False, compression="zstd")
    c = [pd.read_parquet(d / "confirm-slots.parquet").assign(run=i) for i, d in enumerate(dirs)
         if (d / "confirm-slots.parquet").exists()]
    if c:                                      # the second stage's rounds (bench.py ab's candidates)
        pd.concat(c)[SLOT_COLS].to_parquet(path.with_name(path.name.replace("-slots", "-confirm-slots")),
                                           index=False, compression="zstd")


def saved_runs(src: Path, copies: dict[str, float]) -> tuple[list[dict], list[dict]]:
    """(per-run log-ratios, bench.py's own outcomes or []) of the ab runs in a directory (ab-*/slots.parquet)
    or in one parquet written by export_slots."""
    import pandas as pd

    from harness import gate_noise as N
    if src.is_file():
        t = pd.read_parquet(src)
        return [N.log_ratios(g) for _, g in t.groupby("run")], []
    dirs = sorted(d for d in src.glob("ab-*") if (d / "slots.parquet").exists())
    return [run_lrs(d) for d in dirs], [outcome(d / "v.json", copies, 0) for d in dirs if (d / "v.json").exists()]


def mode_ab(a, env, log, copies) -> list[dict]:
    out = []
    noise = a.work / "ab-noise.json"            # learned afresh by this evidence: run i learns from runs 0..i-1
    noise.unlink(missing_ok=True)
    for i in range(a.runs):
        d = a.work / f"ab-{i:02d}"
        cmd = [sys.executable, "bench.py", "ab", "--baseline-ref", a.baseline_ref, "--suite", a.suites,
               "--variant", a.variants + "," + ",".join(copies), "--rounds", str(a.rounds), "--budget", str(a.budget),
               "--out", str(d), "--json", str(d / "v.json"), "--no-step-summary", "--no-progress",
               "--cmake-arg=-DKB_NO_CUDA=ON", "--confirm-rounds", str(a.confirm_rounds)] \
            + (["--threads", str(a.threads)] if a.threads else []) \
            + (["--noise", str(noise), "--learn-noise"] if a.learn_noise else []) \
            + (["--no-build"] if a.no_build or i else [])
        d.mkdir(parents=True, exist_ok=True)
        rc = run(cmd, {**env, "KB_GATE_INJECT": a.inject}, log)
        if rc not in (0, 1):
            raise SystemExit(f"gate_evidence: bench.py ab exited {rc}; see {a.work / 'log.txt'}")
        out.append(outcome(d / "v.json", copies, rc))
        try:                                   # the second stage's candidates (harness/ab_confirm.py)
            out[-1]["candidates"] = json.loads((d / "manifest.json").read_text()).get("candidates")
        except (OSError, ValueError):
            pass
        print(f"ab {i + 1}/{a.runs}: {summary_line(out[-1])}", flush=True)
        a.save("ab", out)
    return out


def mode_stored(a, env, log, copies) -> list[dict]:
    res = a.work / "results"
    env = {**env, "KB_RESULTS_DIR": str(res)}
    bench = [sys.executable, "bench.py", "--suite", a.suites, "--device", "cpu", "--quick", "--budget",
             str(a.stored_budget), "--variant", a.variants + "," + ",".join(copies), "--no-progress"] \
        + (["--threads", str(a.threads)] if a.threads else [])
    base_runs = []
    for k in range(a.baseline_runs):
        d = res / f"base-{k}"
        if run(bench + ["--out", str(d)], {**env, "KB_GATE_INJECT": zero(a.inject)}, log) != 0:
            raise SystemExit(f"gate_evidence: a baseline run failed; see {a.work / 'log.txt'}")
        base_runs.append(str(d))
    if run([sys.executable, "bench.py", "baseline", "save", "evidence", *base_runs, "--force"], env, log) != 0:
        raise SystemExit("gate_evidence: baseline save failed")
    out, one = [], []
    for i in range(a.runs):
        d = res / f"cur-{i:02d}"
        if run(bench + ["--out", str(d)], {**env, "KB_GATE_INJECT": a.inject}, log) != 0:
            raise SystemExit(f"gate_evidence: a current run failed; see {a.work / 'log.txt'}")
        rc = run([sys.executable, "bench.py", "gate", "--baseline", "evidence", "--current", str(d), "--json",
                  str(d / "v.json"), "--no-step-summary"] + ([] if a.strict_contention else ["--allow-contended"])
                 + (["--confirm", str(a.stored_confirm)] if a.stored_confirm else []),
                 {**env, "KB_GATE_INJECT": a.inject}, log)        # the re-runs (--confirm) run the current code
        if rc not in (0, 1):
            raise SystemExit(f"gate_evidence: bench.py gate exited {rc}")
        out.append(outcome(d / "v.json", copies, rc))
        print(f"stored {i + 1}/{a.runs}: {summary_line(out[-1])}", flush=True)
        if a.stored_confirm:                   # the same run gated in one stage, for the side-by-side
            rc1 = run([sys.executable, "bench.py", "gate", "--baseline", "evidence", "--current", str(d), "--json",
                       str(d / "v1.json"), "--no-step-summary"]
                      + ([] if a.strict_contention else ["--allow-contended"]), env, log)
            one.append(outcome(d / "v1.json", copies, rc1))
            a.save("stored/one-stage", one)
        a.save("stored", out)
    return out


def summary_line(o: dict) -> str:
    c = ", ".join(f"{v} {sum(x['caught'] for x in xs)}/{len(xs)}" for v, xs in o["copies"].items())
    return f"{len(o['false_alarms'])} false alarm(s) in {o['compared']} compared rows; caught {c}"


def figures(runs: list[dict], copies: dict[str, float]) -> dict:
    n = len(runs)
    fa = sum(bool(r["false_alarms"]) for r in runs)
    out = {"gate_runs": n, "runs_with_false_alarm": fa, "fwer": fa / n if n else None,
           "rows_compared_per_run": [r["compared"] for r in runs]}
    for v, frac in copies.items():
        xs = [x for r in runs for x in r["copies"].get(v, [])]
        rat = sorted(x["ratio"] for x in xs if x["ratio"] is not None)
        out[v] = {"injected": frac, "rows": len(xs), "caught": sum(x["caught"] for x in xs),
                  "median_measured_ratio": rat[len(rat) // 2] if rat else None}
    return out


def report(a, results: dict, copies: dict, started: str, load0: float, argv: list[str]) -> str:
    from harness.ab import AB_ALPHA
    goal = {"ab": "0 of N (0%)", "stored": "<= 5%"}
    label = {"ab": "ab (bench.py's own verdicts" + (", two stages" if a.confirm_rounds else ", one stage")
             + (": learned noise, prequential)" if a.learn_noise
                 else ": no noise file)"),
             "stored": "stored (bench.py gate" + (f" --confirm {a.stored_confirm})" if a.stored_confirm else ")"),
             "stored/one-stage": "stored, the same runs gated in one stage (no --confirm)",
             **{f"ab/{r}": f"ab, re-decided offline: {r}" for r in RULES}}
    lines = [f"# Gate evidence ({started})", "",
             f"Command: `python scripts/gate_evidence.py {shlex.join(argv)}`".replace(" `", " `", 1), "",
             f"Machine: {os.cpu_count()} CPUs, load average {load0:.1f} at the start and "
             f"{os.getloadavg()[0]:.1f} at the end (per-run loads in the JSON and log). Suites {a.suites}, quick "
             f"CPU shapes, variants {a.variants}; slowed copies `{a.inject}`; threads {a.threads}; allocator "
             f"{a.allocator}; ab: {a.rounds} "
             f"rounds of {a.budget:g} s per side, family-wise alpha {AB_ALPHA:g} (bench.py ab's default), "
             f"second stage {a.confirm_rounds} rounds (0: none); "
             f"stored (alpha 0.05, bench.py gate's default): {a.baseline_runs} baseline runs, --budget "
             f"{a.stored_budget:g}, --confirm {a.stored_confirm}"
             + ("" if a.strict_contention else ", gated with --allow-contended (on this shared "
                                     "machine every row is contended, and the gate would compare none)") + ".", "",
             "| mode | gate runs | rows compared per run | runs with a false alarm (goal) | "
             + " | ".join(f"{v} caught (goal)" for v in copies) + " |",
             "|---|---|---|---|" + "---|" * len(copies)]
    for mode, f in results.items():
        per_run = f["rows_compared_per_run"]
        cells = [label.get(mode, mode), str(f["gate_runs"]), f"{min(per_run)}-{max(per_run)}"
                 if per_run else "", f"{f['runs_with_false_alarm']}/{f['gate_runs']} "
                 f"({(f['fwer'] or 0):.0%}; goal {goal[mode.split('/')[0]]})"]
        for v, frac in copies.items():
            g = f[v]
            want = "all" if frac >= 0.2 else (">= 90%" if mode.startswith("ab") else "-")
            med = g["median_measured_ratio"]
            cells.append(f"{g['caught']}/{g['rows']} (measured x{med:.3f}; goal {want})" if med else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Each gate run compares every untouched row (an A/A comparison: the same code on both sides) and "
              "the slowed copies; a run counts as a false alarm when any untouched row failed. The slowed copies "
              "stay in the Holm family, which makes the untouched rows' test very slightly more lenient than in a "
              "pure A/A run (conservative for the false-alarm figure)."]
    if any(m.startswith("ab/") for m in results):
        lines += ["", "The `ab` runs' slots re-decided offline under each rule (scripts/gate_evidence.py "
                  "`redecide`; the same per-round data, so the rules are compared on identical measurements):"]
        lines += [f"- {r}: {t}" for r, t in RULES.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=20, help="gate runs per mode (default 20)")
    p.add_argument("--modes", default="ab,stored")
    p.add_argument("--suites", default=SUITES)
    p.add_argument("--variants", default=VARIANTS, help="variants timed (exact names, comma-separated)")
    p.add_argument("--inject", default=INJECT, help="slowed copies (harness/inject.py syntax)")
    p.add_argument("--rounds", type=int, default=6, help="ab: rounds per row")
    p.add_argument("--budget", type=float, default=0.05, help="ab: seconds per row, side and round")
    p.add_argument("--confirm-rounds", type=int, default=16,
                   help="ab: rounds of the second stage (bench.py ab's default 16; 0: one stage)")
    p.add_argument("--stored-budget", type=float, default=0.3, help="stored: --budget of each bench.py run")
    p.add_argument("--baseline-runs", type=int, default=3, help="stored: runs in the baseline")
    p.add_argument("--stored-confirm", type=int, default=3,
                   help="stored: bench.py gate --confirm N (re-run the rows called slower N times; 0: one stage)")
    p.add_argument("--baseline-ref", default="HEAD")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1: a 2-core shared machine)")
    p.add_argument("--strict-contention", action="store_true",
                   help="stored: leave contended rows out as the gate does by default (on a shared machine that "
                        "is every row; by default the evidence passes --allow-contended and says so)")
    p.add_argument("--allocator", default="tcmalloc",
                   help="allocator of every measuring process: tcmalloc (default: one page-fault regime in every "
                        "process), jemalloc, system (glibc: rows with 16 MiB outputs are bimodal per process, 0 or "
                        "4096 faults per call, which raised the A/A false alarms of 2026-11-30), inherit")
    p.add_argument("--no-build", action="store_true", help="ab: do not build the trees (torch-only variants)")
    p.add_argument("--work", type=Path, help="scratch directory (default .cache/gate-evidence)")
    p.add_argument("--no-learn-noise", dest="learn_noise", action="store_false",
                   help="ab: run bench.py ab without a noise file (by default each run learns into "
                        "WORK/ab-noise.json, emptied at the start, and is gated on the runs before it)")
    p.add_argument("--redecide", type=Path, metavar="SRC",
                   help="measure nothing: re-decide saved ab runs under every rule; SRC is a --work directory "
                        "(SRC/ab-00 ...) or the slots parquet an ab evidence writes beside --out")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "gate-evidence.md")
    a = p.parse_args(argv)
    a.work = (a.work or ROOT / ".cache" / "gate-evidence").resolve()
    a.work.mkdir(parents=True, exist_ok=True)
    try:
        copies = parse_inject(a.inject)
    except ValueError as e:
        print(f"gate_evidence: {e}", file=sys.stderr)
        return 2
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load0 = os.getloadavg()[0]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if a.allocator != "inherit":                # every process of the evidence (bench.py, ab workers) under it
        from harness import allocator
        try:
            env = allocator.worker_env(a.allocator, env)
        except allocator.AllocatorError as e:
            print(f"gate_evidence: {e}", file=sys.stderr)
            return 2
    results, raw = {}, {}
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if set(modes) - {"ab", "stored"}:
        print(f"gate_evidence: unknown mode(s) {', '.join(set(modes) - {'ab', 'stored'})}: ab or stored",
              file=sys.stderr)
        return 2
    a.out.parent.mkdir(parents=True, exist_ok=True)

    def save(mode: str, runs: list[dict] | None) -> None:   # after every gate run: an interrupted run keeps its part
        if runs is not None:
            raw[mode], results[mode] = runs, figures(runs, copies)
        a.out.write_text(report(a, results, copies, started, load0, argv))
        a.out.with_suffix(".json").write_text(json.dumps({"started": started, "argv": argv, "figures": results,
                                                          "runs": raw}, indent=1))
    a.save = save

    def rules(lrs: list[dict]) -> None:
        for rule in RULES:
            raw[f"ab/{rule}"] = runs = redecide(lrs, rule, copies, a.rounds, parents(a.inject))
            results[f"ab/{rule}"] = figures(runs, copies)
        save("ab", None)
    if a.redecide:
        try:
            lrs, own = saved_runs(a.redecide, copies)
        except (OSError, ValueError, KeyError) as e:
            print(f"gate_evidence: cannot read the ab runs of {a.redecide}: {e}", file=sys.stderr)
            return 2
        if not lrs:
            print(f"gate_evidence: no ab run (ab-*/slots.parquet) in {a.redecide}", file=sys.stderr)
            return 2
        if own:
            raw["ab"], results["ab"] = own, figures(own, copies)
        rules(lrs)
        print(a.out.read_text())
        return 0
    with open(a.work / "log.txt", "a") as log:
        for mode in modes:
            runs = (mode_ab if mode == "ab" else mode_stored)(a, env, log, copies)
            if mode == "ab" and runs:
                dirs = [a.work / f"ab-{i:02d}" for i in range(len(runs))]
                rules([run_lrs(d) for d in dirs])
                export_slots(dirs, a.out.with_name(a.out.stem + "-ab-slots.parquet"))
    print(a.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
