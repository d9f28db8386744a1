"""The built-in server as a child process: start on a free loopback port, wait until ready, stop for sure.

`with BuiltinServer(engine, ...) as srv:` launches `python -m inference.server --model M --host 127.0.0.1
--port P --engine E [...]` from this repository (cwd and PYTHONPATH: the tree this file is in), waits for its
`kbench server ready on http://HOST:PORT` line and for GET /health -> 200, and on leaving (normally, on an
exception, on Ctrl-C) sends SIGTERM, waits, then SIGKILLs its process group. The child also gets
PR_SET_PDEATHSIG, so a SIGKILLed bench.py leaves no server behind, and with `cpus` (bench.py serve --server-cpus)
it is pinned to those CPUs before exec (inference/affinity.py). Its stdout and stderr go to a log file.
Also: `scrape(url)` reads a Prometheus /metrics page into {name: value} (prometheus_client's parser).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from inference.affinity import child_setup, format_cpu_list

ROOT = Path(__file__).resolve().parent.parent
READY = "kbench server ready on "
WARNING = "warning: "               # inference/server.py's start-up warnings (ours on torch decode)


class ServerStartError(RuntimeError):
    """The server exited or hung before it was ready; `exit_code` 2 means it refused its arguments/engine."""

    def __init__(self, msg: str, exit_code: int | None = None):
        super().__init__(msg)
        self.exit_code = exit_code


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """(the preexec_fn of a server started without `cpus`)"""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except Exception:   # noqa: BLE001 - not Linux: the SIGTERM in stop() still ends it
        pass


def health(base: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=timeout_s) as r:
            return r.status == 200
    except Exception:   # noqa: BLE001 - not up (yet)
        return False


def scrape(base: str, timeout_s: float = 5.0) -> dict[str, float]:
    """GET /metrics -> {sample name with labels: value}, e.g. 'kbench_requests_total{status="ok"}'."""
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"{base}/metrics", timeout=timeout_s) as r:
        text = r.read().decode("utf-8", errors="replace")
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[s.name + (f"{{{labels}}}" if labels else "")] = float(s.value)
    return out


class BuiltinServer:
    def __init__(self, engine: str, model: str = "tiny", threads: int | None = 1, extra: list[str] | None = None,
                 log_path: Path | None = None, module: str = "inference.server", ready_timeout_s: float = 300.0,
                 cpus: frozenset[int] | None = None):
        self.engine, self.model, self.threads = engine, model, threads
        self.cpus = frozenset(cpus) if cpus is not None else None     # None: the mask bench.py's thread has
        self.extra = list(extra or [])
        self.module = module
        self.ready_timeout_s = ready_timeout_s
        self.log_path = Path(log_path) if log_path else None
        self.host = "127.0.0.1"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._lines: list[str] = []
        self.warnings: list[str] = []      # the server's `warning: ...` lines before it was ready
        self._ready = threading.Event()

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", self.module, "--model", self.model, "--host", self.host, "--port",
               str(self.port), "--engine", self.engine]
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        return cmd + self.extra

    def _pump(self, log) -> None:
        """Copy the child's output to the log, noting the ready line."""
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.append(line.rstrip("\n"))
            del self._lines[:-50]
            if log is not None:
                log.write(line)
                log.flush()
            if line.startswith(READY):
                self._ready.set()
            elif line.startswith(WARNING) and not self._ready.is_set():
                self.warnings.append(line[len(WARNING):].strip())

    def start(self) -> "BuiltinServer":
        self.port = free_port(self.host)
        env = self.env()
        log = open(self.log_path, "a") if self.log_path else None
        self._log = log
        try:
            self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                         start_new_session=True, preexec_fn=self._preexec())
        except (OSError, subprocess.SubprocessError) as exc:   # the pinning failed in the child: nothing runs
            if log is not None:
                log.close()
            self._log = None
            what = f" pinned to CPUs {format_cpu_list(self.cpus)}" if self.cpus is not None else ""
            raise ServerStartError(f"cannot start the {self.engine} server{what}: {exc}") from None
        self._thread = threading.Thread(target=self._pump, args=(log,), daemon=True)
        self._thread.start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _preexec(self):
        """Runs in the child between fork and exec: die with bench.py, and take the server's CPUs."""
        if self.cpus is None:
            return _die_with_parent
        pin = child_setup(self.cpus)

        def setup() -> None:
            _die_with_parent()
            pin()
        return setup

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            code = self.proc.poll()
            if code is not None:
                self._thread.join(timeout=5)
                tail = next((ln for ln in reversed(self._lines) if ln.strip()), "no output")
                raise ServerStartError(f"{tail.strip()[:300]} (the {self.engine} server exited with code {code} "
                                       "before it was ready)", code)
            if self._ready.is_set() and health(self.base):
                return
            if time.monotonic() > deadline:
                raise ServerStartError(f"server ({self.engine}) not ready after {self.ready_timeout_s:g} s")
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL to the whole process group after `grace_s`; returns the exit code."""
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=30)
        try:                                          # stray children of the server (none expected)
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if getattr(self, "_thread", None) is not None:
            self._thread.join(timeout=5)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None
        return p.returncode

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                "PYTHONUNBUFFERED": "1"}

    def __enter__(self) -> "BuiltinServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class CommandServer(BuiltinServer):
    """Another OpenAI-compatible server (vLLM...): `make_command(port) -> argv`, ready when GET /health is 200
    (no ready line); started, stopped and logged like the built-in one."""

    def __init__(self, name: str, make_command, env: dict[str, str] | None = None, log_path: Path | None = None,
                 ready_timeout_s: float = 600.0):
        super().__init__(name, log_path=log_path, ready_timeout_s=ready_timeout_s)
        self.make_command = make_command
        self.extra_env = dict(env or {})
        self._ready.set()

    def command(self) -> list[str]:
        return list(self.make_command(self.port))

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
