"""Results: one long pandas table per run, written as rows arrive.

Every added row rewrites `results.parquet` and `results.csv` through a temporary file and `os.replace`, so
a run killed at any moment leaves the rows measured so far in complete files. `manifest.json` holds the
machine and software (docs/CONTRACTS.md §5).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

COLUMNS = [
    "run_id", "suite", "case", "variant", "device", "device_name", "dtype", "status", "reason",
    "median_ms", "p20_ms", "p80_ms", "min_ms", "n", "cv", "samples_ms", "compile_s",
    "flops", "bytes", "tflops", "gbps", "pct_peak", "peak_source", "pct_peak_measured", "speedup",
    "max_abs_err", "max_rel_err", "config", "threads", "cold", "cuda_graph",
    # model-level columns (suites/model.py and the pipelines); empty for kernel suites
    "model", "tokens_per_s", "ms_per_token", "peak_mem_mb", "energy_per_token_j",
    "quality_metric", "quality_value", "quality_ref", "quality_delta",
    "commit", "host", "torch", "triton", "cuda", "driver", "timestamp",
]
STATUSES = ("ok", "incorrect", "error", "skipped")


def atomic_write(path: Path, write) -> None:
    """`write(tmp)` then rename over `path`: readers see the old file or the new one, never a torn one.

    The temporary name is unique to this process and call (concurrent writers never share one), and it is
    removed when the write fails (a full disk leaves the old file, not a half-written temporary)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def param_column(name: str) -> str:
    return f"p_{name}" if name in COLUMNS else name


def to_frame(rows: Iterable[dict[str, Any]], extra_columns: Iterable[str] = ()) -> pd.DataFrame:
    rows = list(rows)
    cols = list(COLUMNS) + [c for c in extra_columns if c not in COLUMNS]
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    df = pd.DataFrame(rows, columns=cols)
    for c in ("n", "threads"):
        df[c] = df[c].astype("Int64")
    return df


class ResultWriter:
    def __init__(self, out_dir: Path, manifest: dict[str, Any], extra_columns: Iterable[str] = (),
                 rows: Iterable[dict[str, Any]] = ()):
        """`rows`: those already in the directory (a resumed run); they are kept and written again."""
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = list(rows)
        self.extra = list(extra_columns)
        self.manifest = dict(manifest)
        self.write_manifest()

    @property
    def parquet(self) -> Path:
        return self.dir / "results.parquet"

    def add(self, row: dict[str, Any]) -> None:
        row.setdefault("timestamp", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        self.rows.append(row)
        self.flush()

    def frame(self) -> pd.DataFrame:
        return to_frame(self.rows, self.extra)

    def flush(self) -> None:
        df = self.frame()
        atomic_write(self.parquet, lambda p: df.to_parquet(p, index=False))
        csv = df.copy()
        csv["samples_ms"] = csv["samples_ms"].map(
            lambda s: json.dumps([round(float(x), 6) for x in s]) if isinstance(s, (list, tuple)) else "")
        atomic_write(self.dir / "results.csv", lambda p: csv.to_csv(p, index=False))

    def write_manifest(self, **updates: Any) -> None:
        self.manifest.update(updates)
        atomic_write(self.dir / "manifest.json",
                      lambda p: p.write_text(json.dumps(self.manifest, indent=2, default=_jsonable)))


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    return str(x)


def read_file(p: Path) -> pd.DataFrame:
    """One results.parquet or results.csv as written by ResultWriter, `samples_ms` back as lists of floats
    (a list in parquet, a JSON list in CSV). The one reader: `load` and harness/result_sets.py use it."""
    p = Path(p)
    if p.suffix == ".parquet":
        df = pd.read_parquet(p)
        if "samples_ms" in df.columns:
            df["samples_ms"] = df["samples_ms"].map(lambda s: [float(x) for x in s] if s is not None else [])
        return df
    df = pd.read_csv(p)
    if "samples_ms" in df.columns:
        df["samples_ms"] = df["samples_ms"].map(lambda s: json.loads(s) if isinstance(s, str) and s else [])
    return df


def read_manifest(results_file: Path) -> dict[str, Any]:
    """The manifest.json beside a results file ({} when there is none or it is unreadable)."""
    try:
        return json.loads((Path(results_file).parent / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def load(path: str | os.PathLike) -> pd.DataFrame:
    """Load a run: a results directory, or a results.parquet / results.csv file."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.parquet" if (p / "results.parquet").exists() else p / "results.csv"
    if not p.exists():
        raise FileNotFoundError(f"no results at {path}")
    return read_file(p)
