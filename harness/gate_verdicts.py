"""Verdicts of a gate run, shared by `bench.py gate` (stored baselines) and `bench.py ab` (paired, in one job).

Rows arrive either already decided (broken, missing, new, skipped, fixed, not compared) or with a RowStats
(harness.gate_stats) to compare, tested by the moderated t-test, or also with `_tested`, the test with the
row's noise learned from earlier A/A runs (harness/gate_noise.py, `bench.py ab --noise`), used instead.
`decide` tests every compared row, adjusts the p-values over all of them (Holm: family-wise error; or
Benjamini-Hochberg: false discovery rate), and calls a row

    regression  <=>  ratio > 1 + max(threshold, noise floor)  AND  adjusted p <= alpha
    improved    <=>  ratio < 1 / (1 + max(threshold, noise floor))  AND  the row's interval below 1
                     (reported only: improvements fail nothing, so they are not part of the error control)
    unchanged   otherwise (with a note when the change passed the bar but not the test, or the reverse).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness import gate_stats as S

KEY = ["suite", "case", "variant", "dtype", "device"]
FAILING = ("regression", "broken")
COMPARED = ("regression", "improved", "unchanged")
ORDER = ("broken", "regression", "missing", "not compared", "skipped", "new", "fixed", "improved", "unchanged")
COLUMNS = KEY + ["verdict", "base_ms", "cur_ms", "ratio", "ci_lo", "ci_hi", "p", "p_adj", "floor", "threshold",
                 "n_base", "n_cur", "note"]


@dataclass
class GateConfig:
    threshold: float = 0.05
    suite_thresholds: dict[str, float] = field(default_factory=dict)
    alpha: float = 0.05
    correction: str = "holm"           # "holm" (family-wise error) or "fdr" (Benjamini-Hochberg)
    prior_df: float = S.PRIOR_DF
    prior_sd: float = 0.03             # assumed between-run sd of log medians when no row has two runs
    ignore_env: tuple[str, ...] = ()
    allow_missing: bool = False        # missing rows and an unfinished current run do not fail
    allow_contended: bool = False

    def threshold_for(self, suite: str) -> float:
        return self.suite_thresholds.get(suite, self.threshold)


def blank(key: dict, **kw) -> dict:
    out = {c: math.nan for c in COLUMNS}
    out.update(key)
    out.update(verdict=None, n_base=0, n_cur=0, note="")
    out.update(kw)
    return out


def decide(rows: list[dict], cfg: GateConfig) -> tuple[pd.DataFrame, dict]:
    """Fill in the compared rows (those with a `_stats` RowStats). Returns the verdict table and a summary
    (pooled sd, number compared, whether the prior sd stood in for the noise)."""
    todo = [r for r in rows if r.get("_stats") is not None]
    s2_pool, pool_df = S.pooled_variance([r["_stats"] for r in todo])
    assumed = not np.isfinite(s2_pool)
    tested = [r["_tested"] if r.get("_tested") is not None          # learned noise (harness/gate_noise.py)
              else S.moderated_t(r["_stats"], s2_pool, cfg.prior_df, cfg.alpha, cfg.prior_sd) for r in todo]
    p = np.array([t.p for t in tested], dtype=np.float64)
    ok = np.isfinite(p)
    p_adj = np.full(p.size, math.nan)
    p_adj[ok] = S.adjust(p[ok], cfg.correction)
    for r, t, pa in zip(todo, tested, p_adj):
        thr = cfg.threshold_for(r["suite"])
        bar = max(thr, t.floor) if np.isfinite(t.floor) else thr
        r.update(ratio=t.ratio, ci_lo=t.ci_lo, ci_hi=t.ci_hi, p=t.p, p_adj=pa, floor=t.floor, threshold=bar)
        notes = [r["note"]] if r["note"] else []
        if not np.isfinite(pa):
            r["verdict"] = "not compared"
            notes.append("no variance estimate (one run on each side and no other row to pool with)")
        elif t.ratio > 1 + bar and pa <= cfg.alpha:
            r["verdict"] = "regression"
        elif t.ratio < 1 / (1 + bar) and t.ci_hi < 1:
            r["verdict"] = "improved"
        else:
            r["verdict"] = "unchanged"
            if t.ratio > 1 + bar:
                notes.append(f"slower beyond the bar, but not significant over the family (adjusted p {pa:.2g})")
            elif t.ratio > 1 + thr:
                notes.append(f"slower than +{thr:.0%} but inside this row's noise floor (+{t.floor:.1%})")
        r["note"] = "; ".join(notes)
    out = pd.DataFrame([{c: r.get(c) for c in COLUMNS + ["suspect"] if c in r or c in COLUMNS} for r in rows],
                       columns=COLUMNS + (["suspect"] if any("suspect" in r for r in rows) else []))
    if len(out):
        out = sort_verdicts(out)
    summary = {"compared": int(ok.sum()), "pooled_sd": math.sqrt(s2_pool) if not assumed else math.nan,
               "pooled_df": pool_df, "assumed_sd": cfg.prior_sd if assumed and len(todo) else None}
    return out, summary


def sort_verdicts(out: pd.DataFrame) -> pd.DataFrame:
    """Failures first (ORDER), then by suite, case, variant, dtype; a fresh index."""
    out = out.assign(_o=out["verdict"].map({v: i for i, v in enumerate(ORDER)}))
    out = out.sort_values(["_o", "suite", "case", "variant", "dtype"], kind="stable").drop(columns="_o")
    return out.reset_index(drop=True)


def nothing_compared(verdicts: pd.DataFrame) -> bool:
    """True when no row could be compared: a gate that checked nothing must not pass."""
    return not bool(len(verdicts)) or not bool(verdicts["verdict"].isin(COMPARED).any())


def failing_rows(verdicts: pd.DataFrame, cfg: GateConfig) -> pd.DataFrame:
    bad = set(FAILING) | (set() if cfg.allow_missing else {"missing"})
    return verdicts[verdicts["verdict"].isin(bad)]


def failed(verdicts: pd.DataFrame, cfg: GateConfig, incomplete: list[str] | None = None) -> bool:
    return (nothing_compared(verdicts) or bool(len(failing_rows(verdicts, cfg)))
            or bool(incomplete and not cfg.allow_missing))
