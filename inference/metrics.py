"""Prometheus metrics of a serving engine (prometheus_client), one registry per engine so that several engines
(tests, in one process) do not collide. `/metrics` of inference/server.py is `generate_latest(metrics.registry)`.

Gauges are read from the engine when scraped (a collector callback), so they are never stale:
    kbench_requests_running, kbench_requests_waiting, kbench_kv_blocks_used, kbench_kv_blocks_total
Counters and the histogram are updated by the engine's thread:
    kbench_requests_total{status="finished|cancelled|rejected|error"}, kbench_preemptions_total,
    kbench_generated_tokens_total, kbench_prompt_tokens_total, kbench_step_seconds (one engine step: schedule,
    forward, sample), kbench_step_tokens (tokens computed per step)
plus the library's process metrics (process_resident_memory_bytes, ...) for the soak test's "memory flat",
and, for an engine that keeps them (ours: `Engine.phase_s`), where its thread's time goes, read when scraped:
    kbench_engine_phase_seconds_total{phase="drain|schedule|forward_decode|forward_mixed|sample|emit|handoff|
    prefill_attention"} (prefill_attention is part of forward_mixed), kbench_engine_steps_total{kind="decode|mixed"},
    kbench_engine_kind_seconds_total{kind} (a step from schedule to emit, by whether it carried a prefill chunk)
"""
from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

disable_created_metrics()          # no *_created series: the soak test reads totals, not creation times

STATUSES = ("finished", "cancelled", "rejected", "error")
STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _Collector:
    """A custom prometheus collector over `read()`, an engine's stats dict read when /metrics is scraped."""

    def __init__(self, read: Callable[[], dict]):
        self.read = read

    def describe(self):
        return []


class _Gauges(_Collector):
    def collect(self):
        s = self.read()
        for name, doc in (("requests_running", "requests in the running batch"),
                          ("requests_waiting", "requests queued (not yet running, or preempted)"),
                          ("kv_blocks_used", "KV cache blocks held by sequences"),
                          ("kv_blocks_total", "KV cache blocks in the pool")):
            g = GaugeMetricFamily(f"kbench_{name}", doc)
            g.add_metric([], float(s.get(name, 0)))
            yield g


class _Phases(_Collector):
    """The engine thread's cumulative time per phase and its steps by kind, read from the engine when scraped."""

    def collect(self):
        s = self.read()
        for name, doc, label, values in (
                ("engine_phase_seconds", "engine thread seconds per phase", "phase", s.get("phase_s", {})),
                ("engine_steps", "engine steps by kind (mixed: a prefill chunk in it)", "kind", s.get("kind_steps", {})),
                ("engine_kind_seconds", "engine step seconds by kind", "kind", s.get("kind_s", {}))):
            c = CounterMetricFamily(f"kbench_{name}", doc, labels=[label])
            for k, v in values.items():
                c.add_metric([k], float(v))
            yield c


class EngineMetrics:
    def __init__(self, read_gauges: Callable[[], dict], read_phases: Callable[[], dict] | None = None):
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.registry.register(_Gauges(read_gauges))
        if read_phases is not None:
            self.registry.register(_Phases(read_phases))
        r = self.registry
        self.requests = Counter("kbench_requests", "requests by outcome", ["status"], registry=r)
        for s in STATUSES:
            self.requests.labels(status=s)
        self.preemptions = Counter("kbench_preemptions", "sequences preempted (KV blocks ran out)", registry=r)
        self.generated = Counter("kbench_generated_tokens", "tokens generated", registry=r)
        self.prompt = Counter("kbench_prompt_tokens", "prompt tokens computed (recomputation included)", registry=r)
        self.step = Histogram("kbench_step_seconds", "one engine step", buckets=STEP_BUCKETS, registry=r)
        self.step_tokens = Histogram("kbench_step_tokens", "tokens computed in one step",
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048), registry=r)

    def count(self, status: str, n: int = 1) -> None:
        self.requests.labels(status=status).inc(n)

    def value(self, status: str) -> float:
        return self.requests.labels(status=status)._value.get()
