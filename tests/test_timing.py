"""The timing module on workloads of known cost (busy-waits: no sleep, whose wake-up jitter is large)."""
import time

import numpy as np
import pytest
import torch

from harness.timing import Stats, TimingConfig, measure, median_rel_ci


def spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _typical_ms(st):
    """The median, or where the scheduler preempted the loop (involuntary context switches, counted by
    getrusage) the 20th percentile: on a machine with several runnable processes per core about every other
    2 ms sample includes another process's time slice (seen at load 20-27 on 2 cores), which moves the
    median but not the fastest fifth. A busy-wait can only be made slower, never faster, than its spin."""
    return st.p20_ms if st.nivcsw > 0 else st.median_ms


def test_median_of_a_known_cost_workload():
    st = measure(lambda: spin(2e-3), "cpu", TimingConfig(budget_s=0.5, min_samples=10))
    # a shared machine can only make a call slower, never faster, than its spin time
    assert 1.98 <= _typical_ms(st) <= 2.3, (st.median_ms, st.p20_ms, st.nivcsw)
    assert st.min_ms >= 1.99
    assert st.n >= 3 and len(st.samples_ms) == st.n
    assert st.p20_ms <= st.median_ms <= st.p80_ms


def test_short_calls_are_batched_to_beat_timer_resolution():
    st = measure(lambda: spin(20e-6), "cpu", TimingConfig(budget_s=0.3, min_sample_s=1e-3))
    assert st.calls_per_sample >= 20
    assert 0.018 <= _typical_ms(st) <= 0.05, (st.median_ms, st.p20_ms, st.nivcsw)


def test_stops_when_converged_or_at_budget():
    st = measure(lambda: spin(1e-3), "cpu", TimingConfig(budget_s=5.0, target_rel_ci=0.05, min_samples=10))
    assert st.stop_reason == "converged" and st.elapsed_s < 5.0
    t0 = time.perf_counter()
    st = measure(lambda: spin(5e-3), "cpu", TimingConfig(budget_s=0.2, target_rel_ci=0.0))
    assert st.stop_reason == "budget" and time.perf_counter() - t0 < 1.0


def test_cold_runs_flush_before_every_sample_outside_the_timing():
    flushes = []
    st = measure(lambda: spin(1e-3), "cpu", TimingConfig(budget_s=0.2, cold=True),
                 flush=lambda: (flushes.append(1), spin(5e-3)))
    assert st.calls_per_sample == 1 and len(flushes) == st.n
    assert st.median_ms < 2.0          # the 5 ms flush is not in the samples


def test_statistics():
    s = Stats([1.0, 2.0, 3.0, 4.0, 100.0], 1, "budget", 0.1)
    assert s.median_ms == 3.0 and s.min_ms == 1.0 and s.n == 5
    assert np.isclose(s.p20_ms, 1.8) and np.isclose(s.p80_ms, 23.2)
    assert s.cv > 1
    assert median_rel_ci([1.0] * 50) == 0.0
    assert median_rel_ci([1.0, 2.0]) == float("inf")
    wide = median_rel_ci(np.random.default_rng(0).uniform(0.5, 1.5, 20))
    narrow = median_rel_ci(np.random.default_rng(0).uniform(0.5, 1.5, 2000))
    assert narrow < wide / 5


def test_median_agrees_with_torch_utils_benchmark_on_a_non_allocating_op():
    """torch.add(x, y, out=z) allocates nothing, so no allocator regime: the suite's median and
    Timer.blocked_autorange's agree within 5% (issue 23), one thread, rounds alternated. Under contention they
    cannot: the suite's short samples mostly fall inside the process's time slices while Timer's >= 10 ms
    blocks include the slices other processes took (docs/cpu-timing.md), so a contended machine skips."""
    import statistics

    from torch.utils.benchmark import Timer

    from harness import telemetry
    from harness.timing import TimingConfig, measure
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, y, z = torch.randn(1 << 18), torch.randn(1 << 18), torch.empty(1 << 18)
        fn = lambda: torch.add(x, y, out=z)     # noqa: E731
        timer = Timer("torch.add(x, y, out=z)", globals=dict(torch=torch, x=x, y=y, z=z), num_threads=1)
        ours, theirs = [], []
        with telemetry.make_sampler("cpu").measure() as m:
            for _ in range(5):
                ours.append(measure(fn, "cpu", TimingConfig(budget_s=0.2)).median_ms)
                theirs.append(timer.blocked_autorange(min_run_time=0.2).median * 1e3)
        others = m.summary(1)["cpu_others_pct"]
    finally:
        torch.set_num_threads(prev)
    ratio = statistics.median(ours) / statistics.median(theirs)
    if others > 20 and abs(ratio - 1) > 0.05:
        pytest.skip(f"contended machine (other processes took {others:.0f}% of the CPU): suite "
                    f"{statistics.median(ours):.4f} ms vs Timer {statistics.median(theirs):.4f} ms")
    assert abs(ratio - 1) <= 0.05, f"suite {ours} vs Timer {theirs} (ms): ratio {ratio:.3f}"
