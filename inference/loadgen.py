"""Load generator for OpenAI-compatible streaming endpoints (ours, vLLM, SGLang, TGI): arrivals, client, metrics.

Anchor: vLLM's `benchmark_serving` (vllm/benchmarks/serve.py); the metric definitions are the same, so figures
are comparable (read, not copied):
- arrivals: gaps drawn from a gamma distribution of shape `burstiness` and mean 1/rate (shape 1: Poisson,
  exponential gaps; < 1 burstier, > 1 more regular: the gaps' CV^2 is 1/burstiness); rate inf sends every
  request at t=0; `concurrency` caps the requests in flight (a semaphore taken after arrival, as vLLM does);
- TTFT: from sending the request to the first streamed chunk that carries a choice;
- ITL: every gap between two consecutive such chunks (one chunk per token on our server);
- E2E latency: from sending to the last such chunk;
- TPOT = (latency - TTFT) / (output tokens - 1), over requests with more than one output token;
- output tokens from the server's usage chunk when it sends one (`stream_options.include_usage`), else the
  count of chunks; input tokens likewise (else the prompt's length in characters: bytes for the byte-level
  tiny model);
- request / output-token / total-token throughput: over the wall time from the first send to the last answer;
- `offered_rate`: the rate the seeded draw actually offered, (requests sent - 1) / last send time (100 Poisson
  arrivals at rate 1 may well span 75 s: compare throughput with this, not with the nominal rate);
- goodput: requests meeting every SLO given (TTFT, TPOT, E2E; a one-token request has TPOT 0, as in vLLM)
  per second (`goodput_req_s`, vLLM's figure) and as a fraction of every request sent, failures included
  (`goodput_frac`);
- statistics: mean, median, std (population), p90, p99 (numpy's linear percentiles), in ms.
A request fails when the status is not 200 (429/503 are counted apart as `refused`: a clean refusal), when
the stream ends before `data: [DONE]` (a connection closed mid-stream), on an `error` event, a timeout, or a
connection error; each failure keeps its reason. Nothing here starts servers or writes files
(inference/serve_bench.py does): this module is the client and the arithmetic.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable
from urllib.parse import urlsplit

import numpy as np

SLO_KEYS = ("ttft_ms", "tpot_ms", "e2el_ms")
METRICS = ("ttft", "tpot", "itl", "e2el")
STATS = ("mean", "median", "std", "p90", "p99")
REFUSED = (429, 503)                        # a full queue: a clean refusal, not an error


class LoadgenError(ValueError):
    """Bad input (a rate, an SLO, an endpoint): one line for the user, exit 2."""


# ---- input parsing --------------------------------------------------------------------------------------------
def parse_rates(text: str) -> list[float]:
    """'1,2,4,inf' -> [1.0, 2.0, 4.0, inf]; every rate > 0 (requests per second), inf: all at once."""
    rates = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            r = float(part)
        except ValueError:
            raise LoadgenError(f"--rates: {part!r} is not a number (requests per second, or inf)") from None
        if math.isnan(r) or r <= 0:
            raise LoadgenError(f"--rates: {part!r} must be > 0 (requests per second, or inf)")
        rates.append(r)
    if not rates:
        raise LoadgenError("--rates: give at least one rate, e.g. 1,2,4,inf")
    return rates


def parse_slo(text: str | None) -> dict[str, float]:
    """'ttft_ms=500,tpot_ms=50' -> {'ttft_ms': 500.0, 'tpot_ms': 50.0}; names from SLO_KEYS, values > 0."""
    if not text:
        return {}
    slo: dict[str, float] = {}
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or name not in SLO_KEYS:
            raise LoadgenError(f"--slo: {part!r} is not NAME=MS with NAME one of {', '.join(SLO_KEYS)}")
        try:
            v = float(value)
        except ValueError:
            raise LoadgenError(f"--slo: {name} value {value!r} is not a number of milliseconds") from None
        if not (math.isfinite(v) and v > 0):
            raise LoadgenError(f"--slo: {name} must be a finite number of milliseconds > 0, not {value!r}")
        slo[name] = v
    return slo


LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible server: its base URL (scheme://host:port) and the API to call."""
    base: str
    host: str
    port: int
    api: str = "completions"                 # or "chat"

    @property
    def url(self) -> str:
        return f"{self.base}/v1/completions" if self.api == "completions" else f"{self.base}/v1/chat/completions"


def parse_endpoint(url: str, api: str = "completions", allow_remote: bool = False) -> Endpoint:
    """http(s)://host:port[/v1[/completions|/chat/completions]] -> Endpoint; loopback only unless allowed."""
    if api not in ("completions", "chat"):
        raise LoadgenError(f"--api must be completions or chat, not {api!r}")
    try:
        parts = urlsplit(str(url).strip())
        port = parts.port
    except ValueError as exc:
        raise LoadgenError(f"--endpoint {url!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LoadgenError(f"--endpoint {url!r} is not an http(s)://HOST:PORT URL")
    host = parts.hostname
    if not allow_remote and not is_loopback(host):
        raise LoadgenError(f"--endpoint {url!r}: host {host} is not a loopback address; load tests send traffic "
                           "to this machine only unless --allow-remote is given")
    path = parts.path.rstrip("/")
    if path.endswith("/chat/completions"):
        api, path = "chat", path[: -len("/chat/completions")]
    elif path.endswith("/completions"):
        api, path = "completions", path[: -len("/completions")]
    if path.endswith("/v1"):
        path = path[:-3]
    port = port or (443 if parts.scheme == "https" else 80)
    shown = f"[{host}]" if ":" in host else host
    return Endpoint(f"{parts.scheme}://{shown}:{port}{path}", host, port, api)


async def reachable(ep: Endpoint, timeout_s: float = 3.0) -> str | None:
    """None when a TCP connection to the endpoint opens, else why not (one line)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(ep.host, ep.port), timeout_s)
    except (OSError, asyncio.TimeoutError) as exc:
        return f"cannot reach {ep.base}: {type(exc).__name__}: {exc or 'timed out'}"
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return None


async def served_model(ep: Endpoint, timeout_s: float = 10.0) -> str | None:
    """The first model id of GET /v1/models (None when the server has no such route)."""
    import aiohttp
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s:
            async with s.get(f"{ep.base}/v1/models") as r:
                if r.status != 200:
                    return None
                data = await r.json(content_type=None)
                return str(data["data"][0]["id"])
    except Exception:   # noqa: BLE001 - an optional route: the caller falls back to --model
        return None


# ---- the workload ---------------------------------------------------------------------------------------------
LEN_DISTS = ("uniform", "corpus")
# Named length workloads (`bench.py serve --lengths`, suite `streaming`): the README tables' two. narrow: 32-64
# output tokens, uniform (a static batch of 32 keeps ~77% of its row-steps generating); corpus: max_tokens = a
# held-out paragraph's length, capped by the tiny model's 256-token context (mean 92, p90 200; ~43%).
LENGTH_PRESETS: dict[str, dict[str, Any]] = {
    "narrow": dict(input_len=32, input_len_max=128, output_len=32, output_len_max=64),
    "corpus": dict(input_len=32, input_len_max=128, output_len=1, output_len_max=224, output_len_dist="corpus",
                   context_len=256),
}


@dataclass
class Workload:
    """What to send: `num_prompts` requests; seeded. Lengths per `*_len_dist`:
    - "uniform" (the default, as before): fixed `*_len`, or drawn uniformly in [len, len_max] when len_max is given;
    - "corpus": the length of a real text unit of the held-out corpus (a paragraph, `corpus_units`) drawn at
      random, times `len_scale`, clipped to [len, len_max] (the floor and the cap; len_max required); corpus
      prompts are then the drawn paragraph itself (from its start, cut or extended to the clipped length).
    `context_len` (prompt + max_tokens, the model's context) caps each request's max_tokens at
    context_len - its prompt length, whatever the distribution."""
    num_prompts: int = 50
    input_len: int = 32
    input_len_max: int | None = None
    output_len: int = 32
    output_len_max: int | None = None
    prompts: str = "corpus"                  # "corpus": held-out text of models.data; "fixed": one repeated text
    seed: int = 0
    input_len_dist: str = "uniform"
    output_len_dist: str = "uniform"
    len_scale: float = 1.0                   # corpus lengths: unit length x this, then clipped
    context_len: int | None = None

    def check(self) -> None:
        if not 1 <= self.num_prompts <= 1_000_000:
            raise LoadgenError(f"--num-prompts must be between 1 and 1000000, not {self.num_prompts}")
        for name, lo, hi, dist in (("input", self.input_len, self.input_len_max, self.input_len_dist),
                                   ("output", self.output_len, self.output_len_max, self.output_len_dist)):
            if dist not in LEN_DISTS:
                raise LoadgenError(f"--{name}-len-dist must be one of {', '.join(LEN_DISTS)}, not {dist!r}")
            if not 1 <= lo <= 100_000:
                raise LoadgenError(f"--{name}-len must be between 1 and 100000, not {lo}")
            if hi is not None and not lo <= hi <= 100_000:
                raise LoadgenError(f"--{name}-len-max must be between --{name}-len ({lo}) and 100000, not {hi}")
            if dist == "corpus" and hi is None:
                raise LoadgenError(f"--{name}-len-dist corpus needs --{name}-len-max (the cap: corpus paragraphs "
                                   "run to 1,739 characters)")
        if not (isinstance(self.len_scale, (int, float)) and math.isfinite(self.len_scale)
                and 0 < self.len_scale <= 1000):
            raise LoadgenError(f"--len-scale must be a number in (0, 1000], not {self.len_scale!r}")
        if self.context_len is not None:
            longest = self.input_len_max or self.input_len
            if not 2 <= self.context_len <= 10_000_000 or longest + self.output_len > self.context_len:
                raise LoadgenError(f"--context-len {self.context_len} leaves no room for the longest prompt "
                                   f"({longest}) plus --output-len ({self.output_len}), the floor of max_tokens")
        if self.prompts not in ("corpus", "fixed"):
            raise LoadgenError(f"--prompts must be corpus or fixed, not {self.prompts!r}")

    def describe(self) -> dict[str, Any]:
        return dict(num_prompts=self.num_prompts, input_len=self.input_len, input_len_max=self.input_len_max,
                    output_len=self.output_len, output_len_max=self.output_len_max, prompts=self.prompts,
                    seed=self.seed, input_len_dist=self.input_len_dist, output_len_dist=self.output_len_dist,
                    len_scale=self.len_scale, context_len=self.context_len)


@dataclass(frozen=True)
class RequestSpec:
    index: int
    prompt: str
    max_tokens: int


FIXED_TEXT = "The quick brown fox jumps over the lazy dog. "


@lru_cache(maxsize=2)
def _source_text(kind: str) -> str:
    if kind == "fixed":
        return FIXED_TEXT * 64
    from models.data import split
    held = split()[1].decode("utf-8", errors="replace")
    # ASCII only, so that one character is one byte (one token of the byte-level tiny model)
    return "".join(c if 32 <= ord(c) < 127 or c == "\n" else " " for c in held)


@lru_cache(maxsize=1)
def corpus_units() -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of the text units the corpus distribution draws from: the paragraphs of the held-out
    text (runs between blank lines, whitespace stripped at both ends; 271 of them, 5-1,739 characters, mean 166,
    median 94: heavy-tailed, as answers are). Offsets and lengths in characters of `_source_text("corpus")`."""
    text = _source_text("corpus")
    starts, lengths, pos = [], [], 0
    for m in [*re.finditer(r"\n[ \t]*\n", text), None]:
        end = m.start() if m else len(text)
        chunk = text[pos:end]
        body = chunk.strip()
        if body:
            starts.append(pos + len(chunk) - len(chunk.lstrip()))
            lengths.append(len(body))
        pos = m.end() if m else len(text)
    return np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)


def _corpus_lengths(rng: np.random.Generator, n: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """n units drawn with replacement: (their indices, their lengths x scale, rounded, at least 1)."""
    starts, lengths = corpus_units()
    idx = rng.integers(0, len(lengths), size=n)
    return idx, np.maximum(1, np.rint(lengths[idx] * scale)).astype(np.int64)


def make_requests(w: Workload) -> list[RequestSpec]:
    """The requests of a workload: prompts are slices of the text at seeded offsets (or, with input_len_dist
    corpus, the drawn paragraphs), of the drawn lengths. The uniform draws and the offsets come from the same
    stream whatever the distributions (the corpus draws have their own streams), so a corpus-output workload
    sends exactly the prompts of the uniform one with the same seed."""
    w.check()
    rng = np.random.default_rng([w.seed, 1])
    text = _source_text(w.prompts)
    n = w.num_prompts
    ins = rng.integers(w.input_len, (w.input_len_max or w.input_len) + 1, size=n)
    outs = rng.integers(w.output_len, (w.output_len_max or w.output_len) + 1, size=n)
    unit_start = None
    if w.input_len_dist == "corpus":
        idx, raw = _corpus_lengths(np.random.default_rng([w.seed, 4]), n, w.len_scale)
        ins = np.clip(raw, w.input_len, w.input_len_max)
        unit_start = corpus_units()[0][idx] if w.prompts == "corpus" else None
    if w.output_len_dist == "corpus":
        _, raw = _corpus_lengths(np.random.default_rng([w.seed, 3]), n, w.len_scale)
        outs = np.clip(raw, w.output_len, w.output_len_max)
    if w.context_len is not None:
        outs = np.minimum(outs, w.context_len - ins)          # check(): never below the floor output_len
    specs = []
    for i in range(n):
        k = int(ins[i])
        while len(text) < k + 1:
            text = text + text
        start = 0 if w.prompts == "fixed" else int(rng.integers(0, len(text) - k))
        if unit_start is not None:
            start = min(int(unit_start[i]), len(text) - k)
        specs.append(RequestSpec(i, text[start:start + k], int(outs[i])))
    return specs


def length_stats(values: Iterable[int]) -> dict[str, float]:
    """mean, p50, p90, p99, min, max of a list of lengths (numpy's linear percentiles)."""
    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        return {k: math.nan for k in ("mean", "p50", "p90", "p99", "min", "max")}
    return dict(mean=float(x.mean()), p50=float(np.percentile(x, 50)), p90=float(np.percentile(x, 90)),
                p99=float(np.percentile(x, 99)), min=float(x.min()), max=float(x.max()))


def workload_stats(w: Workload, specs: list[RequestSpec]) -> dict[str, Any]:
    """What the run sends, to print and to keep in the manifest: the prompt and max_tokens lengths drawn (mean,
    p50, p90, p99, min, max), how many max_tokens sit at their cap, the tokens a static batch of 32 would compute
    over those it generates (mean over max per batch of 32 in send order), and for a corpus distribution the
    source's own statistics (the paragraphs' lengths x len_scale, before clipping)."""
    outs = [s.max_tokens for s in specs]
    caps = [min(w.output_len_max or w.output_len, (w.context_len or 10**9) - len(s.prompt)) for s in specs]
    batches = [outs[i:i + 32] for i in range(0, len(outs), 32)]
    st: dict[str, Any] = dict(input=length_stats(len(s.prompt) for s in specs), output=length_stats(outs),
                              output_at_cap=float(np.mean([o >= c for o, c in zip(outs, caps)])),
                              static32_row_util=float(sum(sum(b) for b in batches)
                                                      / sum(len(b) * max(b) for b in batches)))
    if "corpus" in (w.input_len_dist, w.output_len_dist):
        units = np.maximum(1, np.rint(corpus_units()[1] * w.len_scale))
        st["corpus_units"] = dict(kind="paragraphs of the held-out text", count=int(units.size),
                                  scale=w.len_scale, **length_stats(units))
    return st


def describe_lengths(w: Workload, st: dict[str, Any]) -> str:
    """One line for the console: what the lengths are and their statistics."""
    def one(name: str, dist: str, lo: int, hi: int | None) -> str:
        s = st[name]
        how = (f"corpus paragraphs x{w.len_scale:g} clipped to [{lo}, {hi}]" if dist == "corpus"
               else f"uniform [{lo}, {hi}]" if hi else f"fixed {lo}")
        return f"{name} {how}: mean {s['mean']:.0f}, p50 {s['p50']:.0f}, p90 {s['p90']:.0f}, max {s['max']:.0f}"
    cap = f", context {w.context_len}" if w.context_len else ""
    return (one("input", w.input_len_dist, w.input_len, w.input_len_max) + "; "
            + one("output", w.output_len_dist, w.output_len, w.output_len_max)
            + f" ({st['output_at_cap']:.0%} at the cap{cap}; a static batch of 32 would generate in "
            f"{st['static32_row_util']:.0%} of its row-steps)")


def arrival_offsets(n: int, rate: float, burstiness: float = 1.0, seed: int = 0) -> np.ndarray:
    """Send times (s after the start) of n requests: gamma gaps of shape `burstiness`, mean 1/rate; the first
    request at 0. rate inf: all at 0."""
    if not burstiness > 0 or not math.isfinite(burstiness):
        raise LoadgenError(f"--burstiness must be a finite number > 0, not {burstiness!r}")
    if not rate > 0:
        raise LoadgenError(f"request rate must be > 0, not {rate!r}")
    if math.isinf(rate):
        return np.zeros(n)
    rng = np.random.default_rng([seed, 2])
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n)
    return np.concatenate([[0.0], np.cumsum(gaps[:-1])]) if n else np.zeros(0)


# ---- one request ----------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One request as the client saw it; times in seconds."""
    index: int
    ok: bool = False
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    latency: float | None = None
    output_tokens: int = 0
    prompt_tokens: int = 0
    start: float = 0.0                       # send time, s after the run's start
    error: str | None = None
    refused: bool = False                    # 429 / 503: the server declined cleanly
    status: int | None = None
    text: str = ""

    @property
    def tpot(self) -> float | None:
        """(latency - TTFT) / (output tokens - 1): None for failed or one-token requests."""
        if not self.ok or self.output_tokens <= 1:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


def payload(spec: RequestSpec, api: str, model: str) -> dict[str, Any]:
    body: dict[str, Any] = dict(model=model, max_tokens=spec.max_tokens, temperature=0.0, stream=True,
                                ignore_eos=True, stream_options={"include_usage": True})
    if api == "chat":
        body["messages"] = [{"role": "user", "content": spec.prompt}]
    else:
        body["prompt"] = spec.prompt
    return body


def _error_text(status: int, body: str) -> str:
    try:
        err = json.loads(body).get("error")
        msg = err.get("message") if isinstance(err, dict) else err
    except (ValueError, AttributeError):
        msg = body.strip()
    msg = " ".join(str(msg or "").split())[:160]
    return f"HTTP {status}" + (f": {msg}" if msg else "")


async def send(session, ep: Endpoint, spec: RequestSpec, model: str, t0: float) -> Outcome:
    """POST one streaming request and time its chunks (perf_counter at each line's arrival)."""
    import aiohttp
    out = Outcome(spec.index, prompt_tokens=len(spec.prompt))
    st = time.perf_counter()
    out.start = st - t0
    last = st
    usage_out = None
    done = False
    texts: list[str] = []
    try:
        async with session.post(ep.url, json=payload(spec, ep.api, model)) as resp:
            out.status = resp.status
            if resp.status != 200:
                out.error = _error_text(resp.status, await resp.text())
                out.refused = resp.status in REFUSED
                return out
            async for raw in resp.content:             # one line at a time; SSE events are `data: ...` lines
                now = time.perf_counter()
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue                           # blank separators, `: keep-alive` comments, `event:`
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                try:
                    obj = json.loads(data)
                except ValueError:
                    out.error = f"malformed event: {data[:80]!r}"
                    return out
                if obj.get("error"):
                    out.error = "error event: " + _error_text(200, json.dumps(obj))[len("HTTP 200: "):]
                    return out
                choices = obj.get("choices") or []
                if choices:
                    c = choices[0]
                    texts.append(c.get("text") or (c.get("delta") or {}).get("content") or "")
                    if out.ttft is None:
                        out.ttft = now - st
                    else:
                        out.itl.append(now - last)
                    last = now
                usage = obj.get("usage")
                if usage:
                    usage_out = usage
    except asyncio.TimeoutError:
        out.error = "timed out (--request-timeout)"
        return out
    except aiohttp.ClientPayloadError as exc:
        out.error = f"stream broken mid-response: {type(exc).__name__}"
        return out
    except aiohttp.ClientError as exc:
        out.error = f"{type(exc).__name__}: {str(exc)[:120]}"
        return out
    except ConnectionError as exc:
        out.error = f"{type(exc).__name__}: {str(exc)[:120]}"
        return out
    out.text = "".join(texts)
    n_chunks = len(out.itl) + (out.ttft is not None)
    if usage_out:
        out.output_tokens = int(usage_out.get("completion_tokens") or n_chunks)
        out.prompt_tokens = int(usage_out.get("prompt_tokens") or out.prompt_tokens)
    else:
        out.output_tokens = n_chunks
    if not done:
        out.error = "stream ended before [DONE]"
    elif out.ttft is None:
        out.error = "no token streamed before [DONE]"
    else:
        out.ok = True
        out.latency = last - st
    return out


# ---- one run at one rate --------------------------------------------------------------------------------------
@dataclass
class RunResult:
    outcomes: list[Outcome]
    duration_s: float
    max_concurrency: int
    rate: float
    not_sent: int = 0                        # requests left unsent when --duration ended the arrivals
    offered_rate: float = math.nan           # the seeded draw's own rate: (sent - 1) / last send time


async def run(ep: Endpoint, specs: list[RequestSpec], rate: float, model: str, burstiness: float = 1.0,
              concurrency: int | None = None, seed: int = 0, duration_s: float | None = None,
              request_timeout_s: float = 120.0, max_time_s: float = 600.0) -> RunResult:
    """Send `specs` at `rate` (gamma arrivals) with at most `concurrency` in flight; stop sending after
    `duration_s`; cancel what is still running after `max_time_s` (those count as failed)."""
    import aiohttp
    offsets = arrival_offsets(len(specs), rate, burstiness, seed)
    sem = asyncio.Semaphore(concurrency) if concurrency else None
    state = {"in_flight": 0, "max": 0}
    outcomes: dict[int, Outcome] = {}

    async def one(session, spec: RequestSpec, t0: float) -> None:
        if sem is not None:
            await sem.acquire()
        state["in_flight"] += 1
        state["max"] = max(state["max"], state["in_flight"])
        try:
            outcomes[spec.index] = await send(session, ep, spec, model, t0)
        finally:
            state["in_flight"] -= 1
            if sem is not None:
                sem.release()

    timeout = aiohttp.ClientTimeout(total=request_timeout_s)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        t0 = time.perf_counter()
        tasks = []

        async def arrivals() -> None:
            for spec, off in zip(specs, offsets):
                if duration_s is not None and off > duration_s:
                    return
                delay = t0 + off - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.ensure_future(one(session, spec, t0)))

        async def everything() -> None:
            await arrivals()
            if tasks:
                await asyncio.gather(*tasks)

        try:
            await asyncio.wait_for(everything(), max_time_s)
        except asyncio.TimeoutError:
            pass                                   # the unfinished ones are cancelled by wait_for / below
        for t in tasks:
            if not t.done():
                t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        duration = time.perf_counter() - t0
    sent = specs[: len(tasks)]                      # in arrival order; the rest was never sent
    result = [outcomes.get(s.index) or Outcome(s.index, error=f"unfinished at the time bound ({max_time_s:g} s)",
                                                   prompt_tokens=len(s.prompt)) for s in sent]
    n = len(tasks)
    offered = (n - 1) / offsets[n - 1] if n > 1 and offsets[n - 1] > 0 else math.inf if n > 1 else math.nan
    return RunResult(result, duration, state["max"], rate, len(specs) - len(tasks), offered)


def run_sync(*args, **kwargs) -> RunResult:
    return asyncio.run(run(*args, **kwargs))


# ---- the figures ----------------------------------------------------------------------------------------------
def stats_ms(values_s: Iterable[float]) -> dict[str, float]:
    """mean, median, std, p90, p99 in ms (NaN when there is no value)."""
    x = np.asarray(list(values_s), dtype=np.float64) * 1e3
    if x.size == 0:
        return {s: math.nan for s in STATS}
    return dict(mean=float(x.mean()), median=float(np.median(x)), std=float(x.std()),
                p90=float(np.percentile(x, 90)), p99=float(np.percentile(x, 99)))


def is_good(o: Outcome, slo: dict[str, float]) -> bool:
    """A completed request within every SLO given (a one-token request has TPOT 0, as vLLM counts it)."""
    if not o.ok:
        return False
    got = {"ttft_ms": o.ttft * 1e3, "tpot_ms": (o.tpot or 0.0) * 1e3, "e2el_ms": o.latency * 1e3}
    return all(got[k] <= v for k, v in slo.items())


def summarize(r: RunResult, slo: dict[str, float] | None = None) -> dict[str, Any]:
    """The metric columns of one row (one rate): vLLM benchmark_serving's figures, with failures' reasons."""
    slo = slo or {}
    ok = [o for o in r.outcomes if o.ok]
    dur = r.duration_s if r.duration_s > 0 else math.nan
    series = {"ttft": [o.ttft for o in ok], "tpot": [o.tpot for o in ok if o.tpot is not None],
              "itl": [g for o in ok for g in o.itl], "e2el": [o.latency for o in ok]}
    row: dict[str, Any] = {}
    for m in METRICS:
        for s, v in stats_ms(series[m]).items():
            row[f"{m}_{s}_ms"] = v
    n_in = sum(o.prompt_tokens for o in ok)
    n_out = sum(o.output_tokens for o in ok)
    failed = [o for o in r.outcomes if not o.ok]
    reasons = Counter(o.error or "unknown" for o in failed)
    good = sum(is_good(o, slo) for o in r.outcomes) if slo else None
    row.update(
        requests=len(r.outcomes), completed=len(ok), failed=len(failed),
        refused=sum(o.refused for o in failed), not_sent=r.not_sent,
        failures=json.dumps(dict(reasons.most_common()), sort_keys=False) if reasons else None,
        duration_s=r.duration_s, total_input_tokens=n_in, total_output_tokens=n_out,
        request_throughput=len(ok) / dur, output_throughput=n_out / dur, total_token_throughput=(n_in + n_out) / dur,
        max_concurrency=r.max_concurrency, request_rate=r.rate, offered_rate=r.offered_rate,
        slo=json.dumps(slo) if slo else None,
        goodput_req_s=(good / dur) if good is not None else math.nan,
        goodput_frac=(good / len(r.outcomes)) if good is not None and r.outcomes else math.nan,
    )
    return row


METRIC_COLUMNS = [f"{m}_{s}_ms" for m in METRICS for s in STATS] + [
    "requests", "completed", "failed", "refused", "not_sent", "failures", "duration_s", "total_input_tokens",
    "total_output_tokens", "request_throughput", "output_throughput", "total_token_throughput",
    "max_concurrency", "request_rate", "offered_rate", "slo", "goodput_req_s", "goodput_frac"]
