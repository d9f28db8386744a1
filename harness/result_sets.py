"""Finding and loading result tables for gate, compare, report and baseline.

A run is named by a results file (results.parquet / results.csv), a run directory holding one, a directory
of run directories (every run below it), a run id under `results/`, or a baseline name under
`results/baselines/`. Files are read by harness/results.py (the one module that writes and reads a results
table: `samples_ms` back as a list of floats whichever format was written); this module chooses which
files; a table lacking the key columns is bad input.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd

from harness import results

KEY = ("suite", "case", "variant", "dtype", "device")


class BadInput(Exception):
    """An argument that names no results, or a table that lacks what is needed: exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as BadInput (one line, exit 2) instead of usage + SystemExit."""

    def error(self, message: str):
        raise BadInput(message)


ROOT = Path(__file__).resolve().parent.parent


def results_root() -> Path:
    """Where the runner writes runs: $KB_RESULTS_DIR, else <repository>/results."""
    return Path(os.environ.get("KB_RESULTS_DIR", ROOT / "results"))


def baselines_root() -> Path:
    return results_root() / "baselines"


def _table_in(d: Path) -> Path | None:
    for name in ("results.parquet", "results.csv"):
        if (d / name).is_file():
            return d / name
    return None


def resolve(spec: str) -> list[Path]:
    """The results files that `spec` names (see the module docstring); BadInput when none."""
    p = Path(spec)
    if p.is_file():
        if p.suffix not in (".parquet", ".csv"):
            raise BadInput(f"{spec}: not a results .parquet or .csv file")
        return [p]
    if p.is_dir():
        t = _table_in(p)
        if t:
            return [t]
        found = []
        inside_baselines = "baselines" in p.resolve().parts
        for d in sorted({f.parent for f in list(p.rglob("results.parquet")) + list(p.rglob("results.csv"))}):
            if not inside_baselines and "baselines" in d.relative_to(p).parts:
                continue                                   # results/ holds runs; its baselines are not runs
            found.append(_table_in(d))
        if found:
            return found
        raise BadInput(f"{spec}: no results.parquet or results.csv in this directory or below it")
    for cand in (results_root() / spec, baselines_root() / spec):
        if cand.is_dir() and _table_in(cand):
            return [_table_in(cand)]
    raise BadInput(f"{spec}: no such results file, directory, run id or baseline name")


def read_table(path: Path) -> pd.DataFrame:
    df = _read(path)
    missing = [c for c in ("run_id",) + KEY + ("status",) if c not in df.columns]
    if missing:
        raise BadInput(f"{path}: not a results table (missing columns {', '.join(missing)})")
    return df


def _read(path: Path) -> pd.DataFrame:
    try:
        return results.read_file(path)
    except Exception as e:                                # noqa: BLE001
        raise BadInput(f"{path}: cannot read results ({type(e).__name__}: {e})") from None


read_manifest = results.read_manifest


def load(specs: list[str] | str) -> pd.DataFrame:
    """Every row the specs name, one table, with `_source` (the results file) added."""
    if isinstance(specs, str):
        specs = [specs]
    frames = []
    for spec in specs:
        for f in resolve(spec):
            df = read_table(f)
            df["_source"] = str(f)
            frames.append(df)
    if not frames:
        raise BadInput("no results given")
    return pd.concat(frames, ignore_index=True)


def latest_per_key(df: pd.DataFrame, key=KEY) -> tuple[pd.DataFrame, int]:
    """One row per key, the latest by timestamp; returns (rows, how many older duplicates were dropped)."""
    order = df.sort_values("timestamp", kind="stable") if "timestamp" in df.columns else df
    out = order.drop_duplicates(list(key), keep="last")
    return out, len(df) - len(out)


def runs(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The table split by run_id, in order of first appearance."""
    return [(str(r), g) for r, g in df.groupby("run_id", sort=False)]


def side_label(i: int) -> str:
    """A, B, ..., Z, AA, AB, ...: the name of the i-th run in compare and report."""
    s = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        s = chr(65 + r) + s
    return s
