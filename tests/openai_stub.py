"""A stub OpenAI-compatible streaming server for the load generator's tests: known delays in, known figures out.

FastAPI + uvicorn, like the real server (inference/server.py). Each request: wait `ttft_s`, stream one chunk
per token (`choices[0].text` = "a"; chat: `choices[0].delta.content` = "b"), `itl_s` apart, then a usage chunk and `data: [DONE]`. Misbehaviour on
purpose, chosen per run (`mode`) or per request (a prompt starting with "!500", "!429", "!close"):
- "500": HTTP 500 with an OpenAI error JSON;
- "429": HTTP 429 (a full queue: a clean refusal);
- "close": the stream is cut after two tokens (no [DONE]; the connection is closed mid-response).
It counts the requests it got and the most it held at once (`/stats`).

In process: `with StubServer(ttft_s=0.2, itl_s=0.05) as url: ...` (a uvicorn thread on a free loopback port).
$KB_STUB_TTFT_S and $KB_STUB_ITL_S set the delays of the process form.
As a process, taking the built-in server's command line (the serve CLI's tests launch it in its place):
`python -m tests.openai_stub --model tiny --host 127.0.0.1 --port P --engine ours [--ttft-s S --itl-s S]`;
it prints `kbench server ready on http://HOST:PORT` and exits on SIGTERM; an engine named in
$KB_STUB_UNAVAILABLE (comma-separated) exits 2 at start, as an engine that cannot run here; KB_STUB_LEAK=1
makes it leak (pretend) KV blocks of disconnected requests; $KB_STUB_WARNING is printed as a start-up
`warning: ` line, as the real server's when ours falls back to torch decode. /metrics has the real server's gauges (pretend ones).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import threading
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse


def make_app(ttft_s: float = 0.05, itl_s: float = 0.01, mode: str = "ok", usage: bool = True,
             usage_bias: int = 0, leak: bool = False) -> FastAPI:
    """`usage_bias`: the usage chunk reports that many more completion tokens than chunks sent; `leak`: a request
    whose client disconnects keeps its (pretend) KV block, so /metrics shows kbench_kv_blocks_used > 0 after."""
    app = FastAPI()
    stats = {"requests": 0, "in_flight": 0, "max_in_flight": 0, "blocks": 0}

    def err(status: int, msg: str) -> JSONResponse:
        return JSONResponse({"error": {"message": msg, "type": "stub", "code": status}}, status_code=status)

    async def completion(request: Request, chat: bool):
        body = await request.json()
        stats["requests"] += 1
        if (chat and not body.get("messages")) or (not chat and "prompt" not in body):
            return err(400, "messages missing" if chat else "prompt missing")
        prompt = body.get("prompt") if not chat else body["messages"][-1]["content"]
        how = mode
        for m in ("500", "429", "close"):
            if str(prompt).startswith(f"!{m}"):
                how = m
        if how == "500":
            return err(500, "stub failure")
        if how == "429":
            return err(429, "queue full")
        n = int(body.get("max_tokens", 16))

        async def events():
            stats["in_flight"] += 1
            stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])
            stats["blocks"] += 1
            finished = False
            try:
                await asyncio.sleep(ttft_s)
                for i in range(n):
                    if i:
                        await asyncio.sleep(itl_s)
                    if how == "close" and i == 2:
                        raise RuntimeError("stub: connection cut mid-stream")
                    choice = {"index": 0, "delta": {"content": "b"}} if chat else {"index": 0, "text": "a"}
                    yield f"data: {json.dumps({'choices': [choice]})}\n\n"
                if usage:
                    u = {"prompt_tokens": len(str(prompt)), "completion_tokens": n + usage_bias,
                         "total_tokens": n + usage_bias + len(str(prompt))}
                    yield f"data: {json.dumps({'choices': [], 'usage': u})}\n\n"
                yield "data: [DONE]\n\n"
                finished = True
            finally:
                stats["in_flight"] -= 1
                if finished or not leak:            # leak: a disconnected request's block is never freed
                    stats["blocks"] -= 1
        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await completion(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await completion(request, chat=True)

    @app.get("/health")
    async def health():
        return PlainTextResponse("ok")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "stub-model", "object": "model"}]}

    @app.get("/metrics")
    async def metrics():
        import resource
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        text = "".join(f"# TYPE {k} gauge\n{k} {v}\n" for k, v in (
            ("kbench_requests_running", stats["in_flight"]), ("kbench_requests_waiting", 0),
            ("kbench_kv_blocks_used", stats["blocks"]), ("kbench_kv_blocks_total", 64),
            ("process_resident_memory_bytes", rss)))
        return PlainTextResponse(text)

    @app.get("/stats")
    async def get_stats():
        return stats

    app.state.stats = stats
    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StubServer:
    """The stub in a uvicorn thread of this process, on a free loopback port; the context gives its URL."""

    def __init__(self, **app_kwargs):
        import uvicorn
        self.app = make_app(**app_kwargs)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def stats(self) -> dict:
        return self.app.state.stats

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the stub server did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tests.openai_stub")
    p.add_argument("--model", default="tiny")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--engine", default="ours")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ttft-s", type=float, default=float(os.environ.get("KB_STUB_TTFT_S", 0.02)))
    p.add_argument("--itl-s", type=float, default=float(os.environ.get("KB_STUB_ITL_S", 0.005)))
    a, _ = p.parse_known_args(argv)                 # the real server's other options are accepted and ignored
    if a.engine in os.environ.get("KB_STUB_UNAVAILABLE", "").split(","):
        print(f"tests.openai_stub: error: engine {a.engine!r} cannot run here (on purpose)", file=sys.stderr)
        return 2
    if os.environ.get("KB_STUB_WARNING"):           # as the real server's start-up warning (ours on torch decode)
        print(f"warning: {os.environ['KB_STUB_WARNING']}", file=sys.stderr, flush=True)
    import uvicorn
    leak = os.environ.get("KB_STUB_LEAK") == "1"
    server = uvicorn.Server(uvicorn.Config(make_app(a.ttft_s, a.itl_s, leak=leak), host=a.host, port=a.port,
                                           log_level="error", lifespan="off"))

    async def serve():
        task = asyncio.ensure_future(server.serve())
        while not server.started:
            if task.done():
                return
            await asyncio.sleep(0.02)
        print(f"kbench server ready on http://{a.host}:{a.port}", flush=True)
        await task
    # uvicorn re-raises the SIGTERM it caught once it has shut down: end with 0 then, as the real server does
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
