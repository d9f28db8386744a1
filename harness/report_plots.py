"""The plots of `bench.py report` (harness/report.py): matplotlib (Agg) figures returned as base64 PNGs, so
the HTML page embeds them and opens anywhere with no other file. A roofline per device (every `ok` row a
point at its arithmetic intensity and TFLOP/s, under the compute ceiling per dtype and the bandwidth slope),
the speedup over the suite's baseline per suite, and the telemetry over time.
"""
from __future__ import annotations

import base64
import io
import math
from typing import Any

import numpy as np
import pandas as pd

from harness.telemetry import _THROTTLE_MASK as THROTTLE_MASK

PNG_DPI = 96


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PNG_DPI, bbox_inches="tight")
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def roofline_png(device_name: str, rows: pd.DataFrame, peaks: dict[str, float], source: str) -> str | None:
    ok = rows[rows["status"] == "ok"].copy()
    ok["ai"] = pd.to_numeric(ok["flops"], errors="coerce") / pd.to_numeric(ok["bytes"], errors="coerce")
    ok["tf"] = pd.to_numeric(ok["tflops"], errors="coerce")
    ok = ok[(ok["ai"] > 0) & (ok["tf"] > 0) & np.isfinite(ok["ai"]) & np.isfinite(ok["tf"])]
    if ok.empty:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    lo, hi = ok["ai"].min() / 4, ok["ai"].max() * 4
    bw = peaks.get("bw_gbs")
    dtypes = sorted(set(ok["dtype"]))
    if bw:
        lo = min(lo, 0.05)
        for dtype in dtypes:
            hi = max(hi, peaks.get(dtype, 0) * 1e3 / bw * 4 if peaks.get(dtype) else hi)
    x = np.logspace(math.log10(lo), math.log10(hi), 200)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if bw:
        top = max([peaks[d] for d in dtypes if peaks.get(d)] or [float("inf")])
        xb = x[bw * x / 1e3 <= top * 1.0001] if math.isfinite(top) else x
        ax.plot(xb, bw * xb / 1e3, color="0.25", lw=1.5, label=f"memory {bw:g} GB/s")
    for i, dtype in enumerate(dtypes):
        pk = peaks.get(dtype)
        if pk and bw:
            ax.plot(x, np.minimum(pk, bw * x / 1e3), ls="--", lw=1.2, color=colors[i % len(colors)],
                    label=f"{dtype} compute {pk:g} TFLOP/s")
        elif pk:
            ax.axhline(pk, ls="--", lw=1.2, color=colors[i % len(colors)], label=f"{dtype} {pk:g} TFLOP/s")
    markers = "osD^v<>pPX*h"
    for j, (suite, g) in enumerate(ok.groupby("suite")):
        for k, (dtype, gd) in enumerate(g.groupby("dtype")):
            ax.scatter(gd["ai"], gd["tf"], s=38, marker=markers[j % len(markers)],
                       color=colors[(dtypes.index(dtype)) % len(colors)], edgecolor="black", lw=0.5, zorder=3,
                       label=f"{suite} [{dtype}]")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("achieved TFLOP/s")
    ax.set_title(f"Roofline: {device_name}\nceilings: {source}", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def speedup_png(suite: str, rows: pd.DataFrame, label_of: dict[str, str]) -> str | None:
    ok = rows[(rows["status"] == "ok") & pd.to_numeric(rows["speedup"], errors="coerce").notna()].copy()
    if ok.empty:
        return None
    ok["speedup"] = pd.to_numeric(ok["speedup"])
    base = ok.groupby("variant")["speedup"].apply(lambda x: bool(np.allclose(x, 1.0)))
    ok = ok[~ok["variant"].isin(base[base].index)]                  # the baseline itself: always 1.0
    if ok.empty:
        return None
    ok["cat"] = ok["case"].astype(str) + " [" + ok["dtype"].astype(str) + "]"
    multi = ok["run_id"].nunique() > 1
    if multi:
        ok["cat"] = ok["run_id"].map(label_of) + ": " + ok["cat"]
    cats = list(dict.fromkeys(ok["cat"]))
    variants = list(dict.fromkeys(ok["variant"]))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 0.5 + 0.28 * len(cats) * max(1, len(variants))))
    h = 0.8 / max(1, len(variants))
    for i, v in enumerate(variants):
        g = ok[ok["variant"] == v].set_index("cat")["speedup"]
        ys = [c for c in range(len(cats)) if cats[c] in g.index]
        vals = [float(g.loc[cats[c]] if np.ndim(g.loc[cats[c]]) == 0 else g.loc[cats[c]].iloc[-1]) for c in ys]
        ax.barh([y + i * h for y in ys], vals, height=h, label=v)
    ax.axvline(1.0, color="black", lw=1)
    ax.set_yticks([c + h * (len(variants) - 1) / 2 for c in range(len(cats))], cats, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("speedup over the suite's baseline variant (x)")
    ax.set_title(f"{suite}: speedup over baseline", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(True, axis="x", alpha=0.25)
    return _png(fig)


TS_PANELS = [("power_w", "power (W)"), ("sm_clock_mhz", "SM clock (MHz)"), ("cpu_mhz", "CPU clock (MHz)"),
             ("temp_c", "temperature (C)"), ("gpu_util_pct", "GPU utilization (%)"),
             ("cpu_util_pct", "CPU utilization (%)"), ("cpu_others_pct", "CPU used by others (%)")]


def telemetry_png(run_label: str, ts: pd.DataFrame) -> str | None:
    panels = [(c, t) for c, t in TS_PANELS if c in ts.columns and pd.to_numeric(ts[c], errors="coerce").notna().any()]
    if not panels or ts.empty:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(panels), 1, figsize=(8.5, 1.8 * len(panels) + 0.6), sharex=True, squeeze=False)
    groups = list(ts.groupby(["suite", "case", "variant"], sort=False))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    vcolor = {v: colors[i % len(colors)] for i, v in enumerate(dict.fromkeys(ts["variant"]))}
    mask = pd.to_numeric(ts["throttle_mask"], errors="coerce") if "throttle_mask" in ts else pd.Series(0, index=ts.index)
    thr = mask.fillna(0).astype(int) & THROTTLE_MASK                    # the power/heat reason bits
    for ax, (col, title) in zip(axes[:, 0], panels):
        seen = set()
        for (suite, case, variant), g in groups:
            lab = variant if variant not in seen else None
            seen.add(variant)
            ax.plot(g["t_s"], pd.to_numeric(g[col], errors="coerce"), ".-", ms=2.5, lw=0.8,
                    color=vcolor[variant], label=lab)
        hot = ts[thr > 0]
        if len(hot):
            ax.scatter(hot["t_s"], pd.to_numeric(hot[col], errors="coerce"), color="red", s=10, zorder=4,
                       label="throttled (power/heat)")
        ax.set_ylabel(title, fontsize=8)
        ax.grid(True, alpha=0.25)
    axes[0, 0].set_title(f"Telemetry over time: {run_label}", fontsize=10)
    axes[0, 0].legend(fontsize=7, ncol=4, loc="upper right")
    axes[-1, 0].set_xlabel("time since the run's first sample (s)")
    return _png(fig)


# -------------------------------------------------------------------------------------------------- HTML


def pareto_points(rows: pd.DataFrame) -> pd.DataFrame | None:
    """The points of pareto_png: one per (variant, dtype) with a quality row and a decode row of the same dtype
    (labelled `variant` or, when the rows hold several dtypes, `variant dtype`: a bfloat16 model's quality is
    scored against the bfloat16 unquantized one and its speed is its own, so dtypes are never paired across);
    columns x (tokens/s), y (bits-per-byte delta, %), mb (weight MiB), dtype; attrs["case"] the decode case."""
    ok = rows[rows["status"] == "ok"].copy()
    ok["dtype"] = ok["dtype"].astype(str) if "dtype" in ok else ""
    several = ok["dtype"].nunique() > 1
    ok["label"] = ok["variant"].astype(str) + ((" " + ok["dtype"]) if several else "")
    q = ok[ok["quality_metric"] == "heldout_bpb"]
    dec = ok[ok["case"].astype(str).str.contains(":decode-")]
    if q.empty or dec.empty:
        return None
    first = sorted(dec["case"].unique(), key=lambda c: ("-b1-" not in c, c))[0]
    q = q.drop_duplicates("label", keep="last").set_index("label")          # a resumed run: its last row
    speed = dec[dec["case"] == first].drop_duplicates("label", keep="last").set_index("label")["tokens_per_s"]
    common = [v for v in q.index if v in speed.index]
    if not common:
        return None
    pts = pd.DataFrame({"x": pd.to_numeric(speed[common]), "y": pd.to_numeric(q.loc[common, "quality_delta"])
                        / pd.to_numeric(q.loc[common, "quality_ref"]) * 100,
                        "mb": pd.to_numeric(q.loc[common, "weight_bytes"] if "weight_bytes" in q else np.nan) / 2**20,
                        "dtype": q.loc[common, "dtype"]})
    pts = pts.dropna(subset=["x", "y"])
    pts.attrs["case"] = first
    return None if pts.empty else pts


def pareto_front(pts: pd.DataFrame) -> list[tuple[float, float]]:
    """(x, y) of the points no other point beats on both speed (x, higher) and quality (y, lower)."""
    front, best = [], math.inf
    for _, r in pts.sort_values(["x", "y"], ascending=[False, True]).iterrows():   # fastest first
        if r["y"] < best:
            front.append((r["x"], r["y"]))
            best = r["y"]
    return front


def pareto_png(model: str, rows: pd.DataFrame) -> str | None:
    """Quality against speed per quantization method on one model (suites/quant.py): x = decode tokens/s (the
    batch-1 decode row, else the first decode case), y = held-out bits-per-byte delta against the unquantized
    model in % (lower is better); marker size ~ weight bytes. The Pareto front (no other method both faster and
    better) is joined by a line."""
    pts = pareto_points(rows)
    if pts is None:
        return None
    first = pts.attrs["case"]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    size = 30 + 300 * (pts["mb"] / pts["mb"].max()).fillna(0.2)
    ax.scatter(pts["x"], pts["y"], s=size, alpha=0.6, edgecolor="black", lw=0.5, zorder=3)
    for v, r in pts.iterrows():
        ax.annotate(v, (r["x"], r["y"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    for (dt, g), color in zip(pts.groupby("dtype", sort=False), ("tab:red", "tab:blue", "tab:green")):
        front = pareto_front(g)
        if len(front) > 1:
            fx, fy = zip(*sorted(front))
            label = "Pareto front" + (f" ({dt})" if pts["dtype"].nunique() > 1 else "")
            ax.plot(fx, fy, "-", color=color, lw=1.2, label=label, zorder=2)
            ax.legend(fontsize=7)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(f"decode tokens/s ({first})")
    ax.set_ylabel("held-out bits per byte vs unquantized (%)")
    ax.set_title(f"Quantization on {model}: quality vs speed (marker area ~ weight bytes)", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    return _png(fig)
