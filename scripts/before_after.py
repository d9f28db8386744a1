#!/usr/bin/env python3
"""Before/after of a refactor: the quick suites run in two or more trees, alternated, compared row by row.

Issue 11 asks that a change of mechanism (how kernels are declared, loaded, checked and registered) leaves the
results alone: the same rows, the same columns, the same figures within noise. This script shows it for any
pair of commits. Each ref is checked out and built once (a detached git worktree, as `bench.py ab` does:
harness/ab_trees.py), then every round runs `bench.py --quick` once in each tree, in turn, so drift and
neighbours hit every tree alike (the order rotates: each tree runs first in
turn). The comparison:

- rows: the (suite, case, variant, dtype) keys each tree wrote, with issue 11's `norm` split mapped back
  (`rmsnorm` case C is `norm` case `rms-C`, `layernorm` case C is `norm` case `layer-C`); rows only one side
  has, and rows not `ok`, are listed;
- columns: those only one side wrote;
- figures: per row and tree the median of the round medians, its ratio to the first tree, the spread of the
  rounds ((max - min) / median) and whether the trees' rounds are separated (every round of one tree faster
  than every round of the other: with 3 rounds each a chance of 1 in 10 for two trees of the same speed).

Writes OUT/before-after.md (the table) and OUT/before-after.csv; exit 1 when the row sets differ or a row is
not ok, 2 on bad input.

    python scripts/before_after.py --ref before=64f1f74 --ref after=c165c8a --ref main=HEAD --rounds 3 \\
        --out results/before-after
"""
from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

KEY = ["suite", "case", "variant", "dtype"]
# issue 11 split the `norm` suite into `rmsnorm` and `layernorm`; its cases were named `rms-C` and `layer-C`
SPLIT = {"rmsnorm": ("norm", "rms-"), "layernorm": ("norm", "layer-")}
SUITES = "attention,softmax,norm,gemm"
# what the quick CPU suites time, without torch.compile (minutes of compilation per row on this machine)
VARIANTS = "eager,sdpa_math,sdpa_flash,cpp,torch_eager,torch_matmul"


def keyed(df: pd.DataFrame) -> pd.DataFrame:
    """The rows with the norm split mapped back to the `norm` suite's names (the join key of the comparison)."""
    d = df.copy()
    d["case"] = d["case"].astype(str)
    for new, (old, prefix) in SPLIT.items():
        m = d["suite"] == new
        d.loc[m, "case"] = prefix + d.loc[m, "case"]
        d.loc[m, "suite"] = old
    return d


def compare(runs: dict[str, list[pd.DataFrame]]) -> dict:
    """runs: label -> that tree's result tables, one per round (the first label is the reference).
    Returns rows (a DataFrame per key), missing (label -> keys that label lacks), not_ok (key, label, status),
    columns (label -> columns only the reference has / only this label has)."""
    labels = list(runs)
    ref = labels[0]
    tables = {lab: [keyed(df) for df in dfs] for lab, dfs in runs.items()}
    keysets = {lab: set(map(tuple, tables[lab][0][KEY].itertuples(index=False))) for lab in labels}
    every = set().union(*keysets.values())
    missing = {lab: sorted(every - keysets[lab]) for lab in labels}
    cols = {lab: set(tables[lab][0].columns) for lab in labels}
    columns = {lab: (sorted(cols[ref] - cols[lab]), sorted(cols[lab] - cols[ref])) for lab in labels[1:]}
    not_ok, samples = [], {}
    for lab in labels:
        for r, d in enumerate(tables[lab]):
            for row in d.itertuples(index=False):
                k = tuple(getattr(row, c) for c in KEY)
                if row.status != "ok":
                    not_ok.append((k, lab, r, row.status))
                elif math.isfinite(row.median_ms) and row.median_ms > 0:
                    samples.setdefault(k, {}).setdefault(lab, []).append(float(row.median_ms))
    out = []
    for k in sorted(samples):
        rec = dict(zip(KEY, k))
        s = samples[k]
        for lab in labels:
            xs = s.get(lab, [])
            med = float(pd.Series(xs).median()) if xs else math.nan
            rec[f"{lab}_ms"] = med
            rec[f"{lab}_spread"] = (max(xs) - min(xs)) / med if len(xs) > 1 else math.nan
            rec[f"{lab}_rounds"] = len(xs)
        for lab in labels[1:]:
            a, b = s.get(ref, []), s.get(lab, [])
            rec[f"{lab}/{ref}"] = rec[f"{lab}_ms"] / rec[f"{ref}_ms"] if a and b else math.nan
            rec[f"{lab}_separated"] = bool(a and b and (max(a) < min(b) or max(b) < min(a)))
        out.append(rec)
    return dict(rows=pd.DataFrame(out), missing=missing, not_ok=not_ok, columns=columns, labels=labels)


def geomean(xs) -> float:
    xs = [x for x in xs if x > 0 and math.isfinite(x)]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else math.nan


def markdown(res: dict, header: list[str]) -> str:
    labels, ref, rows = res["labels"], res["labels"][0], res["rows"]
    lines = ["# Before/after of every quick suite", "", *header, ""]
    lines.append("## Rows and columns")
    for lab in labels:
        lines.append(f"- `{lab}`: rows missing against the others: {len(res['missing'][lab])}"
                     + "".join(f"\n  - {' / '.join(map(str, k))}" for k in res["missing"][lab]))
    for lab, (gone, new) in res["columns"].items():
        lines.append(f"- columns only `{ref}` has, against `{lab}`: {', '.join(gone) or 'none'}; only `{lab}` has: "
                     f"{', '.join(new) or 'none'}")
    lines.append(f"- rows not ok: {len(res['not_ok'])}"
                 + "".join(f"\n  - {' / '.join(map(str, k))} in `{lab}` round {r + 1}: {st}"
                           for k, lab, r, st in res["not_ok"]))
    lines += ["", "## Figures (median of the round medians, ms; ratio to the first tree; spread of the rounds)", ""]
    head = ["suite", "case", "variant", "dtype"] + [f"`{lab}` ms (spread)" for lab in labels] + \
        [f"`{lab}`/`{ref}`" for lab in labels[1:]]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for d in rows.to_dict("records"):
        cells = [str(d[c]) for c in KEY]
        cells += [f"{d[f'{lab}_ms']:.3f} ({100 * d[f'{lab}_spread']:.0f}%)" for lab in labels]
        cells += [f"{d[f'{lab}/{ref}']:.3f}" + (" (separated)" if d[f"{lab}_separated"] else "")
                  for lab in labels[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for lab in labels[1:]:
        col = rows[f"{lab}/{ref}"].dropna()
        sep = int(rows[f"{lab}_separated"].sum())
        lines.append(f"- `{lab}` against `{ref}`: geometric mean of the ratios **{geomean(col):.3f}**, median "
                     f"{col.median():.3f}, range {col.min():.3f}-{col.max():.3f} over {len(col)} rows; rows whose "
                     f"rounds are separated: {sep} (about {len(col) / 10:.1f} expected by chance at 3 rounds)")
    med = {lab: rows[f"{lab}_spread"].median() for lab in labels}
    lines.append("- median spread of a row's rounds within one tree: "
                 + ", ".join(f"`{lab}` {100 * v:.0f}%" for lab, v in med.items()))
    return "\n".join(lines) + "\n"


def compare_only(a) -> int:
    labels = [r.split("=", 1)[0] for r in a.ref]
    runs = {lab: [pd.read_parquet(f) for f in sorted(a.out.glob(f"{lab}-*/results.parquet"))] for lab in labels}
    if len(labels) < 2 or not all(runs.values()):
        print(f"error: --compare-only needs at least two --ref labels with rounds in {a.out} "
              f"(found: {', '.join(f'{k} {len(v)}' for k, v in runs.items()) or 'none'})", file=sys.stderr)
        return 2
    res = compare(runs)
    header = [f"Compared from the rounds in {a.out}: " + ", ".join(f"`{r}`" for r in a.ref)]
    res["rows"].to_csv(a.out / "before-after.csv", index=False)
    (a.out / "before-after.md").write_text(markdown(res, header))
    print(f"wrote {a.out / 'before-after.md'}")
    return 1 if any(res["missing"].values()) or res["not_ok"] else 0


def main(argv: list[str] | None = None) -> int:
    from harness import ab_trees
    from harness.result_sets import BadInput
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", action="append", default=[], metavar="LABEL=REF",
                   help="a tree to run (repeat; at least two; the first is the reference)")
    p.add_argument("--suites", default=SUITES)
    p.add_argument("--variants", default=VARIANTS)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cmake-arg", action="append", default=[], help="extra CMake argument, e.g. -DKB_NO_CUDA=ON")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("results") / "before-after")
    p.add_argument("--compare-only", action="store_true",
                   help="build and run nothing: compare the rounds already in OUT (OUT/LABEL-ROUND/results.parquet)")
    a = p.parse_args(argv)
    if a.compare_only:
        return compare_only(a)
    try:
        refs = [r.split("=", 1) for r in a.ref]
        if len(refs) < 2 or any(len(r) != 2 or not r[0] or not r[1] for r in refs):
            raise BadInput("give at least two --ref LABEL=REF (e.g. --ref before=64f1f74 --ref after=HEAD)")
        if len({lab for lab, _ in refs}) != len(refs) or a.rounds < 1:
            raise BadInput("labels must differ and --rounds must be >= 1")
        trees = {lab: ab_trees.worktree(ref, lab) for lab, ref in refs}
        for t in trees.values():
            print(f"building {ab_trees.describe(t)}", flush=True)
            ab_trees.build(t, a.cmake_arg, a.jobs)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    header = [f"`python scripts/before_after.py {' '.join(sys.argv[1:] if argv is None else argv)}`", "",
              f"- started {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {os.uname().nodename}"]
    header += [f"- `{lab}`: {t.ref} = {t.commit[:12]}" for lab, t in trees.items()]
    runs: dict[str, list[pd.DataFrame]] = {lab: [] for lab in trees}
    order = list(trees.items())
    for r in range(a.rounds):
        for lab, t in order[r % len(order):] + order[:r % len(order)]:     # each tree takes each place in turn
            out = (a.out / f"{lab}-{r + 1}").resolve()
            load = os.getloadavg()[0]
            cmd = [sys.executable, "bench.py", "--suite", a.suites, "--device", "cpu", "--quick", "--threads",
                   str(a.threads), "--variant", a.variants, "--no-progress", "--out", str(out)]
            env = dict(os.environ, PYTHONPATH=str(t.path))
            res = subprocess.run(cmd, cwd=t.path, env=env, capture_output=True, text=True)
            header.append(f"- round {r + 1} `{lab}`: exit {res.returncode}, load average {load:.1f} before")
            if not (out / "results.parquet").exists():
                print(f"error: `{lab}` round {r + 1} wrote no results (exit {res.returncode}): "
                      f"{(res.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
                return 1
            runs[lab].append(pd.read_parquet(out / "results.parquet"))
            print(f"round {r + 1} {lab}: {len(runs[lab][-1])} rows", flush=True)
    res = compare(runs)
    res["rows"].to_csv(a.out / "before-after.csv", index=False)
    (a.out / "before-after.md").write_text(markdown(res, header))
    print(f"wrote {a.out / 'before-after.md'}")
    broken = any(res["missing"].values()) or res["not_ok"]
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
