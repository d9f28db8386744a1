"""Regression gate against stored runs: `bench.py gate --baseline B [B2 ...] --current C [C2 ...]`.

Exit status: 0 pass, 1 fail, 2 bad input (one line on stderr). What fails: a row significantly slower than
max(threshold, its noise floor) after the family-wise correction; `incorrect`/`error` rows; `ok` rows with a
NaN or non-positive time; rows the baseline had that the current run lacks; a current run that was
interrupted or crashed (its manifest says so); and a gate in which no row could be compared. `--allow-missing`
relaxes the missing rows and the unfinished run.

A baseline should hold several runs (`bench.py baseline save NAME RUN1 RUN2 RUN3`, or several --baseline
arguments): the spread of a row's median between them is its noise floor, which two runs of the same code
on this machine really show (the spread of samples *inside* one run does not). Several --current runs are
pooled the same way. With one run on each side the noise is assumed, and the output says so. In CI prefer
`bench.py ab` (harness/ab.py), which measures both trees in the same job, interleaved.

Modules: harness/gate_match.py (matching, classification), harness/gate_stats.py (the test, noise floors,
Holm / Benjamini-Hochberg), harness/gate_verdicts.py (the decision), harness/gate_md.py (markdown).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import pandas as pd

from harness import gate_match as M
from harness import result_sets as RS
from harness.gate_md import describe_runs, render
from harness.gate_verdicts import GateConfig, decide, failed

DESIGN_STORED = "stored runs: log of each run's median, the difference of the two sides' means"


def gate_tables(bases: list[pd.DataFrame] | pd.DataFrame, currents: list[pd.DataFrame] | pd.DataFrame,
                cfg: GateConfig | None = None) -> tuple[pd.DataFrame, dict, list[str]]:
    """(verdicts, summary, unfinished current runs) of the baseline runs against the current runs."""
    cfg = cfg or GateConfig()
    base = pd.concat(bases, ignore_index=True) if isinstance(bases, list) else bases
    cur = pd.concat(currents, ignore_index=True) if isinstance(currents, list) else currents
    M.check_suites(base, cur)
    verdicts, summary = decide(M.classify(base, cur, cfg), cfg)
    return verdicts, summary, M.incomplete_runs(cur)


def compare_tables(base: pd.DataFrame, cur: pd.DataFrame, cfg: GateConfig | None = None) -> pd.DataFrame:
    return gate_tables(base, cur, cfg)[0]


def _fraction(s: str) -> float:
    s = s.strip()
    v = float(s[:-1]) / 100 if s.endswith("%") else float(s)
    if not 0 <= v < 10:
        raise ValueError(s)
    return v


def add_decision_options(p: argparse.ArgumentParser, alpha: float = 0.05) -> None:
    """Options shared by `gate` and `ab` (`alpha`: the default family-wise error rate of the command)."""
    p.add_argument("--threshold", help="smallest slowdown that counts (0.05 or 5%%; default 5%%, or --config's)")
    p.add_argument("--suite-threshold", action="append", default=[], metavar="SUITE=T",
                   help="per-suite threshold, e.g. gemm=8%% (repeatable)")
    p.add_argument("--config", help="JSON file: {\"threshold\": 0.05, \"suites\": {\"gemm\": 0.08}}")
    p.add_argument("--alpha", type=float, default=alpha,
                   help=f"family-wise error rate (or false discovery rate with --correction fdr); default {alpha:g}")
    p.add_argument("--correction", choices=("holm", "fdr"), default="holm",
                   help="holm: family-wise error over all rows (default); fdr: Benjamini-Hochberg")
    p.add_argument("--allow-missing", action="store_true",
                   help="rows missing from the current run, and an unfinished current run, do not fail")
    p.add_argument("--markdown", help="also write the summary to this file")
    p.add_argument("--json", help="write the per-row verdicts as JSON to this file")
    p.add_argument("--no-step-summary", action="store_true",
                   help="do not append to $GITHUB_STEP_SUMMARY (appended by default when it is set)")


def _parser() -> argparse.ArgumentParser:
    p = RS.Parser(prog="bench.py gate", description=__doc__.split("\n\n")[0],
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, nargs="+",
                   help="results file/directory, run id, or baseline name; several = several baseline runs")
    p.add_argument("--current", required=True, nargs="+",
                   help="results file/directory or run id; several = several runs of the current code")
    add_decision_options(p)
    p.add_argument("--prior-sd", default="3%",
                   help="between-run sd assumed when no row has two runs on a side (default 3%%)")
    p.add_argument("--ignore-env", default="", help="comma-separated fields allowed to differ, e.g. driver,torch")
    p.add_argument("--confirm", type=int, default=0, metavar="N",
                   help="re-run the rows the gate calls slower N times in this tree (fresh processes, the current "
                        "run's settings) and judge them on those runs alone (harness/gate_confirm.py); the current "
                        "run must come from this commit. Recommended in CI: 3 (default 0: no re-runs)")
    p.add_argument("--allow-contended", action="store_true",
                   help=f"compare rows measured while other processes used >{M.CONTENDED_PCT:.0f}%% of the CPUs "
                        "(default: those runs are left out)")
    return p


def config_from_args(a: argparse.Namespace) -> GateConfig:
    cfg = GateConfig(alpha=a.alpha, correction=a.correction, allow_missing=a.allow_missing,
                     allow_contended=getattr(a, "allow_contended", False),
                     ignore_env=tuple(x.strip() for x in getattr(a, "ignore_env", "").split(",") if x.strip()))
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
            name, _, v = item.partition("=")
            if not name or not v:
                raise ValueError(item)
            cfg.suite_thresholds[name] = _fraction(v)
        if getattr(a, "prior_sd", None) is not None:
            cfg.prior_sd = _fraction(a.prior_sd)
    except ValueError as e:
        raise RS.BadInput(f"bad threshold {e}: give a fraction (0.05) or a percentage (5%)") from None
    if not 0 < cfg.alpha < 0.5:
        raise RS.BadInput("--alpha must be in (0, 0.5)")
    unknown = set(cfg.ignore_env) - set(M.ENV_FIELDS + M.SETTING_FIELDS)
    if unknown:
        raise RS.BadInput(f"--ignore-env: unknown field(s) {', '.join(sorted(unknown))}; "
                          f"known: {', '.join(M.ENV_FIELDS + M.SETTING_FIELDS)}")
    return cfg


def write_outputs(md: str, verdicts: pd.DataFrame, a: argparse.Namespace, prog: str) -> int:
    """stdout, --markdown, --json, $GITHUB_STEP_SUMMARY; 0, or 2 when a file cannot be written."""
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
        print(f"{prog}: error: cannot write output: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        a = _parser().parse_args(argv)
        cfg = config_from_args(a)
        bases = [RS.load(b) for b in a.baseline]
        currents = [RS.load(c) for c in a.current]
        verdicts, summary, incomplete = gate_tables(bases, currents, cfg)
        design = DESIGN_STORED
        if a.confirm < 0:
            raise RS.BadInput("--confirm must be 0 or more")
        if a.confirm:
            from harness import gate_confirm as GC
            cands = GC.screen(verdicts, cfg)
            if cands:
                cur = pd.concat(currents, ignore_index=True)
                tables = GC.run_confirm(cur, cands, a.confirm)
                verdicts = GC.decide_confirmed(verdicts, pd.concat(bases, ignore_index=True), tables, cands, cfg)
            design += (f"; second look: the {len(cands)} row(s) called slower (a regression, or a ratio above the "
                       f"threshold) re-run {a.confirm} time(s) in this tree and judged on those runs alone, Holm over "
                       f"the candidates (harness/gate_confirm.py)")
        header = [f"- baseline: {describe_runs(pd.concat(bases, ignore_index=True))}",
                  f"- current: {describe_runs(pd.concat(currents, ignore_index=True))}"]
        md = render(verdicts, cfg, summary, design, header, incomplete)
    except RS.BadInput as e:
        print(f"bench.py gate: error: {e}", file=sys.stderr)
        return 2
    rc = write_outputs(md, verdicts, a, "bench.py gate")
    return rc or (1 if failed(verdicts, cfg, incomplete) else 0)


if __name__ == "__main__":
    sys.exit(main())
