"""The quality-versus-speed plot of the `sparsity` suite in `bench.py report` (harness/report.py).

One point per pattern and run: x = decode tokens/s of the pattern's sparse execution (`sparse_kernels`; the
dense model's `masked_dense` for `dense`) relative to the dense model's, y = held-out bits per byte above the
dense model's in % (`bpb_delta_pct` of the pattern's quality row); the 5% quality target of issue 17 is a
dashed line. Prefill is a second panel with the same y. Patterns whose rows did not run are left out.
"""
from __future__ import annotations

import math

import pandas as pd

from harness.report_plots import _plt, _png

TARGET_PCT = 5.0


def _pattern(case: str) -> str:
    parts = str(case).split(":")                 # "<model>:<pattern>:<kind>"; the pattern may hold a ":" (2:4)
    return ":".join(parts[1:-1]) if len(parts) >= 3 else str(case)


def _kind(case: str) -> str:
    return str(case).split(":")[-1].split("-")[0]


def points(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (run, dtype, pattern, kind): speed relative to dense and the quality delta (a table, for tests)."""
    df = rows[(rows["suite"] == "sparsity") & (rows["status"] == "ok")].copy()
    if df.empty or "bpb_delta_pct" not in df.columns:
        return pd.DataFrame()
    df["pattern"] = df["case"].map(_pattern)
    df["kind"] = df["case"].map(_kind)
    df["tokens_per_s"] = pd.to_numeric(df["tokens_per_s"], errors="coerce")
    quality = (df[df["kind"] == "quality"].groupby(["run_id", "dtype", "pattern"])["bpb_delta_pct"]
               .apply(lambda s: pd.to_numeric(s, errors="coerce").dropna().iloc[0] if s.notna().any() else math.nan))
    out = []
    for (run, dtype, kind), g in df[df["kind"].isin(["decode", "prefill"])].groupby(["run_id", "dtype", "kind"]):
        dense = g[(g["pattern"] == "dense") & (g["variant"] == "masked_dense")]["tokens_per_s"]
        if dense.empty:
            continue
        base = float(dense.median())
        for pattern, gp in g.groupby("pattern"):
            want = "masked_dense" if pattern == "dense" else "sparse_kernels"
            tps = gp[gp["variant"] == want]["tokens_per_s"]
            q = quality.get((run, dtype, pattern), math.nan)
            if tps.empty or not math.isfinite(q):
                continue
            out.append(dict(run_id=run, dtype=dtype, kind=kind, pattern=pattern, speed=float(tps.median()) / base,
                            bpb_delta_pct=float(q)))
    return pd.DataFrame(out)


def quality_speed_png(rows: pd.DataFrame) -> str | None:
    pts = points(rows)
    if pts.empty:
        return None
    plt = _plt()
    kinds = [k for k in ("decode", "prefill") if k in set(pts["kind"])]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.2 * len(kinds), 4.4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fams = {"dense": 0, "2:4": 1, "block16": 2, "block32": 3, "unstructured": 4}
    for ax, kind in zip(axes[0], kinds):
        g = pts[pts["kind"] == kind]
        for _, p in g.iterrows():
            fam = next((f for f in fams if p["pattern"].startswith(f)), "dense")
            ax.scatter(p["speed"], p["bpb_delta_pct"], s=36, color=colors[fams[fam] % len(colors)],
                       edgecolor="black", lw=0.5, zorder=3)
            ax.annotate(f"{p['pattern']} [{p['dtype']}]", (p["speed"], p["bpb_delta_pct"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
        ax.axhline(TARGET_PCT, ls="--", color="0.3", lw=1, label=f"quality target +{TARGET_PCT:g}% bits/byte")
        ax.axvline(1.0, color="black", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(f"{kind} tokens/s relative to the dense model (x, sparse execution)")
        ax.set_ylabel("held-out bits per byte vs dense (%)")
        ax.set_title(f"sparsity: quality vs {kind} speed", fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7, loc="upper left")
    return _png(fig)
