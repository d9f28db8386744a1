"""`bench.py`: run suites, list them, print the kernels report, or dispatch to a sub-command.

Bad input (unknown suite, variant, device, dtype; a GPU asked for where none is) is one line on stderr and
exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from pathlib import Path

SUBCOMMANDS = {
    "gate": "harness.gate",          # regression gate between two runs
    "compare": "harness.compare",    # align runs from different machines
    "report": "harness.report",      # self-contained HTML report
    "baseline": "harness.baseline",  # store a run as a named baseline
    "model": "models.cli",           # train (first use) and evaluate a model
    "distill": "distill.cli",        # students with and without their teacher: the ablation
    "ab": "harness.ab",              # interleaved A/B of two git refs in one job, gated
    "slurm": "harness.slurm",        # run on a SLURM cluster (submitit), rows gathered into one run
    "serve": "inference.serve_bench",  # request-rate sweep of an OpenAI-compatible streaming server (issue 19)
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage + message)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bench.py", description="Benchmark hand-written kernels against PyTorch baselines. "
                "Sub-commands: " + ", ".join(SUBCOMMANDS) + " (bench.py SUBCOMMAND --help).")
    p.add_argument("--suite", default="attention",
                   help="suite(s) to run, comma-separated, or 'all' (default: attention)")
    p.add_argument("--list", action="store_true", help="list suites, their variants and what each requires")
    p.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu or cuda")
    p.add_argument("--dtype", default=None,
                   help="dtype(s), comma-separated: float32, bfloat16, float16 (default: per suite and device)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="mode", const="quick",
                      help="small shape set, well under a minute on a 2-core CPU (default)")
    size.add_argument("--full", action="store_const", dest="mode", const="full", help="the full shape set")
    size.add_argument("--test-shapes", action="store_const", dest="mode", const="test",
                      help="the odd correctness shapes")
    p.add_argument("--shape", action="append", default=None, metavar="NAME=V,...",
                   help="run these case parameters instead of the declared shapes (repeatable), e.g. "
                   "--shape rows=8,cols=393216; attention: causal_align=bottom-right")
    p.add_argument("--filter", default=None,
                   help="keep cases or variants whose name contains one of these (comma-separated; globs ok)")
    p.add_argument("--variant", default=None, help="run only these variants (comma-separated exact names)")
    p.add_argument("--seed", type=int, default=0, help="seed of every input (default 0)")
    p.add_argument("--out", default=None, help="output directory (default results/<run-id>/)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch and native kernels)")
    p.add_argument("--budget", type=float, default=None, help="seconds of timing per row (default 1, full 3)")
    p.add_argument("--target-ci", type=float, default=0.01,
                   help="stop once the median's 95%% CI is within this fraction (default 0.01)")
    p.add_argument("--cold", action="store_true", help="flush caches before every sample")
    p.add_argument("--cuda-graph", action="store_true", help="replay the timed calls from a CUDA graph")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--model", default=None,
                   help="model of the model suite: tiny (default), small, or a checkpoint directory")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out: keep its rows, measure only the missing ones")
    p.add_argument("--no-isolate", action="store_true",
                   help="measure in this process (for a debugger) instead of isolated worker processes")
    p.add_argument("--row-timeout", type=float, default=None, metavar="S",
                   help="seconds one row may take before its worker is killed and the row is an error "
                        "(default: 300 s of compile allowance + 3x the budget)")
    p.add_argument("--worker-memory", type=float, default=None, metavar="GIB",
                   help="memory limit of a worker in GiB (RLIMIT_DATA); 0: none (default: 3/4 of RAM on the "
                        "CPU, none on CUDA)")
    p.add_argument("--reset-peaks", nargs="?", const="all", default=None, metavar="PROBES",
                   help="forget this device's stored peaks (all, or these probes, comma-separated) before the run")
    p.add_argument("--allocator", default=None,
                   help="memory allocator of the measuring process: system (glibc), jemalloc or tcmalloc "
                        "(LD_PRELOAD; recorded in the manifest; default: whatever is loaded)")
    p.add_argument("--no-auto-peak", action="store_true",
                   help="no quick peak probe on a first run (%% peak stays empty until --suite peak)")
    p.add_argument("--dist-plan", choices=("same", "shard"), default="same",
                   help="under torchrun: every rank measures the whole plan on its device (same, the default) or "
                        "its shard of the rows (shard); collectives and train rows always span every rank")
    p.add_argument("--rank-timeout", type=float, default=None, metavar="S",
                   help="under torchrun: seconds rank 0 waits for the other ranks' reports, and a collective's "
                        "timeout (default 300)")
    p.add_argument("--kernels-report", action="store_true",
                   help="print the compiler resource report of the CUDA and Triton kernels and exit")
    p.set_defaults(mode="quick")
    return p


def _split(s: str | None) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()] if s else []


def list_suites() -> int:
    from rich.table import Table

    from harness.registry import all_suites
    from harness.ui import out_console
    t = Table(title="suites", header_style="bold")
    for c in ("suite", "variant", "requires", "dtypes", "cases (test/quick/full)"):
        t.add_column(c)
    for s in all_suites().values():
        counts = "/".join(str(len(s._cases[m])) for m in ("test", "quick", "full"))
        for i, v in enumerate(s.variants.values()):
            name = v.name + (" (baseline)" if v.name == s.baseline else "")
            t.add_row(s.name if i == 0 else "", name, v.requires.describe(),
                      ",".join(s.dtypes) if i == 0 else "", counts if i == 0 else "")
        t.add_section()
    from suites import streaming
    t.add_row("streaming", ", ".join(streaming.ENGINES), "a server sweep (bench.py serve)", "", "")
    out_console.print(t)
    return 0


def check_writable_dir(d: str, what: str) -> str | None:
    """None when `d` is (or can be made) a directory this process can write into, else the reason."""
    path = Path(d)
    if path.exists() and not path.is_dir():
        return f"{what} {d} is a file, not a directory"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create {what} {d}: {exc.strerror or exc}"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{what} {d} is not writable"
    return None


def kernels_report(out: str | None) -> int:
    if out is not None:                                  # before minutes of collecting, not after
        problem = check_writable_dir(out, "--out")
        if problem:
            print(f"bench.py: error: {problem}", file=sys.stderr)
            return 2
    try:
        mod = importlib.import_module("harness.kernels_report")
    except ImportError as exc:
        print(f"bench.py: error: the kernels report is not available ({exc})", file=sys.stderr)
        return 2
    return int(mod.main(["--out", out] if out else []) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        try:
            mod = importlib.import_module(SUBCOMMANDS[argv[0]])
        except ImportError as exc:
            print(f"bench.py: error: sub-command {argv[0]!r} is not available ({exc})", file=sys.stderr)
            return 2
        return int(mod.main(argv[1:]) or 0)
    args = parser().parse_args(argv)
    if args.list:
        return list_suites()
    if "streaming" in _split(args.suite):         # a server under load, not kernels: inference/serve_bench.py
        if _split(args.suite) != ["streaming"]:
            print("bench.py: error: --suite streaming runs alone (a server sweep, not a kernel suite)",
                  file=sys.stderr)
            return 2
        from suites import streaming
        return streaming.run(args)
    if args.kernels_report:
        return kernels_report(args.out)
    try:
        if args.allocator is not None:
            from harness import allocator
            if args.allocator not in allocator.CHOICES:
                raise allocator.AllocatorError(f"unknown allocator {args.allocator!r}; choose from: "
                                               f"{', '.join(allocator.CHOICES)}")
            allocator.ensure(args.allocator, argv)          # may restart bench.py with LD_PRELOAD
        return run(args, argv)
    except Exception as exc:
        from harness.allocator import AllocatorError
        if isinstance(exc, AllocatorError):
            print(f"bench.py: error: {exc}", file=sys.stderr)
            return 2
        from harness.registry import UsageError
        if isinstance(exc, UsageError):
            print(f"bench.py: error: {exc}", file=sys.stderr)
            return 2
        raise


def resolve(args: argparse.Namespace):
    """Validate the command line; returns RunOptions or raises UsageError with a one-line message."""
    import torch

    from harness import env, inject
    from harness.registry import DTYPES, UsageError, all_suites, dtype_name, get_suites
    from harness.runner import RunOptions, build_plan
    from harness.timing import TimingConfig

    suites_all = all_suites()
    if os.environ.get(inject.ENV):                     # test-only slowed copies (the gate's evidence)
        try:
            inject.apply(suites_all)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    names = _split(args.suite) or ["attention"]
    if "all" in names and len(names) > 1:
        raise UsageError("--suite all cannot be combined with other suite names")
    suites = list(suites_all.values()) if names == ["all"] else [s for n in names for s in get_suites(n)]

    device = args.device
    if device == "auto":
        device = env.best_device()
    elif device not in ("cpu", "cuda"):
        raise UsageError(f"unknown device {device!r}; choose from: auto, cpu, cuda")
    if device == "cuda" and not env.cuda_available():
        why = ("this torch is a CPU-only build" if torch.version.cuda is None
               else "torch.cuda.is_available() is False (no GPU or driver)")
        raise UsageError(f"--device cuda asked for, but no CUDA GPU is visible: {why}; use --device cpu")

    dtypes = None
    if args.dtype:
        dtypes = [dtype_name(d) for d in _split(args.dtype)]
        for d in dtypes:
            if d not in DTYPES:
                raise UsageError(f"unknown dtype {d!r}; choose from: {', '.join(DTYPES)}")
        supported = sorted({d for s in suites for d in s.dtypes})
        if not any(d in s.dtypes for s in suites for d in dtypes):
            raise UsageError(f"dtype {', '.join(dtypes)} not supported by {', '.join(s.name for s in suites)}; "
                             f"choose from: {', '.join(supported)}")

    mode = args.mode
    if args.shape:
        from harness import shapes
        shapes.apply(suites, args.shape)
        mode = "shape"

    variants = _split(args.variant) or None
    if variants:
        known = sorted({v for s in suites for v in s.variants})
        for v in variants:
            if v not in known:
                raise UsageError(f"unknown variant {v!r}; choose from: {', '.join(known)}")
    budget, worker_memory = check_numbers(args)
    from harness import distributed
    world = distributed.env_world()[1] if distributed.launched() else 1
    for s in suites:
        why = s.distributed(world) if s.distributed is not None else None
        if why:
            raise UsageError(f"suite {s.name} cannot run on {world} rank(s): {why}")

    if args.model is not None:       # the model suite reads it (also in worker processes) from KB_MODEL
        from models.zoo import ModelError, resolve as resolve_model
        try:
            resolve_model(args.model)
        except ModelError as exc:
            raise UsageError(str(exc)) from None
        os.environ["KB_MODEL"] = args.model

    reset_peaks = None
    if args.reset_peaks is not None:
        from harness.peaks import PROBES
        reset_peaks = [] if args.reset_peaks == "all" else _split(args.reset_peaks)
        for name in reset_peaks:
            if name not in PROBES:
                raise UsageError(f"unknown probe {name!r} in --reset-peaks; choose from: all, {', '.join(PROBES)}")
    opts = RunOptions(suites=suites, device=device, dtypes=dtypes, mode=mode, filters=_split(args.filter),
                      variants=variants, seed=args.seed, out=Path(args.out) if args.out else None,
                      threads=args.threads,
                      timing=TimingConfig(budget_s=budget, target_rel_ci=args.target_ci, cold=args.cold,
                                          cuda_graph=args.cuda_graph),
                      progress=not args.no_progress, isolate=not args.no_isolate, row_timeout=args.row_timeout,
                      worker_memory=worker_memory, resume=args.resume, reset_peaks=reset_peaks,
                      auto_peak=not args.no_auto_peak and os.environ.get("KB_AUTO_PEAK", "1") != "0",
                      dist_plan=args.dist_plan, rank_timeout=args.rank_timeout)
    plan = build_plan(opts)
    if not plan:
        what = f" matching --filter {args.filter!r}" if args.filter else ""
        raise UsageError(f"nothing to run{what}: no case/variant/dtype of {', '.join(s.name for s in suites)} "
                         f"selected (see bench.py --list)")
    return opts, plan


def check_numbers(args: argparse.Namespace) -> tuple[float, int | None]:
    """The numeric options, finite and in range (UsageError otherwise), without importing torch.
    Returns the timing budget and the worker memory limit in bytes (None: the default)."""
    from harness.registry import UsageError
    if args.threads is not None and not 1 <= args.threads <= 4096:
        raise UsageError(f"--threads must be between 1 and 4096, not {args.threads}")
    if not 0 <= args.seed < 2**63:
        raise UsageError(f"--seed must be between 0 and 2**63-1, not {args.seed}")
    budget = args.budget if args.budget is not None else (3.0 if args.mode == "full" else 1.0)
    _number("--budget", budget, 0, 86400, "seconds", low_open=True)
    _number("--target-ci", args.target_ci, 0, 1, "a fraction such as 0.01", low_open=True, high_open=True)
    if args.row_timeout is not None:
        _number("--row-timeout", args.row_timeout, 0, 7 * 86400, "seconds", low_open=True)
    worker_memory = None
    if args.worker_memory is not None:
        _number("--worker-memory", args.worker_memory, 0, 1 << 20, "GiB")
        if 0 < args.worker_memory < 0.5:
            raise UsageError(f"--worker-memory {args.worker_memory:g} GiB is too small to import torch; "
                             "give at least 0.5, or 0 for no limit")
        worker_memory = int(args.worker_memory * 2**30)
    if args.no_isolate and (args.row_timeout is not None or args.worker_memory is not None):
        raise UsageError("--row-timeout and --worker-memory apply to isolated workers; drop --no-isolate")
    if args.resume and not args.out:
        raise UsageError("--resume needs --out DIR (the run to continue)")
    if args.rank_timeout is not None:
        _number("--rank-timeout", args.rank_timeout, 0, 7 * 86400, "seconds", low_open=True)
    return budget, worker_memory


def _number(opt: str, x: float, lo: float, hi: float, what: str, low_open: bool = False,
            high_open: bool = False) -> None:
    """A finite number within [lo, hi] (open ends where asked), else UsageError naming the option."""
    from harness.registry import UsageError
    ok = math.isfinite(x) and (x > lo if low_open else x >= lo) and (x < hi if high_open else x <= hi)
    if not ok:
        lo_s, hi_s = ("(" if low_open else "["), (")" if high_open else "]")
        raise UsageError(f"{opt} must be a finite number in {lo_s}{lo:g}, {hi:g}{hi_s} ({what}), not {x!r}")


def run(args: argparse.Namespace, argv: list[str]) -> int:
    _, worker_memory = check_numbers(args)
    from harness import distributed
    problem = distributed.pin_device(args.device)       # under torchrun: this rank's GPU, before CUDA starts
    if problem:
        raise UsageError(problem)
    from harness.worker import WorkerPool, worker_spec
    pool = None
    dist = None
    if not args.no_isolate and args.device == "cuda":
        # A CUDA worker starts first, as a fresh interpreter: its imports overlap this process's own.
        pool = WorkerPool(worker_spec(args.device, args.threads, worker_memory))
    try:
        opts, plan = resolve(args)
        if opts.isolate and pool is None:
            # CPU: fork this process now that torch and the suites are imported (no second import; no thread
            # started yet). A CUDA device picked by "auto": a fresh interpreter (CUDA does not survive fork).
            pool = WorkerPool(worker_spec(opts.device, opts.threads, worker_memory,
                                          start="fork" if opts.device == "cpu" else "exec"))
        if distributed.launched():          # after the fork above: the process group starts threads
            dist = distributed.start(opts.device, opts.rank_timeout)
            plan = distributed.shard(plan, dist, opts.dist_plan)
    except BaseException:
        if pool is not None:
            pool.close()
        raise
    from harness.runner import Runner, _signals_as_interrupts
    from harness.ui import console, out_console, results_table

    if dist is not None:
        try:
            return _run_rank(opts, plan, argv, pool, dist)
        finally:
            distributed.stop()
    with _signals_as_interrupts():           # SIGTERM/SIGHUP while starting up: exit 128+signal too
        runner = Runner(opts, argv, pool)
        try:
            for w in runner.writer.manifest.get("system_warnings") or []:
                console.print(f"[yellow]warning: {w}[/]")
            resumed = f", {runner.resumed_rows} kept from the interrupted run" if opts.resume else ""
            console.print(f"[bold]run {runner.run_id}[/]: {len(plan)} rows on {runner.keys['device_name']} -> "
                          f"{runner.writer.dir}{resumed}")
            code = runner.run(plan)
        finally:
            runner.close()
    rows = runner.writer.rows
    out_console.print(results_table(rows, title=f"{runner.run_id} ({opts.mode})"))
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "incorrect", "error", "skipped")}
    console.print(", ".join(f"{n} {s}" for s, n in counts.items()) + f"; results in {runner.writer.dir}")
    if runner.stop_reason:
        print(f"bench.py: error: {runner.stop_reason}", file=sys.stderr)
    elif code > 128:
        saved = len(rows)
        console.print(f"[yellow]interrupted ({_signame(code - 128)}): {saved} rows kept in {runner.writer.dir}; "
                      f"--resume --out {runner.writer.dir} continues it[/]")
    return code


def _run_rank(opts, plan, argv: list[str], pool, dist) -> int:
    """One rank of a torchrun job: rank 0 prints and writes the merged run, the others only measure."""
    from harness.runner import Runner, _signals_as_interrupts
    from harness.ui import console, out_console, results_table
    with _signals_as_interrupts():
        runner = Runner(opts, argv, pool, dist=dist)
        try:
            if dist.rank == 0:
                console.print(f"[bold]run {runner.run_id}[/]: {dist.world_size} ranks ({dist.backend}), {len(plan)} "
                              f"rows on rank 0 ({runner.keys['device_name']}) -> {runner.writer.dir}")
            try:
                code = runner.run(plan)
            except KeyboardInterrupt as exc:         # between the run loop's own handling and the gather
                signum = getattr(exc, "signum", 2)
                runner.salvage(signum)
                code = 128 + signum
        finally:
            runner.close()
    if dist.rank != 0:
        return code
    rows = runner.writer.rows
    order = {k: i for i, k in enumerate(dict.fromkeys((r["suite"], r["case"], r["dtype"]) for r in rows))}
    shown = sorted(({**r, "variant": f"{r['variant']} @rank{r.get('rank')}"} for r in rows),
                   key=lambda r: (order[(r["suite"], r["case"], r["dtype"])], r["variant"]))
    out_console.print(results_table(shown, title=f"{runner.run_id} ({opts.mode}, {dist.world_size} ranks)"))
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "incorrect", "error", "skipped")}
    console.print(", ".join(f"{n} {s}" for s, n in counts.items()) + f" over {dist.world_size} ranks; results in "
                  f"{runner.writer.dir}")
    if runner.stop_reason:
        print(f"bench.py: error: {runner.stop_reason}", file=sys.stderr)
    return code


def _signame(sig: int) -> str:
    import signal
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"
