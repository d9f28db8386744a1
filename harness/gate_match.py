"""Stored-baseline gate: match the rows of baseline runs and current runs, and classify them.

A baseline may hold several runs (`bench.py baseline save NAME RUN1 RUN2 RUN3`, or several --baseline
arguments); so may the current side (several --current runs of the same code). Rows match on
(suite, case, variant, dtype, device); inside one run the latest row per key counts. Each run contributes one
number per row, its median; the spread of those medians between the baseline's runs is the row's noise floor
(harness.gate_stats). Rows are compared only when both sides ran `ok` on the same device model and software
(device_name, torch, triton, cuda, driver) with the same settings (threads, cold, cuda_graph), and were not
measured while other processes took more than CONTENDED_PCT of the CPUs (runs that were are left out of the
row's data; a row left with none is *not compared*).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness import gate_stats as S
from harness import result_sets as RS
from harness.gate_verdicts import KEY, GateConfig, blank

ENV_FIELDS = ("device_name", "torch", "triton", "cuda", "driver")
SETTING_FIELDS = ("threads", "cold", "cuda_graph")
CONTENDED_PCT = 20.0     # other processes' share of the CPUs above which a CPU timing is called contended


def val(row: pd.Series, col: str) -> Any:
    v = row.get(col) if col in row.index else None
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return v


def bad_time(row: pd.Series) -> str | None:
    """Why an `ok` row's timing cannot be right (NaN, infinite or non-positive median or samples), else None."""
    m = val(row, "median_ms")
    try:
        m = float(m) if m is not None else math.nan
    except (TypeError, ValueError):
        m = math.nan
    if not math.isfinite(m) or m <= 0:
        return f"status ok but median_ms is {m}"
    s = val(row, "samples_ms")
    try:
        x = np.asarray(list(s) if s is not None else [], dtype=np.float64)
    except (TypeError, ValueError):
        return "samples_ms unreadable"
    if x.size and not (np.isfinite(x) & (x > 0)).all():
        return f"{int((~(np.isfinite(x) & (x > 0))).sum())} of {x.size} samples NaN or non-positive"
    return None


def contention(row: pd.Series, side: str) -> str | None:
    """'<side> contended (...)' when other processes used more than CONTENDED_PCT of the CPUs."""
    o = val(row, "cpu_others_pct")
    try:
        if o is not None and float(o) > CONTENDED_PCT:
            return f"{side} contended (other processes used {float(o):.0f}% of the CPUs)"
    except (TypeError, ValueError):
        pass
    return None


def throttled(row: pd.Series, side: str) -> str | None:
    if val(row, "throttled") is True:
        return f"{side} throttled ({val(row, 'throttle_reasons') or 'power/heat'})"
    return None


def mismatch(b: pd.Series, c: pd.Series, cfg: GateConfig) -> list[str]:
    out = []
    for f in ENV_FIELDS + SETTING_FIELDS:
        if f in cfg.ignore_env:
            continue
        vb, vc = val(b, f), val(c, f)
        if vb is not None and vc is not None and str(vb) != str(vc):
            out.append(f"{f}: {vb} -> {vc}")
    return out


def per_run(df: pd.DataFrame) -> pd.DataFrame:
    """The latest row per (key, run): a run that was resumed or repeated a row counts once."""
    df = df.copy()
    df["run_id"] = df["run_id"].astype(str)
    out, _ = RS.latest_per_key(df, KEY + ["run_id"])
    return out


def incomplete_runs(cur: pd.DataFrame) -> list[str]:
    """Current runs that did not finish: interrupted, or crashed (no `finished` in their manifest)."""
    out = []
    for src in sorted({str(s) for s in cur.get("_source", pd.Series(dtype=str)).dropna()}):
        m = RS.read_manifest(Path(src))
        if not m or "runs" in m:
            continue                          # no manifest (a bare table), or a stored multi-run baseline
        rid = m.get("run_id", Path(src).parent.name)
        if m.get("interrupted"):
            out.append(f"{rid} was interrupted ({m.get('rows', '?')} rows written)")
        elif "finished" not in m:
            out.append(f"{rid} did not finish (crashed, killed, or still running)")
    return out


def check_suites(base: pd.DataFrame, cur: pd.DataFrame) -> None:
    bs, cs = set(base["suite"].astype(str)), set(cur["suite"].astype(str))
    if not bs & cs:
        raise RS.BadInput(f"the runs share no suite: baseline has {', '.join(sorted(bs))}, "
                          f"current has {', '.join(sorted(cs))}")


def classify(base: pd.DataFrame, cur: pd.DataFrame, cfg: GateConfig) -> list[dict]:
    """One dict per key in either side: decided already, or with `_stats` for harness.gate_verdicts.decide."""
    base, cur = per_run(base), per_run(cur)
    bg = {k: g for k, g in base.groupby(KEY, sort=False, dropna=False)}
    cg = {k: g for k, g in cur.groupby(KEY, sort=False, dropna=False)}
    rows = []
    for k in list(bg) + [k for k in cg if k not in bg]:
        rows.append(_one(dict(zip(KEY, k)), bg.get(k), cg.get(k), cfg))
    return rows


def _statuses(g: pd.DataFrame | None) -> str:
    return ", ".join(sorted({str(s) for s in g["status"]})) if g is not None else ""


def _one(key: dict, b: pd.DataFrame | None, c: pd.DataFrame | None, cfg: GateConfig) -> dict:
    out = blank(key, threshold=cfg.threshold_for(key["suite"]))
    if c is None:
        return {**out, "verdict": "missing", "note": f"in the baseline ({_statuses(b)}), not in the current run"}
    failed_c = c[c["status"].isin(["incorrect", "error"])]
    if len(failed_c):
        r = failed_c.iloc[0]
        was = f"was {_statuses(b)}" if b is not None else "new row"
        return {**out, "verdict": "broken", "note": f"{r['status']} ({was}): {val(r, 'reason') or ''}"[:300]}
    ok_c = c[c["status"] == "ok"]
    for _, r in ok_c.iterrows():
        why = bad_time(r)
        if why:
            return {**out, "verdict": "broken", "note": f"current run {r['run_id']}: {why}"}
    if b is None:
        return {**out, "verdict": "new", "note": f"not in the baseline ({_statuses(c)})"}
    if not len(ok_c):
        reason = val(c.iloc[0], "reason") or ""
        note = f"{_statuses(c)} now, {_statuses(b)} in the baseline: {reason}"
        return {**out, "verdict": "skipped", "note": note[:300]}
    ok_b = b[(b["status"] == "ok") & b.apply(lambda r: bad_time(r) is None, axis=1)]
    if not len(ok_b):
        return {**out, "verdict": "fixed", "note": f"ok now, {_statuses(b)} in the baseline"}
    mm = mismatch(ok_b.iloc[0], ok_c.iloc[0], cfg)
    if mm:
        return {**out, "verdict": "not compared", "note": "; ".join(mm)}
    notes = []
    if not cfg.allow_contended:
        busy_b = [x for _, r in ok_b.iterrows() if (x := contention(r, f"baseline {r['run_id']}"))]
        busy_c = [x for _, r in ok_c.iterrows() if (x := contention(r, f"current {r['run_id']}"))]
        ok_b = ok_b[[contention(r, "") is None for _, r in ok_b.iterrows()]]
        ok_c = ok_c[[contention(r, "") is None for _, r in ok_c.iterrows()]]
        if not len(ok_b) or not len(ok_c):
            return {**out, "verdict": "not compared",
                    "note": "; ".join(busy_b + busy_c) + ": re-run on a quiet machine (or --allow-contended)"}
        if busy_b or busy_c:
            notes.append(f"left out: {'; '.join(busy_b + busy_c)}")
    warn = [x for _, r in ok_b.iterrows() for x in (throttled(r, "baseline"), contention(r, "baseline")) if x]
    warn += [x for _, r in ok_c.iterrows() for x in (throttled(r, "current"), contention(r, "current")) if x]
    lb = np.log(ok_b["median_ms"].astype(float).to_numpy())
    lc = np.log(ok_c["median_ms"].astype(float).to_numpy())
    out.update(base_ms=float(np.exp(lb.mean())), cur_ms=float(np.exp(lc.mean())), n_base=int(lb.size),
               n_cur=int(lc.size), note="; ".join(notes + warn), _stats=S.two_groups(lb, lc))
    if warn:
        out["suspect"] = True
    return out
