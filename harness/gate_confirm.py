"""`bench.py gate --confirm N`: rows a stored-baseline gate calls slower are measured again, in N fresh runs of
this tree, and only a slowdown the new runs confirm fails.

Why (gate evidence of 2026-12-01, docs/gate-evidence-2026-12-01-stored-quiet.md): 20 quiet stored-baseline gate
runs on a baseline of 3 runs gave 7 runs with a false alarm; five were one row with two speeds
(layernorm 1024x4096 `cpp`, +26-88%) whose three baseline runs had all met the fast one. A noise floor learned
from three runs cannot know the other speed; a second look at the row, in fresh processes, can.

Screen-then-confirm, as in `bench.py ab` (harness/ab_confirm.py):

- screen: the first decision (harness/gate_verdicts.decide). A candidate is a row it calls a regression, or an
  unchanged row whose ratio is above the threshold (slower, but not significant);
- confirm: `bench.py` runs N more times in this tree, with the current run's own settings (its manifest's argv:
  budget, threads, mode, dtype, allocator...) restricted to the candidates' suites, variants and cases, each run
  in fresh worker processes; each candidate is tested again on the baseline runs against the N new runs alone
  (the same two-group moderated t-test), Holm over the candidates;
- the candidates' verdicts are the second test's; every other row keeps its first verdict.

Error control: the new runs are made after the candidates were chosen, so given the first decision a candidate's
second p-value is valid under "no change", and Holm over the candidates holds the chance of any false alarm at
alpha; rows that are not candidates cannot fail. The first decision only decides where the re-runs are spent.

The re-runs measure THIS tree: the current run must have been made from the same commit (its manifest says
which); otherwise --confirm is bad input. They are kept as ordinary runs under results/gate-confirm-<time>/.
"""
from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from harness import gate_match as M
from harness import result_sets as RS
from harness.gate_verdicts import KEY, GateConfig, decide, sort_verdicts

ROOT = Path(__file__).resolve().parent.parent
# flags of the current run that the re-runs replace (row selection, output) or must not repeat (side effects)
DROP_WITH_VALUE = ("--suite", "--variant", "--filter", "--out")
DROP_FLAGS = ("--resume", "--no-progress", "--list", "--kernels-report", "--reset-peaks")


def screen(verdicts: pd.DataFrame, cfg: GateConfig) -> list[tuple]:
    """KEY tuples of the rows the first decision calls slower: regressions, and unchanged rows whose ratio is
    above the threshold."""
    out = []
    for r in verdicts.to_dict("records"):
        thr = cfg.threshold_for(r["suite"])
        slower = r["verdict"] == "unchanged" and np.isfinite(r.get("ratio") or np.nan) and r["ratio"] > 1 + thr
        if r["verdict"] == "regression" or slower:
            out.append(tuple(r[c] for c in KEY))
    return out


def rerun_argv(argv: list[str], cands: list[tuple], out: Path) -> list[str]:
    """The current run's bench.py arguments with the row selection replaced by the candidates' and a new --out."""
    keep, i = [], 0
    while i < len(argv):
        x, name = argv[i], argv[i].split("=", 1)[0]
        i += 1
        if name in DROP_WITH_VALUE:
            i += "=" not in x                                   # its value is the next word
        elif name == "--reset-peaks":                           # an optional value
            i += "=" not in x and i < len(argv) and not argv[i].startswith("-")
        elif name not in DROP_FLAGS:
            keep.append(x)

    def uniq(col: int) -> str:                                  # in order, once each
        return ",".join(dict.fromkeys(str(k[col]) for k in cands))
    return keep + ["--suite", uniq(0), "--variant", uniq(2), "--filter", uniq(1), "--out", str(out), "--no-progress"]


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def current_argv(cur: pd.DataFrame) -> list[str]:
    """The argv of the (first) current run, from its manifest; BadInput when it cannot be re-run in this tree."""
    srcs = sorted({str(s) for s in cur.get("_source", pd.Series(dtype=str)).dropna()})
    mans = [m for m in (RS.read_manifest(Path(s)) for s in srcs) if m and "runs" not in m]
    if not mans or "argv" not in mans[0]:
        raise RS.BadInput("--confirm: the current run has no manifest with its command (argv) to re-run")
    made = str(mans[0].get("commit", "")).removesuffix("-dirty")
    here = _commit()
    if made and here and not here.startswith(made):
        raise RS.BadInput(f"--confirm re-runs rows in this tree ({here[:12]}), but the current run was made by "
                          f"commit {made}: check that commit out, or gate without --confirm")
    return [str(x) for x in mans[0]["argv"]]


def run_confirm(cur: pd.DataFrame, cands: list[tuple], n: int, progress: bool = True) -> list[pd.DataFrame]:
    """n fresh bench.py runs of the candidates in this tree (under results/gate-confirm-<time>/run-i); their
    tables, restricted to the candidates."""
    argv = current_argv(cur)
    root = RS.results_root() / f"gate-confirm-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    want = {tuple(map(str, w)) for w in cands}
    tables = []
    for i in range(n):
        out = root / f"run-{i}"
        cmd = [sys.executable, str(ROOT / "bench.py")] + rerun_argv(argv, cands, out)
        if progress:
            print(f"[confirm {i + 1}/{n}] {len(cands)} row(s): {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
        r = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode not in (0, 1) or not (out / "results.parquet").exists() and not (out / "results.csv").exists():
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise RS.BadInput(f"--confirm: re-run {i + 1} failed (exit {r.returncode}): {last[:200]}")
        t = RS.load(str(out))
        keys = list(zip(*(t[c].astype(str) for c in KEY)))
        tables.append(t[[k in want for k in keys]])
    return tables


def decide_confirmed(first: pd.DataFrame, base: pd.DataFrame, confirm: list[pd.DataFrame], cands: list[tuple],
                     cfg: GateConfig) -> pd.DataFrame:
    """The final verdicts: the candidates' replaced by their test on the baseline runs against the re-runs alone
    (Holm over the candidates); the other rows as decided first."""
    want = {tuple(map(str, k)) for k in cands}
    keys = list(zip(*(base[c].astype(str) for c in KEY)))
    b = base[[k in want for k in keys]]
    rows = M.classify(b, pd.concat(confirm, ignore_index=True), cfg)
    second = {tuple(str(r[c]) for c in KEY): r for r in decide(rows, cfg)[0].to_dict("records")}
    out = first.copy()
    for i, r in out.iterrows():
        k = tuple(str(r[c]) for c in KEY)
        if k not in want or k not in second:
            continue
        s = second[k]
        how = (f"screened {r['verdict']} at x{r['ratio']:.3f} (adj. p {r['p_adj']:.2g}); ")
        if s["verdict"] in ("regression", "unchanged", "improved"):
            verdict = "regression" if s["verdict"] == "regression" else "unchanged"
            how += (("confirmed" if verdict == "regression" else "not confirmed") +
                    f" by {len(confirm)} fresh run(s): x{s['ratio']:.3f}, adj. p {s['p_adj']:.2g} over "
                    f"{len(want)} candidate(s)")
            for c in ("base_ms", "cur_ms", "ratio", "ci_lo", "ci_hi", "p", "p_adj", "floor", "threshold", "n_cur"):
                out.at[i, c] = s[c]
        elif s["verdict"] == "broken":
            verdict, how = "broken", how + f"broken in a fresh run: {s['note']}"
        else:                                  # not compared / skipped / missing in the re-runs: the first stands
            verdict, how = r["verdict"], how + f"second look {s['verdict']}: {s['note']}"
        out.at[i, "verdict"] = verdict
        out.at[i, "note"] = "; ".join(x for x in (r["note"], how) if isinstance(x, str) and x)
    return sort_verdicts(out)
