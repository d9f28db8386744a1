"""Reliability soak of the built-in streaming server (issue 19): N requests with client disconnects and malformed
requests mixed in, then the checks. `make soak` runs 10,000; tests/test_streaming.py a few hundred.

    python scripts/serve_soak.py --requests 10000 [--engine ours] [--concurrency 32] [--out summary.json]
        [--num-blocks 12 [--preemption recompute|swap]]       # a pool small enough that the engine preempts

Two identical waves (same seed) of `--requests` each against one server (started here on a free loopback port,
stopped at the end: inference/server_proc.py). Each request is, at random (seeded):
- well-formed (a streaming completion or chat request, read to `data: [DONE]`): must complete, or be cleanly
  refused with 429/503 (a full queue);
- a disconnect: the client reads a few events, then closes the connection: the server must cancel it;
- malformed (bad JSON, a missing prompt, a negative or absurd max_tokens, a temperature of the wrong type, an
  unknown model route...): must get a 4xx with an OpenAI error JSON, never a 5xx nor a dropped connection.
Checks, after each wave, once the server is idle (the gauges polled for up to `--settle` seconds):
`kbench_requests_running` and `kbench_requests_waiting` back to 0, `kbench_kv_blocks_used` back to 0 (no leaked
KV block), GET /health 200 (the server stayed up); after the second wave, `process_resident_memory_bytes` has not
grown over the first wave's by more than `--rss-growth` (default 10%): memory does not grow with traffic. The
summary (counts, reasons, gauges, RSS, every check) is written as JSON; exit 0 when every check passed, 1 if not,
2 on bad input.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inference import loadgen as L                                     # noqa: E402
from inference.server_proc import BuiltinServer, ServerStartError, health, scrape   # noqa: E402

MALFORMED = {
    "bad json": dict(data=b"{not json", headers={"Content-Type": "application/json"}),
    "no prompt": dict(json={"model": "tiny", "max_tokens": 4, "stream": True}),
    "negative max_tokens": dict(json={"model": "tiny", "prompt": "hi", "max_tokens": -3, "stream": True}),
    "absurd max_tokens": dict(json={"model": "tiny", "prompt": "hi", "max_tokens": 10**9, "stream": True}),
    "temperature not a number": dict(json={"model": "tiny", "prompt": "hi", "max_tokens": 4, "temperature": "hot"}),
    "prompt not a string": dict(json={"model": "tiny", "prompt": {"a": 1}, "max_tokens": 4}),
    "empty body": dict(data=b"", headers={"Content-Type": "application/json"}),
    "chat without messages": dict(json={"model": "tiny", "max_tokens": 4, "stream": True}, chat=True),
}
REFUSED_BACKOFF_S = 0.2
GAUGES = ("kbench_requests_running", "kbench_requests_waiting", "kbench_kv_blocks_used")


def plan(n: int, seed: int, disconnect_frac: float, malformed_frac: float, input_len: int, output_len: int):
    """The kinds of the n requests and their payloads, seeded: the same list for both waves."""
    rng = random.Random(seed)
    specs = L.make_requests(L.Workload(num_prompts=n, input_len=input_len, input_len_max=input_len * 2,
                                       output_len=output_len, output_len_max=output_len * 2, seed=seed))
    kinds = []
    for s in specs:
        u = rng.random()
        if u < malformed_frac:
            kinds.append(("malformed", rng.choice(sorted(MALFORMED)), s))
        elif u < malformed_frac + disconnect_frac:
            kinds.append(("disconnect", rng.randint(0, 3), s))
        else:
            kinds.append(("ok", "chat" if rng.random() < 0.2 else "completions", s))
    return kinds


async def one(session, base: str, kind: str, arg, spec: L.RequestSpec, model: str) -> tuple[str, str]:
    """(kind, outcome): 'completed', 'refused', 'rejected 4xx', 'disconnected', or what went wrong."""
    import aiohttp
    try:
        if kind == "ok":
            ep = L.Endpoint(base, "127.0.0.1", 0, arg)
            o = await L.send(session, ep, spec, model, time.perf_counter())
            if o.ok:
                return kind, "completed" if o.output_tokens == spec.max_tokens else \
                    f"wrong length {o.output_tokens} != {spec.max_tokens}"
            return kind, "refused" if o.refused else f"failed: {o.error}"
        if kind == "disconnect":
            async with session.post(f"{base}/v1/completions", json=L.payload(spec, "completions", model)) as r:
                if r.status != 200:
                    return kind, "refused" if r.status in L.REFUSED else f"status {r.status}"
                events = 0
                async for raw in r.content:
                    if raw.startswith(b"data:"):
                        events += 1
                        if events > arg:
                            break
                r.close()                       # drop the connection mid-stream
                return kind, "disconnected"
        m = dict(MALFORMED[arg])
        url = f"{base}/v1/chat/completions" if m.pop("chat", False) else f"{base}/v1/completions"
        async with session.post(url, **m) as r:
            body = await r.text()
            if 400 <= r.status < 500:
                try:
                    ok_json = "error" in json.loads(body)
                except ValueError:
                    ok_json = False
                return kind, "rejected 4xx" if ok_json else f"4xx without an error JSON ({r.status})"
            if r.status in L.REFUSED:
                return kind, "refused"
            return kind, f"status {r.status} for '{arg}'"
    except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as exc:
        return kind, f"{type(exc).__name__}"


async def wave(base: str, kinds, concurrency: int, model: str, request_timeout: float) -> Counter:
    import aiohttp
    sem = asyncio.Semaphore(concurrency)
    counts: Counter = Counter()

    async def run(k):
        async with sem:
            kind, outcome = await one(session, base, k[0], k[1], k[2], model)
            counts[(kind, outcome)] += 1
            if outcome == "refused":
                await asyncio.sleep(REFUSED_BACKOFF_S)     # as a real client backs off before its next request
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=request_timeout),
                                     connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(run(k) for k in kinds))
    return counts


def settle(base: str, seconds: float) -> dict[str, float]:
    """The gauges once running, waiting and KV blocks are all 0, or as they are after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            m = scrape(base)
        except Exception as exc:   # noqa: BLE001 - a dead server: the checks say so
            return {"error": f"{type(exc).__name__}: {exc}"}
        if all(m.get(g, math.nan) == 0 for g in GAUGES) or time.monotonic() > deadline:
            return m
        time.sleep(0.25)


def check_wave(name: str, counts: Counter, gauges: dict, base: str) -> list[dict]:
    checks = []
    bad_ok = {o: n for (k, o), n in counts.items() if k == "ok" and o not in ("completed", "refused")}
    checks.append(dict(check=f"{name}: every well-formed request completed or was refused (429/503)",
                       passed=not bad_ok, detail=bad_ok or None))
    bad_mal = {o: n for (k, o), n in counts.items() if k == "malformed" and o not in ("rejected 4xx", "refused")}
    checks.append(dict(check=f"{name}: every malformed request got a 4xx with an error JSON", passed=not bad_mal,
                       detail=bad_mal or None))
    bad_dc = {o: n for (k, o), n in counts.items() if k == "disconnect" and o not in ("disconnected", "refused")}
    checks.append(dict(check=f"{name}: disconnecting clients were served until they left", passed=not bad_dc,
                       detail=bad_dc or None))
    for g in GAUGES:
        v = gauges.get(g, math.nan)
        checks.append(dict(check=f"{name}: {g} back to 0", passed=v == 0, detail=v))
    checks.append(dict(check=f"{name}: /health 200 (the server stayed up)", passed=health(base), detail=None))
    return checks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="serve_soak.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=10_000, help="requests per wave (default 10000)")
    p.add_argument("--engine", default="ours")
    p.add_argument("--model", default="tiny")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--disconnect-frac", type=float, default=0.1)
    p.add_argument("--malformed-frac", type=float, default=0.05)
    p.add_argument("--input-len", type=int, default=16)
    p.add_argument("--output-len", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-num-seqs", type=int, default=16, help="the server's batch (default 16: with --concurrency "
                   "32 and --max-queue 14 the queue fills now and then, so refusals are exercised too)")
    p.add_argument("--max-queue", type=int, default=14)
    p.add_argument("--num-blocks", type=int, default=None,
                   help="the server's KV pool in blocks of 16 (default the server's 1024); a small pool makes the "
                        "engine preempt under load, and the soak then also checks that it did")
    p.add_argument("--preemption", choices=("recompute", "swap"), default=None, help="the server's preemption mode")
    p.add_argument("--settle", type=float, default=30.0, help="seconds to wait for the gauges to reach 0")
    p.add_argument("--rss-growth", type=float, default=0.10, help="allowed RSS growth, wave 2 over wave 1")
    p.add_argument("--request-timeout", type=float, default=300.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="summary JSON (default results/soak-<time>.json)")
    p.add_argument("--server-module", default="inference.server", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if not (1 <= a.requests <= 1_000_000 and 1 <= a.concurrency <= 10_000 and 0 <= a.disconnect_frac <= 1
            and a.max_num_seqs >= 1 and a.max_queue >= 0
            and 0 <= a.malformed_frac <= 1 and a.disconnect_frac + a.malformed_frac <= 1):
        print("serve_soak.py: error: --requests in [1, 1e6], --concurrency in [1, 1e4], fractions in [0, 1] "
              "adding up to at most 1", file=sys.stderr)
        return 2
    out = Path(a.out) if a.out else ROOT / "results" / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    kinds = plan(a.requests, a.seed, a.disconnect_frac, a.malformed_frac, a.input_len, a.output_len)
    server_args = ["--max-num-seqs", str(a.max_num_seqs), "--max-queue", str(a.max_queue)]
    if a.num_blocks is not None:
        if a.num_blocks < 1:
            print("serve_soak.py: error: --num-blocks must be >= 1", file=sys.stderr)
            return 2
        server_args += ["--num-blocks", str(a.num_blocks)]
    if a.preemption is not None:
        server_args += ["--preemption", a.preemption]
    summary: dict = dict(requests_per_wave=a.requests, engine=a.engine, concurrency=a.concurrency,
                         kinds=dict(Counter(k[0] for k in kinds)), seed=a.seed, server_args=server_args)
    srv = BuiltinServer(a.engine, a.model, a.threads, server_args, out.with_suffix(".server.log"), a.server_module,
                        ready_timeout_s=1800.0)      # a models/ name not cached yet is trained first (minutes)
    checks: list[dict] = []
    t0 = time.monotonic()
    try:
        srv.start()
        summary["server_pid"] = srv.proc.pid
        rss = {}
        for name in ("wave 1", "wave 2"):
            tw = time.monotonic()
            counts = asyncio.run(wave(srv.base, kinds, a.concurrency, a.model, a.request_timeout))
            gauges = settle(srv.base, a.settle)
            summary[name] = dict(seconds=round(time.monotonic() - tw, 1),
                                 outcomes={f"{k}: {o}": n for (k, o), n in sorted(counts.items())},
                                 gauges={k: v for k, v in gauges.items() if k.startswith(("kbench_", "process_resident"))
                                         and "_bucket" not in k})
            rss[name] = gauges.get("process_resident_memory_bytes", math.nan)
            checks += check_wave(name, counts, gauges, srv.base)
        if a.num_blocks is not None:            # the small pool is there to make the engine preempt: did it?
            n = summary["wave 2"]["gauges"].get("kbench_preemptions_total", math.nan)
            checks.append(dict(check=f"the engine preempted under load (a pool of {a.num_blocks} blocks)",
                               passed=n > 0, detail=n))
        growth = rss["wave 2"] / rss["wave 1"] - 1 if rss["wave 1"] > 0 else math.nan
        summary["rss_mb"] = {k: round(v / 2**20, 1) for k, v in rss.items()}
        checks.append(dict(check=f"RSS after wave 2 within {a.rss_growth:.0%} of after wave 1", passed=growth <= a.rss_growth,
                           detail=f"{growth:+.1%}"))
        checks.append(dict(check="the server is alive at the end", passed=srv.alive(), detail=None))
    except ServerStartError as exc:
        checks.append(dict(check="the server started", passed=False, detail=str(exc)))
    finally:
        code = srv.stop()
        summary["server_exit_code"] = code
        summary["seconds"] = round(time.monotonic() - t0, 1)
    checks.append(dict(check="the server exited cleanly on SIGTERM", passed=code == 0, detail=code))
    summary["checks"] = checks
    summary["passed"] = all(c["passed"] for c in checks)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, default=str))
    for c in checks:
        print(("PASS " if c["passed"] else "FAIL ") + c["check"] + (f" ({c['detail']})" if c["detail"] is not None
                                                                     else ""))
    print(f"soak: {'passed' if summary['passed'] else 'FAILED'} in {summary['seconds']} s; summary in {out}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
