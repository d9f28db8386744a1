"""Does our server deliver tokens in bursts? Inter-token gaps as the client sees them (issue 19).

    python scripts/itl_probe.py [--engine ours] [--concurrency 1,8] [--tokens 48] [--requests 8]

Starts the built-in server (inference/server_proc.py, `--threads 1`), sends `--requests` streaming
completions at a time cap of each `--concurrency`, through the load generator's own client (inference/loadgen.py),
and prints the distribution of every inter-token gap (ITL) next to each request's TPOT: with one event per
token sent as it is made, ITL p10 is near TPOT; bursts show as a mass of gaps under 1 ms.
Pin it with `taskset -c 1` (the server, its engine and this client then share one core, as in the README runs).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    from inference import loadgen
    from inference.server_proc import BuiltinServer
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", default="ours")
    p.add_argument("--concurrency", default="1,8")
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--server-arg", action="append", default=[], help="extra server argument (repeatable)")
    a = p.parse_args(argv)
    conc = [int(c) for c in a.concurrency.split(",")]
    specs = loadgen.make_requests(loadgen.Workload(num_prompts=a.requests, input_len=32, output_len=a.tokens))
    with BuiltinServer(a.engine, extra=a.server_arg) as srv:
        ep = loadgen.parse_endpoint(srv.base)
        for c in conc:
            r = loadgen.run_sync(ep, specs, float("inf"), "tiny", concurrency=c)
            ok = [o for o in r.outcomes if o.ok]
            gaps = np.array([g for o in ok for g in o.itl]) * 1e3
            tpot = np.array([(o.latency - o.ttft) / (o.output_tokens - 1) for o in ok if o.output_tokens > 1]) * 1e3
            q = np.percentile(gaps, [10, 50, 90]) if len(gaps) else [np.nan] * 3
            print(f"{a.engine} concurrency {c}: {len(ok)}/{len(specs)} ok, {len(gaps)} gaps; ITL p10/p50/p90 "
                  f"{q[0]:.2f}/{q[1]:.2f}/{q[2]:.2f} ms, gaps < 1 ms {np.mean(gaps < 1) * 100:.0f}%; TPOT median "
                  f"{np.median(tpot):.2f} ms; load {os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
