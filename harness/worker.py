"""Isolated workers: each row's check and timing run in a separate Python process, reused across rows.

Why: a kernel that segfaults, aborts, poisons the CUDA context, hangs or eats the memory must cost one
`error` row, not the run. The parent (bench.py) never runs kernel code in isolated mode; it sends one row at a
time to a worker and waits with a deadline.

API (used by the runner; `bench.py ab` and `--allocator` build on it):

    spec = WorkerSpec(device="cpu", threads=2, env={"LD_PRELOAD": "..."}, root=Path("/other/tree"))
    pool = WorkerPool(spec)                        # starts the worker now: its torch import overlaps your set-up
    out = pool.run(task_for(suite, case, variant, seed, timing), timeout=60)   # -> harness.row.RowOutcome
    pool.close()

- `WorkerSpec`: the device, the CPU thread count (`torch.set_num_threads` in the worker, as in-process), extra
  environment variables, the source tree the worker imports (`root`: its cwd and first PYTHONPATH entry, so a
  worker can measure another checkout), the Python executable, and a memory limit (`memory_bytes`:
  RLIMIT_DATA, so an over-allocation fails inside the worker, not on the machine).
- `task_for(...)` is a plain dict (picklable, independent of the tree): the suite by reference
  ("module:attribute", see `suite_ref`), the case's parameters, the variant name, the seed and the timing
  settings. The worker rebuilds the case and calls `harness.row.measure_row`, the function `--no-isolate`
  calls in-process: both modes share one code path and timing always happens where the kernel runs.
- `WorkerPool.run` always returns a `RowOutcome`: the row measured by the worker, or an `error` row for a
  worker that died ("worker crashed: SIGSEGV (signal 11)" plus the last line of its stderr; the stderr tail is
  the outcome's traceback, for errors.log), timed out ("timed out after N s"; the worker and its children are
  killed) or could not start. After any `error` row the worker is replaced (a CUDA error poisons the context;
  a C kernel that raised may have corrupted the heap), and the replacement starts at once, in the background.

Protocol: two pipes (pickled dicts through multiprocessing.connection), the worker's stdout and stderr go to
an anonymous temporary file (nothing on disk to clean up) whose tail explains a crash. The worker runs in its
own process group (a terminal's Ctrl-C reaches only bench.py, which kills the group: torch.compile's compile
workers included) and dies with its parent (PR_SET_PDEATHSIG), so a SIGKILLed bench.py leaves no orphan.
Run as `python -m harness.worker RFD WFD CONFIG_JSON`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 180.0          # importing torch on a loaded 2-core machine took up to ~20 s
STDERR_TAIL_BYTES = 4096


@dataclass
class WorkerSpec:
    device: str                            # "cpu", "cuda", or "auto" (the worker picks as bench.py does)
    threads: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    root: Path = ROOT
    python: str = sys.executable
    memory_bytes: int | str | None = None  # RLIMIT_DATA of the worker; None: no limit; "default": see below
    start: str = "exec"                    # "exec": a fresh interpreter; "fork": a copy of this process


def default_memory_limit(device: str) -> int | None:
    """A worker's default memory limit: 3/4 of RAM on the CPU (one runaway kernel cannot take the machine);
    none on CUDA (the driver reserves address space; the GPU's own out-of-memory error is a Python one)."""
    if device != "cpu":
        return None
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.75)
    except (ValueError, OSError, AttributeError):   # pragma: no cover
        return None


def worker_spec(device: str, threads: int | None = None, worker_memory: int | None = None,
                start: str = "exec") -> WorkerSpec:
    """The workers of a bench.py run from its options (`--worker-memory` in bytes: None the default, 0 none).
    Needs no torch."""
    memory = "default" if worker_memory is None else (worker_memory or None)
    return WorkerSpec(device=device, threads=threads, memory_bytes=memory, start=start)


def suite_ref(suite) -> str:
    """"module:attribute" naming a module-level Suite, so that a worker can import it."""
    ref = getattr(suite, "ref", None)
    if ref:
        return ref
    for name, mod in list(sys.modules.items()):
        for attr, val in list(getattr(mod, "__dict__", {}).items()):
            if val is suite and name != "__main__":
                return f"{name}:{attr}"
    raise ValueError(f"suite {suite.name!r} is not a module-level object a worker can import; "
                     "run it with --no-isolate (isolate=False)")


def task_for(suite, case, variant, seed: int, timing) -> dict[str, Any]:
    """The message that asks a worker for one row (plain data: the worker may run another tree's code)."""
    return {"op": "row", "suite_ref": suite_ref(suite), "suite": suite.name,
            "case": {"params": dict(case.params), "name": case.name, "device": case.device,
                     "dtype": case.dtype_name},
            "variant": variant.name, "seed": int(seed), "timing": dataclasses.asdict(timing)}


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def describe_exit(rc: int | None) -> str:
    if rc is None:
        return "worker stopped answering"
    if rc < 0:
        sig = -rc
        hint = " (killed from outside: the kernel's out-of-memory killer sends it)" if sig == signal.SIGKILL else ""
        return f"worker crashed: {signal_name(sig)} (signal {sig}){hint}"
    return f"worker exited with status {rc}"


_KEYWORDS = ("CUDA error", "error", "Error", "bad_alloc", "terminate called", "Aborted", "Killed")


def telling_line(tail: str) -> str:
    """The line of a stderr tail that best says what happened (an error message over a stack frame)."""
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    for kw in _KEYWORDS:
        for ln in reversed(lines):
            if kw in ln and not ln.startswith("File "):
                return ln[:300]
    return lines[-1][:300] if lines else ""


class WorkerFailed(Exception):
    def __init__(self, reason: str, tail: str = ""):
        super().__init__(reason)
        self.reason, self.tail = reason, tail


class Worker:
    """One worker process. `start()` returns at once; `run()` waits for it to be ready, then for the row."""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.proc: subprocess.Popen | None = None
        self.ready = False
        self.info: dict[str, Any] = {}
        self._err = None
        self._to = self._from = None

    def start(self) -> None:
        s = self.spec
        self._err = tempfile.TemporaryFile(prefix="kb-worker-")        # anonymous: nothing left on disk
        import fcntl
        fcntl.fcntl(self._err.fileno(), fcntl.F_SETFL, fcntl.fcntl(self._err.fileno(), fcntl.F_GETFL) | os.O_APPEND)
        child_r, parent_w = os.pipe()
        parent_r, child_w = os.pipe()
        env = {**os.environ, **s.env}
        root = str(Path(s.root).resolve())
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        config = {"device": s.device, "threads": s.threads, "memory_bytes": s.memory_bytes, "start": s.start}
        try:
            if s.start == "fork":
                self.proc = _fork(child_r, child_w, (parent_r, parent_w), self._err.fileno(), config)
            else:
                self.proc = subprocess.Popen(
                    [s.python, "-m", "harness.worker", str(child_r), str(child_w), json.dumps(config)],
                    cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=self._err, stderr=self._err,
                    pass_fds=(child_r, child_w), process_group=0)
        finally:
            os.close(child_r)
            os.close(child_w)
        self._to = Connection(parent_w, readable=False)
        self._from = Connection(parent_r, writable=False)
        self.started_at = time.monotonic()

    # ---- stderr ------------------------------------------------------------------------------------------
    def _err_size(self) -> int:
        return os.fstat(self._err.fileno()).st_size if self._err else 0

    def stderr_tail(self, since: int = 0) -> str:
        if not self._err:
            return ""
        end = self._err_size()
        start = max(since, end - STDERR_TAIL_BYTES)
        return os.pread(self._err.fileno(), end - start, start).decode(errors="replace")

    # ---- life --------------------------------------------------------------------------------------------
    def _died(self, since: int, what: str | None = None) -> WorkerFailed:
        rc = None
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
        tail = self.stderr_tail(since)
        reason = what or describe_exit(rc)
        line = telling_line(tail)
        return WorkerFailed(f"{reason}: {line}" if line else reason, tail)

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        if self.ready:
            return
        left = max(0.0, timeout - (time.monotonic() - self.started_at))
        try:
            if not self._from.poll(left):
                self.kill()
                raise WorkerFailed(f"worker failed to start within {timeout:g} s", self.stderr_tail())
            msg = self._from.recv()
        except (EOFError, OSError):
            raise self._died(0, "worker failed to start") from None
        self.info = msg
        self.ready = True

    def run(self, task: dict[str, Any], timeout: float) -> dict[str, Any]:
        """The worker's answer to `task` (a RowOutcome message); WorkerFailed when it died or timed out."""
        self.wait_ready()
        since = self._err_size()
        try:
            self._to.send(task)
            if not self._from.poll(timeout):
                self.kill()
                raise WorkerFailed(f"timed out after {timeout:g} s (the worker was killed)", self.stderr_tail(since))
            return self._from.recv()
        except (EOFError, OSError):
            raise self._died(since) from None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)        # the worker and whatever it started
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:   # pragma: no cover - a process stuck in the kernel (D state)
            pass

    def close(self) -> None:
        """Ask the worker to exit, kill it if it does not within a few seconds; release the pipes and file."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self._to.send({"op": "exit"})
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()
        for c in (self._to, self._from):
            if c is not None:
                c.close()
        if self._err is not None:
            self._err.close()
        self._to = self._from = self._err = None


class _Forked:
    """The little of subprocess.Popen that Worker uses, for a forked child."""

    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -signal.SIGKILL
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout)
            time.sleep(0.01)
        return self.returncode

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _fork(child_r: int, child_w: int, parent_ends: tuple[int, int], errfd: int, config: dict) -> _Forked:
    """A worker that is a copy of this process: no second import of torch and the suites (they are loaded
    here already). Only safe before this process starts threads of its own or initializes CUDA: bench.py
    forks its first CPU worker right after building the plan; replacements are started with exec."""
    for f in (sys.stdout, sys.stderr):
        f.flush()
    pid = os.fork()
    if pid:
        try:
            os.setpgid(pid, pid)               # also here: no window where killpg misses the child
        except OSError:
            pass
        return _Forked(pid)
    code = 1
    try:                                       # the child: never returns into the parent's code
        os.setpgid(0, 0)
        os.dup2(errfd, 1)
        os.dup2(errfd, 2)
        for fd in parent_ends:
            os.close(fd)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        _die_with_parent()
        code = _serve(child_r, child_w, config)
    except BaseException:                      # noqa: BLE001
        import traceback
        traceback.print_exc()
    finally:
        os._exit(code)


class WorkerPool:
    """One worker at a time for one spec: reused across rows, replaced after a failure."""

    def __init__(self, spec: WorkerSpec, startup_timeout: float = STARTUP_TIMEOUT_S, start: bool = True):
        self.spec = spec
        self.startup_timeout = startup_timeout
        self.worker: Worker | None = None
        self.started = 0                     # workers started (1 + replacements)
        if start:
            self._start()

    def _start(self) -> Worker:
        self.worker = Worker(self.spec)
        self.worker.start()
        self.started += 1
        return self.worker

    def run(self, task: dict[str, Any], timeout: float):
        from harness.row import RowOutcome
        w = self.worker if self.worker is not None and (self.worker.alive() or not self.worker.ready) \
            else self._start()
        try:
            w.wait_ready(self.startup_timeout)
            out = RowOutcome.from_message(w.run(task, timeout))
        except WorkerFailed as f:
            out = RowOutcome({"status": "error", "reason": f.reason[:500]},
                             traceback=f"{f.reason}\n--- worker stderr (tail) ---\n{f.tail}")
        except BaseException:                # Ctrl-C, SIGTERM: no half-measured row may keep running
            self.close()
            raise
        if out.status == "error":
            self._replace()
        return out

    def _replace(self) -> None:
        if self.worker is not None:
            self.worker.close()
        if self.spec.start == "fork":        # this process has threads now (progress bar, telemetry): exec
            self.spec = dataclasses.replace(self.spec, start="exec")
        self._start()                        # in the background: its import overlaps the parent's writing

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None


# ------------------------------------------------------------------------------------------- the worker side

def _die_with_parent() -> None:
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)          # PR_SET_PDEATHSIG: SIGKILL when bench.py goes away
    except Exception:   # noqa: BLE001 - not Linux: the closed pipe ends the worker at its next row
        pass
    if os.getppid() == 1:                      # the parent died before prctl
        os._exit(1)


def _serve(rfd: int, wfd: int, config: dict[str, Any]) -> int:
    import faulthandler
    import resource
    import traceback
    faulthandler.enable()                      # a segfault or abort prints the Python stack to stderr
    inbox, outbox = Connection(rfd, writable=False), Connection(wfd, readable=False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent decides; it kills the group when it must
    device, limit = config["device"], config.get("memory_bytes")

    def set_limit() -> None:
        if isinstance(limit, int) and limit > 0:
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    if device != "auto":
        limit = default_memory_limit(device) if limit == "default" else limit
        set_limit()                            # before torch's import, when the device is known
    import torch

    if device == "auto":
        from harness.env import best_device
        device = best_device()
        limit = default_memory_limit(device) if limit == "default" else limit
        set_limit()

    from harness.registry import Case
    from harness.row import RowContext, RowOutcome, configure_compile, first_line, measure_row
    from harness.timing import TimingConfig
    configure_compile()
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    ctx = RowContext(device=device)
    suites: dict[str, Any] = {}
    try:                                       # import the suites (and their kernels) now, not in the first row
        from harness.registry import all_suites
        found = all_suites()
        if config.get("start") != "fork" and os.environ.get("KB_GATE_INJECT"):
            from harness import inject                 # the gate's test-only slowed copies, as bench.py made them
            inject.apply(found)
    except Exception:   # noqa: BLE001 - a broken suite module: its rows will say so
        pass
    outbox.send({"ready": True, "pid": os.getpid(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                 "device": device, "memory_bytes": limit if isinstance(limit, int) else None})
    while True:
        try:
            msg = inbox.recv()
        except (EOFError, OSError):
            return 0
        if not isinstance(msg, dict) or msg.get("op") != "row":
            return 0
        try:
            ref = msg["suite_ref"]
            if ref not in suites:
                import importlib
                mod, _, attr = ref.partition(":")
                suites[ref] = getattr(importlib.import_module(mod), attr)
            suite = suites[ref]
            c = msg["case"]
            case = Case(suite.name, c["params"], c["device"], c["dtype"], c["name"])
            variant = suite.variants[msg["variant"]]
            ctx.seed = msg["seed"]
            ctx.timing = TimingConfig(**msg["timing"])
        except Exception as exc:   # noqa: BLE001 - this tree cannot resolve the task: an error row
            outbox.send(RowOutcome({"status": "error", "reason": f"worker cannot resolve the row: {first_line(exc)}"},
                                   traceback=traceback.format_exc()).to_message())
            continue
        outcome = measure_row(suite, case, variant, ctx)
        try:
            outbox.send(outcome.to_message())
        except Exception as exc:   # noqa: BLE001 - e.g. a config value that does not pickle
            outbox.send(RowOutcome({"status": "error", "reason": f"row not sendable: {first_line(exc)}"}).to_message())


def main(argv: list[str]) -> int:
    _die_with_parent()
    rfd, wfd, config = int(argv[0]), int(argv[1]), json.loads(argv[2])
    return _serve(rfd, wfd, config)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
