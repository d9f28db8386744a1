"""Reading a distill run: speedups (teacher / student medians of the same run), retention, the plot.

`speedups(df)`: one row per (task, student, kind) timed in the run: teacher_ms, student_ms and their ratio.
`summary(df)`: per student (and label share): retained %, KD gain over the ablation with its sigmas, the
speedups at each measured kind. `retention_png(df)`: retained quality (y) against speedup (x), one point
per student and measurement, the 100% line and the 97% mark of the targets (docs/distill.md).
"""
from __future__ import annotations

import pandas as pd
import torch


def digits_flops_per_image(model: torch.nn.Module) -> float:
    """2 x multiply-adds of one 8x8 image through the model (convolutions at their output positions)."""
    total = 0.0
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            total += 2.0 * m.in_features * m.out_features
        elif isinstance(m, torch.nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            total += 2.0 * 64 * m.in_channels * m.out_channels * k       # padding 1: 8x8 outputs
    return total


def _split(model: str) -> tuple[str, str]:
    task, _, who = str(model).partition(":")
    return task, who


def speedups(df: pd.DataFrame) -> pd.DataFrame:
    rows = df[(df["suite"] == "distill") & (df["status"] == "ok") & ~df["case"].astype(str).str.endswith(":quality")]
    out = []
    for (rid, case), g in rows.groupby(["run_id", "case"], sort=False):
        task, model, kind = str(case).split(":", 2)
        if model == "teacher":
            continue
        t = rows[(rows["run_id"] == rid) & (rows["case"] == f"{task}:teacher:{kind}")]
        if t.empty:
            continue
        tm, sm = float(t["median_ms"].iloc[0]), float(g["median_ms"].iloc[0])
        out.append(dict(run_id=rid, task=task, student=model.split("/")[0], kind=kind, teacher_ms=tm,
                        student_ms=sm, speedup=tm / sm))
    return pd.DataFrame(out, columns=["run_id", "task", "student", "kind", "teacher_ms", "student_ms", "speedup"])


def quality(df: pd.DataFrame) -> pd.DataFrame:
    q = df[(df["suite"] == "distill") & (df["status"] == "ok") & df["case"].astype(str).str.endswith(":quality")]
    cols = ["run_id", "case", "quality_metric", "quality_value", "quality_sd", "quality_ref", "retained_pct",
            "ablation_value", "ablation_sd", "kd_gain", "kd_gain_sigmas", "n_seeds", "labels", "params",
            "teacher_params", "train_s"]
    q = q[[c for c in cols if c in q.columns]].copy()
    parts = q["case"].astype(str).str.split(":", n=2, expand=True)
    q["task"], q["model"] = parts[0], parts[1].str.replace(r"@.*", "", regex=True)
    q["student"] = q["model"].str.split("/").str[0]
    q["mode"] = q["model"].str.split("/").str[1]
    return q


def retention_png(df: pd.DataFrame) -> str | None:
    from harness.report_plots import _plt, _png
    sp, q = speedups(df), quality(df)
    if sp.empty or q.empty:
        return None
    kd = q[(q["mode"] == "kd") & (pd.to_numeric(q.get("labels"), errors="coerce").fillna(1.0) >= 1.0)]
    pts = sp.merge(kd[["run_id", "task", "student", "retained_pct"]], on=["run_id", "task", "student"])
    if pts.empty:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for (task, kind), g in pts.groupby(["task", "kind"]):
        ax.scatter(g["speedup"], g["retained_pct"], label=f"{task} {kind}", s=28)
        for _, r in g.iterrows():
            ax.annotate(r["student"], (r["speedup"], r["retained_pct"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.axhline(100, color="k", lw=0.8)
    ax.axhline(97, color="grey", lw=0.8, ls=":")
    ax.axvline(1, color="k", lw=0.8)
    ax.set_xlabel("speedup over the teacher (x, same run)")
    ax.set_ylabel("quality retained (% of the teacher's)")
    ax.set_title("distillation: retention against speedup", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.25)
    return _png(fig)
