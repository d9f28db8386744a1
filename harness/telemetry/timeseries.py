"""The time series of a run: every telemetry sample with its time, in telemetry.parquet."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from harness.telemetry import base
from harness.telemetry.base import Measurement

def write_timeseries(run_dir: str | os.PathLike, entries: Iterable[tuple[dict[str, Any], Measurement]]) -> Path | None:
    """Write every telemetry sample of a run to `run_dir/telemetry.parquet`; returns the path (None if empty).

    `entries`: (keys, measurement) pairs, keys = {"run_id", "suite", "case", "variant", "dtype"} of the row
    the measurement belongs to. Columns: the keys, `t_s` (seconds since the run's first sample), `t_unix`,
    and TIMESERIES_METRICS. Rewrites the whole file (call it after each row or once at the end). Never raises.
    """
    try:
        import pandas as pd
        rows: list[dict[str, Any]] = []
        for keys, m in entries:
            if m is not None:
                rows.extend(m.timeseries(**keys))
        if not rows:
            return None
        df = pd.DataFrame(rows)
        df.insert(0, "t_s", df["t_unix"] - df["t_unix"].min())
        lead = [c for c in ("run_id", "suite", "case", "variant", "dtype") if c in df.columns]
        df = df[lead + [c for c in df.columns if c not in lead]]
        from harness.results import atomic_write
        path = Path(run_dir) / "telemetry.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda p: df.to_parquet(p, index=False))
        return path
    except Exception as e:                                 # noqa: BLE001
        base._warn_once("timeseries", f"telemetry.parquet not written: {type(e).__name__}: {e}")
        return None
