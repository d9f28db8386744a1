"""Run-to-run spread of the reported median: the suite's timing (harness/timing.py) against
torch.utils.benchmark's adaptive_autorange at equal wall time (issue 23; the gate's noise floor rests on it).

For each row (suite, case, variant, float32, quick shapes): R rounds; in each round the suite's `measure`
runs with its budget and adaptive_autorange with max_run_time = the wall time the suite's measurement took
(warm-up included; the last one measured when the timer goes first), the order alternating from round to round
so that neither tool always meets the fresh inputs first. Spread = (max - min) / median of the R medians, per
row and tool. Whether two spreads differ beyond chance is a permutation test: each tool's medians divided by
their own median are pooled and split at random 2000 times; `p_spread` is the share of splits whose spread
difference is at least the observed one (two-sided). Prints a table with the load average and the share of the
CPU other processes took (telemetry), and writes it as CSV.

    python scripts/precision.py [--rounds 5] [--budget 1.0] [--threads N] [--out precision.csv]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch.utils.benchmark import Timer  # noqa: E402

from harness import telemetry  # noqa: E402
from harness.registry import get_suites  # noqa: E402
from harness.runner import derive_seed  # noqa: E402
from harness.timing import TimingConfig, measure  # noqa: E402

ROWS = [("softmax", "torch_eager"), ("softmax", "cpp"), ("norm", "torch_eager"), ("norm", "cpp"),
        ("gemm", "torch_matmul"), ("gemm", "cpp")]


def spread(xs: list[float]) -> float:
    return (max(xs) - min(xs)) / statistics.median(xs)


def autorange(t: Timer, max_run_time: float):
    """adaptive_autorange's measurement and the wall time it took."""
    t1 = time.perf_counter()
    am = t.adaptive_autorange(max_run_time=max_run_time)
    return am, time.perf_counter() - t1


def spread_p(ours: list[float], theirs: list[float], n: int = 2000, seed: int = 0) -> float:
    """Two-sided permutation p-value of spread(ours) - spread(theirs): under the null both tools' medians, each
    divided by its own median, come from one distribution, so any split of the pooled values is as likely."""
    import random
    a = [x / statistics.median(ours) for x in ours]
    b = [x / statistics.median(theirs) for x in theirs]
    obs = abs(spread(a) - spread(b))
    pool, k, rng, hits = a + b, len(a), random.Random(seed), 0
    for _ in range(n):
        rng.shuffle(pool)
        hits += abs(spread(pool[:k]) - spread(pool[k:])) >= obs - 1e-12
    return (hits + 1) / (n + 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--budget", type=float, default=1.0, help="the suite's timing budget per row (quick: 1 s)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--filter", default=None, help="only rows whose suite/variant contains this")
    ap.add_argument("--out", default="precision.csv")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    sampler = telemetry.make_sampler("cpu")
    out = []
    for suite_name, vname in ROWS:
        if a.filter and a.filter not in f"{suite_name}/{vname}":
            continue
        for suite, case in ((s, c) for s in get_suites(suite_name) for c in s.cases("quick", "cpu", "float32")):
            v = suite.variants[vname]
            if (suite.applies and not suite.applies(case, vname)) or v.requires.missing(case):
                continue
            ours, theirs, walls, others = [], [], [], []
            for r in range(a.rounds):
                inputs = suite.make_inputs(case, derive_seed(0, suite.name, case.name, vname, "precision", r))
                fn = v.setup(case, **inputs)
                t = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
                with sampler.measure() as m:
                    if r % 2 == 1:                 # the timer first, at the suite's last wall time
                        am, wall_t = autorange(t, walls[-1][0])
                    t0 = time.perf_counter()
                    s = measure(fn, "cpu", TimingConfig(budget_s=a.budget))
                    wall = time.perf_counter() - t0
                    if r % 2 == 0:
                        am, wall_t = autorange(t, wall)
                ours.append(s.median_ms)
                theirs.append(am.median * 1e3)
                walls.append((wall, wall_t))
                others.append(m.summary(1).get("cpu_others_pct"))
            out.append(dict(suite=suite.name, case=case.name, variant=vname, rounds=a.rounds,
                            suite_median_ms=statistics.median(ours), suite_spread_pct=100 * spread(ours),
                            timer_median_ms=statistics.median(theirs), timer_spread_pct=100 * spread(theirs),
                            p_spread=spread_p(ours, theirs) if a.rounds > 1 else float("nan"),
                            suite_wall_s=statistics.mean(w[0] for w in walls),
                            timer_wall_s=statistics.mean(w[1] for w in walls),
                            others_pct=statistics.mean(x for x in others if x == x) if others else None))
            print(pd.DataFrame(out[-1:]).round(3).to_string(index=False, header=len(out) == 1), flush=True)
    df = pd.DataFrame(out)
    df.to_csv(a.out, index=False)
    load = os.getloadavg()
    print(f"\nthreads {torch.get_num_threads()}, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; "
          f"median spread: suite {df.suite_spread_pct.median():.1f}%, adaptive_autorange "
          f"{df.timer_spread_pct.median():.1f}%; rows where the suite's spread <= adaptive_autorange's: "
          f"{int((df.suite_spread_pct <= df.timer_spread_pct).sum())}/{len(df)}; looser beyond chance (p < 0.05): "
          f"{int(((df.suite_spread_pct > df.timer_spread_pct) & (df.p_spread < 0.05)).sum())}, tighter beyond "
          f"chance: {int(((df.suite_spread_pct < df.timer_spread_pct) & (df.p_spread < 0.05)).sum())} -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
