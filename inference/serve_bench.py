"""`bench.py serve`: a request-rate sweep against an OpenAI-compatible server, one results row per (engine, rate).

    python bench.py serve --engine ours,hf-static --rates 1,2,4,inf --num-prompts 50 --slo ttft_ms=1000,tpot_ms=100
    python bench.py serve --endpoint http://127.0.0.1:8000 --rates 2,inf      # vLLM, SGLang, TGI, ...

Without --endpoint it starts the built-in server (inference/server.py, one per engine) on a free loopback port,
waits for it to be ready and stops it at the end, on errors and on Ctrl-C too (inference/server_proc.py). The
client and the metric definitions are inference/loadgen.py (vLLM benchmark_serving's). Results go where every
run goes (results/<run>/: results.parquet + CSV + manifest.json through harness.results.ResultWriter, CPU
telemetry in telemetry.parquet, the server's /metrics gauges sampled during each rate in server_metrics.parquet,
each server's log in server-<engine>.log), and a rich table is printed. `--server-cpus 1 --client-cpus 0` places the
built-in server and the load generator on disjoint CPUs (inference/affinity.py; the masks read back go into the
manifest and one stderr line per server). Bad input (a URL, an unreachable endpoint, an --slo, a rate <= 0, a CPU
list that is malformed, names a CPU not present, or overlaps the other): one line, exit 2. An engine whose
server cannot start here: a `skipped` row (it exited with code 2: unavailable) or an `error` row, and the sweep
goes on. `--suite streaming` is the same sweep with the suite's settings (suites/streaming.py).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference import loadgen as L

ENGINES = ("ours", "hf-static", "hf-cb")
SERVER_OPTIONS = ("max_num_seqs", "num_blocks", "max_tokens_per_step", "max_queue")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:            # one line, exit 2
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bench.py serve", description=__doc__.split("\n\n")[0])
    tgt = p.add_mutually_exclusive_group()
    tgt.add_argument("--endpoint", help="an OpenAI-compatible server's URL (http://HOST:PORT[/v1]); loopback only "
                     "unless --allow-remote")
    tgt.add_argument("--engine", default=None, help=f"built-in server engine(s), comma-separated: {', '.join(ENGINES)} "
                     "(default: ours)")
    p.add_argument("--allow-remote", action="store_true", help="let --endpoint name a host other than loopback")
    p.add_argument("--api", default="completions", choices=("completions", "chat"))
    p.add_argument("--model", default=None, help="model name sent in requests (built-in server: the models/ "
                   "name, default tiny; --endpoint: default the first of its /v1/models)")
    p.add_argument("--rates", default="inf", help="request rates (req/s), comma-separated; inf = all at once "
                   "(default inf)")
    p.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of the arrival gaps: 1 Poisson, "
                   "< 1 burstier (default 1)")
    p.add_argument("--concurrency", type=int, default=None, help="at most N requests in flight")
    p.add_argument("--num-prompts", type=int, default=50, help="requests per rate (default 50)")
    p.add_argument("--duration", type=float, default=None, help="stop sending after S seconds per rate")
    p.add_argument("--max-time", type=float, default=600.0, help="hard bound per rate in seconds: what is still "
                   "running then is cancelled and counted failed (default 600)")
    p.add_argument("--request-timeout", type=float, default=120.0, help="seconds per request (default 120)")
    p.add_argument("--input-len", type=int, default=32, help="prompt length in characters (default 32)")
    p.add_argument("--input-len-max", type=int, default=None, help="draw prompt lengths in [input-len, this]")
    p.add_argument("--output-len", type=int, default=32, help="max_tokens, with ignore_eos (default 32)")
    p.add_argument("--output-len-max", type=int, default=None, help="draw output lengths in [output-len, this]")
    p.add_argument("--input-len-dist", default="uniform", choices=L.LEN_DISTS,
                   help="uniform: --input-len, or uniform up to --input-len-max (default); corpus: the lengths of "
                   "held-out paragraphs x --len-scale, clipped to [--input-len, --input-len-max], the prompt the "
                   "paragraph itself")
    p.add_argument("--output-len-dist", default="uniform", choices=L.LEN_DISTS,
                   help="uniform: --output-len, or uniform up to --output-len-max (default); corpus: max_tokens = "
                   "the length of a held-out paragraph x --len-scale, clipped to [--output-len, --output-len-max] "
                   "(heavy-tailed: mean 166, p50 94, p90 356, max 1739 characters before clipping)")
    p.add_argument("--len-scale", type=float, default=1.0, help="corpus lengths: paragraph length x this "
                   "(default 1)")
    p.add_argument("--context-len", type=int, default=None, help="cap every max_tokens at this minus its prompt "
                   "length (the model's context: 256 for tiny); not sent to the server")
    p.add_argument("--lengths", default=None, help="named length workloads, comma-separated, run one after the "
                   f"other against each engine ({', '.join(L.LENGTH_PRESETS)}; they replace the --*-len options; "
                   "rows' case lengths=NAME,rate=R)")
    p.add_argument("--prompts", default="corpus", choices=("corpus", "fixed"),
                   help="corpus: slices of the held-out text of models.data (default); fixed: one repeated text")
    p.add_argument("--slo", default=None, help="goodput SLOs in ms, e.g. ttft_ms=1000,tpot_ms=100,e2el_ms=5000")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="results directory (default results/<run-id>)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the built-in server (default 1)")
    for opt in SERVER_OPTIONS:
        p.add_argument("--" + opt.replace("_", "-"), type=int, default=None,
                       help="passed to the built-in server")
    p.add_argument("--server-cpus", default=None, metavar="LIST",
                   help="pin the built-in server (engine + HTTP, every thread) to these CPUs, Linux list syntax "
                   "(1 or 0,2-3); e.g. --server-cpus 1 --client-cpus 0 keeps the load generator off the server's "
                   "core, as vLLM's benchmark_serving runs its client. Default: no pinning (the server inherits "
                   "bench.py's CPUs): the README's figures up to 2026-12-01 08:00 ran server and client on one "
                   "core (taskset -c 1 python bench.py serve ...), so the client's CPU is taken from the server's")
    p.add_argument("--client-cpus", default=None, metavar="LIST",
                   help="pin the load generator (this process, every thread) to these CPUs; disjoint from "
                   "--server-cpus when both are given. Default: no pinning")
    p.add_argument("--ready-timeout", type=float, default=1800.0, help="seconds to wait for the server (default 1800: "
                   "a models/ name not cached yet is trained first, minutes)")
    p.add_argument("--server-module", default="inference.server", help=argparse.SUPPRESS)   # tests: a stub
    p.add_argument("--no-warmup", action="store_true", help="skip the single test request before each engine")
    return p


@dataclass
class Plan:
    """A validated sweep: targets (engines or one endpoint) x rates, one workload."""
    targets: list[str]                       # engine names, or ["endpoint"]
    endpoint: L.Endpoint | None
    rates: list[float]
    workload: L.Workload
    slo: dict[str, float]
    args: argparse.Namespace
    model: str = "tiny"
    extra: list[str] = field(default_factory=list)
    workloads: list[tuple[str, L.Workload]] = field(default_factory=list)   # (name, workload); name "" if one
    server_cpus: frozenset[int] | None = None    # --server-cpus (None: not pinned)
    client_cpus: frozenset[int] | None = None    # --client-cpus


def _positive(name: str, x: float | None, integer: bool = False, hi: float = 1e7) -> None:
    if x is None:
        return
    if not (isinstance(x, (int, float)) and math.isfinite(x) and 0 < x <= hi) or (integer and int(x) != x):
        raise L.LoadgenError(f"{name} must be a{'n integer' if integer else ' number'} in (0, {hi:g}], not {x!r}")


def cpu_lists(a: argparse.Namespace) -> tuple[frozenset[int] | None, frozenset[int] | None]:
    """--server-cpus and --client-cpus: parsed, present here, disjoint, the server's only with the built-in one."""
    from inference import affinity
    got: dict[str, frozenset[int] | None] = {}
    for opt in ("server_cpus", "client_cpus"):
        text = getattr(a, opt, None)
        got[opt] = None
        if text is None:
            continue
        flag = "--" + opt.replace("_", "-")
        if not affinity.supported():
            raise L.LoadgenError(f"{flag}: this platform cannot pin processes to CPUs (no os.sched_setaffinity)")
        try:
            cpus = affinity.parse_cpu_list(text)
            affinity.check_available(cpus)
        except affinity.CpuListError as exc:
            raise L.LoadgenError(f"{flag}: {exc}") from None
        got[opt] = cpus
    server, client = got["server_cpus"], got["client_cpus"]
    if server is not None and a.endpoint:
        raise L.LoadgenError("--server-cpus pins the built-in server; an --endpoint server is pinned where it is "
                             "started (taskset -c LIST ...): drop one of them")
    if server is not None and client is not None and server & client:
        raise L.LoadgenError(f"--server-cpus {a.server_cpus} and --client-cpus {a.client_cpus} overlap (CPU "
                             f"{affinity.format_cpu_list(server & client)}): give disjoint lists")
    return server, client


def validate(a: argparse.Namespace) -> Plan:
    """Everything checkable before a server starts; LoadgenError with one line otherwise."""
    server_cpus, client_cpus = cpu_lists(a)
    rates = L.parse_rates(a.rates)
    slo = L.parse_slo(a.slo)
    if not (math.isfinite(a.burstiness) and a.burstiness > 0):
        raise L.LoadgenError(f"--burstiness must be a finite number > 0, not {a.burstiness!r}")
    _positive("--concurrency", a.concurrency, integer=True, hi=100_000)
    _positive("--duration", a.duration, hi=7 * 86400)
    _positive("--max-time", a.max_time, hi=7 * 86400)
    _positive("--request-timeout", a.request_timeout, hi=86400)
    _positive("--ready-timeout", a.ready_timeout, hi=86400)
    _positive("--threads", a.threads, integer=True, hi=4096)
    if not 0 <= a.seed < 2**63:
        raise L.LoadgenError(f"--seed must be between 0 and 2**63-1, not {a.seed}")
    w = L.Workload(num_prompts=a.num_prompts, input_len=a.input_len, input_len_max=a.input_len_max,
                   output_len=a.output_len, output_len_max=a.output_len_max, prompts=a.prompts, seed=a.seed,
                   input_len_dist=a.input_len_dist, output_len_dist=a.output_len_dist, len_scale=a.len_scale,
                   context_len=a.context_len)
    w.check()
    workloads = [("", w)]
    if a.lengths is not None:
        names = [n.strip() for n in a.lengths.split(",") if n.strip()]
        bad = [n for n in names if n not in L.LENGTH_PRESETS]
        if not names or bad or len(set(names)) != len(names):
            raise L.LoadgenError(f"--lengths: give distinct names among {', '.join(L.LENGTH_PRESETS)}, not "
                                 f"{a.lengths!r}")
        workloads = []
        for n in names:
            wn = L.Workload(**{**w.__dict__, "input_len_max": None, "output_len_max": None, "input_len_dist": "uniform",
                               "output_len_dist": "uniform", "context_len": None, **L.LENGTH_PRESETS[n]})
            wn.check()
            workloads.append((n, wn))
        w = workloads[0][1]
    extra: list[str] = []
    for opt in SERVER_OPTIONS:
        v = getattr(a, opt)
        if v is not None:
            _positive("--" + opt.replace("_", "-"), v, integer=True, hi=10_000_000)
            extra += ["--" + opt.replace("_", "-"), str(v)]
    if a.endpoint:
        ep = L.parse_endpoint(a.endpoint, a.api, a.allow_remote)
        why = asyncio.run(L.reachable(ep))
        if why:
            raise L.LoadgenError(f"--endpoint: {why}")
        return Plan(["endpoint"], ep, rates, w, slo, a, a.model or "", extra, workloads, None, client_cpus)
    engines = [e.strip() for e in (a.engine or "ours").split(",") if e.strip()]
    for e in engines:
        if e not in ENGINES:
            raise L.LoadgenError(f"--engine: unknown engine {e!r}; choose from: {', '.join(ENGINES)}")
    return Plan(engines, None, rates, w, slo, a, a.model or "tiny", extra, workloads, server_cpus, client_cpus)


# ---- the server's own gauges during a rate ---------------------------------------------------------------------
class MetricsSampler:
    """Scrapes GET /metrics every `period_s` in a thread while a rate runs (nothing when the server has none)."""

    GAUGES = ("kbench_requests_running", "kbench_requests_waiting", "kbench_kv_blocks_used",
              "process_resident_memory_bytes")

    def __init__(self, base: str, period_s: float = 0.5):
        self.base, self.period_s = base, period_s
        self.samples: list[dict[str, float]] = []
        self.first: dict[str, float] | None = None
        self.last: dict[str, float] | None = None
        self._stop = threading.Event()
        self.reason: str | None = None

    def _once(self) -> None:
        from inference.server_proc import scrape
        try:
            m = scrape(self.base, timeout_s=2.0)
        except Exception as exc:   # noqa: BLE001 - an endpoint without /metrics: no columns, a reason
            self.reason = f"{type(exc).__name__}: {exc}"[:200]
            return
        self.first = self.first or m
        self.last = m
        self.samples.append({"t_unix": time.time(), **{g: m.get(g, math.nan) for g in self.GAUGES}})

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            self._once()

    def __enter__(self) -> "MetricsSampler":
        self._once()
        if self.first is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if getattr(self, "_thread", None) is not None:
            self._thread.join(timeout=5)
        if self.first is not None:
            self._once()

    def columns(self) -> dict[str, Any]:
        if not self.samples:
            return {}

        def peak(g: str) -> float:
            v = [s[g] for s in self.samples if not math.isnan(s[g])]
            return max(v) if v else math.nan
        pre = "kbench_preemptions_total"

        def delta(name: str) -> float:
            return (self.last or {}).get(name, math.nan) - (self.first or {}).get(name, math.nan)
        # hf-static: its generate steps with fewer than half the batch's rows still generating, and the share of
        # computed row-steps that generated (the rest: done rows padded until the longest ends)
        under, over = delta('kbench_static_steps_total{alive="under_half"}'), delta(
            'kbench_static_steps_total{alive="half_or_more"}')
        gen, done = delta('kbench_static_row_steps_total{row="generating"}'), delta(
            'kbench_static_row_steps_total{row="done"}')
        static = {"server_static_steps": under + over,
                  "server_static_steps_under_half": under / (under + over) if under + over > 0 else math.nan,
                  "server_static_row_util": gen / (gen + done) if gen + done > 0 else math.nan}
        return {**static, "server_running_max": peak("kbench_requests_running"),
                "server_waiting_max": peak("kbench_requests_waiting"),
                "server_kv_blocks_used_max": peak("kbench_kv_blocks_used"),
                "server_rss_mb_max": peak("process_resident_memory_bytes") / 2**20,
                "server_preemptions": (self.last or {}).get(pre, math.nan) - (self.first or {}).get(pre, math.nan)}


# ---- the sweep --------------------------------------------------------------------------------------------------
class Sweep:
    """Owns the run directory and the writer; `measure(target, base_url)` runs every rate of one target."""

    def __init__(self, plan: Plan, argv: list[str], mode: str = "serve", suite: str = "streaming"):
        from harness import env, rundir, telemetry
        from harness.results import ResultWriter
        self.plan, self.suite, self.mode = plan, suite, mode
        # (name, workload, requests, length statistics) per workload: one, or each of --lengths
        self.workloads = []
        for name, w in plan.workloads or [("", plan.workload)]:
            specs = L.make_requests(w)
            self.workloads.append((name, w, specs, L.workload_stats(w, specs)))
        self.specs, self.lengths = self.workloads[0][2], self.workloads[0][3]
        self.rd = rundir.claim(Path(plan.args.out) if plan.args.out else None, "cpu")
        try:
            manifest = env.manifest("cpu", argv)
            self.run_id = self.rd.run_id or rundir.new_run_id("cpu")
            manifest.update(run_id=self.run_id, mode=mode, suites=[suite], seed=plan.args.seed,
                            serve=dict(targets=plan.targets, endpoint=plan.endpoint.base if plan.endpoint else None,
                                       rates=[_rate_str(r) for r in plan.rates], workload=plan.workload.describe(),
                                       lengths=self.lengths,
                                       workloads={n: dict(workload=w.describe(), lengths=st)
                                                  for n, w, _, st in self.workloads if n},
                                       slo=plan.slo, burstiness=plan.args.burstiness,
                                       concurrency=plan.args.concurrency, api=plan.args.api, model=plan.model,
                                       server_args=plan.extra, threads=plan.args.threads, cpus=_cpus_manifest(plan)))
            self.sampler = telemetry.make_sampler("cpu")
            manifest["telemetry"] = self.sampler.info()
            self.writer = ResultWriter(self.rd.path, manifest, list(telemetry.TELEMETRY_COLUMNS) + L.METRIC_COLUMNS +
                                       ["note"])
        except BaseException:
            self.rd.release()
            raise
        self.keys = env.row_keys(manifest)
        self.telemetry_entries: list = []
        self.server_samples: list[dict] = []

    @property
    def dir(self) -> Path:
        return self.writer.dir

    def base_row(self, target: str, rate: float, wl: tuple | None = None) -> dict[str, Any]:
        a = self.plan.args
        name, w, _, lengths = wl or self.workloads[0]
        case = (f"lengths={name}," if name else "") + f"rate={_rate_str(rate)}" + \
            (f",concurrency={a.concurrency}" if a.concurrency else "") + \
            (f",burstiness={a.burstiness:g}" if a.burstiness != 1.0 else "")
        variant = target if target != "endpoint" else f"endpoint:{self.plan.endpoint.host}:{self.plan.endpoint.port}"
        cfg = dict(workload=w.describe(), lengths=lengths, api=a.api, burstiness=a.burstiness,
                   concurrency=a.concurrency, duration_s=a.duration, slo=self.plan.slo, server_args=self.plan.extra,
                   server_threads=a.threads if target != "endpoint" else None,
                   endpoint=self.plan.endpoint.base if self.plan.endpoint else None)
        return dict(run_id=self.run_id, suite=self.suite, case=case, variant=variant, device="cpu", dtype="float32",
                    model=self.plan.model, config=json.dumps(cfg), threads=a.threads if target != "endpoint" else None,
                    **self.keys)

    def add(self, row: dict[str, Any]) -> None:
        self.writer.add(row)

    def skip_all(self, target: str, status: str, reason: str) -> None:
        for wl in self.workloads:
            for rate in self.plan.rates:
                self.add({**self.base_row(target, rate, wl), "status": status, "reason": reason[:500],
                          "samples_ms": []})

    def warmup(self, ep: L.Endpoint, model: str) -> str | None:
        """One request first (as vLLM's benchmark does): the reason it failed, or None."""
        spec = L.RequestSpec(-1, self.specs[0].prompt, min(4, self.specs[0].max_tokens))
        r = L.run_sync(ep, [spec], math.inf, model, request_timeout_s=self.plan.args.request_timeout,
                       max_time_s=min(self.plan.args.max_time, self.plan.args.request_timeout + 5))
        o = r.outcomes[0]
        return None if o.ok else (o.error or "failed")

    def measure(self, target: str, ep: L.Endpoint, model: str, progress=print, note: str | None = None) -> None:
        """Every rate of one target; `note` (the server's start-up warnings) goes into each of its rows."""
        a = self.plan.args
        if not a.no_warmup:
            why = self.warmup(ep, model)
            if why:
                self.skip_all(target, "error", f"the test request failed: {why}")
                return
        for wl, rate in [(wl, rate) for wl in self.workloads for rate in self.plan.rates]:
            row = self.base_row(target, rate, wl)
            row["note"] = note
            with self.sampler.measure() as m, MetricsSampler(ep.base) as ms:
                r = L.run_sync(ep, wl[2], rate, model, burstiness=a.burstiness, concurrency=a.concurrency,
                               seed=a.seed, duration_s=a.duration, request_timeout_s=a.request_timeout,
                               max_time_s=a.max_time)
            row.update(L.summarize(r, self.plan.slo))
            row.update(_latency_columns([o.latency * 1e3 for o in r.outcomes if o.ok]))
            row.update(m.summary(max(row["completed"], 1)))
            row.update(ms.columns())
            if row["completed"] == 0:
                top = next(iter(json.loads(row["failures"]).items())) if row["failures"] else ("no request", 0)
                row.update(status="error", reason=f"no request completed ({top[1]}x {top[0]})"[:500])
            else:
                row.update(status="ok", reason=(f"{row['failed']} of {row['requests']} failed" if row["failed"]
                                                else None),
                           tokens_per_s=row["output_throughput"], ms_per_token=row["tpot_median_ms"])
            keys = dict(run_id=self.run_id, suite=self.suite, case=row["case"], variant=row["variant"],
                        dtype="float32")
            self.telemetry_entries.append((keys, m))
            self.server_samples += [{**keys, **s} for s in ms.samples]
            self.add(row)
            self._write_side_files()
            progress(_line(row))

    def _write_side_files(self) -> None:
        from harness import telemetry
        from harness.results import atomic_write
        telemetry.write_timeseries(self.dir, self.telemetry_entries)
        if self.server_samples:
            import pandas as pd
            df = pd.DataFrame(self.server_samples)
            atomic_write(self.dir / "server_metrics.parquet", lambda p: df.to_parquet(p, index=False))

    def finish(self, **end: Any) -> None:
        import datetime as _dt
        self.writer.write_manifest(finished=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                                   rows=len(self.writer.rows), **end)

    def close(self) -> None:
        self.rd.release()


def _cpus_manifest(plan: Plan) -> dict[str, Any]:
    """What was asked (None: not pinned) and this process's mask read back (every thread's, united)."""
    from inference import affinity
    fmt = affinity.format_cpu_list
    back = fmt(affinity.affinity_of(os.getpid())[1]) if affinity.supported() else None
    return dict(server_requested=fmt(plan.server_cpus) if plan.server_cpus is not None else None,
                client_requested=fmt(plan.client_cpus) if plan.client_cpus is not None else None,
                client=back, client_pid=os.getpid())


def _latency_columns(e2e_ms: list[float]) -> dict[str, Any]:
    """The harness's timing columns hold the requests' E2E latencies: one sample per request (median_ms is the
    median E2E latency, samples_ms every one of them), so gate/compare read a streaming row like any other."""
    import numpy as np
    if not e2e_ms:
        return {"samples_ms": []}
    x = np.asarray(e2e_ms)
    return dict(median_ms=float(np.median(x)), p20_ms=float(np.percentile(x, 20)), p80_ms=float(np.percentile(x, 80)),
                min_ms=float(x.min()), n=int(x.size), cv=float(x.std() / x.mean()) if x.mean() > 0 else math.nan,
                samples_ms=[float(v) for v in x])


def _rate_str(r: float) -> str:
    return "inf" if math.isinf(r) else f"{r:g}"


def _line(row: dict) -> str:
    if row["status"] != "ok":
        from rich.markup import escape
        return f"  {row['variant']} {row['case']}: {row['status']}: {escape(str(row.get('reason')))}"
    return (f"  {row['variant']} {row['case']}: {row['completed']}/{row['requests']} done, "
            f"{row['output_throughput']:.1f} tok/s, TTFT p99 {row['ttft_p99_ms']:.0f} ms, "
            f"TPOT p99 {row['tpot_p99_ms']:.1f} ms")


def table(rows: list[dict], title: str = ""):
    """The sweep as a rich table: one line per (engine, rate)."""
    from rich.table import Table
    from rich.markup import escape
    t = Table(title=title, header_style="bold")
    cols = [("engine", "left"), ("case", "left"), ("status", "left"), ("done/sent", "right"), ("req/s", "right"),
            ("out tok/s", "right"), ("TTFT p50", "right"), ("TTFT p99", "right"), ("TPOT p50", "right"),
            ("TPOT p99", "right"), ("ITL p50", "right"), ("E2E p50", "right"), ("goodput", "right"),
            ("max conc", "right")]
    for c, j in cols:
        t.add_column(c, justify=j)

    def f(x, fmt):
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)
    for r in rows:
        st = r["status"]
        shown = st if st == "ok" and not r.get("reason") else f"{st} [dim]{escape(str(r.get('reason') or '')[:60])}[/]"
        if r.get("note"):
            shown += f" [yellow]{escape(str(r['note'])[:60])}[/]"
        gp = r.get("goodput_frac")
        t.add_row(r["variant"], r["case"], shown,
                  f"{r.get('completed', '')}/{r.get('requests', '')}" if st == "ok" else "",
                  f(r.get("request_throughput"), ".2f"), f(r.get("output_throughput"), ".1f"),
                  f(r.get("ttft_median_ms"), ".0f"), f(r.get("ttft_p99_ms"), ".0f"), f(r.get("tpot_median_ms"), ".1f"),
                  f(r.get("tpot_p99_ms"), ".1f"), f(r.get("itl_median_ms"), ".1f"), f(r.get("e2el_median_ms"), ".0f"),
                  f"{gp:.0%} ({r['goodput_req_s']:.2f}/s)" if gp is not None and not math.isnan(gp) else "",
                  f(r.get("max_concurrency"), "d") if st == "ok" else "")
    return t


def sweep(plan: Plan, argv: list[str], mode: str = "serve") -> int:
    """Run the plan with this process (the load generator) on --client-cpus, restored at the end."""
    from inference import affinity
    original = frozenset(os.sched_getaffinity(0)) if affinity.supported() else None
    # the servers' mask: --server-cpus, or, with only --client-cpus, the one bench.py had (the child is forked
    # from a pinned thread and would inherit the client's CPUs otherwise); None: inherited, unchanged
    server_cpus = plan.server_cpus if plan.server_cpus is not None else \
        (original if plan.client_cpus is not None else None)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(affinity.pin_process(plan.client_cpus))
        except OSError as exc:
            raise L.LoadgenError(f"--client-cpus: cannot pin the load generator to CPUs "
                                 f"{affinity.format_cpu_list(plan.client_cpus or ())}: {exc}") from None
        return _sweep(plan, argv, mode, server_cpus)


def _mask_of(pid: int) -> tuple[str | None, str | None]:
    """A started server's CPUs read back: (its pid's mask, its threads' masks united), as lists like '0,2-3'."""
    from inference import affinity
    try:
        own, threads = affinity.affinity_of(pid)
    except (OSError, AttributeError):              # it exited meanwhile, or no sched_getaffinity here
        return None, None
    return affinity.format_cpu_list(own), affinity.format_cpu_list(threads)


def _cpus_line(plan: Plan, target: str, pid: int | None, mask: str | None) -> None:
    """One stderr line per server when pinning was asked: the masks read back, not the ones asked for."""
    if plan.server_cpus is None and plan.client_cpus is None:
        return
    from inference import affinity
    fmt = affinity.format_cpu_list
    client = fmt(affinity.affinity_of(os.getpid())[1])
    srv = (f"{target} server (pid {pid}) on CPUs {mask}" if pid is not None else
           "the --endpoint server: not pinned by this command")
    print(f"bench.py serve: cpus: {srv}, load generator (pid {os.getpid()}) on CPUs {client}", file=sys.stderr,
          flush=True)


def _sweep(plan: Plan, argv: list[str], mode: str, server_cpus: frozenset[int] | None) -> int:
    """Run the plan: start each engine's server (or use the endpoint), every rate, rows, the table."""
    from harness.runner import _ignore_termination, _signals_as_interrupts
    from harness.ui import console, out_console
    from rich.markup import escape

    from inference.server_proc import BuiltinServer, ServerStartError
    sw = Sweep(plan, argv, mode)
    code = 0
    try:
        console.print(f"[bold]run {sw.run_id}[/]: streaming sweep of {', '.join(plan.targets)} at rates "
                      f"{', '.join(_rate_str(r) for r in plan.rates)} ({plan.workload.num_prompts} requests each) "
                      f"-> {sw.dir}")
        for name, w, _, st in sw.workloads:
            console.print(f"  lengths{' ' + name if name else ''}: " + escape(L.describe_lengths(w, st)))
        with _signals_as_interrupts():
            try:
                for target in plan.targets:
                    if plan.endpoint is not None:
                        _cpus_line(plan, target, None, None)
                        model = plan.model or asyncio.run(L.served_model(plan.endpoint)) or "default"
                        sw.plan.model = model
                        sw.measure(target, plan.endpoint, model, console.print)
                        continue
                    srv = BuiltinServer(target, plan.model, plan.args.threads, plan.extra,
                                        sw.dir / f"server-{target}.log", plan.args.server_module,
                                        plan.args.ready_timeout, cpus=server_cpus)
                    try:
                        srv.start()
                        own, threads = _mask_of(srv.proc.pid)
                        sw.writer.write_manifest(servers={**sw.writer.manifest.get("servers", {}),
                                                          target: {"pid": srv.proc.pid, "command": srv.command(),
                                                                   "cpus": own, "cpus_threads": threads}})
                        _cpus_line(plan, target, srv.proc.pid, threads)
                    except ServerStartError as exc:
                        sw.skip_all(target, "skipped" if exc.exit_code == 2 else "error", str(exc))
                        console.print(f"  [yellow]{target}: {escape(str(exc))}[/]")
                        continue
                    note = "; ".join(srv.warnings) or None
                    if note:                         # loud: the figures are not those of the engine asked for
                        print(f"bench.py serve: warning: {target}: {note}", file=sys.stderr, flush=True)
                        sw.writer.write_manifest(servers={**sw.writer.manifest.get("servers", {}),
                                                          target: {**sw.writer.manifest["servers"][target],
                                                                   "warnings": srv.warnings}})
                    try:
                        sw.measure(target, L.Endpoint(srv.base, srv.host, srv.port, plan.args.api), plan.model,
                                   console.print, note=note)
                    finally:
                        srv.stop()
            except KeyboardInterrupt as exc:
                _ignore_termination()
                signum = getattr(exc, "signum", 2)
                code = 128 + signum
        sw.finish(interrupted=code != 0)
    finally:
        sw.close()
    rows = sw.writer.rows
    out_console.print(table(rows, title=f"{sw.run_id} (streaming, {mode})"))
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "error", "skipped")}
    console.print(", ".join(f"{n} {s}" for s, n in counts.items()) + f"; results in {sw.dir}")
    if code:
        console.print(f"[yellow]interrupted: {len(rows)} rows kept in {sw.dir}[/]")
    return code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parser().parse_args(argv)
    from harness.registry import UsageError
    try:
        plan = validate(a)
        return sweep(plan, ["serve"] + argv)
    except (L.LoadgenError, UsageError) as exc:
        print(f"bench.py serve: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
