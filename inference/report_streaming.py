"""The streaming section of `bench.py report` (harness/report.py): latency against request rate and the goodput
curve, one line per (run, engine), from the rows of suite `streaming` (inference/serve_bench.py).

- `latency_vs_rate_png`: TTFT and TPOT, p50 (solid) and p99 (dashed), against the offered request rate; the
  rate `inf` (every request at once) is drawn one step past the largest finite rate and labelled so.
- `goodput_png`: goodput (requests per second within the SLO) and output-token throughput against the rate.
Matplotlib (Agg) PNGs as base64, like harness/report_plots.py.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness.report_plots import _plt, _png


def _rows(df: pd.DataFrame, label_of: dict[str, str]) -> pd.DataFrame | None:
    if "suite" not in df.columns or "request_rate" not in df.columns:
        return None
    ok = df[(df["suite"] == "streaming") & (df["status"] == "ok")].copy()
    ok["rate"] = pd.to_numeric(ok["request_rate"], errors="coerce")
    ok = ok[ok["rate"].notna()]
    if ok.empty:
        return None
    multi = ok["run_id"].nunique() > 1
    ok["line"] = (ok["run_id"].map(label_of).fillna("") + " " if multi else "") + ok["variant"].astype(str)
    finite = ok.loc[np.isfinite(ok["rate"]), "rate"]
    top = float(finite.max()) if len(finite) else 1.0
    ok["x"] = ok["rate"].where(np.isfinite(ok["rate"]), top * 2)   # inf: one doubling past the largest rate
    return ok.sort_values("x")


def _rate_axis(ax, ok: pd.DataFrame) -> None:
    xs = sorted(set(ok["x"]))
    labels = ["inf" if not math.isfinite(r) else f"{r:g}"
              for r in (ok.drop_duplicates("x").set_index("x").loc[xs, "rate"])]
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, labels, fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("request rate (req/s)")
    ax.grid(True, alpha=0.25)


def latency_vs_rate_png(df: pd.DataFrame, label_of: dict[str, str]) -> str | None:
    ok = _rows(df, label_of)
    if ok is None:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric, title in ((axes[0], "ttft", "time to first token"), (axes[1], "tpot", "time per output token")):
        for i, (line, g) in enumerate(ok.groupby("line", sort=False)):
            color = f"C{i % 10}"
            ax.plot(g["x"], pd.to_numeric(g[f"{metric}_median_ms"], errors="coerce"), "o-", color=color,
                    label=f"{line} p50")
            ax.plot(g["x"], pd.to_numeric(g[f"{metric}_p99_ms"], errors="coerce"), "s--", color=color,
                    label=f"{line} p99")
        slo = _slo(ok, f"{metric}_ms")
        if slo:
            ax.axhline(slo, color="red", lw=1, ls=":", label=f"SLO {slo:g} ms")
        _rate_axis(ax, ok)
        ax.set_yscale("log")
        ax.set_ylabel(f"{metric.upper()} (ms)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    return _png(fig)


def goodput_png(df: pd.DataFrame, label_of: dict[str, str]) -> str | None:
    ok = _rows(df, label_of)
    if ok is None:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    has_slo = pd.to_numeric(ok["goodput_req_s"], errors="coerce").notna().any()
    for i, (line, g) in enumerate(ok.groupby("line", sort=False)):
        color = f"C{i % 10}"
        if has_slo:
            axes[0].plot(g["x"], pd.to_numeric(g["goodput_req_s"], errors="coerce"), "o-", color=color,
                         label=f"{line} goodput")
        axes[0].plot(g["x"], pd.to_numeric(g["request_throughput"], errors="coerce"), "x:", color=color,
                     label=f"{line} completed")
        axes[1].plot(g["x"], pd.to_numeric(g["output_throughput"], errors="coerce"), "o-", color=color, label=line)
    finite = ok[np.isfinite(ok["rate"])]
    if len(finite):
        xs = sorted(set(finite["x"]))
        axes[0].plot(xs, xs, color="grey", lw=0.8, label="offered")
    slo = ok["slo"].dropna().iloc[0] if "slo" in ok.columns and ok["slo"].notna().any() else None
    axes[0].set_title("goodput (requests/s within the SLO" + (f" {slo}" if slo else ": none given") + ")",
                      fontsize=9)
    axes[0].set_ylabel("requests / s")
    axes[1].set_title("output token throughput", fontsize=10)
    axes[1].set_ylabel("tokens / s")
    for ax in axes:
        _rate_axis(ax, ok)
        ax.legend(fontsize=7)
    return _png(fig)


def _slo(ok: pd.DataFrame, key: str) -> float | None:
    import json
    if "slo" not in ok.columns:
        return None
    for s in ok["slo"].dropna():
        try:
            v = json.loads(s).get(key)
        except (ValueError, AttributeError):
            continue
        if v:
            return float(v)
    return None


def section(df: pd.DataFrame, label_of: dict[str, str], img) -> list[str]:
    """The report's HTML parts for the streaming rows ([] when there are none); `img(b64, alt)` embeds a PNG."""
    if "suite" not in df.columns or not (df["suite"] == "streaming").any():
        return []
    parts = ["<h2>Streaming: latency against request rate, goodput</h2>"]
    lat, good = latency_vs_rate_png(df, label_of), goodput_png(df, label_of)
    if lat is None:
        return parts + ['<p class="note">streaming: no row completed a request.</p>']
    parts.append('<p class="note">TTFT and TPOT per engine, p50 solid and p99 dashed, against the offered '
                 "request rate (vLLM benchmark_serving's definitions; inf: every request at once); the SLO "
                 "dotted.</p>")
    parts.append(img(lat, "streaming latency versus rate"))
    if good is not None:
        parts.append(img(good, "streaming goodput versus rate"))
    return parts
