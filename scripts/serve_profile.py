"""Where ours' time goes under load (issue 19): one `bench.py serve`-style run split by phase.

    python scripts/serve_profile.py [--workload corpus|narrow] [--num-prompts 100] [--engine ours]
        [--in-process] [--cprofile] [--server-arg=--max-num-seqs=64 ...]

Server mode (default): starts the built-in server (inference/server_proc.py, `--threads 1`), sends the workload
at rate inf with the load generator from this process, and splits the run's wall time on the one core:
the engine thread's phases (from the server's /metrics: `kbench_engine_phase_seconds_total`, deltas over the
run: drain, schedule, forward of decode-only steps, forward of steps carrying a prefill chunk (and its prefill
attention), sample, emit = detokenize + events to the server's queues), the server's other CPU time (its
process CPU minus the engine's busy phases: FastAPI/uvicorn, the SSE chunks' JSON, asyncio), the load
generator's CPU (this process), and what is left (idle, other processes). The engine's `handoff` is its wait
for the event loop to write a step's tokens (server time, not engine CPU).

--in-process: the same requests' token ids submitted at once to an Engine stepped by hand in this process (no
HTTP): per-step times by kind (decode-only against mixed), each request's TPOT from its tokens' emit times,
and how much of the slowest requests' time went to mixed steps. --cprofile adds the top functions.
Pin it: `taskset -c 1 nice -n 10 python scripts/serve_profile.py ...`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORKLOADS = {   # the README table's workloads (bench.py serve options)
    "corpus": dict(input_len=32, input_len_max=128, output_len=1, output_len_max=224, output_len_dist="corpus",
                   context_len=256),
    "narrow": dict(input_len=32, input_len_max=128, output_len=32, output_len_max=64),
}
PHASE = "kbench_engine_phase_seconds_total"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _pct(x, q):
    import numpy as np
    return float(np.percentile(np.asarray(x), q)) if len(x) else math.nan


def server_run(a, specs) -> dict:
    from inference import loadgen as L
    from inference.server_proc import BuiltinServer, scrape
    srv = BuiltinServer(a.engine, "tiny", 1, a.server_arg, ROOT / ".cache" / "serve_profile.log")
    srv.start()
    try:
        ep = L.Endpoint(srv.base, srv.host, srv.port, "completions")
        L.run_sync(ep, [L.RequestSpec(-1, specs[0].prompt, 4)], math.inf, "tiny")       # warm-up
        m0, c0, t0 = scrape(srv.base), _cpu(), time.perf_counter()
        r = L.run_sync(ep, specs, math.inf, "tiny", seed=a.seed, max_time_s=600)
        wall, client = time.perf_counter() - t0, _cpu() - c0
        m1 = scrape(srv.base)
    finally:
        srv.stop()
    d = {k: m1.get(k, math.nan) - m0.get(k, math.nan) for k in m1 if k.startswith(("kbench_engine", "process_cpu"))}
    s = L.summarize(r)
    ph = {k[len(PHASE) + 8:-2]: v for k, v in d.items() if k.startswith(PHASE + '{phase="')}
    busy = sum(v for k, v in ph.items() if k not in ("handoff", "prefill_attention"))
    server_cpu = d.get("process_cpu_seconds_total", math.nan)
    rows = [(f"engine: {k}", v) for k, v in ph.items() if k not in ("handoff",)]
    rows += [("engine busy (sum of the phases above, prefill_attention inside forward_mixed)", busy),
             ("server other than the engine (uvicorn, FastAPI, SSE JSON, asyncio)", server_cpu - busy),
             ("load generator (this process: aiohttp, SSE parsing)", client),
             ("rest (idle, other processes on the core)", wall - server_cpu - client)]
    steps = {k: d.get(f'kbench_engine_steps_total{{kind="{k}"}}', math.nan) for k in ("decode", "mixed")}
    ksec = {k: d.get(f'kbench_engine_kind_seconds_total{{kind="{k}"}}', math.nan) for k in ("decode", "mixed")}
    return dict(wall_s=wall, server_cpu_s=server_cpu, client_cpu_s=client, phases=ph, rows=rows,
                handoff_s=ph.get("handoff", math.nan), steps=steps,
                step_ms={k: 1e3 * ksec[k] / steps[k] if steps[k] else math.nan for k in steps},
                out_tok_s=s["output_throughput"], tpot_p50_ms=s["tpot_median_ms"], tpot_p99_ms=s["tpot_p99_ms"],
                ttft_p50_ms=s["ttft_median_ms"], completed=s["completed"])


def in_process(a, specs) -> dict:
    import torch
    torch.set_num_threads(1)
    from inference.engine import Engine
    from inference.requests import SamplingParams
    from models.zoo import load
    lm = load("tiny", progress=False)
    opts = {}
    for arg in a.server_arg:
        k, _, v = arg.lstrip("-").partition("=")
        opts[k.replace("-", "_")] = int(v)
    eng = Engine(lm, **opts)
    eng.generate([lm.encode(specs[0].prompt).tolist()], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    times: list[list[float]] = [[] for _ in specs]
    at: list[list[int]] = [[] for _ in specs]           # the step (index into eng.trace) that made each token

    def sink(i):
        return lambda ev: (times[i].append(time.perf_counter()), at[i].append(len(eng.trace)))
    eng.trace = []
    prof = None
    if a.cprofile:
        import cProfile
        prof = cProfile.Profile()
    t0 = time.perf_counter()
    for i, sp in enumerate(specs):
        eng.submit(lm.encode(sp.prompt).tolist(), SamplingParams(max_tokens=sp.max_tokens, temperature=0,
                                                                  ignore_eos=True), sink(i))
    if prof:
        prof.enable()
    eng.run_until_idle()
    if prof:
        prof.disable()
    wall = time.perf_counter() - t0
    tpot = [(t[-1] - t[0]) / (len(t) - 1) * 1e3 for t in times if len(t) > 1]
    out = dict(wall_s=wall, out_tok_s=sum(len(t) for t in times) / wall, tpot_p50_ms=_pct(tpot, 50),
               tpot_p99_ms=_pct(tpot, 99), steps=len(eng.trace))
    for kind in ("decode", "mixed"):
        st = [x for x in eng.trace if x[0] == kind]
        ms = [x[1] * 1e3 for x in st]
        out[kind] = dict(steps=len(st), ms_p50=_pct(ms, 50), ms_p99=_pct(ms, 99), ms_mean=sum(ms) / len(ms) if ms else math.nan, seconds=sum(ms) / 1e3,
            seqs_mean=statistics.fmean(x[3] for x in st) if st else math.nan,
            tokens_mean=statistics.fmean(x[2] for x in st) if st else math.nan)
    out["phase_s"] = eng.phases()["phase_s"]
    # the slowest requests by TPOT (the p99 side): how long they are and how many of their gaps were mixed steps
    # (a step carrying prefill chunks of joining requests) against every request's
    per = [((t[-1] - t[0]) / (len(t) - 1) * 1e3, len(t), sum(eng.trace[k][0] == "mixed" for k in a[1:]) / (len(a) - 1))
           for t, a in zip(times, at) if len(t) > 1]
    per.sort(reverse=True)
    top = per[:max(1, len(per) // 20)]
    out["slowest_5pct"] = dict(tpot_ms=statistics.fmean(x[0] for x in top), output_tokens=statistics.fmean(
        x[1] for x in top), gaps_in_mixed_steps=statistics.fmean(x[2] for x in top))
    out["all_requests"] = dict(tpot_ms=statistics.fmean(x[0] for x in per), output_tokens=statistics.fmean(
        x[1] for x in per), gaps_in_mixed_steps=statistics.fmean(x[2] for x in per))
    if prof:
        import io
        import pstats
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
        out["cprofile"] = buf.getvalue()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", default="corpus", choices=tuple(WORKLOADS))
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--engine", default="ours")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--in-process", action="store_true")
    p.add_argument("--cprofile", action="store_true")
    p.add_argument("--server-arg", action="append", default=[], help="e.g. --server-arg=--max-num-seqs=64")
    a = p.parse_args(argv)
    a.server_arg = [x for arg in a.server_arg for x in arg.split("=", 1)] if not a.in_process else a.server_arg
    from inference import loadgen as L
    specs = L.make_requests(L.Workload(num_prompts=a.num_prompts, seed=a.seed, **WORKLOADS[a.workload]))
    res = in_process(a, specs) if a.in_process else server_run(a, specs)
    print(f"load average {os.getloadavg()[0]:.1f}; {a.workload}, {a.num_prompts} requests at rate inf, "
          f"{'in process' if a.in_process else a.engine + ' server'} {' '.join(a.server_arg)}")
    if a.in_process:
        prof = res.pop("cprofile", None)
        print(json.dumps(res, indent=1, default=float))
        if prof:
            print(prof)
        return 0
    wall = res["wall_s"]
    for name, v in res["rows"]:
        print(f"  {name:86s} {v:7.3f} s  {100 * v / wall:5.1f}%")
    print(f"  {'wall':86s} {wall:7.3f} s")
    print(json.dumps({k: v for k, v in res.items() if k not in ("rows", "phases")}, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
