"""Regression gate: `bench.py gate --baseline B --current C` fails (exit 1) when a row got slower or broke.

Rows match on (suite, case, variant, dtype, device). For each pair that both ran `ok` on the same device
model and software (device_name, torch, triton, cuda, driver; threads, cold, cuda_graph settings), the
decision uses every per-call sample, not only the medians:

    ratio = median(current samples) / median(baseline samples)
    CI    = percentile bootstrap interval (95% by default, 2000 resamples) of that ratio: both sample sets
            are resampled with replacement independently and the ratio of the two medians recomputed
    regression  <=>  ratio > 1 + threshold   AND   CI lower end > 1
    improvement <=>  ratio < 1 / (1 + threshold)   AND   CI upper end < 1

The threshold (default 5%, per suite with --suite-threshold) is the practical bar; the interval is the
statistical one. Both are needed: samples inside one run are not independent (clock and load drift), so a
bootstrap over them understates run-to-run variation and a threshold alone would let noise through on short
runs. The median is used because a shared machine makes outliers; the bootstrap needs no distribution.
A rank test (Mann-Whitney) was the alternative; the bootstrap was chosen because it gives the size of the
change with its interval, which is what a pull request comment should show.

Always failing: current rows `incorrect` or `error`, and a gate where no row could be compared at all
(a wrong baseline, another GPU, a machine busy throughout: a gate that checked nothing must not pass). Reported, not compared: rows on a different device
model or software version (which field differs is named), rows measured while other processes used
more than 20% of the machine's CPU time (the host's, on GPU runs) (telemetry's `cpu_others_pct`; --allow-contended compares them), rows missing from the current run (fail only
with --fail-on-missing), new rows, rows skipped now. Exit status: 0 pass, 1 fail, 2 bad input.

Confirmation: `--baseline B1 B2 --current C1 C2` gates the pairs (B1, C1) and (B2, C2) and calls a row a
regression only when it regresses in both; one baseline with several current runs pairs it with each.
Back-to-back runs of the same code on a shared machine differ by ~2% (sd of the ratio of medians, measured
here), so a 5% bar alone raises an alarm in a few runs in a hundred; re-running both sides on alarm and
requiring both pairs to agree cuts that to nearly none (docs/telemetry-and-gates.md has the measured rates).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from harness import result_sets as RS

ENV_FIELDS = ("device_name", "torch", "triton", "cuda", "driver")
SETTING_FIELDS = ("threads", "cold", "cuda_graph")
FAILING = ("regression", "broken")
ORDER = ("broken", "regression", "missing", "not compared", "skipped", "new", "fixed", "improved", "unchanged")


@dataclass
class GateConfig:
    threshold: float = 0.05
    suite_thresholds: dict[str, float] = field(default_factory=dict)
    confidence: float = 0.95
    resamples: int = 2000
    seed: int = 0
    min_samples: int = 5
    ignore_env: tuple[str, ...] = ()
    fail_on_missing: bool = False
    allow_contended: bool = False

    def threshold_for(self, suite: str) -> float:
        return self.suite_thresholds.get(suite, self.threshold)


def ratio_ci(base, cur, resamples: int = 2000, confidence: float = 0.95,
             rng: np.random.Generator | None = None) -> tuple[float, float, float]:
    """(median(cur)/median(base), lower, upper): percentile bootstrap interval of the ratio of medians."""
    b = np.asarray(base, dtype=np.float64)
    c = np.asarray(cur, dtype=np.float64)
    ratio = float(np.median(c) / np.median(b))
    rng = rng or np.random.default_rng(0)
    mb = np.median(b[rng.integers(0, b.size, (resamples, b.size))], axis=1)
    mc = np.median(c[rng.integers(0, c.size, (resamples, c.size))], axis=1)
    r = mc / mb
    a = (1.0 - confidence) / 2
    lo, hi = np.quantile(r, [a, 1 - a])
    return ratio, float(lo), float(hi)


def _val(row: pd.Series, col: str) -> Any:
    v = row.get(col) if col in row.index else None
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return v


def _samples(row: pd.Series) -> np.ndarray:
    s = _val(row, "samples_ms")
    try:
        x = np.asarray(list(s) if s is not None else [], dtype=np.float64)
    except (TypeError, ValueError):
        x = np.asarray([], dtype=np.float64)
    return x[np.isfinite(x) & (x > 0)]


CONTENDED_PCT = 20.0     # other processes' share of the CPUs above which a CPU timing is called contended


def contention(row: pd.Series, side: str) -> str | None:
    """'<side> contended (...)' when other processes used more than CONTENDED_PCT of the CPUs."""
    o = _val(row, "cpu_others_pct")
    try:
        if o is not None and float(o) > CONTENDED_PCT:
            return f"{side} contended (other processes used {float(o):.0f}% of the CPUs)"
    except (TypeError, ValueError):
        pass
    return None


def measurement_warnings(row: pd.Series, side: str) -> list[str]:
    """Why a row's timing may not reflect the code: throttling (power/heat), CPU contention."""
    out = []
    if _val(row, "throttled") is True:
        out.append(f"{side} throttled ({_val(row, 'throttle_reasons') or 'power/heat'})")
    c = contention(row, side)
    if c:
        out.append(c)
    return out


def _mismatch(b: pd.Series, c: pd.Series, cfg: GateConfig) -> list[str]:
    out = []
    for f in ENV_FIELDS + SETTING_FIELDS:
        if f in cfg.ignore_env:
            continue
        vb, vc = _val(b, f), _val(c, f)
        if vb is not None and vc is not None and str(vb) != str(vc):
            out.append(f"{f}: {vb} -> {vc}")
    return out


def compare_tables(base: pd.DataFrame, cur: pd.DataFrame, cfg: GateConfig | None = None) -> pd.DataFrame:
    """One verdict row per key present in either table."""
    cfg = cfg or GateConfig()
    rng = np.random.default_rng(cfg.seed)
    base, _ = RS.latest_per_key(base)
    cur, _ = RS.latest_per_key(cur)
    key = list(RS.KEY)
    bi = {tuple(r[k] for k in key): r for _, r in base.iterrows()}
    ci = {tuple(r[k] for k in key): r for _, r in cur.iterrows()}
    rows = []
    for k in list(bi) + [k for k in ci if k not in bi]:
        b, c = bi.get(k), ci.get(k)
        out = dict(zip(key, k))
        thr = cfg.threshold_for(k[0])
        out.update(threshold=thr, base_ms=math.nan, cur_ms=math.nan, ratio=math.nan, ci_lo=math.nan,
                   ci_hi=math.nan, n_base=0, n_cur=0, note="")
        if b is not None and _val(b, "median_ms") is not None:
            out["base_ms"] = float(b["median_ms"])
        if c is not None and _val(c, "median_ms") is not None:
            out["cur_ms"] = float(c["median_ms"])
        cs = str(_val(c, "status")) if c is not None else None
        bs = str(_val(b, "status")) if b is not None else None
        if c is None:
            out.update(verdict="missing", note=f"in the baseline ({bs}), not in the current run")
        elif cs in ("incorrect", "error"):
            why = str(_val(c, "reason") or "")
            was = f"was {bs}" if bs else "new row"
            out.update(verdict="broken", note=f"{cs} ({was}): {why}"[:300])
        elif b is None:
            out.update(verdict="new", note=f"not in the baseline ({cs})")
        elif cs != "ok":
            out.update(verdict="skipped", note=f"{cs} now, {bs} in the baseline: {_val(c, 'reason') or ''}"[:300])
        elif bs != "ok":
            out.update(verdict="fixed", note=f"ok now, {bs} in the baseline")
        elif (mm := _mismatch(b, c, cfg)):
            out.update(verdict="not compared", note="; ".join(mm))
        elif not cfg.allow_contended and (busy := [x for x in (contention(b, "baseline"), contention(c, "current")) if x]):
            out.update(verdict="not compared", note="; ".join(busy) + ": re-run on a quiet machine (or --allow-contended)")
        else:
            xb, xc = _samples(b), _samples(c)
            out.update(n_base=int(xb.size), n_cur=int(xc.size))
            if xb.size >= cfg.min_samples and xc.size >= cfg.min_samples:
                r, lo, hi = ratio_ci(xb, xc, cfg.resamples, cfg.confidence, rng)
                out.update(ratio=r, ci_lo=lo, ci_hi=hi)
                if r > 1 + thr and lo > 1:
                    out["verdict"] = "regression"
                elif r < 1 / (1 + thr) and hi < 1:
                    out["verdict"] = "improved"
                else:
                    out["verdict"] = "unchanged"
                    if r > 1 + thr:
                        out["note"] = "slower beyond the threshold, but not significant given the spread"
            elif not math.isnan(out["base_ms"]) and not math.isnan(out["cur_ms"]) and out["base_ms"] > 0:
                # Too few samples for an interval: the medians alone decide, and the note says so.
                r = out["cur_ms"] / out["base_ms"]
                out.update(ratio=r, note=f"fewer than {cfg.min_samples} samples: decided on medians only")
                out["verdict"] = "regression" if r > 1 + thr else "improved" if r < 1 / (1 + thr) else "unchanged"
            else:
                out.update(verdict="not compared", note="no timing in one of the runs")
        if b is not None and c is not None and out["verdict"] in ("regression", "improved", "unchanged"):
            warn = measurement_warnings(b, "baseline") + measurement_warnings(c, "current")
            if warn:
                out["note"] = "; ".join(([out["note"]] if out["note"] else []) + warn)
                out["suspect"] = True
        if out["verdict"] == "missing" and cfg.fail_on_missing:
            out["note"] += " (fails: --fail-on-missing)"
        rows.append(out)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=key + ["verdict"])
    df["_o"] = df["verdict"].map({v: i for i, v in enumerate(ORDER)})
    return df.sort_values(["_o", "suite", "case", "variant", "dtype"], kind="stable").drop(columns="_o").reset_index(drop=True)


def compare_many(bases: list[pd.DataFrame] | pd.DataFrame, currents: list[pd.DataFrame],
                 cfg: GateConfig | None = None) -> pd.DataFrame:
    """Verdicts over several (baseline, current) pairs: re-runs that confirm or dismiss an alarm.

    One baseline is paired with every current run; as many baselines as current runs are paired in order
    (a fresh A/B re-run measures both sides again under the same conditions). A row is a regression only
    when it regresses in every pair that has it (the numbers shown are those of the pair with the smallest
    slowdown); broken in any current run is broken; otherwise the first pair's verdict stands, noting an
    unconfirmed alarm."""
    cfg = cfg or GateConfig()
    if isinstance(bases, pd.DataFrame):
        bases = [bases]
    if len(bases) == 1:
        pairs = [(bases[0], c) for c in currents]
    elif len(bases) == len(currents):
        pairs = list(zip(bases, currents))
    else:
        raise RS.BadInput(f"{len(bases)} baselines and {len(currents)} current runs: give one baseline, "
                          "or one per current run")
    if len(pairs) == 1:
        return compare_tables(pairs[0][0], pairs[0][1], cfg)
    frames = [compare_tables(b, c, cfg) for b, c in pairs]
    key = list(RS.KEY)
    allv = pd.concat([f.assign(_run=i) for i, f in enumerate(frames)], ignore_index=True)
    out = []
    for _, g in allv.groupby(key, sort=False, dropna=False):
        present = g[g["verdict"] != "missing"]
        if present.empty:
            out.append(g.iloc[0].to_dict())
            continue
        broken = present[present["verdict"] == "broken"]
        reg = present[present["verdict"] == "regression"]
        if len(broken):
            r = broken.iloc[0].to_dict()
        elif len(reg) == len(present):
            r = reg.sort_values("ratio").iloc[0].to_dict()
            r["note"] = (r["note"] + "; " if r["note"] else "") + f"regression in all {len(present)} pairs of runs"
        elif len(reg):
            r = reg.sort_values("ratio").iloc[0].to_dict()
            r["verdict"] = "unchanged"
            r["note"] = f"regression in {len(reg)} of {len(present)} pairs of runs: not confirmed"
        else:
            r = present.iloc[0].to_dict()
        out.append(r)
    df = pd.DataFrame(out).drop(columns="_run")
    df["_o"] = df["verdict"].map({v: i for i, v in enumerate(ORDER)})
    return df.sort_values(["_o", "suite", "case", "variant", "dtype"], kind="stable").drop(columns="_o").reset_index(drop=True)


COMPARED = ("regression", "improved", "unchanged")


def nothing_compared(verdicts: pd.DataFrame) -> bool:
    """True when no row could be compared: a gate that checked nothing must not pass."""
    return not bool(len(verdicts)) or not bool(verdicts["verdict"].isin(COMPARED).any())


def failed(verdicts: pd.DataFrame, cfg: GateConfig) -> bool:
    bad = set(FAILING) | ({"missing"} if cfg.fail_on_missing else set())
    return nothing_compared(verdicts) or bool(verdicts["verdict"].isin(bad).any())


# ------------------------------------------------------------------------------------------------ markdown

def _fmt(x: Any, spec: str = ".4g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return format(x, spec) if isinstance(x, (int, float, np.floating, np.integer)) else str(x)


def _cell(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _table(df: pd.DataFrame, with_stats: bool = True) -> str:
    head = ["suite", "case", "variant", "dtype", "device"]
    cols = head + (["baseline ms", "current ms", "change", "CI of ratio", "n"] if with_stats else []) + ["verdict", "note"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = [_cell(r[h]) for h in head]
        if with_stats:
            ch = "" if math.isnan(r["ratio"]) else f"{(r['ratio'] - 1) * 100:+.1f}%"
            ci = "" if math.isnan(r["ci_lo"]) else f"[{r['ci_lo']:.3f}, {r['ci_hi']:.3f}]"
            cells += [_fmt(r["base_ms"]), _fmt(r["cur_ms"]), ch, ci, f"{r['n_base']}/{r['n_cur']}"]
        mark = {"regression": "**regression**", "broken": "**broken**"}.get(r["verdict"], r["verdict"])
        cells += [mark, _cell(r["note"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _describe(df: pd.DataFrame) -> str:
    parts = []
    for rid, g in RS.runs(df):
        dev = ", ".join(sorted({str(x) for x in g.get("device_name", pd.Series(dtype=str)).dropna()}))
        com = ", ".join(sorted({str(x) for x in g.get("commit", pd.Series(dtype=str)).dropna()}))
        parts.append(f"`{rid}` ({dev}{'; commit ' + com if com else ''})")
    return ", ".join(parts)


def render_markdown(verdicts: pd.DataFrame, cfg: GateConfig, base: pd.DataFrame | None = None,
                    cur: pd.DataFrame | None = None) -> str:
    counts = verdicts["verdict"].value_counts().to_dict() if len(verdicts) else {}
    fail = failed(verdicts, cfg)
    bad = ", ".join(f"{counts[v]} {v}" for v in ("broken", "regression") if counts.get(v))
    if cfg.fail_on_missing and counts.get("missing"):
        bad = ", ".join(x for x in (bad, f"{counts['missing']} missing") if x)
    if nothing_compared(verdicts):
        bad = ", ".join(x for x in (bad, "no row could be compared") if x)
    title = f"## Benchmark gate: {'FAIL' if fail else 'PASS'}" + (f" ({bad})" if bad else "")
    out = [title, ""]
    if base is not None:
        out.append(f"- baseline: {_describe(base)}")
    if cur is not None:
        out.append(f"- current: {_describe(cur)}")
    per = ", ".join(f"{s} {t:.0%}" for s, t in sorted(cfg.suite_thresholds.items()))
    out.append(f"- rule: slower than +{cfg.threshold:.0%}{' (' + per + ')' if per else ''} and the "
               f"{cfg.confidence:.0%} bootstrap interval of the ratio of medians above 1 "
               f"({cfg.resamples} resamples); `incorrect`/`error` rows always fail")
    if "suspect" in verdicts.columns and verdicts["suspect"].fillna(False).astype(bool).any():
        n = int(verdicts["suspect"].fillna(False).astype(bool).sum())
        out.append(f"- **warning**: {n} compared row(s) were measured while throttled or while other processes "
                   "used the CPUs (see the notes): their change may be the machine's, not the code's; re-run")
    out += ["", "| verdict | rows |", "|---|---|"]
    out += [f"| {v} | {counts[v]} |" for v in ORDER if counts.get(v)]
    sections = [("Failures", verdicts[verdicts["verdict"].isin(FAILING + (("missing",) if cfg.fail_on_missing else ()))], True),
                ("Improvements", verdicts[verdicts["verdict"] == "improved"], True),
                ("Not compared", verdicts[verdicts["verdict"].isin(["not compared", "skipped", "new", "fixed"]
                                                                    + ([] if cfg.fail_on_missing else ["missing"]))], False)]
    for name, part, stats in sections:
        if len(part):
            out += ["", f"### {name} ({len(part)})", "", _table(part, stats)]
    same = verdicts[verdicts["verdict"] == "unchanged"]
    if len(same):
        out += ["", f"<details><summary>Unchanged ({len(same)})</summary>", "", _table(same), "", "</details>"]
    return "\n".join(out) + "\n"


# -------------------------------------------------------------------------------------------------- CLI

def _fraction(s: str) -> float:
    s = s.strip()
    v = float(s[:-1]) / 100 if s.endswith("%") else float(s)
    if not 0 <= v < 10:
        raise ValueError(s)
    return v


def _parser() -> argparse.ArgumentParser:
    p = RS.Parser(prog="bench.py gate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, nargs="+",
                   help="results file/directory, run id, or baseline name; several = re-runs paired in order "
                        "with the --current runs")
    p.add_argument("--current", required=True, nargs="+",
                   help="results file/directory or run id; several = re-runs of the same code, and a row "
                        "regresses only if it regresses in every (baseline, current) pair")
    p.add_argument("--threshold", help="slowdown that counts (0.05 or 5%%; default 5%%, or --config's)")
    p.add_argument("--suite-threshold", action="append", default=[], metavar="SUITE=T",
                   help="per-suite threshold, e.g. gemm=8%% (repeatable)")
    p.add_argument("--config", help="JSON file: {\"threshold\": 0.05, \"suites\": {\"gemm\": 0.08}}")
    p.add_argument("--confidence", type=float, default=0.95, help="bootstrap interval level (default 0.95)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ignore-env", default="", help="comma-separated fields allowed to differ, e.g. driver,torch")
    p.add_argument("--fail-on-missing", action="store_true", help="a baseline row absent now fails the gate")
    p.add_argument("--allow-contended", action="store_true",
                   help=f"compare rows measured while other processes used >{CONTENDED_PCT:.0f}%% of the CPUs "
                        "(default: reported as not compared)")
    p.add_argument("--markdown", help="also write the summary to this file")
    p.add_argument("--json", help="write the per-row verdicts as JSON to this file")
    p.add_argument("--no-step-summary", action="store_true",
                   help="do not append to $GITHUB_STEP_SUMMARY (appended by default when it is set)")
    return p


def config_from_args(a: argparse.Namespace) -> GateConfig:
    cfg = GateConfig(confidence=a.confidence, resamples=a.resamples, seed=a.seed,
                     fail_on_missing=a.fail_on_missing, allow_contended=a.allow_contended,
                     ignore_env=tuple(x.strip() for x in a.ignore_env.split(",") if x.strip()))
    if a.config:
        try:
            data = json.loads(open(a.config).read())
            if "threshold" in data:
                cfg.threshold = _fraction(str(data["threshold"]))
            cfg.suite_thresholds.update({str(k): _fraction(str(v)) for k, v in data.get("suites", {}).items()})
        except (OSError, ValueError, AttributeError, TypeError) as e:
            raise RS.BadInput(f"--config {a.config}: {type(e).__name__}: {e}") from None
    try:
        if a.threshold is not None:
            cfg.threshold = _fraction(a.threshold)
        for item in a.suite_threshold:
            name, _, val = item.partition("=")
            if not name or not val:
                raise ValueError(item)
            cfg.suite_thresholds[name] = _fraction(val)
    except ValueError as e:
        raise RS.BadInput(f"bad threshold {e}: give a fraction (0.05) or a percentage (5%)") from None
    if not 0.5 <= cfg.confidence < 1 or cfg.resamples < 100:
        raise RS.BadInput("--confidence must be in [0.5, 1) and --resamples at least 100")
    unknown = set(cfg.ignore_env) - set(ENV_FIELDS + SETTING_FIELDS)
    if unknown:
        raise RS.BadInput(f"--ignore-env: unknown field(s) {', '.join(sorted(unknown))}; "
                          f"known: {', '.join(ENV_FIELDS + SETTING_FIELDS)}")
    return cfg


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    try:
        a = p.parse_args(argv)
        cfg = config_from_args(a)
        bases = [RS.load(b) for b in a.baseline]
        currents = [RS.load(c) for c in a.current]
        base, cur = pd.concat(bases, ignore_index=True), pd.concat(currents, ignore_index=True)
        verdicts = compare_many(bases, currents, cfg)
        md = render_markdown(verdicts, cfg, base, cur)
    except RS.BadInput as e:
        print(f"bench.py gate: error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(md)
    try:
        if a.markdown:
            with open(a.markdown, "w") as f:
                f.write(md)
        if a.json:
            verdicts.to_json(a.json, orient="records", indent=1)
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary and not a.no_step_summary:
            with open(summary, "a") as f:
                f.write(md)
    except OSError as e:
        print(f"bench.py gate: error: cannot write output: {e}", file=sys.stderr)
        return 2
    return 1 if failed(verdicts, cfg) else 0


if __name__ == "__main__":
    sys.exit(main())
