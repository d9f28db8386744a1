"""The gate's statistics: per-row tests on run-level log-ratios, noise floors, and family-wise control.

The unit of evidence is a *run-level* median, never a single sample: samples inside one run are not
independent (clock and load drift), so their spread understates the shift between two runs of the same code
(issue 12 measured +7.9% with a bootstrap interval of [1.066, 1.095] between two runs of identical code).

Two designs feed the same test (a one-sided t-test of "current is slower" on log times):

- paired (`bench.py ab`): round i measures the row once in each tree, back to back in alternating order, so
  drift hits both; the data are the per-round log-ratios l_i = log(cur_i / base_i), n rounds, df = n - 1.
- stored baselines (`bench.py gate`): m baseline runs and k current runs of each row, measured at different
  times; the difference of mean log medians, with the variance pooled inside the two groups
  (df = m - 1 + k - 1). The between-run variance of run medians *is* the noise floor the issue asks for.

Variance per row, moderated (Smyth 2004, limma's empirical Bayes t, simplified): a handful of rounds or runs
gives a poor variance of its own, so each row's variance is combined with the pooled variance of all rows of
the same gate run (a robust pool: the median of the rows' variances, corrected to the chi-square mean), with
`prior_df` pseudo-degrees of freedom:  s2_mod = (prior_df * s2_pool + df * s2) / (prior_df + df).
One departure, on the safe side: a row's variance is never shrunk *below its own* estimate (a noisy row keeps
its noise; only rows whose few samples happen to agree are lifted to the pool).

Noise floor of a row: the slowdown that noise alone exceeds in 5% of identical runs, exp(t_{0.95,df} * se) - 1.
The threshold used for a row is max(threshold, noise floor): never below it.

Family-wise error: the one-sided p-values of every compared row go through Holm's step-down (Holm 1979),
which keeps the probability of *any* false alarm in the gate run at alpha (5%) whatever the dependence
between rows; Benjamini-Hochberg (false discovery rate) is the alternative (`--correction fdr`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

PRIOR_DF = 4.0           # pseudo-degrees of freedom of the pooled variance in each row's moderated variance


@dataclass
class RowStats:
    """One row's data on the log scale: the estimate of log(cur/base), its own variance and degrees of freedom,
    and the factor that turns a per-observation variance into the variance of the estimate."""
    est: float
    s2: float            # the row's own variance per observation (NaN when df == 0)
    df: int
    se_factor: float     # var(est) = s2 * se_factor


def paired(log_ratios) -> RowStats:
    """Paired rounds: est = mean of l_i, var(est) = s2 / n."""
    x = np.asarray(log_ratios, dtype=np.float64)
    n = x.size
    return RowStats(float(x.mean()), float(x.var(ddof=1)) if n > 1 else math.nan, n - 1, 1.0 / n)


def two_groups(log_base, log_cur) -> RowStats:
    """Unpaired runs: est = mean(log cur) - mean(log base), variance pooled within the groups."""
    b = np.asarray(log_base, dtype=np.float64)
    c = np.asarray(log_cur, dtype=np.float64)
    df = b.size - 1 + c.size - 1
    ss = float(((b - b.mean()) ** 2).sum() + ((c - c.mean()) ** 2).sum())
    return RowStats(float(c.mean() - b.mean()), ss / df if df > 0 else math.nan, df, 1 / b.size + 1 / c.size)


def pooled_variance(rows: list[RowStats]) -> tuple[float, float]:
    """(s2_pool, its df): the median of the rows' own variances divided by the median of chi2_df/df (so that it
    estimates the common variance, not its median), robust to a few wild rows. (NaN, 0) without any row
    that has a variance of its own."""
    have = [r for r in rows if r.df > 0 and np.isfinite(r.s2)]
    if not have:
        return math.nan, 0.0
    s2 = np.array([r.s2 for r in have])
    dfs = np.array([r.df for r in have], dtype=np.float64)
    corr = float(np.median(stats.chi2.median(dfs) / dfs))
    return float(np.median(s2) / corr), float(dfs.sum())


@dataclass
class Tested:
    ratio: float          # exp(est): the current time over the baseline time
    ci_lo: float          # two-sided (1 - alpha) interval of the ratio, per row
    ci_hi: float
    p: float              # one-sided p-value of "current is slower"
    floor: float          # the noise floor: slowdown that noise alone exceeds in 5% of identical runs
    sd: float             # the moderated sd per observation (log scale ~ relative)
    df: float


def moderated_t(r: RowStats, s2_pool: float, prior_df: float = PRIOR_DF, alpha: float = 0.05,
             prior_sd: float | None = None) -> Tested:
    """Moderated one-sided t-test of est > 0. Without a pooled variance (no row has two runs), `prior_sd`
    stands in for it (an assumption the caller must report)."""
    pool = s2_pool if np.isfinite(s2_pool) else (prior_sd ** 2 if prior_sd else math.nan)
    own_df = r.df if np.isfinite(r.s2) else 0
    if not np.isfinite(pool):
        if own_df == 0:
            return Tested(math.exp(r.est), math.nan, math.nan, math.nan, math.nan, math.nan, 0)
        s2, df = r.s2, float(own_df)
    else:
        own = r.s2 if own_df else 0.0
        s2 = (prior_df * pool + own_df * own) / (prior_df + own_df)
        s2 = max(s2, own)                       # never below the row's own variance
        df = prior_df + own_df
    return one_sided(r.est, math.sqrt(s2 * r.se_factor), df, alpha, sd=math.sqrt(s2))


def one_sided(est: float, se: float, df: float, alpha: float, sd: float | None = None) -> Tested:
    """One-sided t-test of est > 0 with standard error `se` on `df` degrees of freedom: the ratio, its two-sided
    (1 - alpha) interval, p, and the noise floor exp(t_0.95 se) - 1. `sd`: what Tested.sd reports (default se)."""
    r = math.exp(est)
    if se == 0:
        return Tested(r, r, r, 0.0 if est > 0 else 1.0, 0.0, 0.0, df)
    p = float(special.stdtr(df, -est / se))          # scipy.stats.t.sf(t, df), without its per-call overhead
    half = float(special.stdtrit(df, 1 - alpha / 2)) * se
    floor = math.exp(float(special.stdtrit(df, 0.95)) * se) - 1
    return Tested(r, math.exp(est - half), math.exp(est + half), p, floor, se if sd is None else sd, df)


def holm(p) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (reject where adjusted p <= alpha): family-wise error <= alpha."""
    p = np.asarray(p, dtype=np.float64)
    n = p.size
    if n == 0:
        return p
    order = np.argsort(p)
    adj = np.minimum(1.0, np.maximum.accumulate(p[order] * (n - np.arange(n))))
    out = np.empty(n)
    out[order] = adj
    return out


def adjust(p, correction: str = "holm") -> np.ndarray:
    """Adjusted p-values over one gate run's rows: 'holm' (family-wise error) or 'fdr' (Benjamini-Hochberg)."""
    p = np.asarray(p, dtype=np.float64)
    if p.size == 0:
        return p
    if correction == "fdr":
        return stats.false_discovery_control(p, method="bh")
    if correction == "holm":
        return holm(p)
    raise ValueError(f"unknown correction {correction!r}: holm or fdr")


CORRECTION_TEXT = {
    "holm": "family-wise error rate (any false alarm among the {n} compared rows) held at {alpha:.0%} "
            "by Holm-Bonferroni",
    "fdr": "false discovery rate over the {n} compared rows held at {alpha:.0%} by Benjamini-Hochberg",
}
