"""The run loop: for each (suite, dtype, case, variant): requirements, correctness, timing, one results row.

Order per case: the baseline variant first, so every later row gets its speedup. A variant is timed only
after its output on fresh, seeded inputs (poisoned outputs) matched the float64 reference; the timing runs
on other fresh inputs (harness/row.py, `measure_row`). Every outcome is a row: `ok`, `incorrect` (with the
worst mismatches), `error` (the exception, a crash, a timeout; details in errors.log) or `skipped` (the
missing requirement).

Isolation (the default): rows are measured in a worker process (harness/worker.py), reused across rows and
replaced after a failure, so a segfault, an abort, a hang (`row_timeout`) or an over-allocation costs one
`error` row. `isolate=False` (`--no-isolate`) measures in this process through the same `measure_row`.

Rows are written as they come (results.py), into a directory this run owns (rundir.py: unique run ids,
`--out` never overwrites, `--resume` skips rows already measured). Ctrl-C, SIGTERM and SIGHUP keep every
row measured so far and mark the manifest interrupted with the signal (exit 128+signal); a full disk stops
the run with the rows already written intact (exit 1).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import fnmatch
import json
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from harness import env, peaks, rundir, telemetry
from harness.registry import Case, Suite, UsageError, Variant
from harness.results import ResultWriter, param_column
from harness.row import RowContext, configure_compile, derive_seed, measure_row  # noqa: F401 (derive_seed: API)
from harness.timing import TimingConfig
from harness.worker import WorkerPool, default_memory_limit, suite_ref, task_for, worker_spec


@dataclass
class Plan:
    suite: Suite
    case: Case
    variant: Variant


@dataclass
class RunOptions:
    suites: list[Suite]
    device: str
    dtypes: list[str] | None             # None: each suite's default for the device
    mode: str = "quick"
    filters: list[str] = field(default_factory=list)
    variants: list[str] | None = None
    seed: int = 0
    out: Path | None = None
    threads: int | None = None
    timing: TimingConfig = field(default_factory=TimingConfig)
    progress: bool = True
    isolate: bool = True                 # measure in worker processes (False: in this process)
    row_timeout: float | None = None     # seconds per row in a worker; None: default_row_timeout(budget)
    worker_memory: int | None = None     # bytes (RLIMIT_DATA) per worker; None: 3/4 of RAM on CPU; 0: none
    resume: bool = False                 # continue the run in `out`, skipping rows it already has
    reset_peaks: list[str] | None = None  # None: keep the stored peaks; []: forget all; [probe...]: those
    auto_peak: bool = True                # no ceiling known for this device: measure one first (seconds)
    dist_plan: str = "same"               # under torchrun: every rank runs the plan ("same") or its "shard"
    rank_timeout: float | None = None     # under torchrun: seconds to wait for a rank / a collective


def _match(pattern: str, name: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) if any(c in pattern for c in "*?[") else pattern in name


def suite_dtypes(suite: Suite, device: str, asked: list[str] | None) -> list[str]:
    if asked is None:
        return [d for d in suite.default_dtype[device].split(",") if d in suite.dtypes]
    return [d for d in asked if d in suite.dtypes]


def build_plan(opts: RunOptions) -> list[Plan]:
    plan: list[Plan] = []
    for suite in opts.suites:
        variants = list(suite.variants.values())
        variants.sort(key=lambda v: v.name != suite.baseline)      # baseline first
        if opts.variants:
            variants = [v for v in variants if v.name in opts.variants]
        for dtype in suite_dtypes(suite, opts.device, opts.dtypes):
            for case in suite.cases(opts.mode, opts.device, dtype):
                for v in variants:
                    if suite.applies is not None and not suite.applies(case, v.name):
                        continue
                    if opts.filters and not any(_match(f, case.name) or _match(f, v.name) for f in opts.filters):
                        continue
                    plan.append(Plan(suite, case, v))
    return plan


def settings_of(opts: RunOptions, device_name: str) -> dict[str, Any]:
    """What must be equal for two sessions' rows to belong to one run (checked by --resume)."""
    return {"device": opts.device, "device_name": device_name, "seed": opts.seed,
            "threads": torch.get_num_threads() if opts.device == "cpu" else None,
            "timing": dataclasses.asdict(opts.timing)}


def row_key(row: dict[str, Any]) -> tuple:
    return tuple(str(row.get(k)) for k in ROW_KEY)


# with the run's settings: one measurement (`rank`: under torchrun; None elsewhere)
ROW_KEY = ("suite", "case", "variant", "dtype", "device", "rank")


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled like Ctrl-C (SIGINT): rows kept, the manifest says which signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class DiskFull(Exception):
    """The results could not be written (ENOSPC, EIO...): the run stops, what was written stays valid."""


class Runner:
    def __init__(self, opts: RunOptions, argv: list[str], pool: WorkerPool | None = None, dist=None):
        """`pool`: a worker pool started earlier for these options (bench.py starts it before importing the
        suites, so that the worker's start-up overlaps its own); by default one is started here.
        `dist`: this rank's harness.distributed.Dist under torchrun (rank 0 writes the run directory)."""
        self.opts = opts
        self.dist = dist
        configure_compile()
        self.device = opts.device
        if opts.threads:
            torch.set_num_threads(opts.threads)
        self.pool: WorkerPool | None = None
        if opts.worker_memory is None:
            self.memory_limit = default_memory_limit(self.device)
        else:
            self.memory_limit = opts.worker_memory or None          # 0: no limit
        if opts.isolate:
            for suite in opts.suites:
                try:
                    suite_ref(suite)
                except ValueError as exc:
                    if pool is not None:
                        pool.close()
                    raise UsageError(str(exc)) from None
            self.pool = pool or WorkerPool(worker_spec(opts.device, opts.threads, opts.worker_memory))
        try:
            self._open(opts, argv)
        except BaseException:
            self.close()
            raise

    def _open(self, opts: RunOptions, argv: list[str]) -> None:
        d = self.dist
        if d is not None and d.rank != 0:       # rank 0 owns the run directory; this rank's is a scratch one
            import tempfile
            self.scratch = Path(tempfile.mkdtemp(prefix=f"kbench-rank{d.rank}-"))
            self.rundir = rundir.claim(self.scratch, self.device)
            self.rundir.run_id = d.get("run_id")
        else:
            self.rundir = rundir.claim(opts.out, self.device, opts.resume)
        manifest = env.manifest(self.device, argv)
        settings = settings_of(opts, manifest["device_name"])
        if d is not None:
            settings.update(world_size=d.world_size, dist_plan=opts.dist_plan)
        prev = self.rundir.manifest
        if prev is not None:
            old = prev.get("settings") or {}
            diff = [k for k in sorted(set(old) | set(settings)) if old.get(k) != _jsonish(settings.get(k))]
            if diff:
                raise UsageError(f"--resume: {opts.out} was measured with other settings ("
                                 + "; ".join(f"{k}: {old.get(k)} then, {_jsonish(settings.get(k))} now"
                                             for k in diff) + "); use a new --out")
        self.run_id = self.rundir.run_id or rundir.new_run_id(self.device)
        self.done_keys: set[tuple] = set()
        if d is not None and d.rank == 0:
            from harness import distributed
            self.rundir.rows, self.done_keys = distributed.resumable(self.rundir.rows, d, opts.suites)
            d.put("run_id", self.run_id)
            d.put("resume", self.done_keys)
        elif d is not None:
            self.done_keys = d.get("resume")
        self.resumed_rows = len(self.rundir.rows)
        manifest.update(run_id=self.run_id, mode=opts.mode, seed=opts.seed,
                        suites=[s.name for s in opts.suites], timing=vars(opts.timing), settings=settings,
                        isolation={"isolated": opts.isolate, "row_timeout_s": self.row_timeout(),
                                   "worker_memory_bytes": self.memory_limit if opts.isolate else None})
        if prev is not None:   # keep the first session's record, append this one
            sessions = prev.get("sessions") or [{k: prev.get(k) for k in ("command", "started", "commit")}]
            sessions.append({"command": manifest["command"], "started": manifest["started"],
                             "commit": manifest["commit"], "rows_before": self.resumed_rows})
            manifest = {**prev, **{k: v for k, v in manifest.items() if k not in ("started", "command", "argv")},
                        "sessions": sessions}
            manifest.pop("finished", None)
        self.sampler = telemetry.make_sampler(self.device)     # never raises; empty columns where unreadable
        manifest["telemetry"] = self.sampler.info()
        try:
            self.writer = ResultWriter(self.rundir.path, manifest, telemetry.TELEMETRY_COLUMNS, self.rundir.rows)
        except OSError as exc:                                  # checked before anything is measured
            raise UsageError(f"cannot write to {self.rundir.path}: {exc.strerror or exc}") from None
        self.keys = env.row_keys(manifest)
        if d is not None:
            self.keys.update(d.columns)
        self.peaks = self._choose_peaks(opts)
        self.writer.write_manifest(peaks=self.peaks.manifest())   # what every row's % peak is against (report)
        self.baseline_ms: dict[tuple, float] = {}
        for r in self.rundir.rows:                               # speedups of resumed cases
            s = next((s for s in opts.suites if s.name == r.get("suite")), None)
            if s is not None and r.get("variant") == s.baseline and r.get("status") == "ok":
                self.baseline_ms[(r["suite"], r["case"], r["dtype"])] = float(r["median_ms"])
        self.errors_log = self.writer.dir / "errors.log"
        self.telemetry_entries: list = [({}, _Recorded(self.rundir.telemetry))] if self.rundir.telemetry else []
        self.ctx = RowContext(self.device, opts.seed, opts.timing, self.sampler,
                              lockstep=d.lockstep() if d is not None else None)
        self.last_timeseries: list = []

    def row_timeout(self) -> float | None:
        if not self.opts.isolate:
            return None
        if self.opts.row_timeout is not None:
            return self.opts.row_timeout
        return default_row_timeout(self.opts.timing.budget_s)

    def _choose_peaks(self, opts: RunOptions) -> peaks.PeakChoice:
        """The ceilings of this run (harness/peaks.py chooses); on a first run with none known, a quick probe."""
        name = self.keys["device_name"]
        if opts.reset_peaks is not None:
            gone = peaks.reset(name, opts.reset_peaks or None)
            print(f"peak: forgot {len(gone)} stored figure(s) of {name}" + (f" ({', '.join(gone)})" if gone else ""))
        choice = peaks.choose(self.device, name)
        if peaks.needs_probe(choice) and opts.mode != "test" and opts.auto_peak and \
                not any(s.name == "peak" for s in opts.suites):
            from harness import autopeak
            autopeak.probe(self.device, name)
            choice = peaks.choose(self.device, name)
        return choice

    # ---- one (case, variant) ----------------------------------------------------------------------------
    def base_row(self, p: Plan) -> dict[str, Any]:
        suite, case, v = p.suite, p.case, p.variant
        flops, nbytes = suite.work(case)
        row: dict[str, Any] = dict(run_id=self.run_id, suite=suite.name, case=case.name, variant=v.name,
                                   device=self.device, dtype=case.dtype_name, flops=flops, bytes=nbytes,
                                   cold=bool(case.get("cold", suite.cold)),
                                   cuda_graph=bool(self.opts.timing.cuda_graph and self.device == "cuda"),
                                   **self.keys)
        for k, val in case.params.items():
            row[param_column(k)] = val
        return row

    def run_one(self, p: Plan) -> dict[str, Any]:
        """Measure one row (in a worker, or here with --no-isolate), log its failure, derive its figures."""
        row = self.base_row(p)
        if self.pool is not None and not (self.dist is not None and p.suite.distributed is not None):
            outcome = self.pool.run(task_for(p.suite, p.case, p.variant, self.opts.seed, self.opts.timing),
                                    self.row_timeout())
            if "threads" not in outcome.fields and self.device == "cpu":
                outcome.fields["threads"] = torch.get_num_threads()
        else:
            outcome = measure_row(p.suite, p.case, p.variant, self.ctx)
        row.update(outcome.fields)
        self.last_timeseries = outcome.timeseries if outcome.status == "ok" else []
        if outcome.status == "error":
            self._log_error(p, row, outcome.traceback)
        if outcome.status == "ok":
            self.derive(row)
            self.telemetry_entries.append((dict(run_id=self.run_id, suite=p.suite.name, case=p.case.name,
                                                variant=p.variant.name, dtype=p.case.dtype_name,
                                                **({"rank": self.dist.rank} if self.dist is not None else {})),
                                           _Recorded(outcome.timeseries)))
            telemetry.write_timeseries(self.writer.dir, self.telemetry_entries)
        return row

    def _log_error(self, p: Plan, row: dict[str, Any], tb: str | None) -> None:
        reason = str(row.get("reason") or "")
        if self.memory_limit and self.pool is not None and any(
                s in reason for s in ("can't allocate memory", "MemoryError", "bad_alloc", "Cannot allocate")):
            row["reason"] = (reason + f" (worker memory limit {self.memory_limit / 2**30:.1f} GiB: "
                             "--worker-memory)")[:500]
        try:
            with open(self.errors_log, "a") as f:
                f.write(f"--- {p.suite.name} / {p.case.name} / {p.variant.name} / {p.case.dtype_name}: "
                        f"{row.get('reason')}\n")
                f.write(tb or "")
                f.write("\n" if tb and not tb.endswith("\n") else "")
        except OSError:
            pass                                 # the row itself carries the reason

    def derive(self, row: dict[str, Any]) -> None:
        """Rates, roofline fractions and the speedup over the suite's baseline, from the measured median."""
        flops, nbytes = row["flops"], row["bytes"]
        sec = row["median_ms"] / 1e3
        row.update(tflops=flops / sec / 1e12 if flops else None, gbps=nbytes / sec / 1e9 if nbytes else None)
        suite = next(s for s in self.opts.suites if s.name == row["suite"])
        peak_dtype = row["dtype"] if suite.compute_class == "matmul" else "float32"
        row.update(peaks.row_columns(self.peaks, flops, nbytes, sec, peak_dtype, suite.bandwidth))
        bkey = (row["suite"], row["case"], row["dtype"])
        if row["variant"] == suite.baseline:
            self.baseline_ms[bkey] = row["median_ms"]
        if bkey in self.baseline_ms:
            row["speedup"] = self.baseline_ms[bkey] / row["median_ms"]

    # ---- the whole run -----------------------------------------------------------------------------------
    def run(self, plan: list[Plan], on_row: Callable[[dict], None] | None = None) -> int:
        """Measure every row of `plan` not already in the run; returns the exit status (0, 128+signal, 1)."""
        from harness.ui import progress
        done = {row_key(r) for r in self.writer.rows} | self.done_keys
        todo = [p for p in plan if row_key(self.base_row(p)) not in done]
        self.skipped_done = len(plan) - len(todo)
        interrupted: int | None = None
        stopped: str | None = None
        with _signals_as_interrupts(), progress(len(todo), enabled=self.opts.progress) as advance:
            try:
                for p in todo:
                    advance(f"{p.suite.name} {p.case.name} {p.variant.name} {p.case.dtype_name}")
                    row = self.run_one(p)
                    try:
                        self.writer.add(row)
                    except OSError as exc:
                        raise DiskFull(f"cannot write results to {self.writer.dir}: {exc.strerror or exc}; "
                                       f"the row of {p.suite.name}/{p.case.name}/{p.variant.name} was not saved, "
                                       f"the {len(self.writer.rows) - 1} rows before it are") from None
                    if self.dist is not None and self.dist.rank != 0:
                        self.dist.publish_row(row, self.last_timeseries)
                    if on_row:
                        on_row(row)
            except KeyboardInterrupt as exc:
                interrupted = getattr(exc, "signum", signal.SIGINT)
                _ignore_termination()       # a second SIGTERM must not cut the clean-up short
                # Ctrl-C may land inside writer.add, after the row joined the list but before the files
                # were replaced: write them again so the files hold every row measured.
                try:
                    self.writer.flush()
                except OSError:
                    pass
            except DiskFull as exc:
                stopped = str(exc)
            finally:
                self.close_workers()
        self.failed_ranks: list[dict] = []
        if self.dist is not None:
            self.gathered = True
            self._gather(interrupted, stopped)
        if interrupted is None and stopped is None:
            for suite in self.opts.suites:
                if suite.after_run and self.opts.mode != "test":   # test shapes: no figures
                    suite.after_run([r for r in self.writer.rows if r["suite"] == suite.name], self.opts.mode)
        end = dict(finished=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                   interrupted=interrupted is not None, rows=len(self.writer.rows) - (stopped is not None))
        if interrupted is not None:
            end["signal"] = signal.Signals(interrupted).name
        if stopped is not None:
            end["stopped"] = stopped
        try:
            self.writer.write_manifest(**end)
        except OSError:
            pass                            # a full disk: the manifest stays as it was; the terminal says why
        self.stop_reason = stopped
        if stopped is not None:
            return 1
        if interrupted is not None:
            return 128 + interrupted
        return 1 if self.failed_ranks else 0

    def salvage(self, signum: int) -> None:
        """Under torchrun, a signal that landed outside the run loop's own handling (torchrun ends rank 0 the
        moment another rank fails): still take the other ranks' rows and say what happened."""
        _ignore_termination()
        if self.dist is None or getattr(self, "gathered", False):
            return
        self.gathered = True
        try:
            self._gather(signum, None)
            self.writer.write_manifest(interrupted=True, signal=signal.Signals(signum).name,
                                       rows=len(self.writer.rows))
        except Exception as exc:   # noqa: BLE001 - the store went away with the job
            from harness import distributed
            distributed.say(f"bench.py: could not gather the other ranks' rows: {exc}")

    def _gather(self, interrupted: int | None, stopped: str | None) -> None:
        """Under torchrun: a rank > 0 reports how it ended; rank 0 takes every rank's rows into its table."""
        from harness import distributed
        d = self.dist
        status = ("ok" if interrupted is None and stopped is None else
                  f"interrupted ({signal.Signals(interrupted).name})" if interrupted is not None
                  else f"failed: {stopped}")
        info = dict(rank=d.rank, local_rank=d.local_rank, host=d.host, device_name=self.keys.get("device_name"),
                    telemetry=self.writer.manifest.get("telemetry"))
        if d.rank != 0:
            try:
                d.report(status, info)
            except Exception as exc:   # noqa: BLE001 - the store is gone (rank 0's agent ended): nothing to do
                distributed.say(f"rank {d.rank}: could not report to rank 0: {exc}")
            return
        wait = 0.0 if interrupted is not None else (self.opts.rank_timeout or d.timeout_s)
        try:
            rows, records = d.collect(wait)
        except KeyboardInterrupt as exc:     # torchrun ends rank 0 because another rank failed: take what is there
            _ignore_termination()
            status = f"interrupted ({signal.Signals(getattr(exc, 'signum', signal.SIGINT)).name})"
            rows, records = d.collect(0.0)
        for row, ts in rows:
            self.writer.rows.append(row)
            if ts:
                self.telemetry_entries.append(({k: row.get(k) for k in ("run_id", "suite", "case", "variant",
                                                                          "dtype", "rank")}, _Recorded(ts)))
        try:
            self.writer.flush()
            if any(ts for _, ts in rows):
                telemetry.write_timeseries(self.writer.dir, self.telemetry_entries)
        except OSError:
            pass
        ranks = [{**info, "status": status, "rows": sum(1 for r in self.writer.rows if r.get("rank") == 0)}]
        ranks += records
        self.failed_ranks = [r for r in records if r.get("status") != "ok"]
        for r in self.failed_ranks:
            distributed.say(f"bench.py: rank {r['rank']}" + (f" ({r['host']})" if r.get("host") else "")
                            + f": {r['status']}; {r.get('rows', 0)} row(s) from it kept")
        self.writer.write_manifest(ranks=ranks, world_size=d.world_size, dist_plan=self.opts.dist_plan,
                                   backend=d.backend)

    def close_workers(self) -> None:
        if self.pool is not None:
            self.pool.close()

    def close(self) -> None:
        self.close_workers()
        rd = getattr(self, "rundir", None)
        if rd is not None:
            rd.release()
        scratch = getattr(self, "scratch", None)
        if scratch is not None:
            import shutil
            shutil.rmtree(scratch, ignore_errors=True)


COMPILE_ALLOWANCE_S = 300.0     # torch.compile / Triton autotuning of one variant, plus the float64 check


def default_row_timeout(budget_s: float) -> float:
    """How long one row may take before its worker is killed: the compile allowance plus 3x the timing budget
    (warm-up, the second set-up and a slow reference fit in that)."""
    return COMPILE_ALLOWANCE_S + 3 * budget_s


class _Recorded:
    """Telemetry samples as the worker sent them (a Measurement cannot cross a process boundary)."""

    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = rows

    def timeseries(self, **keys: Any) -> list[dict[str, Any]]:
        return [{**keys, **r} for r in self.rows]


def _jsonish(v: Any) -> Any:
    return json.loads(json.dumps(v))


_TERMINATING = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _signals_as_interrupts():
    """SIGTERM (CI cancellation, SLURM, kill) and SIGHUP (closed terminal) raise Interrupted, like Ctrl-C."""
    def handler(signum, frame):
        raise Interrupted(signum)
    old = {}
    try:
        for sig in _TERMINATING:
            old[sig] = signal.signal(sig, handler)
    except ValueError:                       # not the main thread: leave signals alone
        pass
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _ignore_termination() -> None:
    try:
        for sig in _TERMINATING:
            signal.signal(sig, signal.SIG_IGN)
    except ValueError:
        pass
