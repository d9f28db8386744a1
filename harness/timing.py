"""Timing, in one place for every suite.

CPU: `time.perf_counter_ns` (monotonic, ns resolution) around a batch of calls; the thread count is
recorded by the runner. CUDA: events recorded on the current stream around the batch, then a synchronize.
Both: warm-up (first calls pay for caches, JIT, page faults), batches long enough to drown the timer's
own cost, an optional cache flush before every sample for cold cases (the flush is outside the timed
region), and a stopping rule: stop once the 95% confidence interval of the median is narrower than
`target_rel_ci` of the median, or when the time budget ends (the sample count says which).

The confidence interval of the median comes from order statistics (distribution-free): with n sorted
samples the ranks n/2 -/+ 0.98*sqrt(n) bound the median with ~95% probability, as nvbench's stdrel
criterion does with the standard deviation; the median is robust to the outliers a shared machine makes.
"""
from __future__ import annotations

import math
import os
import resource
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch


@dataclass
class TimingConfig:
    warmup_s: float = 0.05          # at least this long, and at least 2 calls, before measuring
    min_samples: int = 10
    max_samples: int = 2000
    budget_s: float = 1.0           # per (case, variant), measuring only
    target_rel_ci: float = 0.01     # stop once the median's 95% CI half-width is within 1% of it
    min_sample_s: float = 1e-3      # batch short calls so one sample lasts at least this (timer cost << 1%)
    cold: bool = False              # flush caches before every sample (one call per sample)
    cuda_graph: bool = False        # capture the batch in a CUDA graph and replay it (hides launch cost)


@dataclass
class Stats:
    samples_ms: list[float]
    calls_per_sample: int
    stop_reason: str                 # "converged" | "budget" | "max_samples"
    elapsed_s: float
    # getrusage deltas of the measuring process over the timed samples (warm-up excluded)
    minflt: int = 0
    nvcsw: int = 0
    nivcsw: int = 0
    median_ms: float = field(init=False)
    p20_ms: float = field(init=False)
    p80_ms: float = field(init=False)
    min_ms: float = field(init=False)
    n: int = field(init=False)
    cv: float = field(init=False)
    rel_ci: float = field(init=False)

    def __post_init__(self) -> None:
        x = np.asarray(self.samples_ms, dtype=np.float64)
        self.n = int(x.size)
        self.median_ms = float(np.median(x))
        self.p20_ms, self.p80_ms = (float(v) for v in np.percentile(x, [20, 80]))
        self.min_ms = float(x.min())
        self.cv = float(x.std(ddof=1) / x.mean()) if x.size > 1 and x.mean() > 0 else float("nan")
        self.rel_ci = median_rel_ci(x)

    def regime(self) -> dict[str, float]:
        """The CPU timing regime of the samples, per call (the telemetry columns of the same names)."""
        calls = max(1, self.n * self.calls_per_sample)
        return {"minflt_per_call": self.minflt / calls,
                "ctx_switches_per_call": (self.nvcsw + self.nivcsw) / calls,
                "invol_ctx_switches_per_call": self.nivcsw / calls}


def median_rel_ci(samples) -> float:
    """Half-width of the ~95% distribution-free confidence interval of the median, relative to it."""
    x = np.sort(np.asarray(samples, dtype=np.float64))
    n = x.size
    if n < 5:
        return float("inf")
    half = 0.98 * math.sqrt(n)            # 1.96/2 * sqrt(n): normal approximation of the binomial ranks
    lo = max(0, int(math.floor(n / 2 - half)))
    hi = min(n - 1, int(math.ceil(n / 2 + half)))
    med = float(np.median(x))
    return float((x[hi] - x[lo]) / (2 * med)) if med > 0 else float("inf")


class _CpuClock:
    def __init__(self) -> None:
        self.t0 = 0

    def start(self) -> None:
        self.t0 = time.perf_counter_ns()

    def stop_ms(self) -> float:
        return (time.perf_counter_ns() - self.t0) / 1e6


class _CudaClock:
    def __init__(self) -> None:
        self.a = torch.cuda.Event(enable_timing=True)
        self.b = torch.cuda.Event(enable_timing=True)

    def start(self) -> None:
        self.a.record()

    def stop_ms(self) -> float:
        self.b.record()
        self.b.synchronize()
        return self.a.elapsed_time(self.b)


def _llc_bytes() -> int:
    """Size of the last-level cache (sysfs), 32 MiB when unknown."""
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for idx in os.listdir(base):
            with open(os.path.join(base, idx, "size")) as f:
                s = f.read().strip()
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1], 1)
            best = max(best, int(s.rstrip("KMG")) * mult)
    except (OSError, ValueError):
        pass
    return best or (32 << 20)


class CacheFlusher:
    """Writes a buffer twice the size of the last-level cache (CPU LLC or GPU L2), evicting the inputs."""

    def __init__(self, device: str) -> None:
        if device == "cuda":
            l2 = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 0)
            nbytes = 2 * (l2 or (50 << 20))
        else:
            nbytes = 2 * _llc_bytes()
        self.buf = torch.empty(nbytes // 4, dtype=torch.int32, device=device)

    def __call__(self) -> None:
        self.buf.fill_(1)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(fn: Callable[[], Any], device: str = "cpu", cfg: TimingConfig | None = None,
            flush: Callable[[], None] | None = None, lockstep: Any = None) -> Stats:
    """Time `fn` (a zero-argument launcher) per call, following `cfg`. Returns per-call statistics.

    `lockstep` (harness.distributed.Lockstep, for collectives across ranks): every decision of the loop (end
    of warm-up, calls per sample, stop) is agreed between the ranks, outside the timed region, so that they
    all make the same calls; without it a rank that stopped early would leave the others in a collective."""
    cfg = cfg or TimingConfig()
    agree_all = lockstep.all if lockstep is not None else (lambda flag: flag)
    agree_any = lockstep.any if lockstep is not None else (lambda flag: flag)
    clock = _CudaClock() if device == "cuda" else _CpuClock()

    # Warm-up: at least 2 calls and warmup_s; gives the first estimate of one call's cost. The estimate is
    # the fastest warm-up call, not elapsed / calls: on a contended machine some calls include other
    # processes' time slices, and an inflated estimate would batch too few calls per sample (seen: 9 calls
    # of 20 us where 50 were due, so samples fell short of min_sample_s).
    calls, t_start, fastest = 0, time.perf_counter(), math.inf
    while True:
        t_call = time.perf_counter()
        fn()
        sync(device)
        now = time.perf_counter()
        fastest = min(fastest, now - t_call)
        calls += 1
        elapsed = now - t_start
        done = calls >= 2 and elapsed >= cfg.warmup_s
        slow = elapsed > max(cfg.warmup_s, cfg.budget_s)   # a very slow call: two are enough
        if agree_all(done) or agree_any(slow):
            break
    per_call = fastest
    k = 1 if cfg.cold else max(1, min(10_000, math.ceil(cfg.min_sample_s / max(per_call, 1e-9))))
    if lockstep is not None:
        k = int(lockstep.max(k))

    batch: Callable[[], Any]
    if cfg.cuda_graph and device == "cuda":
        batch = _graph_batch(fn, k)
    else:
        def batch() -> None:
            for _ in range(k):
                fn()

    samples: list[float] = []
    r0 = resource.getrusage(resource.RUSAGE_SELF)     # whole process: OpenMP and torch worker threads too
    t0 = time.perf_counter()
    reason = "max_samples"
    while len(samples) < cfg.max_samples:
        if flush is not None and cfg.cold:
            flush()
            sync(device)
        clock.start()
        batch()
        samples.append(clock.stop_ms() / k)
        n = len(samples)
        converged = n >= cfg.min_samples and median_rel_ci(samples) <= cfg.target_rel_ci
        over = time.perf_counter() - t0 >= cfg.budget_s and n >= 3
        if agree_all(converged):
            reason = "converged"
            break
        if agree_any(over):
            reason = "budget"
            break
    elapsed = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return Stats(samples, k, reason, elapsed, minflt=r1.ru_minflt - r0.ru_minflt, nvcsw=r1.ru_nvcsw - r0.ru_nvcsw,
                 nivcsw=r1.ru_nivcsw - r0.ru_nivcsw)


def _graph_batch(fn: Callable[[], Any], k: int) -> Callable[[], None]:
    """Capture k calls of fn into one CUDA graph (on a side stream, as torch requires) and replay it."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()                                   # one more warm call on the capture stream
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(k):
            fn()
    return graph.replay
