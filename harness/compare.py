"""Compare runs across machines: `bench.py compare RUN_A RUN_B [...]`.

Rows are aligned by (suite, case, variant, dtype) across runs made anywhere (an H100 and an A100, this CPU
and a GPU). Every run (and every device within a run) is a side, labelled A, B, C... For each metric
the table shows every side's value and its ratio to side A; `pct_peak` puts each number against its own
device's roofline, which is what makes a comparison between different devices fair: an A100 reaching 85%
of its bandwidth is doing as well as an H100 reaching 85% of its own, though the H100 is faster.

Ratios: for times and energies `A/X` (above 1: X is faster / spends less), for rates and % of peak `X/A`
(above 1: X achieves more); the header says which. Rows not `ok` on a side show their status.
"""
from __future__ import annotations

import math
import sys
from typing import Any

import pandas as pd

from harness import result_sets as RS

KEY = ("suite", "case", "variant", "dtype")
LOWER_IS_BETTER = {"median_ms", "min_ms", "p20_ms", "p80_ms", "energy_per_call_j", "power_mean_w", "cv"}
DEFAULT_METRICS = ("median_ms", "pct_peak", "energy_per_call_j")


def sides(df: pd.DataFrame) -> list[dict[str, Any]]:
    """One side per (run_id, device), in order of appearance; label A, B, ..."""
    out = []
    for (rid, dev), g in df.groupby(["run_id", "device"], sort=False):
        label = RS.side_label(len(out))
        names = sorted({str(x) for x in g["device_name"].dropna()}) if "device_name" in g else []
        commit = sorted({str(x) for x in g["commit"].dropna()}) if "commit" in g else []
        peak = sorted({str(x) for x in g["peak_source"].dropna() if str(x)}) if "peak_source" in g else []
        out.append(dict(label=label, run_id=str(rid), device=str(dev), device_name=", ".join(names),
                        commit=", ".join(commit), peak_source=", ".join(peak), rows=g))
    return out


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def compare_frame(df: pd.DataFrame, metrics: tuple[str, ...] = DEFAULT_METRICS) -> tuple[pd.DataFrame, list[dict]]:
    """The aligned wide table: KEY, then per metric `<metric> <label>` per side and `<metric> ratio <label>`."""
    ss = sides(df)
    if len(ss) < 2:
        raise RS.BadInput(f"need at least two runs to compare, got {len(ss)}")
    missing = [m for m in metrics if m not in df.columns]
    if missing:
        raise RS.BadInput(f"unknown metric(s) {', '.join(missing)}")
    per_side = []
    for s in ss:
        rows, _ = RS.latest_per_key(s["rows"], KEY)
        per_side.append({tuple(r[k] for k in KEY): r for _, r in rows.iterrows()})
    keys: list[tuple] = []
    for d in per_side:
        keys += [k for k in d if k not in keys]
    out = []
    for k in sorted(keys, key=lambda k: tuple(str(x) for x in k)):
        rec: dict[str, Any] = dict(zip(KEY, k))
        present = 0
        for s, d in zip(ss, per_side):
            r = d.get(k)
            status = "" if r is None else str(r["status"])
            rec[f"status {s['label']}"] = status or "absent"
            present += r is not None
            for m in metrics:
                rec[f"{m} {s['label']}"] = _num(r[m]) if r is not None and status == "ok" else math.nan
        for m in metrics:
            a = rec[f"{m} A"]
            for s in ss[1:]:
                x = rec[f"{m} {s['label']}"]
                if m in LOWER_IS_BETTER:
                    ratio = a / x if x and not math.isnan(x) and x > 0 else math.nan
                else:
                    ratio = x / a if a and not math.isnan(a) and a > 0 else math.nan
                rec[f"{m} ratio {s['label']}"] = ratio
        rec["_present"] = present
        out.append(rec)
    table = pd.DataFrame(out)
    return table, ss


def _fmt(v: Any, m: str) -> str:
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if " ratio " in m:
        return f"{v:.2f}x"
    if m.startswith("pct_peak"):
        return f"{v:.1f}%"
    return f"{v:.4g}"


def render(table: pd.DataFrame, ss: list[dict], metrics: tuple[str, ...], fmt: str = "text") -> str:
    labels = [s["label"] for s in ss]
    head = list(KEY)
    cols: list[str] = []
    for m in metrics:
        cols += [f"{m} {l}" for l in labels] + [f"{m} ratio {l}" for l in labels[1:]]
    cells = []
    for _, r in table.iterrows():
        row = [str(r[k]) for k in head]
        for c in cols:
            side = c.rsplit(" ", 1)[1]
            st = r.get(f"status {side}", "")
            if " ratio " not in c and st not in ("ok",):
                row.append(st)                              # absent / skipped / error / incorrect
            else:
                row.append(_fmt(r[c], c))
        cells.append(row)
    names = head + [_colname(c) for c in cols]
    legend = ["Runs:"] + [f"  {s['label']}: {s['device_name']} [{s['device']}] run {s['run_id']}"
                          + (f", commit {s['commit']}" if s["commit"] else "")
                          + (f", peak {s['peak_source']}" if s["peak_source"] else "") for s in ss]
    legend.append("Ratios: time/energy A/X (>1: X is faster / uses less); rates and % of peak X/A.")
    if fmt == "csv":
        df = pd.DataFrame(cells, columns=names)
        return df.to_csv(index=False)
    if fmt == "markdown":
        lines = ["\n".join("- " + l.strip() for l in legend[1:]), "",
                 "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
        return "\n".join(lines) + "\n"
    widths = [max(len(n), *(len(r[i]) for r in cells)) if cells else len(n) for i, n in enumerate(names)]
    lines = legend + [""]
    lines.append("  ".join(n.ljust(w) for n, w in zip(names, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines) + "\n"


def _colname(c: str) -> str:
    m, *rest = c.split(" ")
    if rest[0] == "ratio":
        return f"{m} A/{rest[1]}" if m in LOWER_IS_BETTER else f"{m} {rest[1]}/A"
    return c


def main(argv: list[str] | None = None) -> int:
    p = RS.Parser(prog="bench.py compare", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="results files/directories, run ids or baseline names")
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                   help=f"comma-separated result columns (default {','.join(DEFAULT_METRICS)})")
    p.add_argument("--format", choices=("text", "markdown", "csv"), default="text")
    p.add_argument("--all", action="store_true", help="also rows present in one run only")
    p.add_argument("--out", help="write to this file instead of stdout")
    try:
        a = p.parse_args(argv)
        metrics = tuple(m.strip() for m in a.metrics.split(",") if m.strip())
        df = RS.load(a.runs)
        if a.metrics == ",".join(DEFAULT_METRICS):      # defaults: leave out metrics no run has
            metrics = tuple(m for m in metrics if m == "median_ms" or (m in df and df[m].notna().any()))
        table, ss = compare_frame(df, metrics)
        if not a.all:
            table = table[table["_present"] >= 2]
        if table.empty:
            raise RS.BadInput("no (suite, case, variant, dtype) row is common to the runs (use --all)")
        text = render(table, ss, metrics, a.format)
    except RS.BadInput as e:
        print(f"bench.py compare: error: {e}", file=sys.stderr)
        return 2
    try:
        if a.out:
            with open(a.out, "w") as f:
                f.write(text)
        else:
            sys.stdout.write(text)
    except OSError as e:
        print(f"bench.py compare: error: cannot write {a.out}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
