"""The load generator (inference/loadgen.py): metric definitions against a stub server with known delays, arrival
processes, goodput, failure accounting, input parsing. vLLM benchmark_serving's definitions are the reference."""
import math

import numpy as np
import pytest

from inference import loadgen as L
from tests.openai_stub import StubServer

# Client-side times can only be later than the stub's sleeps: lower bounds from causality (a chunk cannot arrive
# before the stub has slept for it), exact at any load. How much later depends on the load of the (shared,
# one-core) machine: upper bounds only on medians (a descheduled client reads one chunk late, and the next one
# sooner than the gap: single gaps are not bounded either way under load), with a generous slack.
LOW_MS = 1.0
SLACK_MS = 120.0
pytestmark = pytest.mark.timeout(120)       # a client that waits forever fails here, not in CI's time limit


def _run(url, specs, rate=math.inf, **kw):
    return L.run_sync(L.parse_endpoint(url, kw.pop("api", "completions")), specs, rate, "tiny", **kw)


def _specs(n, prompt_len=12, out=6, prompt=None):
    return [L.RequestSpec(i, prompt if prompt is not None else "x" * prompt_len, out) for i in range(n)]


# ---- the figures against known delays -------------------------------------------------------------------------
def test_metrics_match_the_stubs_known_delays():
    """TTFT, ITL, TPOT, E2E against a stub with known delays. Robust to load (it failed twice at load 8 when
    every single gap had to be within [itl - 1 ms, itl + 120 ms]): per request, causality (each chunk's arrival
    after the stub's sleeps for it) and the definitions' exact relations; across requests, the medians within
    a slack. The itl of 100 ms makes a doubled gap (200 ms) fall outside the slack."""
    ttft, itl, n_out = 0.15, 0.1, 6
    with StubServer(ttft_s=ttft, itl_s=itl, usage_bias=0) as url:
        r = _run(url, _specs(6, out=n_out), concurrency=3)
    s = L.summarize(r)
    assert s["completed"] == 6 and s["failed"] == 0
    e2e = (ttft + (n_out - 1) * itl) * 1e3
    for o in r.outcomes:
        assert o.ok and o.output_tokens == n_out and o.prompt_tokens == 12 and o.text == "a" * n_out
        assert len(o.itl) == n_out - 1                              # every gap between tokens
        arrivals = np.cumsum([o.ttft] + o.itl) * 1e3                # chunk k's arrival, ms after the send
        known = (ttft + itl * np.arange(n_out)) * 1e3               # the stub's sleeps before chunk k
        assert (arrivals >= known - LOW_MS).all(), (arrivals, known)
        # TPOT = (E2E - TTFT) / (output tokens - 1): exactly the mean of this request's gaps
        assert o.tpot == pytest.approx(float(np.mean(o.itl)), rel=1e-9)
        assert o.latency == pytest.approx(o.ttft + sum(o.itl), rel=1e-9)
        assert o.latency * 1e3 <= e2e + 2000                        # a gross error, whatever the load
    assert ttft * 1e3 - LOW_MS <= s["ttft_median_ms"] <= ttft * 1e3 + SLACK_MS
    assert itl * 1e3 / 2 <= s["itl_median_ms"] <= itl * 1e3 + SLACK_MS
    assert itl * 1e3 / 2 <= s["tpot_median_ms"] <= itl * 1e3 + SLACK_MS
    assert e2e - LOW_MS <= s["e2el_median_ms"] <= e2e + 2 * SLACK_MS
    # two waves of 3 (concurrency 3): the run lasts about two requests' latency
    assert s["max_concurrency"] == 3
    assert s["duration_s"] >= 2 * e2e / 1e3 - 1e-3
    assert s["total_output_tokens"] == 6 * n_out and s["total_input_tokens"] == 6 * 12
    assert s["request_throughput"] == pytest.approx(6 / s["duration_s"])
    assert s["output_throughput"] == pytest.approx(6 * n_out / s["duration_s"])
    assert s["total_token_throughput"] == pytest.approx(6 * (n_out + 12) / s["duration_s"])


def test_tokens_are_counted_from_usage_when_the_server_sends_it():
    with StubServer(ttft_s=0.0, itl_s=0.0, usage_bias=3) as url:
        with_usage = _run(url, _specs(2, out=4))
    with StubServer(ttft_s=0.0, itl_s=0.0, usage=False) as url:
        without = _run(url, _specs(2, out=4))
    assert [o.output_tokens for o in with_usage.outcomes] == [7, 7]       # the usage chunk's completion_tokens
    assert [o.output_tokens for o in without.outcomes] == [4, 4]          # else: one chunk, one token
    assert all(o.ok for o in with_usage.outcomes + without.outcomes)


def test_chat_completions_stream_delta_content():
    with StubServer(ttft_s=0.0, itl_s=0.0) as url:
        r = _run(url, _specs(2, out=3), api="chat")
    assert all(o.ok and o.text == "bbb" and o.output_tokens == 3 for o in r.outcomes), r.outcomes


def test_statistics_follow_vllm_definitions_exactly():
    """Hand-made outcomes: mean, median, population std, linear p90/p99; TPOT excludes one-token requests."""
    outs = [L.Outcome(0, ok=True, ttft=0.1, itl=[0.02, 0.04], latency=0.16, output_tokens=3, prompt_tokens=5),
            L.Outcome(1, ok=True, ttft=0.3, itl=[], latency=0.3, output_tokens=1, prompt_tokens=7),
            L.Outcome(2, ok=True, ttft=0.2, itl=[0.05] * 4, latency=0.4, output_tokens=5, prompt_tokens=9),
            L.Outcome(3, error="HTTP 500: boom", prompt_tokens=11)]
    s = L.summarize(L.RunResult(outs, duration_s=2.0, max_concurrency=3, rate=1.0))
    tpots = np.array([(0.16 - 0.1) / 2, (0.4 - 0.2) / 4]) * 1e3
    assert s["tpot_mean_ms"] == pytest.approx(tpots.mean())
    assert s["tpot_std_ms"] == pytest.approx(tpots.std())
    ttfts = np.array([0.1, 0.3, 0.2]) * 1e3
    assert s["ttft_median_ms"] == pytest.approx(200.0)
    assert s["ttft_p90_ms"] == pytest.approx(np.percentile(ttfts, 90))
    assert s["ttft_p99_ms"] == pytest.approx(np.percentile(ttfts, 99))
    itls = np.array([0.02, 0.04] + [0.05] * 4) * 1e3
    assert s["itl_mean_ms"] == pytest.approx(itls.mean()) and s["itl_p99_ms"] == pytest.approx(np.percentile(itls, 99))
    assert s["e2el_mean_ms"] == pytest.approx((160 + 300 + 400) / 3)
    assert (s["completed"], s["failed"], s["refused"]) == (3, 1, 0)
    assert s["total_input_tokens"] == 5 + 7 + 9 and s["total_output_tokens"] == 9     # the failed one: none
    assert s["request_throughput"] == pytest.approx(1.5) and s["output_throughput"] == pytest.approx(4.5)
    assert s["total_token_throughput"] == pytest.approx((21 + 9) / 2)
    assert s["failures"] == '{"HTTP 500: boom": 1}'
    assert math.isnan(s["goodput_req_s"]) and math.isnan(s["goodput_frac"])       # no SLO, no goodput


def test_goodput_counts_every_request_sent_and_each_slo():
    outs = [L.Outcome(0, ok=True, ttft=0.1, itl=[0.01], latency=0.11, output_tokens=2),    # good
            L.Outcome(1, ok=True, ttft=0.6, itl=[0.01], latency=0.61, output_tokens=2),    # TTFT over
            L.Outcome(2, ok=True, ttft=0.1, itl=[0.2], latency=0.3, output_tokens=2),      # TPOT over
            L.Outcome(3, ok=True, ttft=0.5, itl=[], latency=0.5, output_tokens=1),         # TPOT 0: good
            L.Outcome(4, error="HTTP 503: full", refused=True),
            L.Outcome(5, error="stream ended before [DONE]")]
    r = L.RunResult(outs, duration_s=4.0, max_concurrency=6, rate=2.0)
    s = L.summarize(r, L.parse_slo("ttft_ms=500,tpot_ms=50"))
    assert s["goodput_req_s"] == pytest.approx(2 / 4.0)
    assert s["goodput_frac"] == pytest.approx(2 / 6)          # failed requests stay in the denominator
    assert (s["failed"], s["refused"]) == (2, 1)
    only_e2e = L.summarize(r, {"e2el_ms": 400})
    assert only_e2e["goodput_frac"] == pytest.approx(2 / 6)   # 0.11 s and 0.3 s are within 400 ms
    assert L.summarize(r, {"ttft_ms": 100})["goodput_frac"] == pytest.approx(2 / 6)   # the bound is inclusive


# ---- failures ---------------------------------------------------------------------------------------------------
def test_failures_are_counted_with_their_reasons():
    specs = [L.RequestSpec(0, "!500 please", 5), L.RequestSpec(1, "!429 please", 5), L.RequestSpec(2, "!close", 5),
             L.RequestSpec(3, "fine", 5), L.RequestSpec(4, "fine too", 5)]
    with StubServer(ttft_s=0.01, itl_s=0.01) as url:
        r = _run(url, specs)
    by = {o.index: o for o in r.outcomes}
    assert by[0].error == "HTTP 500: stub failure" and not by[0].refused and by[0].status == 500
    assert by[1].error == "HTTP 429: queue full" and by[1].refused
    assert not by[2].ok and by[2].error in ("stream ended before [DONE]", "stream broken mid-response: "
                                            "ClientPayloadError")
    assert by[3].ok and by[4].ok
    s = L.summarize(r, {"ttft_ms": 10_000})
    assert (s["requests"], s["completed"], s["failed"], s["refused"]) == (5, 2, 3, 1)
    assert s["goodput_frac"] == pytest.approx(2 / 5)
    assert set(eval_json(s["failures"])) == {by[0].error, by[1].error, by[2].error}


def eval_json(text):
    import json
    return json.loads(text)


def test_an_unreachable_server_is_a_failure_not_a_crash():
    from tests.openai_stub import free_port
    r = L.run_sync(L.parse_endpoint(f"http://127.0.0.1:{free_port()}"), _specs(2), math.inf, "tiny")
    assert [o.ok for o in r.outcomes] == [False, False]
    assert all("Connect" in (o.error or "") for o in r.outcomes), [o.error for o in r.outcomes]


def test_time_bound_cancels_and_counts_the_unfinished():
    with StubServer(ttft_s=0.0, itl_s=0.5) as url:
        r = _run(url, _specs(3, out=20), max_time_s=0.6)
    assert r.duration_s < 5
    assert all(not o.ok and o.error.startswith("unfinished at the time bound") for o in r.outcomes)


def test_duration_stops_the_arrivals():
    with StubServer(ttft_s=0.0, itl_s=0.0) as url:
        r = _run(url, _specs(50, out=2), rate=20.0, duration_s=0.5, seed=3)
    offsets = L.arrival_offsets(50, 20.0, 1.0, 3)
    expect = int((offsets <= 0.5).sum())
    assert len(r.outcomes) == expect and r.not_sent == 50 - expect and 0 < expect < 50
    assert r.offered_rate == pytest.approx((expect - 1) / offsets[expect - 1])
    assert L.summarize(r)["offered_rate"] == r.offered_rate


# ---- arrivals and the workload ----------------------------------------------------------------------------------
def test_poisson_arrivals_have_exponential_gaps():
    rate, n = 5.0, 40_000
    gaps = np.diff(L.arrival_offsets(n, rate, 1.0, seed=1))
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.03)
    assert gaps.var() == pytest.approx(1 / rate**2, rel=0.06)         # exponential: variance = mean^2
    assert L.arrival_offsets(n, rate, 1.0, seed=1)[0] == 0.0


@pytest.mark.parametrize("burstiness", [0.25, 4.0])
def test_gamma_burstiness_sets_the_gaps_spread(burstiness):
    rate, n = 2.0, 40_000
    gaps = np.diff(L.arrival_offsets(n, rate, burstiness, seed=2))
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.03)            # the rate does not depend on burstiness
    assert gaps.var() / gaps.mean() ** 2 == pytest.approx(1 / burstiness, rel=0.08)   # CV^2 = 1/shape


def test_arrivals_are_seeded_and_inf_sends_everything_at_once():
    a, b, c = (L.arrival_offsets(100, 3.0, 1.0, seed=s) for s in (7, 7, 8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.all(np.diff(a) >= 0)
    assert np.array_equal(L.arrival_offsets(10, math.inf), np.zeros(10))


def test_workload_lengths_and_corpus_prompts():
    from models.data import split
    held = split()[1].decode("utf-8", errors="replace")
    w = L.Workload(num_prompts=200, input_len=20, input_len_max=60, output_len=8, output_len_max=16, seed=5)
    specs = L.make_requests(w)
    assert [s.prompt for s in specs] == [s.prompt for s in L.make_requests(w)]          # seeded
    assert [s.prompt for s in specs] != [s.prompt for s in L.make_requests(L.Workload(**{**w.describe(), "seed": 6}))]
    lens = [len(s.prompt) for s in specs]
    assert min(lens) >= 20 and max(lens) <= 60 and len(set(lens)) > 10
    outs = [s.max_tokens for s in specs]
    assert min(outs) >= 8 and max(outs) <= 16 and len(set(outs)) > 3
    assert all(len(s.prompt.encode()) == len(s.prompt) for s in specs)                  # one byte per character
    # a slice of the held-out text (non-ASCII characters replaced by spaces)
    ascii_held = "".join(c if 32 <= ord(c) < 127 or c == "\n" else " " for c in held)
    assert all(s.prompt in ascii_held for s in specs[:20])
    fixed = L.make_requests(L.Workload(num_prompts=3, input_len=10, prompts="fixed"))
    assert {s.prompt for s in fixed} == {L.FIXED_TEXT[:10]}


# ---- input parsing ------------------------------------------------------------------------------------------------
def test_parse_rates_and_slo():
    assert L.parse_rates("1, 2.5,inf") == [1.0, 2.5, math.inf]
    for bad in ("0", "-1", "x", "nan", "", "1,,0"):
        with pytest.raises(L.LoadgenError):
            L.parse_rates(bad)
    assert L.parse_slo("ttft_ms=500,tpot_ms=50,e2el_ms=9000") == {"ttft_ms": 500, "tpot_ms": 50, "e2el_ms": 9000}
    for bad in ("ttft=5", "ttft_ms", "ttft_ms=x", "ttft_ms=0", "tpot_ms=-3", "e2el_ms=inf"):
        with pytest.raises(L.LoadgenError):
            L.parse_slo(bad)


def test_parse_endpoint_is_loopback_only_by_default():
    ep = L.parse_endpoint("http://127.0.0.1:8000/v1")
    assert (ep.base, ep.url) == ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1/completions")
    assert L.parse_endpoint("http://localhost:9/v1/chat/completions").api == "chat"
    assert L.parse_endpoint("http://[::1]:8000").url == "http://[::1]:8000/v1/completions"
    for bad in ("ftp://127.0.0.1:1", "127.0.0.1:8000", "http://10.0.0.5:8000", "http://example.com/v1",
                "http://127.0.0.1:99999"):
        with pytest.raises(L.LoadgenError):
            L.parse_endpoint(bad)
    assert L.parse_endpoint("http://10.0.0.5:8000", allow_remote=True).host == "10.0.0.5"


# ---- lengths drawn from the corpus (--output-len-dist / --input-len-dist corpus) ------------------------------------
def _corpus_workload(**kw):
    base = dict(num_prompts=3000, input_len=32, input_len_max=128, output_len=10, output_len_max=200,
                output_len_dist="corpus", context_len=256, seed=11)
    return L.Workload(**{**base, **kw})


def test_corpus_units_are_the_held_out_paragraphs():
    starts, lengths = L.corpus_units()
    text = L._source_text("corpus")
    assert len(starts) == len(lengths) == 271
    assert lengths.min() == 5 and lengths.max() == 1739 and 160 < lengths.mean() < 170     # heavy-tailed
    for s, n in zip(starts, lengths):
        unit = text[s:s + n]
        assert unit == unit.strip() and unit and "\n\n" not in unit            # one paragraph, whole
        assert text[s + n:s + n + 2].strip() == "" or s + n == len(text)         # it ends at a blank line
    # together they are the whole text but the blank lines between them
    assert sum(lengths) == len("".join(p.strip() for p in __import__("re").split(r"\n[ \t]*\n", text)))


def test_corpus_output_lengths_are_seeded_clipped_and_drawn_from_the_paragraphs():
    w = _corpus_workload()
    specs = L.make_requests(w)
    outs = np.array([s.max_tokens for s in specs])
    assert [s.max_tokens for s in L.make_requests(w)] == list(outs)                    # seeded
    raw = dict(output_len=1, output_len_max=2000, context_len=None, input_len_max=None)     # nothing clips
    assert [s.max_tokens for s in L.make_requests(_corpus_workload(**raw))] != \
        [s.max_tokens for s in L.make_requests(_corpus_workload(**raw, seed=12))]           # the seed draws
    caps = np.array([min(200, 256 - len(s.prompt)) for s in specs])
    assert (outs >= 10).all() and (outs <= caps).all()                                 # floor, cap, context
    assert all(len(s.prompt) + s.max_tokens <= 256 for s in specs)
    assert (outs == 10).any() and (outs == caps).any() and (outs == 200).any()          # all three bind somewhere
    units = L.corpus_units()[1]
    inside = outs[(outs > 10) & (outs < caps)]
    assert set(inside) <= set(units) and len(set(inside)) > 50                          # real paragraph lengths
    # the draw follows the paragraphs' distribution (3,000 draws: CDF within 0.04 where nothing clips)
    for x in (20, 50, 94, 120):
        assert abs((outs <= x).mean() - (units <= x).mean()) < 0.04, x
    # the prompts are those of the uniform workload with the same seed: only the output lengths differ
    uni = L.make_requests(L.Workload(**{**w.describe(), "output_len_dist": "uniform", "context_len": None}))
    assert [s.prompt for s in uni] == [s.prompt for s in specs]
    # --len-scale multiplies the paragraph length before the clip
    half = np.array([s.max_tokens for s in L.make_requests(_corpus_workload(len_scale=0.5, output_len=1))])
    full = np.array([s.max_tokens for s in L.make_requests(_corpus_workload(output_len=1, output_len_max=2000,
                                                                            context_len=None))])
    assert np.array_equal(half, np.clip(np.maximum(1, np.rint(full * 0.5)), 1,
                                        [min(200, 256 - len(s.prompt)) for s in specs]))


def test_the_uniform_default_is_unchanged():
    """The default draw (no --*-len-dist) is the one before the corpus distribution: same stream, same values."""
    w = L.Workload(num_prompts=50, input_len=32, input_len_max=128, output_len=32, output_len_max=64, seed=4)
    rng = np.random.default_rng([4, 1])
    ins, outs = rng.integers(32, 129, size=50), rng.integers(32, 65, size=50)
    specs = L.make_requests(w)
    assert [len(s.prompt) for s in specs] == list(ins) and [s.max_tokens for s in specs] == list(outs)
    text = L._source_text("corpus")
    assert [s.prompt for s in specs] == [text[(st := int(rng.integers(0, len(text) - k))):st + k] for k in ins]


def test_corpus_input_lengths_send_the_paragraphs_themselves():
    w = _corpus_workload(num_prompts=400, input_len=20, input_len_max=150, input_len_dist="corpus",
                         output_len_dist="uniform", output_len=16, output_len_max=None, context_len=None)
    specs = L.make_requests(w)
    assert [s.prompt for s in specs] == [s.prompt for s in L.make_requests(w)]
    lens = np.array([len(s.prompt) for s in specs])
    assert lens.min() == 20 and lens.max() == 150 and len(set(lens)) > 50
    text = L._source_text("corpus")
    starts, units = L.corpus_units()
    paragraphs = {text[s:s + n] for s, n in zip(starts, units)}
    whole = [s.prompt for s in specs if 20 < len(s.prompt) < 150]
    assert whole and all(p in paragraphs for p in whole)                  # unclipped: exactly a paragraph
    assert all(s.prompt in text for s in specs)
    assert {s.max_tokens for s in specs} == {16}


def test_workload_stats_report_what_is_sent():
    w = _corpus_workload(num_prompts=70)
    specs = L.make_requests(w)
    st = L.workload_stats(w, specs)
    outs = [s.max_tokens for s in specs]
    assert st["output"]["mean"] == pytest.approx(np.mean(outs)) and st["output"]["max"] == max(outs)
    assert st["output"]["p50"] == pytest.approx(np.percentile(outs, 50))
    assert st["output"]["p90"] == pytest.approx(np.percentile(outs, 90)) and st["output"]["min"] == min(outs)
    assert st["input"]["mean"] == pytest.approx(np.mean([len(s.prompt) for s in specs]))
    caps = [min(200, 256 - len(s.prompt)) for s in specs]
    assert st["output_at_cap"] == pytest.approx(np.mean([o == c for o, c in zip(outs, caps)]))
    # batches of 32, 32, 6 in send order: generating row-steps over computed ones
    b = [outs[:32], outs[32:64], outs[64:]]
    assert st["static32_row_util"] == pytest.approx(sum(map(sum, b)) / sum(len(x) * max(x) for x in b))
    u = st["corpus_units"]
    assert (u["count"], u["min"], u["max"], u["p50"]) == (271, 5, 1739, float(np.median(L.corpus_units()[1])))
    line = L.describe_lengths(w, st)
    assert "corpus paragraphs x1 clipped to [10, 200]" in line and f"mean {np.mean(outs):.0f}" in line
    assert f"p90 {np.percentile(outs, 90):.0f}" in line and f"max {max(outs)}" in line
    small = [L.RequestSpec(i, "x", n) for i, n in enumerate([1, 2, 3, 6])]
    assert L.workload_stats(L.Workload(output_len=1, output_len_max=6), small)["static32_row_util"] == 0.5
    assert "corpus_units" not in L.workload_stats(L.Workload(), L.make_requests(L.Workload(num_prompts=3)))


@pytest.mark.parametrize("kw,says", [
    (dict(output_len_dist="zipf"), "--output-len-dist must be one of uniform, corpus"),
    (dict(input_len_dist="corpus"), "--input-len-dist corpus needs --input-len-max"),
    (dict(output_len_dist="corpus"), "--output-len-dist corpus needs --output-len-max"),
    (dict(output_len_dist="corpus", output_len=50, output_len_max=20), "--output-len-max must be between"),
    (dict(output_len_dist="corpus", output_len_max=64, len_scale=0.0), "--len-scale"),
    (dict(output_len_dist="corpus", output_len_max=64, len_scale=float("nan")), "--len-scale"),
    (dict(input_len_max=128, context_len=150), "--context-len 150 leaves no room"),
])
def test_bad_length_options_are_one_line(kw, says):
    with pytest.raises(L.LoadgenError, match=says.replace("(", r"\(")):
        L.make_requests(L.Workload(num_prompts=4, **kw))


@pytest.mark.parametrize("args,says", [
    (["--output-len-dist", "zipf"], "invalid choice"),
    (["--output-len-dist", "corpus"], "needs --output-len-max"),
    (["--output-len-dist", "corpus", "--output-len", "64", "--output-len-max", "8"], "--output-len-max must be"),
    (["--context-len", "100", "--input-len-max", "128"], "leaves no room"),
    (["--len-scale", "-1", "--output-len-dist", "corpus", "--output-len-max", "90"], "--len-scale"),
])
def test_bad_length_options_on_the_command_line_exit_2(args, says, capsys, tmp_path):
    from inference import serve_bench
    try:
        code = serve_bench.main(args + ["--out", str(tmp_path / "run")])
    except SystemExit as exc:                  # argparse's own errors (an unknown choice): _Parser.error, exit 2
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and says in err, err
    assert not (tmp_path / "run").exists()


def test_a_corpus_length_sweep_records_its_lengths(tmp_path, capsys):
    import json
    from harness.results import load
    from inference import serve_bench
    out = tmp_path / "run"
    argv = ["--rates", "inf", "--num-prompts", "8", "--output-len", "2", "--output-len-max", "40",
            "--output-len-dist", "corpus", "--len-scale", "0.2", "--seed", "5", "--out", str(out)]
    with StubServer(ttft_s=0.0, itl_s=0.0) as url:
        assert serve_bench.main(["--endpoint", url] + argv) == 0
    w = L.Workload(num_prompts=8, output_len=2, output_len_max=40, output_len_dist="corpus", len_scale=0.2, seed=5)
    specs = L.make_requests(w)
    m = json.loads((out / "manifest.json").read_text())
    assert m["serve"]["lengths"] == json.loads(json.dumps(L.workload_stats(w, specs)))
    assert m["serve"]["workload"]["output_len_dist"] == "corpus" and m["serve"]["workload"]["len_scale"] == 0.2
    df = load(out)
    assert df["total_output_tokens"].iloc[0] == sum(s.max_tokens for s in specs)      # the stub honours max_tokens
    assert json.loads(df["config"].iloc[0])["lengths"]["output"]["max"] == max(s.max_tokens for s in specs)
    said = capsys.readouterr()
    assert "output corpus paragraphs x0.2 clipped to [2, 40]" in " ".join((said.out + said.err).split())
