"""Test-only slowdown injection, for the gate's evidence (scripts/gate_evidence.py) and its CI test.

    KB_GATE_INJECT="softmax/torch_eager=slow10:0.10,slow20:0.20"

adds to suite `softmax` the variants `torch_eager_slow10` and `torch_eager_slow20`: copies of `torch_eager`
whose launcher, after the real call, busy-waits for 10% (20%) of one call's time, calibrated once per setup
(median of at least 15 calls, outside the timed region). A fraction of 0 gives an untouched copy (same wrapper,
no wait): what the baseline side gets, so that both sides have the same rows and only the delay differs.
`bench.py ab` applies the spec with the delays on the current side and 0 on the baseline side.

Busy-wait rather than sleep: a sleep yields the core and its granularity (~60 us here) is coarse next to
sub-millisecond calls. Several specs are separated by ';'. Nothing happens when the variable is unset.

This file is loaded by path from another tree's worker (harness/ab_worker.py), so it imports nothing from
`harness` itself: it works on whatever Suite/Variant objects it is given.
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import time
from typing import Any, Callable

ENV = "KB_GATE_INJECT"


def parse(spec: str) -> list[tuple[str, str, list[tuple[str, float]]]]:
    """'suite/variant=name:frac,name:frac;...' -> [(suite, variant, [(name, frac)])]; ValueError when malformed."""
    out = []
    for part in (p.strip() for p in spec.split(";")):
        if not part:
            continue
        target, _, copies = part.partition("=")
        suite, _, variant = target.partition("/")
        items = []
        for c in copies.split(","):
            name, _, frac = c.partition(":")
            if not name.strip() or not frac.strip():
                raise ValueError(f"{ENV}: bad copy {c!r} in {part!r} (want name:fraction)")
            items.append((name.strip(), float(frac)))
        if not suite or not variant or not items:
            raise ValueError(f"{ENV}: bad spec {part!r} (want suite/variant=name:fraction,...)")
        out.append((suite.strip(), variant.strip(), items))
    return out


def parents(spec: str) -> dict[tuple[str, str], str]:
    """{(suite, copy variant): the variant it copies} of a spec. The gate learns a copy's noise from its parent's
    A/A history and never learns the copy itself (harness/gate_noise.py): a real regression is judged on the
    row's history from before it, and a slowed copy's own run-to-run spread also holds how its calibrated delay
    varied, which no code change has (gate evidence, 2026-12-01)."""
    return {(suite, f"{variant}_{name}"): variant for suite, variant, items in parse(spec) for name, _ in items}


def _sync(device: str) -> None:
    if device == "cuda":
        import torch
        torch.cuda.synchronize()


def one_call_s(launch: Callable[[], Any], device: str, calls: int = 15, min_s: float = 0.03) -> float:
    """Median time of one call (after 3 warm calls): the unit of the injected delay."""
    for _ in range(3):
        launch()
    _sync(device)
    times: list[float] = []
    t_end = time.perf_counter() + min_s
    while len(times) < calls or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        launch()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if len(times) >= 200:
            break
    return statistics.median(times)


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def slowed(setup: Callable[..., Callable[[], Any]], fraction: float) -> Callable[..., Callable[[], Any]]:
    def wrapped(case, **inputs):
        launch = setup(case, **inputs)
        delay = fraction * one_call_s(launch, getattr(case, "device", "cpu")) if fraction > 0 else 0.0

        def run():
            out = launch()
            if delay:
                _sync(case.device)      # the wait follows the work, not the launch (no-op on the CPU)
                _busy(delay)
            return out
        run.delay_s = delay                 # what was injected, for tests and logs
        return run
    wrapped.__doc__ = f"test-only copy, +{fraction:.0%} calibrated busy-wait per call"
    return wrapped


def apply(suites: dict, spec: str | None = None, delays: bool = True) -> list[str]:
    """Add the copies to `suites` (name -> Suite) in place; returns the names added. `delays=False` gives every
    copy fraction 0 (the baseline side of `bench.py ab`). ValueError names an unknown suite or variant."""
    spec = os.environ.get(ENV, "") if spec is None else spec
    added = []
    for suite_name, variant, items in parse(spec):
        if suite_name not in suites:
            raise ValueError(f"{ENV}: unknown suite {suite_name!r}")
        suite = suites[suite_name]
        if variant not in suite.variants:
            raise ValueError(f"{ENV}: suite {suite_name} has no variant {variant!r}")
        base = suite.variants[variant]
        for name, frac in items:
            full = f"{variant}_{name}"
            if full in suite.variants:
                continue                                   # applied already (all_suites() is cached)
            kw: dict[str, Any] = dict(name=full, setup=slowed(base.setup, frac if delays else 0.0))
            if "description" in {f.name for f in dataclasses.fields(base)}:   # older trees lack it
                kw["description"] = f"test-only copy of {variant}, +{(frac if delays else 0):.0%} delay"
            suite.variants[full] = dataclasses.replace(base, **kw)
            added.append(f"{suite_name}/{full}")
    return added
