"""An OpenAI-compatible streaming server over any of the engines (FastAPI + uvicorn).

    python -m inference.server --model tiny --port 8000 --engine ours|hf-static|hf-cb [--host 127.0.0.1]
        [--max-num-seqs N] [--num-blocks B] [--block-size 16] [--max-tokens-per-step T] [--max-queue Q]
        [--preemption recompute|swap] [--threads K] [--max-model-len L] [--decode auto|cpp|torch]

Endpoints: POST /v1/completions, POST /v1/chat/completions (OpenAI's request and response JSON; `stream`
sends server-sent events, one per generated token, then `data: [DONE]`), GET /health (200 {"status": "ok"}
once the engine runs, 503 before), GET /metrics (Prometheus text, inference/metrics.py), GET /v1/models.
Errors use OpenAI's JSON {"error": {"message", "type", "code"}}: 400 for malformed JSON, bad fields, a prompt
that does not fit the context; 429 when the engine's queue is full; 404 for an unknown path. A client that
disconnects (mid-stream or while waiting for a non-streamed answer) cancels its request: the engine drops it
at its next step and frees its KV blocks.

The engine runs in its own thread and owns the model; a request talks to it through `engine.submit` (a
thread-safe inbox) and receives its tokens in an asyncio.Queue, handed to the loop in batches (`_Deliver`).
It binds to the loopback address unless --host says otherwise. Ready line on stdout:
`kbench server ready on http://HOST:PORT` (PORT is the bound one: --port 0 picks a free port).
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import json
import socket
import sys
import threading
import time
from contextlib import asynccontextmanager
from typing import Any, Callable, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from inference.requests import Event, QueueFull, RequestError, SamplingParams

READY = "kbench server ready on http://{host}:{port}"
WARNING = "warning: "       # a line the server prints at start about what it serves (e.g. torch decode fallback)
DISCONNECT_POLL_S = 0.25
HANDOFF_S = 0.05            # the longest an engine step waits for the event loop to send its tokens
HANDOFF_HOPS = 8            # at most this many loop iterations per wait


# ---- request bodies (pydantic: a violation is a 400 in OpenAI's error JSON, never a 422 or a 500) --------------
class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0)           # OpenAI's default; 0 is greedy
    seed: int | None = None
    stream: bool = False
    ignore_eos: bool = False
    stop: str | list[str] | None = None
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1)

    def params(self) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature, seed=self.seed,
                              stop=tuple(stop), ignore_eos=self.ignore_eos)


class CompletionBody(_Common):
    prompt: str | list[str]

    def text(self) -> str:
        if isinstance(self.prompt, list):
            if len(self.prompt) != 1:
                raise RequestError(f"prompt: a string or a list of ONE string, got a list of {len(self.prompt)}")
            return self.prompt[0]
        return self.prompt


class Message(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class ChatBody(_Common):
    messages: list[Message] = Field(min_length=1)

    def text(self) -> str:
        """The template: one role-prefixed line per message, then the assistant's prefix."""
        return "".join(f"{m.role}: {m.content}\n" for m in self.messages) + "assistant: "


def error(status: int, message: str, code: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": code, "param": None}}, status_code=status)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors()[:3]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
    return "; ".join(parts) or "invalid request"


# ---- the app ------------------------------------------------------------------------------------------------
def _handoff(loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """The engine thread's `step_done`: wait (at most HANDOFF_S) until the event loop has run the stream tasks
    that the step's events woke, i.e. written that step's tokens to their sockets.

    Without it the engine thread ran step after step holding the GIL, the loop thread got it only now and
    then, and each time sent several steps' tokens of a stream at once: ITL p10 0.01 ms against a TPOT of
    5-11 ms, 29-36% of the gaps under 1 ms even with one client (scripts/itl_probe.py, docs/streaming.md)."""
    def step_done() -> None:
        done = threading.Event()
        hops = [0]

        def hop() -> None:
            # FIFO: the first hop runs after the step's put_nowait callbacks; each further hop after what the
            # previous iteration scheduled (the woken stream tasks, their sends); done once nothing else is
            # ready (asyncio's ready queue; a loop without one, e.g. uvloop: a fixed number of iterations)
            ready = getattr(loop, "_ready", None)
            hops[0] += 1
            if hops[0] < HANDOFF_HOPS and (ready is None or len(ready) > 0):
                loop.call_soon(hop)
            else:
                done.set()
        try:
            loop.call_soon_threadsafe(hop)
        except RuntimeError:                           # the loop is closed: nothing to wait for
            return
        done.wait(HANDOFF_S)
    return step_done


class _Deliver:
    """Events from the engine's thread into the streams' queues on the event loop, one wake-up per batch.

    The first event after a flush schedules the next flush (`call_soon_threadsafe`: a write to the loop's
    self-pipe, and the loop thread then contends for the GIL); the events that follow before that flush runs join
    its batch. A step of 32 streams made 32 self-pipe writes and as many chances for the loop's thread to take
    the GIL from the engine's mid-step (docs/streaming.md, "Where ours' time goes": with the JSON template of
    `_stream`, the server's CPU per corpus run 1.45 -> 1.26 s, medians of 3 alternated runs).
    Nothing waits for a step's end, so an engine that emits outside its steps (a cancellation, shutdown) is served
    the same way. Order is kept: one FIFO list, flushed whole, in the loop's FIFO."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.pending: list[tuple[asyncio.Queue, Event]] = []
        self.lock = threading.Lock()

    def __call__(self, q: asyncio.Queue, ev: Event) -> None:         # the engine's thread
        with self.lock:
            self.pending.append((q, ev))
            first = len(self.pending) == 1
        if first:
            try:
                self.loop.call_soon_threadsafe(self._flush)
            except RuntimeError:                                      # the loop is closed: nobody reads
                pass

    def _flush(self) -> None:                                         # the loop's thread
        with self.lock:
            batch, self.pending = self.pending, []
        for q, ev in batch:
            q.put_nowait(ev)


def create_app(engine, model_name: str | None = None, start_engine: bool = True, handoff: bool = True) -> FastAPI:
    """The FastAPI app over `engine` (ours or a baseline). Its lifespan starts the engine's thread and stops it.
    `handoff`: the engine waits after each step until the loop has sent that step's tokens (`_handoff`)."""
    name = model_name or getattr(engine.lm, "name", "model")
    state = {"ready": False}
    delivers: dict[asyncio.AbstractEventLoop, _Deliver] = {}      # one per event loop serving this app

    @asynccontextmanager
    async def lifespan(app):
        if handoff and hasattr(engine, "step_done"):
            engine.step_done = _handoff(asyncio.get_running_loop())
        if start_engine:
            await asyncio.to_thread(engine.start)
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            if hasattr(engine, "step_done"):
                engine.step_done = None
            await asyncio.to_thread(engine.stop)

    app = FastAPI(title="kbench", lifespan=lifespan)
    app.state.engine = engine
    invalid = _invalid_counter(engine)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request, exc):
        invalid.inc()
        return error(400, _validation_message(exc), "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error(exc.status_code, str(exc.detail), code)

    @app.get("/health")
    async def health():
        if not state["ready"]:
            return JSONResponse({"status": "starting"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        return Response(generate_latest(engine.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "kbench",
                                           "max_model_len": engine.max_model_len}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, request: Request):
        return await _serve(body, request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatBody, request: Request):
        return await _serve(body, request, chat=True)

    async def _serve(body: _Common, request: Request, chat: bool):
        try:
            params = body.params()
            text = body.text()
            ids = engine.lm.encode(text).tolist() if text else []
            engine.check(len(ids), params)
        except RequestError as exc:
            invalid.inc()
            return error(400, str(exc), "invalid_request")
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[Event] = asyncio.Queue()
        deliver = delivers.get(loop)
        if deliver is None:
            deliver = delivers[loop] = _Deliver(loop)
        try:
            handle = engine.submit(ids, params, functools.partial(deliver, q))
        except QueueFull as exc:
            return error(429, str(exc), "queue_full", "rate_limit_error")
        except RequestError as exc:
            invalid.inc()
            return error(400, str(exc), "invalid_request")
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{handle.rid}"
        created = int(time.time())
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_stream(q, handle, rid, created, chat, usage, len(ids)),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _whole(q, handle, request, rid, created, chat, len(ids))

    def _usage(prompt: int, completion: int) -> dict:
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _chunk(rid, created, chat, text, reason, first) -> dict:
        if chat:
            delta: dict[str, Any] = {"content": text}
            if first:
                delta = {"role": "assistant", **delta}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": name,
                    "choices": [choice]}
        return {"id": rid, "object": "text_completion", "created": created, "model": name,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}]}

    async def _stream(q, handle, rid, created, chat, include_usage, prompt_len):
        finished = False
        count = 0
        first = True
        # a middle chunk (not the first, no finish reason) differs from the next only in its text: its JSON is
        # made once around a placeholder and each token's text is escaped into it (json.dumps of the whole dict
        # per token was a third of the server's own time per token; the same bytes: tested)
        parts = json.dumps(_chunk(rid, created, chat, "\x00", None, False)).split('"\\u0000"')
        fast = len(parts) == 2                       # else (a placeholder in the id or the model name) per token
        pre, post = "data: " + parts[0], (parts[-1] + "\n\n")
        try:
            while True:
                ev = await q.get()
                if ev.token is not None:
                    count += 1
                if ev.finished and ev.finish_reason == "error":
                    finished = True
                    err = {"error": {"message": ev.error or "engine error", "type": "server_error",
                                     "code": "engine_error", "param": None}}
                    yield f"data: {json.dumps(err)}\n\n"
                    break
                if ev.text or ev.finished:
                    reason = ev.finish_reason if ev.finished else None
                    if reason == "cancelled":                  # the server is shutting down
                        reason = "abort"
                    if first or reason is not None or not fast:
                        yield f"data: {json.dumps(_chunk(rid, created, chat, ev.text, reason, first))}\n\n"
                    else:
                        yield pre + json.dumps(ev.text) + post
                    first = False
                if ev.finished:
                    finished = True
                    break
            if include_usage:
                tail = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                        "created": created, "model": name, "choices": [], "usage": _usage(prompt_len, count)}
                yield f"data: {json.dumps(tail)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            if not finished:                                   # the client went away: free its blocks
                engine.cancel(handle)

    async def _whole(q, handle, request, rid, created, chat, prompt_len):
        text, count, ev = [], 0, None
        try:
            while True:
                try:
                    ev = await asyncio.wait_for(q.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        engine.cancel(handle)
                        return Response(status_code=499)
                    continue
                count += ev.token is not None
                text.append(ev.text)
                if ev.finished:
                    break
        except asyncio.CancelledError:
            engine.cancel(handle)
            raise
        if ev.finish_reason == "error":
            return error(500, ev.error or "engine error", "engine_error", "server_error")
        reason = "abort" if ev.finish_reason == "cancelled" else ev.finish_reason
        out = "".join(text)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": out}, "logprobs": None,
                      "finish_reason": reason}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": out, "logprobs": None, "finish_reason": reason}
            obj = "text_completion"
        return {"id": rid, "object": obj, "created": created, "model": name, "choices": [choice],
                "usage": _usage(prompt_len, count)}

    return app


def _invalid_counter(engine):
    from prometheus_client import Counter
    c = getattr(engine.metrics, "invalid", None)
    if c is None:
        c = engine.metrics.invalid = Counter("kbench_invalid_requests", "requests refused with a 400",
                                             registry=engine.metrics.registry)
    return c


def listen_socket(host: str, port: int) -> socket.socket:
    """The server's listening TCP socket (bound, SO_REUSEADDR), whose connections send every write at once
    (TCP_NODELAY: no Nagle).

    Nagle's algorithm holds a small write back until the peer has acknowledged the previous one, and a client
    that only reads delays its ACKs (Linux: 40 ms). A stream writes its headers, then its first event: that
    event waited ~40 ms for the ACK of the headers (TTFT + 40 ms, and then the tokens made meanwhile as one
    burst). asyncio sets TCP_NODELAY on the connections it accepts only when the socket's proto is IPPROTO_TCP
    (asyncio.base_events._set_nodelay); `socket.socket(family, SOCK_STREAM)` has proto 0. So: proto
    IPPROTO_TCP, and the option on the listener too (Linux copies it to accepted sockets). Found through the
    disconnect test: with the engine's faster steps, the 55-token request ran out (~45 ms) while its first event
    still waited for the ACK, so the client never got to disconnect mid-stream (docs/streaming.md)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


# ---- the command line ---------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message):                    # one line, exit 2 (argparse prints the usage too)
        print(f"inference.server: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def parse_args(argv):
    from inference.hf_engines import ENGINES
    from inference.scheduler import PREEMPTION
    p = _Parser(prog="python -m inference.server", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="tiny, small, test, or a checkpoint directory")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0: any free port (printed on the ready line)")
    p.add_argument("--engine", default="ours", choices=ENGINES)
    p.add_argument("--max-num-seqs", type=int, default=32, help="most sequences in one batch")
    p.add_argument("--num-blocks", type=int, default=1024, help="KV cache blocks (ours, hf-cb)")
    p.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    p.add_argument("--max-tokens-per-step", type=int, default=512, help="tokens computed per step (ours, hf-cb)")
    p.add_argument("--max-queue", type=int, default=256, help="waiting requests before 429")
    p.add_argument("--preemption", default="recompute", choices=PREEMPTION)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--max-model-len", type=int, default=None, help="prompt + max_tokens limit (default: context)")
    p.add_argument("--decode", default="auto", choices=("auto", "cpp", "torch"), help="decode attention (ours)")
    p.add_argument("--batch-timeout-ms", type=float, default=50.0, help="hf-static: wait for a fuller batch")
    p.add_argument("--no-handoff", action="store_true",
                   help="let the engine run its next step before the event loop has sent the last one's tokens")
    a = p.parse_args(argv)
    for name in ("max_num_seqs", "num_blocks", "block_size", "max_tokens_per_step", "max_queue", "threads",
                 "max_model_len"):
        v = getattr(a, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if not 0 <= a.port <= 65535:
        p.error(f"--port must be in 0..65535, got {a.port}")
    return a


def build_engine(a):
    from inference.hf_engines import make_engine
    from models.zoo import ModelError, load
    try:
        lm = load(a.model, progress=False)
    except ModelError as exc:
        print(f"inference.server: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if a.max_model_len and a.max_model_len > lm.context:
        print(f"inference.server: error: --max-model-len {a.max_model_len} exceeds the model's context "
              f"{lm.context}", file=sys.stderr)
        raise SystemExit(2)
    opts = dict(num_blocks=a.num_blocks, block_size=a.block_size, max_num_seqs=a.max_num_seqs,
                max_tokens_per_step=a.max_tokens_per_step, max_queue=a.max_queue, preemption=a.preemption,
                decode=a.decode, max_model_len=a.max_model_len, batch_timeout_s=a.batch_timeout_ms / 1000)
    try:
        engine = make_engine(a.engine, lm, **opts)
    except (ValueError, RuntimeError) as exc:
        print(f"inference.server: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    warning = getattr(engine, "warning", None)
    if warning:                                   # one line, before the ready line (bench.py serve: the rows' note)
        print(f"{WARNING}{warning}", file=sys.stderr, flush=True)
    cap = getattr(engine, "cache", None)
    if cap is not None and cap.num_blocks * cap.block_size < engine.max_model_len:
        print(f"note: the KV pool ({cap.num_blocks} x {cap.block_size} tokens) is smaller than the context "
              f"({engine.max_model_len}): longer requests are refused", file=sys.stderr)
    return lm, engine


def main(argv=None) -> int:
    import signal

    import torch
    import uvicorn
    a = parse_args(sys.argv[1:] if argv is None else argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:                                          # a port in use is a bad argument: one line before the model loads
        sock = listen_socket(a.host, a.port)
    except OSError as exc:
        print(f"inference.server: error: cannot bind {a.host}:{a.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    lm, engine = build_engine(a)
    app = create_app(engine, model_name=lm.name, handoff=not a.no_handoff)

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if not self.should_exit:
                port = sock.getsockname()[1]
                print(READY.format(host=a.host, port=port), flush=True)

        def handle_exit(self, sig, frame):         # end the streams at once: the engine cancels every request
            super().handle_exit(sig, frame)
            engine.stop()

    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5,
                            lifespan="on")
    server = Server(config)
    # uvicorn re-raises SIGTERM/SIGINT once its graceful shutdown is done (so the default action kills the
    # process); these no-op handlers, restored by uvicorn before it re-raises, make that shutdown exit 0
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
