"""Suite `streaming` (issue 19): the three engines of the built-in OpenAI-compatible server side by side under a
request-rate sweep: TTFT, TPOT, ITL, E2E latency, throughput and goodput per (engine, rate).

Not a kernel suite: there is no launcher to time, so it declares no `SUITE` for the kernel runner. bench.py
hands `--suite streaming` to inference/serve_bench.py (the `bench.py serve` sweep) with the settings below:
`--quick` a small sweep (a minute or two on one core), `--full` the README's measurement, `--test-shapes` the
smallest. Quick and full run two length workloads against each engine (`bench.py serve --lengths narrow,corpus`,
inference/loadgen.py LENGTH_PRESETS; rows' case `lengths=NAME,rate=R`, each row's config and the manifest's
`serve.workloads` with the lengths' statistics): narrow, 32-64 output tokens, uniform; corpus, max_tokens drawn
from the held-out paragraphs' lengths (heavy-tailed: the workload continuous batching is for), capped by the
context. `--variant` picks engines, `--threads` the server's torch threads (default 1), `--seed`, `--out` as
usual. An engine whose server cannot start here (hf-cb without transformers' paged continuous batching) is a
`skipped` row with the server's reason. The workload: prompts sliced from the held-out text of models.data,
`ignore_eos` outputs of fixed or drawn length, Poisson arrivals, the SLO below for goodput.
"""
from __future__ import annotations

import os

ENGINES = ("ours", "hf-static", "hf-cb")
BASELINE = "hf-static"                      # transformers' generate with static batching (the issue's target: 3x)
# The SLO of the goodput columns: the tiny model on one CPU core (docs/streaming.md "## Load generator").
SLO = "ttft_ms=1000,tpot_ms=100"
SETTINGS = {
    "test": dict(rates="inf", num_prompts=4, input_len=8, output_len=4),
    "quick": dict(rates="4,inf", num_prompts=12, lengths="narrow,corpus"),
    "full": dict(rates="1,2,4,8,16,inf", num_prompts=100, lengths="narrow,corpus"),
}


def serve_argv(args) -> list[str]:
    """bench.py's options (harness/cli.py) as the `bench.py serve` command line of this suite."""
    s = SETTINGS.get(args.mode or "quick", SETTINGS["quick"])
    argv = ["--engine", args.variant or ",".join(ENGINES), "--slo", SLO, "--seed", str(args.seed),
            "--threads", str(args.threads or 1)]
    for k, v in s.items():
        argv += ["--" + k.replace("_", "-"), str(v)]
    if args.out:
        argv += ["--out", args.out]
    if os.environ.get("KB_SERVER_MODULE"):       # tests: a stub server in place of inference.server
        argv += ["--server-module", os.environ["KB_SERVER_MODULE"]]
    return argv


def run(args) -> int:
    from inference import serve_bench
    return serve_bench.main(serve_argv(args))
