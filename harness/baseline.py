"""Named baselines for the regression gate: `bench.py baseline save|list|show|rm`.

    bench.py baseline save NAME [RUN ...] [--force]   store runs (default: the latest under results/)
    bench.py baseline list                            the stored baselines
    bench.py baseline show NAME                       what one holds
    bench.py baseline rm NAME

A baseline is a directory `results/baselines/NAME/` with the run's results.parquet, results.csv,
manifest.json (and telemetry.parquet where there is one) plus baseline.json (where it came from, when).
Several runs can be stored under one name; their rows are concatenated. Store several runs of the same code
(`bench.py baseline save NAME RUN1 RUN2 RUN3`): the gate takes the spread of each row between them as that
row's noise floor (harness/gate_match.py); runs on different devices (a CPU run and a GPU run) can share a
name too. Git
tracks results/baselines/ (see .gitignore), so a baseline is committed with the code it measured, and
`bench.py gate --baseline NAME --current RUN` finds it by name.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import shutil
import sys
from pathlib import Path

import pandas as pd

from harness import result_sets as RS

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def latest_run() -> Path:
    """The most recent run directory under results/ (by the manifest's modification time)."""
    root = RS.results_root()
    cands = [d for d in root.iterdir() if d.is_dir() and d.name not in ("baselines", "peaks")
             and RS._table_in(d)] if root.is_dir() else []
    if not cands:
        raise RS.BadInput(f"no run under {root}: run a suite first, or name the run to save")
    return max(cands, key=lambda d: ((d / "manifest.json").stat().st_mtime if (d / "manifest.json").exists()
                                     else RS._table_in(d).stat().st_mtime, d.name))


def _write_table(df: pd.DataFrame, d: Path) -> None:
    df = df.drop(columns=[c for c in df.columns if c.startswith("_")])
    df.to_parquet(d / "results.parquet", index=False)
    csv = df.copy()
    csv["samples_ms"] = csv["samples_ms"].map(
        lambda s: json.dumps([round(float(x), 6) for x in s]) if isinstance(s, (list, tuple)) else "")
    csv.to_csv(d / "results.csv", index=False)


def save(name: str, specs: list[str], force: bool = False) -> Path:
    if not NAME.match(name):
        raise RS.BadInput(f"bad baseline name {name!r}: letters, digits, '.', '_' and '-' only")
    files: list[Path] = []
    for spec in specs or [str(latest_run())]:
        files += RS.resolve(spec)
    dest = RS.baselines_root() / name
    if any(Path(f).resolve().is_relative_to(dest.resolve()) for f in files):
        raise RS.BadInput(f"cannot save baseline {name!r} from itself")
    if dest.exists() and not force:
        raise RS.BadInput(f"baseline {name!r} exists ({dest}); --force replaces it")
    frames = [RS.read_table(f) for f in files]
    for f, df in zip(files, frames):
        if "samples_ms" not in df.columns:
            raise RS.BadInput(f"{f}: no samples_ms column (the gate needs every sample); save a run bench.py wrote")
    tmp = dest.with_name(f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")   # unique per process
    tmp.mkdir(parents=True)
    try:
        _fill(tmp, name, files, frames)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)                 # never a half-written baseline left behind
        raise
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def _fill(tmp: Path, name: str, files: list[Path], frames: list[pd.DataFrame]) -> None:
    if len(files) == 1:
        for fn in ("results.parquet", "results.csv", "manifest.json", "telemetry.parquet"):
            if (files[0].parent / fn).is_file():
                shutil.copy2(files[0].parent / fn, tmp / fn)
        if not (tmp / "results.parquet").exists() or not (tmp / "results.csv").exists():
            _write_table(frames[0], tmp)
    else:
        _write_table(pd.concat(frames, ignore_index=True), tmp)
        (tmp / "manifest.json").write_text(json.dumps({"runs": [RS.read_manifest(f) for f in files]}, indent=2))
        ts = [pd.read_parquet(f.parent / "telemetry.parquet") for f in files
              if (f.parent / "telemetry.parquet").is_file()]
        if ts:
            pd.concat(ts, ignore_index=True).to_parquet(tmp / "telemetry.parquet", index=False)
    df = pd.concat(frames, ignore_index=True)
    meta = {"name": name, "saved_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "sources": [str(f) for f in files], "run_ids": sorted({str(x) for x in df["run_id"]}),
            "device_names": sorted({str(x) for x in df.get("device_name", pd.Series(dtype=str)).dropna()}),
            "commits": sorted({str(x) for x in df.get("commit", pd.Series(dtype=str)).dropna()}),
            "rows": int(len(df)), "status": {k: int(v) for k, v in df["status"].value_counts().items()}}
    (tmp / "baseline.json").write_text(json.dumps(meta, indent=2))


def _meta(d: Path) -> dict:
    try:
        return json.loads((d / "baseline.json").read_text())
    except (OSError, ValueError):
        return {}


def list_baselines() -> list[tuple[str, dict]]:
    root = RS.baselines_root()
    if not root.is_dir():
        return []
    return [(d.name, _meta(d)) for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")
            and RS._table_in(d)]


def main(argv: list[str] | None = None) -> int:
    p = RS.Parser(prog="bench.py baseline", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=RS.Parser)
    s = sub.add_parser("save", help="store runs as a named baseline")
    s.add_argument("name")
    s.add_argument("runs", nargs="*", help="results files/directories or run ids (default: the latest run)")
    s.add_argument("--force", action="store_true", help="replace an existing baseline of that name")
    sub.add_parser("list", help="list the stored baselines")
    sh = sub.add_parser("show", help="summarize one baseline")
    sh.add_argument("name")
    rm = sub.add_parser("rm", help="delete a baseline")
    rm.add_argument("name")
    try:
        a = p.parse_args(argv)
        if a.cmd == "save":
            dest = save(a.name, a.runs, a.force)
            m = _meta(dest)
            print(f"baseline {a.name!r}: {m['rows']} rows from {', '.join(m['run_ids'])} "
                  f"({', '.join(m['device_names'])}) -> {dest}")
        elif a.cmd == "list":
            items = list_baselines()
            if not items:
                print(f"no baselines under {RS.baselines_root()}")
            for name, m in items:
                print(f"{name:24s} {m.get('rows', '?'):>5} rows  {', '.join(m.get('device_names', []))}  "
                      f"runs {', '.join(m.get('run_ids', []))}  saved {m.get('saved_at', '?')}")
        else:
            d = RS.baselines_root() / a.name
            if not NAME.match(a.name) or not d.is_dir():
                raise RS.BadInput(f"no baseline named {a.name!r} under {RS.baselines_root()}")
            if a.cmd == "rm":
                shutil.rmtree(d)
                print(f"removed baseline {a.name!r}")
            else:
                df = RS.read_table(RS._table_in(d))
                print(json.dumps(_meta(d), indent=2))
                cols = [c for c in ("suite", "case", "variant", "dtype", "device", "status", "median_ms", "n")
                        if c in df.columns]
                print(df[cols].to_string(index=False))
    except RS.BadInput as e:
        print(f"bench.py baseline: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"bench.py baseline: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
