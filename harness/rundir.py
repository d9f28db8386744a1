"""Output directories: one run per directory, unique run ids, `--resume`.

- A run id is `<UTC-less local time>-<device>-<6 hex>`; the directory is created with `mkdir` that fails when
  it exists, so two runs started in the same second on the same host still get two directories.
- `--out DIR` at a directory that holds a run (or anything else) is refused: a run never overwrites another.
  `--resume` continues the run in DIR instead: its rows are kept, the rows already measured with the same keys
  are skipped. A DIR that does not exist yet (or is empty) simply starts a run, with or without `--resume`, so
  a preemptible job can always pass `--resume`.
- While a run writes to a directory it holds an exclusive `flock` on it (released by the kernel even when the
  process is SIGKILLed): a second run on the same DIR is refused instead of interleaving rows.
- Where runs go by default: `results_root()` (`$KB_RESULTS_DIR`, else `<repository>/results`), the one setting
  that every reader (gate, compare, report, baseline) and writer uses.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.registry import UsageError
from harness.result_sets import results_root

RUN_FILES = ("manifest.json", "results.parquet", "results.csv")


def new_run_id(device: str) -> str:
    return f"{_dt.datetime.now():%Y%m%d-%H%M%S}-{device}-{secrets.token_hex(3)}"


@dataclass
class RunDir:
    path: Path
    run_id: str | None                      # None: take it from the resumed manifest or make one
    fd: int                                 # the directory, flocked for the life of the run
    manifest: dict[str, Any] | None = None  # of the run being resumed
    rows: list[dict[str, Any]] = field(default_factory=list)
    telemetry: list[dict[str, Any]] = field(default_factory=list)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)               # drops the flock
            self.fd = -1


def _lock(d: Path, shown: str) -> int:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UsageError(f"{shown} is being written by another run right now; choose another --out") from None
    return fd


def _mkdir(d: Path, shown: str) -> None:
    if d.exists() and not d.is_dir():
        raise UsageError(f"{shown} is a file, not a directory")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {shown}: {exc.strerror or exc}") from None


def claim(out: Path | None, device: str, resume: bool = False) -> RunDir:
    """The directory this run writes to, locked; for `resume`, with the earlier rows loaded."""
    if out is None:
        if resume:
            raise UsageError("--resume needs --out DIR (the run to continue)")
        root = results_root()
        _mkdir(root, f"the results directory {root}")
        for _ in range(100):
            run_id = new_run_id(device)
            try:
                (root / run_id).mkdir()
            except FileExistsError:
                continue
            except OSError as exc:
                raise UsageError(f"cannot create a run directory in {root}: {exc.strerror or exc}") from None
            return RunDir(root / run_id, run_id, _lock(root / run_id, str(root / run_id)))
        raise UsageError(f"cannot find a free run id under {root}")   # pragma: no cover
    out = Path(out)
    shown = f"--out {out}"
    _mkdir(out, shown)
    fd = _lock(out, shown)
    try:
        return _inspect(out, shown, fd, resume)
    except BaseException:
        os.close(fd)
        raise


def _inspect(out: Path, shown: str, fd: int, resume: bool) -> RunDir:
    entries = [p for p in out.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp"))]
    holds_run = any((out / n).exists() for n in RUN_FILES)
    if not resume:
        if holds_run:
            raise UsageError(f"{shown} holds a run already; choose a new --out, or add --resume to continue it")
        if entries:
            raise UsageError(f"{shown} is not empty ({entries[0].name}...); choose a new or empty directory")
        return RunDir(out, None, fd)
    if not holds_run:
        if entries:
            raise UsageError(f"{shown} holds no run to resume and is not empty ({entries[0].name}...)")
        return RunDir(out, None, fd)                         # nothing yet: the run starts here
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{shown}: cannot resume, its manifest.json is unreadable ({exc})") from None
    for stale in out.glob(".*.tmp"):                          # left by a killed run; we hold the lock
        try:
            stale.unlink()
        except OSError:
            pass
    rows: list[dict[str, Any]] = []
    if (out / "results.parquet").exists() or (out / "results.csv").exists():
        from harness.results import load
        try:
            df = load(out)
        except Exception as exc:   # noqa: BLE001
            raise UsageError(f"{shown}: cannot resume, its results are unreadable ({type(exc).__name__}: "
                             f"{exc})") from None
        rows = [{k: v for k, v in r.items() if not _missing(v)} for r in df.to_dict("records")]
    tel: list[dict[str, Any]] = []
    if (out / "telemetry.parquet").exists():
        try:
            import pandas as pd
            tel = pd.read_parquet(out / "telemetry.parquet").drop(columns=["t_s"], errors="ignore").to_dict("records")
        except Exception:   # noqa: BLE001 - telemetry is auxiliary: start its file again
            tel = []
    return RunDir(out, manifest.get("run_id"), fd, manifest, rows, tel)


def _missing(v: Any) -> bool:
    """NaN / NA read back from the table: the column was empty (the writer fills it again)."""
    if isinstance(v, (list, tuple, dict, str)) or v is None:
        return v is None
    try:
        import pandas as pd
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False
