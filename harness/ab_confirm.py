"""`bench.py ab`'s second stage: rows the first rounds call slower are measured again, in fresh workers, and only
a slowdown the new rounds confirm fails the gate.

Why (gate evidence of 2026-11-30 and 2026-12-01, 80 A/A `ab` runs of 32 rows on the 2-core EPYC,
docs/gate-evidence*.md): the one-stage rule missed 1-3 of 40 +20% copies per set of 20 runs, each time a row whose
rounds were five at x1.2 and one in another speed of the machine (x0.5-x2.6), which the mean followed and whose
variance hid the rest; and it raised a false alarm in 1-2 of 20 runs, each time a row of one tree slower in most of
its six rounds (x1.13-x1.28, identical code): a state of the run, not of the code. Neither is fixed by a sharper
test of the same six rounds. Both are what a second look settles: a row whose first rounds say "slower" is measured
again, later, in worker processes started afresh, and the verdict is the second look's.

The design is screen-then-confirm (as in a replication study):

- screen: the first stage's rounds and rule (harness/ab.py, gate_verdicts.decide; with --noise, the learned
  noise). A row is a candidate when its first stage calls it a regression, or the mean, the 20%-trimmed mean or
  the median of its rounds' log-ratios is slower than the threshold, significant or not (a loose screen: a real
  slowdown hidden by one or two wild rounds passes it);
- confirm: each candidate gets `confirm_rounds` new paired rounds (ABBA, round r in fresh worker r mod P) and is
  tested on those alone: the 20%-trimmed mean of the log-ratios (Yuen; one round in 5 may be wild), its
  winsorized variance moderated toward the first stage's pooled per-round variance (never below its own), or
  with --noise the row's learned A/A history as in harness/gate_noise.py; one-sided t; Holm over the candidates;
  a regression when slower than max(threshold, the confirm floor) and significant.

Error control: the confirming rounds are new measurements, made after the candidates were chosen; given the
first stage, a row's confirming p-value is valid under "no change", and Holm over the candidate set holds the
chance of any false alarm among them at alpha. Rows that are not candidates cannot fail. So the family-wise
false-alarm rate of the gate run stays at most alpha, whatever the screen does; the screen only decides where the
second look is spent. Cost: a few rows per run (the candidates) times `confirm_rounds` short slots.
"""
from __future__ import annotations

import math

import numpy as np

from harness import gate_noise as N
from harness import gate_stats as S
from harness.gate_verdicts import KEY, GateConfig, decide, sort_verdicts

CONFIRM_ROUNDS = 16      # default; with CONFIRM_TRIM the trimmed mean keeps 8 of 16 rounds (df 7 of its own)
CONFIRM_TRIM = 0.25      # 4 rounds cut at each end: 3 wild rounds of 16 on one side move nothing
# Chosen on simulated runs (tests/test_ab_confirm.py's model, calibrated on the 80 recorded A/A runs: 4.2% of rounds
# more than 25% off their row's median): over 600 runs of 32 rows with one +20% and one +10% row, 12 rounds
# trimmed 20% caught the +20% row in 593, 16 rounds trimmed 25% in all 600 (+10%: 595); the one-stage rule 452.


def screen(rows: list[dict], cfg: GateConfig) -> list[tuple]:
    """KEY tuples of the rows (decided by gate_verdicts.decide, with their `_lr`) the first stage calls slower: a
    regression, or a mean, trimmed-mean or median ratio above the threshold, significant or not. (The median: in one
    recorded run a +10% copy's rounds were x1.10-1.12 four times and x0.42-0.46 twice, the baseline's workers 1 and
    2 in a 2.6x slower state; the mean and the 20%-trimmed mean said x0.82.)"""
    out = []
    for r in rows:
        if r["verdict"] == "regression":
            out.append(tuple(r[c] for c in KEY))
            continue
        if r["verdict"] != "unchanged" or r.get("_lr") is None:
            continue
        thr = cfg.threshold_for(r["suite"])
        lr = np.asarray(r["_lr"], dtype=np.float64)
        ratios = (r.get("ratio"), math.exp(N.trimmed(lr)[0]), math.exp(float(np.median(lr))))
        if any(x is not None and np.isfinite(x) and x > 1 + thr for x in ratios):
            out.append(tuple(r[c] for c in KEY))
    return out


def confirm_test(lr, pool_sd: float, alpha: float, prior_df: float = S.PRIOR_DF,
                 hist: list[float] | None = None, default_sd: float | None = None,
                 trim: float = CONFIRM_TRIM) -> S.Tested:
    """The confirming rounds' test: Yuen's trimmed mean, its variance moderated toward `pool_sd` (the first
    stage's pooled per-round sd) and never below its own; or, with a noise history (`hist` is not None), the
    learned-noise test of harness/gate_noise.py."""
    if hist is not None:
        return N.test_row(lr, hist, default_sd if default_sd is not None else N.DEFAULT_SD, alpha)[0]
    lr = np.asarray(lr, dtype=np.float64)
    est, se_own, df_own = N.trimmed(lr, trim)
    n = lr.size
    if np.isfinite(pool_sd) and pool_sd > 0:
        se_pool = pool_sd / math.sqrt(n)
        if np.isfinite(se_own) and df_own > 0:
            se = max(math.sqrt((prior_df * se_pool ** 2 + df_own * se_own ** 2) / (prior_df + df_own)), se_own)
            df = prior_df + df_own
        else:
            se, df = se_pool, prior_df
    else:
        if not (np.isfinite(se_own) and df_own > 0):
            return S.Tested(math.exp(est), math.nan, math.nan, math.nan, math.nan, math.nan, 0.0)
        se, df = se_own, df_own
    return S.one_sided(est, se, df, alpha)


def decide_confirmed(first, confirm_lrs: dict[tuple, np.ndarray], cfg: GateConfig, pool_sd: float,
                     hists: dict[tuple, list[float]] | None = None, default_sd: float | None = None,
                     failures: dict[tuple, str] | None = None, ms: dict[tuple, tuple[float, float]] | None = None):
    """The final verdicts: the first stage's table `first` (from decide) with the candidates' verdicts replaced by
    their confirmation's (`confirm_lrs`: KEY tuple -> the new rounds' log-ratios). `failures`: candidates whose
    re-measurement failed ({KEY tuple: note}): broken when the current side failed; otherwise the first stage's
    verdict stands, with the note. `ms`: the second stage's (baseline, current) times, shown instead of the first's.
    Returns the table, sorted as decide sorts."""
    out = first.copy()
    idx = out.set_index(KEY).index
    for k, why in (failures or {}).items():
        i = int(np.flatnonzero(idx == k)[0])
        if why.startswith("current"):
            out.at[i, "verdict"] = "broken"
            out.at[i, "note"] = f"in the second stage: {why}"
        else:
            out.at[i, "note"] = "; ".join(x for x in (out.at[i, "note"], f"second stage failed: {why}") if x)
    rows = []
    for k, lr in confirm_lrs.items():
        r = {c: v for c, v in zip(KEY, k)}
        t = confirm_test(lr, pool_sd, cfg.alpha, cfg.prior_df,
                         None if hists is None else hists.get(k, []), default_sd)
        rows.append(dict(r, verdict=None, note="", _stats=S.paired(lr), _tested=t, n_base=len(lr), n_cur=len(lr),
                         base_ms=math.nan, cur_ms=math.nan))
    second = decide(rows, cfg)[0].set_index(KEY) if rows else None
    for k in confirm_lrs:
        i = int(np.flatnonzero(idx == k)[0])
        s = second.loc[k]
        before = out.at[i, "verdict"]
        screen_note = (f"screened {before} at x{out.at[i, 'ratio']:.3f} (adj. p {out.at[i, 'p_adj']:.2g}) in "
                       f"{int(out.at[i, 'n_cur'])} rounds; ")
        verdict = "regression" if s["verdict"] == "regression" else "unchanged"
        how = ("confirmed" if verdict == "regression" else "not confirmed") + \
            f" in {len(confirm_lrs[k])} new rounds in fresh workers: x{s['ratio']:.3f}, adj. p {s['p_adj']:.2g} " \
            f"over {len(confirm_lrs)} candidate(s)"
        for c in ("ratio", "ci_lo", "ci_hi", "p", "p_adj", "floor", "threshold"):
            out.at[i, c] = s[c]
        out.at[i, "verdict"] = verdict
        if ms and k in ms:
            out.at[i, "base_ms"], out.at[i, "cur_ms"] = ms[k]
        out.at[i, "n_base"] = out.at[i, "n_base"] + len(confirm_lrs[k])
        out.at[i, "n_cur"] = out.at[i, "n_cur"] + len(confirm_lrs[k])
        extra = s["note"] if isinstance(s["note"], str) and s["note"] and verdict == "unchanged" else ""
        out.at[i, "note"] = "; ".join(x for x in (screen_note + how, extra) if x)
    return sort_verdicts(out)
