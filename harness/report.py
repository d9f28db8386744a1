"""`bench.py report RUN... [--out report.html]`: one self-contained HTML file with plots as PNG images.

Sections: the runs (device, commit, row counts); a roofline chart per device (every `ok` row a point at its
arithmetic intensity flops/bytes and achieved TFLOP/s, under its device's compute ceiling per dtype and its
bandwidth slope); speedup over the suite's baseline variant, per suite; the telemetry over time (power,
clocks, temperature, utilization from each run's telemetry.parquet); and the table of rows, with rows
measured while throttled by power or heat flagged. Plots are matplotlib (Agg) PNGs embedded as base64, so
the file opens anywhere with no network and no other files (the plots: harness/report_plots.py).

Roofline ceilings, first found: the ceilings the run itself used (`peaks` in its manifest, chosen by
harness.peaks.choose), the same chooser over today's store (datasheet, else results/peaks/), and last the
ceilings implied by the rows' own `pct_peak` (each row's `tflops/(pct_peak/100)` is at most the compute peak, with equality
for compute-bound rows; likewise for bandwidth), marked "inferred".
"""
from __future__ import annotations

import datetime as dt
import html
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness import result_sets as RS
from harness.report_plots import pareto_png, roofline_png, speedup_png, telemetry_png
from harness.report_sparsity import quality_speed_png



def _img(b64: str, alt: str) -> str:
    return f'<img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


# ----------------------------------------------------------------------------------------------- ceilings

def ceilings(device_name: str, rows: pd.DataFrame, manifests: list[dict]) -> tuple[dict[str, float], str]:
    """({"bw_gbs": ..., "<dtype>": TFLOP/s...}, source) for a device; empty dict when nothing is known."""
    for m in manifests:          # what the run's % peak was computed against (harness.peaks.choose, recorded)
        p = (m.get("peaks") or {}).get("primary") if m.get("device_name") == device_name else None
        if isinstance(p, dict) and p.get("values", {}).get("bw_gbs"):
            return {k: float(v) for k, v in p["values"].items()}, f"{p.get('source')} (as the run used)"
    try:                         # runs older than the recorded choice: the same chooser, today's store
        from harness import peaks
        device = "cpu" if "cpu" in str(rows["device"].iloc[0]) else "cuda"
        c = peaks.choose(device, device_name).primary
        if c.values.get("bw_gbs"):
            return dict(c.values), f"{c.source} (stored now)"
    except Exception:                                       # noqa: BLE001 - unreadable store
        pass
    # pct = max(tflops/P_f, gbps/P_b): per row, c_b = gbps/pct <= P_b and c_f = tflops/pct <= P_f, with
    # equality for the bound that binds. So P_b = max c_b, exact when some row is compute-bound (its c_b
    # falls short of the max); P_f(dtype) = max c_f over the dtype's rows, exact when one of them is not
    # bandwidth-bound. A ceiling that is only a lower bound is left out rather than drawn too low.
    ok = rows[(rows["status"] == "ok")].copy()
    with np.errstate(all="ignore"):
        pct = pd.to_numeric(ok.get("pct_peak"), errors="coerce") / 100
        ok["cb"] = (pd.to_numeric(ok["gbps"], errors="coerce") / pct).replace([np.inf, -np.inf], np.nan)
        ok["cf"] = (pd.to_numeric(ok["tflops"], errors="coerce") / pct).replace([np.inf, -np.inf], np.nan)
    ok = ok[ok["cb"].notna() & ok["cf"].notna()]
    out: dict[str, float] = {}
    if ok.empty:
        return out, "none"
    pb = float(ok["cb"].max())
    mem_bound = ok["cb"] >= pb * (1 - 1e-6)
    for dtype, g in ok.groupby("dtype"):
        if (~mem_bound[g.index]).any():
            out[str(dtype)] = float(g["cf"].max())
    if (~mem_bound).any() or len(out):
        out = {"bw_gbs": pb, **out}
    elif mem_bound.all():
        out = {"bw_gbs": pb}                # every row memory-bound: the bandwidth is exact, compute unknown
    return out, "inferred from the rows' pct_peak"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
td{white-space:nowrap}td.reason{white-space:normal;min-width:240px;max-width:420px}.wide{overflow-x:auto}
th{background:#f2f2f2}tr.throttled td{background:#ffe3e3}tr.bad td{background:#fff3cd}
img.plot{display:block;max-width:100%;margin:10px 0;border:1px solid #eee}.note{color:#666;font-size:12px}
"""

# After load, count the images that decoded (naturalWidth > 0): a check that headless tests can read.
CHECK_JS = """
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('img.plot'), ok = 0;
  imgs.forEach(function (i) { if (i.complete && i.naturalWidth > 0 && i.naturalHeight > 0) ok++; });
  document.body.setAttribute('data-images', imgs.length);
  document.body.setAttribute('data-images-decoded', ok);
});
"""

TABLE_COLS = ["suite", "case", "variant", "dtype", "status", "median_ms", "tflops", "gbps", "pct_peak", "speedup",
              "power_mean_w", "energy_per_call_j", "sm_clock_min_mhz", "temp_max_c", "cpu_others_pct", "throttled", "reason"]


def _cell(v: Any, col: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if col == "throttled":
        return "THROTTLED" if v is True else ("no" if v is False else "")
    if isinstance(v, (float, np.floating)):
        return f"{v:.1f}%" if col == "pct_peak" else f"{v:.2f}x" if col == "speedup" else f"{v:.4g}"
    return html.escape(str(v)[:200])


def rows_table(df: pd.DataFrame, label_of: dict[str, str] | None = None) -> str:
    if label_of and len(label_of) > 1:
        df = df.assign(run=df["run_id"].astype(str).map(label_of))
    cols = (["run"] if "run" in df.columns else []) + [c for c in TABLE_COLS if c in df.columns and any(_cell(v, c) for v in df[c])]   # no empty columns
    out = ['<div class="wide"><table><tr>' + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"]
    for _, r in df.iterrows():
        cls = "throttled" if r.get("throttled") is True else ("bad" if r["status"] in ("incorrect", "error") else "")
        out.append(f'<tr class="{cls}">' + "".join(f'<td class="{c}">{_cell(r[c], c)}</td>' for c in cols) + "</tr>")
    out.append("</table></div>")
    return "\n".join(out)


def build(df: pd.DataFrame, title: str = "Benchmark report") -> str:
    """The whole HTML page for the rows in `df` (with `_source` naming each row's results file)."""
    sources = sorted(set(df["_source"])) if "_source" in df.columns else []
    manifests = {s: RS.read_manifest(Path(s)) for s in sources}
    runs = RS.runs(df)
    label_of = {rid: RS.side_label(i) for i, (rid, _) in enumerate(runs)}
    parts = [f"<h1>{html.escape(title)}</h1>",
             f'<p class="note">generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC} from '
             f"{len(df)} rows in {len(runs)} run(s)</p>", "<h2>Runs</h2>", "<table><tr><th></th><th>run</th>"
             "<th>device</th><th>commit</th><th>torch</th><th>rows</th><th>ok / incorrect / error / skipped</th>"
             "<th>throttled rows</th></tr>"]
    for rid, g in runs:
        st = g["status"].value_counts()
        first = g.iloc[0]
        thr = int((g["throttled"] == True).sum()) if "throttled" in g else 0     # noqa: E712 - object column
        parts.append(f"<tr><td>{label_of[rid]}</td><td>{html.escape(rid)}</td><td>{_cell(first.get('device_name'), '')}"
                     f" [{_cell(first.get('device'), '')}]</td><td>{_cell(first.get('commit'), '')}</td>"
                     f"<td>{_cell(first.get('torch'), '')}</td><td>{len(g)}</td><td>"
                     + " / ".join(str(int(st.get(s, 0))) for s in ("ok", "incorrect", "error", "skipped"))
                     + f"</td><td>{thr}</td></tr>")
    parts.append("</table>")

    parts.append("<h2>Roofline per device</h2>")
    parts.append('<p class="note">Each row that ran is a point at its arithmetic intensity (declared FLOPs / '
                 "declared bytes) and achieved TFLOP/s, under its device's bandwidth slope and compute ceiling "
                 "per dtype. A point on a ceiling is at 100% of the roofline.</p>")
    any_roof = False
    for dev, g in df.groupby("device_name", sort=False):
        pk, src = ceilings(str(dev), g, [manifests.get(s, {}) for s in set(g.get("_source", []))])
        b64 = roofline_png(str(dev), g, pk, src)
        if b64:
            parts.append(_img(b64, f"roofline {dev}"))
            ceil = ", ".join(f"{k} {v:g} {'GB/s' if k.endswith('_gbs') else 'TFLOP/s'}" for k, v in pk.items())
            parts.append(f'<p class="note">{html.escape(str(dev))}: ceilings {html.escape(ceil) or "unknown"} '
                         f"({html.escape(src)})</p>")
            any_roof = True
    if not any_roof:
        parts.append('<p class="note">No row with both FLOPs and bytes ran.</p>')

    parts.append("<h2>Speedup over baseline, per suite</h2>")
    for suite, g in df.groupby("suite", sort=False):
        b64 = speedup_png(str(suite), g, label_of)
        parts.append(_img(b64, f"speedup {suite}") if b64 else
                     f'<p class="note">{html.escape(str(suite))}: no speedups (the baseline did not run).</p>')

    if "sparsity" in set(df["suite"]):
        parts.append("<h2>Sparsity: quality versus speed</h2>")
        b64 = quality_speed_png(df)
        parts.append(_img(b64, "sparsity quality vs speed") if b64 else
                     '<p class="note">sparsity: no pattern has both a quality row and a timed row.</p>')
    if "quality_metric" in df.columns and (df["suite"] == "quant").any():
        parts.append("<h2>Quantization: quality against speed, per model</h2>")
        for model, g in df[df["suite"] == "quant"].groupby("model", sort=False):
            b64 = pareto_png(str(model), g)
            if b64:
                parts.append(_img(b64, f"pareto {model}"))

    if "suite" in df.columns and (df["suite"] == "distill").any():
        from distill.report import retention_png
        parts.append("<h2>Distillation: quality retained against speedup</h2>")
        b64 = retention_png(df)
        parts.append(_img(b64, "distillation retention versus speedup") if b64 else
                     '<p class="note">distill: no student with both a quality row and a timed teacher.</p>')

    from inference.report_streaming import section as streaming_section
    parts += streaming_section(df, label_of, _img)           # suite streaming: latency vs rate, goodput

    parts.append("<h2>Telemetry over time</h2>")
    shown = False
    for s in sources:
        tp = Path(s).parent / "telemetry.parquet"
        if not tp.is_file():
            continue
        try:
            ts = pd.read_parquet(tp)
        except Exception:                                   # noqa: BLE001
            continue
        rid = str(ts["run_id"].iloc[0]) if "run_id" in ts.columns and len(ts) else Path(s).parent.name
        b64 = telemetry_png(f"{label_of.get(rid, '')} {rid}", ts)
        if b64:
            parts.append(_img(b64, f"telemetry {rid}"))
            shown = True
    if not shown:
        reasons = [str(m.get("telemetry", {}).get("reason") or "") for m in manifests.values()]
        why = "; ".join(r for r in reasons if r) or "no telemetry.parquet beside the results"
        parts.append(f'<p class="note">No telemetry recorded: {html.escape(why)}.</p>')

    parts.append("<h2>Rows</h2>")
    parts.append('<p class="note">Rows measured while the device was throttled by power or heat are '
                 'marked THROTTLED and shaded red; incorrect and error rows are shaded yellow.</p>')
    parts.append(rows_table(df, label_of))
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style><script>{CHECK_JS}</script></head><body>\n{body}\n</body></html>\n")


def main(argv: list[str] | None = None) -> int:
    p = RS.Parser(prog="bench.py report", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="results files/directories, run ids or baseline names")
    p.add_argument("--out", "-o", default="report.html", help="HTML file to write (default report.html)")
    p.add_argument("--title", default="Benchmark report")
    try:
        a = p.parse_args(argv)
        df = RS.load(a.runs)
        page = build(df, a.title)
    except RS.BadInput as e:
        print(f"bench.py report: error: {e}", file=sys.stderr)
        return 2
    try:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(page)
    except OSError as e:
        print(f"bench.py report: error: cannot write {a.out}: {e}", file=sys.stderr)
        return 2
    print(f"report: {a.out} ({len(page) // 1024} KiB, {page.count('<img ')} plots)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
