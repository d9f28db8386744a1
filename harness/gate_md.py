"""Markdown of a gate run (`bench.py gate` and `bench.py ab`): for CI logs, job summaries and PR comments.

Title line with the outcome and what failed, the runs, the rule (threshold, noise floors, the test and the
error control it gives), counts per verdict, tables of failures, improvements and rows not compared, and the
unchanged rows folded in a <details> block.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from harness import result_sets as RS
from harness.gate_stats import CORRECTION_TEXT
from harness.gate_verdicts import FAILING, ORDER, GateConfig, failed, failing_rows, nothing_compared

HEAD = ["suite", "case", "variant", "dtype", "device"]


def _fmt(x: Any, spec: str = ".4g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return format(x, spec) if isinstance(x, (int, float, np.floating, np.integer)) else str(x)


def _cell(s: Any) -> str:
    text = "" if s is None or (isinstance(s, float) and math.isnan(s)) else str(s)
    return text.replace("|", "\\|").replace("\n", " ")


def _pct(x: Any) -> str:
    return "" if x is None or not np.isfinite(x) else f"{x * 100:+.1f}%"


def table(df: pd.DataFrame, with_stats: bool = True, n_label: str = "n") -> str:
    cols = HEAD + (["baseline ms", "current ms", "change", "interval of ratio", "noise floor", "bar", "adj. p",
                    n_label] if with_stats else []) + ["verdict", "note"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = [_cell(r[h]) for h in HEAD]
        if with_stats:
            ci = "" if not np.isfinite(r["ci_lo"]) else f"[{r['ci_lo']:.3f}, {r['ci_hi']:.3f}]"
            cells += [_fmt(r["base_ms"]), _fmt(r["cur_ms"]), _pct(r["ratio"] - 1), ci, _pct(r["floor"]),
                      _pct(r["threshold"]), _fmt(r["p_adj"], ".2g"), f"{r['n_base']}/{r['n_cur']}"]
        mark = {"regression": "**regression**", "broken": "**broken**", "missing": "**missing**"}
        cells += [mark.get(r["verdict"], r["verdict"]) if r["verdict"] != "missing" or "fails" in str(r["note"])
                  else "missing", _cell(r["note"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def describe_runs(df: pd.DataFrame) -> str:
    parts = []
    for rid, g in RS.runs(df):
        dev = ", ".join(sorted({str(x) for x in g.get("device_name", pd.Series(dtype=str)).dropna()}))
        com = ", ".join(sorted({str(x) for x in g.get("commit", pd.Series(dtype=str)).dropna()}))
        parts.append(f"`{rid}` ({dev}{'; commit ' + com if com else ''})")
    return ", ".join(parts)


def rule_lines(cfg: GateConfig, summary: dict, design: str) -> list[str]:
    per = ", ".join(f"{s} {t:.0%}" for s, t in sorted(cfg.suite_thresholds.items()))
    n = summary.get("compared", 0)
    lines = [f"- rule: a row fails when it is slower than +{cfg.threshold:.0%}{' (' + per + ')' if per else ''} "
             "or its noise floor, whichever is larger, AND significantly slower after the correction; "
             "`incorrect`/`error` rows, NaN or non-positive times, rows missing from the current run and an "
             "unfinished current run fail" + (" (missing rows and unfinished runs relaxed: --allow-missing)"
                                               if cfg.allow_missing else ""),
             f"- test: {design}; " + ("one-sided t-test on each row's learned noise" if "noise learned" in design
                                      else f"moderated one-sided t-test (each row's variance pooled with the "
                                           f"others', {cfg.prior_df:g} prior df, never below its own)"),
             "- error control: " + CORRECTION_TEXT[cfg.correction].format(n=n, alpha=cfg.alpha)]
    if summary.get("assumed_sd"):
        lines.append(f"- **warning**: no row has two runs on a side, so the between-run noise is *assumed* "
                     f"(sd {summary['assumed_sd']:.1%} per run), not measured: save a baseline of several runs "
                     "(`bench.py baseline save NAME RUN1 RUN2 RUN3`) or use `bench.py ab`")
    elif np.isfinite(summary.get("pooled_sd", math.nan)):
        lines.append(f"- noise: pooled sd {summary['pooled_sd']:.2%} per {'round' if 'paired' in design else 'run'} "
                     f"({summary['pooled_df']:.0f} df)")
    return lines


def render(verdicts: pd.DataFrame, cfg: GateConfig, summary: dict, design: str, header: list[str],
           incomplete: list[str] | None = None, n_label: str = "runs") -> str:
    incomplete = incomplete or []
    counts = verdicts["verdict"].value_counts().to_dict() if len(verdicts) else {}
    fail = failed(verdicts, cfg, incomplete)
    bad = [f"{counts[v]} {v}" for v in ("broken", "regression") if counts.get(v)]
    if counts.get("missing") and not cfg.allow_missing:
        bad.append(f"{counts['missing']} missing")
    if incomplete and not cfg.allow_missing:
        bad.append(f"{len(incomplete)} unfinished run(s)")
    if nothing_compared(verdicts):
        bad.append("no row could be compared")
    out = [f"## Benchmark gate: {'FAIL' if fail else 'PASS'}" + (f" ({', '.join(bad)})" if bad else ""), ""]
    out += header
    out += rule_lines(cfg, summary, design)
    for msg in incomplete:
        out.append(f"- **{'unfinished run' if not cfg.allow_missing else 'unfinished run (allowed)'}**: {msg}")
    if "suspect" in verdicts.columns and verdicts["suspect"].fillna(False).astype(bool).any():
        k = int(verdicts["suspect"].fillna(False).astype(bool).sum())
        out.append(f"- **warning**: {k} compared row(s) were measured while throttled or while other processes "
                   "used the CPUs (see the notes): their change may be the machine's, not the code's; re-run")
    out += ["", "| verdict | rows |", "|---|---|"]
    out += [f"| {v} | {counts[v]} |" for v in ORDER if counts.get(v)]
    fails = failing_rows(verdicts, cfg)
    if not cfg.allow_missing:
        verdicts = verdicts.copy()
        verdicts.loc[verdicts["verdict"] == "missing", "note"] += " (fails: --allow-missing relaxes)"
        fails = failing_rows(verdicts, cfg)
    other = ["not compared", "skipped", "new", "fixed"] + (["missing"] if cfg.allow_missing else [])
    for name, part, stats in (("Failures", fails, True),
                              ("Improvements", verdicts[verdicts["verdict"] == "improved"], True),
                              ("Not compared", verdicts[verdicts["verdict"].isin(other)], False)):
        if len(part):
            out += ["", f"### {name} ({len(part)})", "", table(part, stats, n_label)]
    same = verdicts[verdicts["verdict"] == "unchanged"]
    if len(same):
        out += ["", f"<details><summary>Unchanged ({len(same)})</summary>", "", table(same, True, n_label), "",
                "</details>"]
    return "\n".join(out) + "\n"


__all__ = ["render", "table", "describe_runs", "FAILING"]
