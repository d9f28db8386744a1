#!/usr/bin/env python3
"""Does isolation change a figure? Runs the quick suites with and without `--no-isolate`, side by side.

    python scripts/isolation_check.py [--suites attention,softmax,norm,gemm] [--rounds 2] [--out DIR]

Rounds alternate the two modes (isolated, in-process, isolated, ...) so a change of machine load hits both.
Prints, per suite: the rows whose medians agree within their own spread (the two p20-p80 intervals overlap),
the median of the per-row ratios isolated/in-process, and the wall time of every whole run (the command's
own start-up included: that is what a user waits for). Writes the combined table to DIR/isolation.csv.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from harness.results import load  # noqa: E402

KEY = ["suite", "case", "variant", "dtype"]


def run(suites: str, out: Path, isolate: bool) -> float:
    cmd = [sys.executable, str(ROOT / "bench.py"), "--suite", suites, "--no-progress", "--out", str(out)]
    if not isolate:
        cmd.append("--no-isolate")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr[-2000:]}")
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suites", default="attention,softmax,norm,gemm")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "results" / f"isolation-check-{time.strftime('%Y%m%d-%H%M%S')}"))
    a = ap.parse_args()
    out = Path(a.out)
    subprocess.run([sys.executable, str(ROOT / "bench.py"), "--suite", a.suites, "--no-progress", "--budget", "0.05",
                    "--out", str(out / "warm-up")], cwd=ROOT, capture_output=True)   # compiler caches, not counted
    frames, walls = [], {True: [], False: []}
    for r in range(a.rounds):
        for isolate in ((True, False) if r % 2 == 0 else (False, True)):
            d = out / f"r{r}-{'isolated' if isolate else 'inprocess'}"
            walls[isolate].append(run(a.suites, d, isolate))
            df = load(d)
            df["mode"], df["round"] = ("isolated" if isolate else "inprocess"), r
            frames.append(df[df.status == "ok"])
            print(f"round {r} {'isolated ' if isolate else 'in-process'}: {walls[isolate][-1]:.1f} s", flush=True)
    df = pd.concat(frames, ignore_index=True)
    df[KEY + ["mode", "round", "median_ms", "p20_ms", "p80_ms", "n"]].to_csv(out / "isolation.csv", index=False)
    # one figure per row and mode: the median over rounds of the median, and the widest p20-p80 of the rounds
    g = df.groupby(KEY + ["mode"]).agg(median=("median_ms", "median"), p20=("p20_ms", "min"),
                                       p80=("p80_ms", "max")).unstack("mode").dropna()
    iso, inp = g.xs("isolated", axis=1, level=1), g.xs("inprocess", axis=1, level=1)
    agree = (iso["median"] >= inp["p20"]) & (iso["median"] <= inp["p80"]) | \
            ((inp["median"] >= iso["p20"]) & (inp["median"] <= iso["p80"]))
    ratio = iso["median"] / inp["median"]
    print("\n| suite | rows | medians within the other mode's p20-p80 | median ratio isolated/in-process "
          "(min-max) |\n|---|---|---|---|")
    for suite, idx in ratio.groupby(level="suite").groups.items():
        r = ratio.loc[idx]
        print(f"| {suite} | {len(r)} | {int(agree.loc[idx].sum())}/{len(r)} | {r.median():.3f} "
              f"({r.min():.2f}-{r.max():.2f}) |")
    wi, wn = statistics.median(walls[True]), statistics.median(walls[False])
    print(f"\nwall time of the whole run ({a.suites}), median of {a.rounds}: isolated {wi:.1f} s "
          f"({', '.join(f'{w:.1f}' for w in walls[True])}), in-process {wn:.1f} s "
          f"({', '.join(f'{w:.1f}' for w in walls[False])}): {100 * (wi / wn - 1):+.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
