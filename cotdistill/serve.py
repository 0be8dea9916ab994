"""An OpenAI-compatible chat-completions endpoint over any student or distilled model.

`POST /v1/chat/completions` (messages, max_tokens / max_completion_tokens, temperature, top_p, n,
seed, stop, stream), `GET /v1/models` and `GET /health`, with real `usage` token counts. Served by
uvicorn (an ASGI server) with a Starlette app; completions come from the hf engine
(cotdistill/engines/hf.py).

Concurrent requests are batched (dynamic batching): each request becomes a job on a bounded
asyncio queue (full -> 503 with Retry-After); one batcher task takes the first waiting job, collects
more for up to `batch_wait_ms` (up to `max_batch` rows), and generates each group with the same
sampling parameters as ONE `engine.generate` in a worker thread, so 16 clients cost about one
batch of 16 rather than 16 batches of 1. The tokenizer is only used in that thread (fast tokenizers
are not safe to share across threads). Answers end as the protocol says (end token, stop string,
max_tokens): the project's answer-stop rule is the client's to apply.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from cotdistill.engines import Completion, Request
from cotdistill.engines.hf import HFEngine
from cotdistill.errors import CotdistillError

API_KEY_ENV = "COTDISTILL_API_KEY"


@dataclass
class Served:
    """The model behind the endpoint: its engine and the name clients ask for."""

    engine: HFEngine
    name: str
    default_max_tokens: int = 256


class ServeOptions(BaseModel):
    """How the server batches, what it bounds and whom it answers."""

    model_config = ConfigDict(extra="forbid")
    max_batch: int = Field(default=32, ge=1, description="rows (requests x n) generated as one batch at most")
    batch_wait_ms: float = Field(default=10.0, ge=0, le=60_000, description="how long the batcher collects requests after the first")
    max_queue: int = Field(default=256, ge=1, description="requests waiting for a batch at most; more get 503 + Retry-After")
    max_body_bytes: int = Field(default=1_000_000, ge=1, description="request bodies over this get 413 unread")
    max_connections: int = Field(default=1000, ge=1, description="open connections at most; more get 503")
    api_key: SecretStr | None = Field(default=None, description="Bearer key clients must send (none: no check)")

    @field_validator("api_key")
    @classmethod
    def _key_not_blank(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().strip():
            raise ValueError("an API key must not be empty (leave it out to serve without one)")
        return v


class ServeConfig(ServeOptions):
    """`cotdistill serve`: the model, where to listen, and the server options."""

    model: str = Field(description="student spec: alias, folder, .gguf or HF id")
    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port; 0 = any free port")
    name: str | None = Field(default=None, description="model name clients ask for (default: model)")
    max_tokens: int = Field(default=256, ge=1, description="new-token limit when a request sets none")
    quiet: bool = Field(default=False, description="no per-request log lines")


def make_serve_config(**values: Any) -> ServeConfig:
    """ServeConfig from the command's options; a bad value becomes one CotdistillError line."""
    try:
        return ServeConfig(**values)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise CotdistillError(f"serve option --{where.replace('_', '-')}: {err['msg']}") from None


# ----------------------------------------------------------------------------- the protocol


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str = Field(description="system, user or assistant")
    content: str | list[dict[str, Any]] = Field(description="the message text, or a list of content parts")

    def text(self) -> str:
        """The text of the message; content parts of type "text" are joined."""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")


class ChatRequest(BaseModel):
    """The subset of the OpenAI chat-completions request this server honours (other fields ignored)."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(description="must equal the served model name")
    messages: list[Message] = Field(min_length=1, description="the conversation so far")
    max_tokens: int | None = Field(default=None, ge=1, description="new-token limit per choice")
    max_completion_tokens: int | None = Field(default=None, ge=1, description="newer name of max_tokens")
    temperature: float = Field(default=1.0, ge=0, le=2, description="0 = greedy")
    top_p: float = Field(default=1.0, gt=0, le=1, description="nucleus sampling mass")
    n: int = Field(default=1, ge=1, le=16, description="choices to return")
    seed: int | None = Field(default=None, description="sampling seed, for reproducible samples")
    stop: str | list[str] | None = Field(default=None, description="cut each choice at the first of these")
    stream: bool = Field(default=False, description="answer as server-sent events (the whole text in one delta)")
    stream_options: dict[str, Any] | None = Field(default=None, description="include_usage: a last chunk with usage")


def _error(status: int, message: str, code: str, type_: str = "invalid_request_error") -> tuple[int, dict]:
    return status, {"error": {"message": message, "type": type_, "param": None, "code": code}}


class Refused(Exception):
    """A request answered with an error (status, OpenAI error JSON) instead of a completion."""

    def __init__(self, status: int, body: dict, headers: dict[str, str] | None = None):
        super().__init__(body["error"]["message"])
        self.status, self.body, self.headers = status, body, headers or {}


def parse_chat(served: Served, body: bytes) -> ChatRequest:
    """The request in `body`, or Refused (400 invalid JSON/fields, 404 another model)."""
    try:
        req = ChatRequest.model_validate_json(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise Refused(*_error(400, f"invalid request: {where}: {first['msg']}", "invalid_request")) from None
    if req.model != served.name:
        raise Refused(*_error(404, f"The model `{req.model}` does not exist; this server has `{served.name}`",
                              "model_not_found"))
    return req


@dataclass
class Job:
    """One request's rows (n choices = n rows; greedy: one row) waiting for the batcher."""

    messages: list[dict[str, str]]
    rows: int
    params: dict[str, Any]  # engine.generate keyword arguments
    key: tuple  # jobs with equal keys may share one generate call
    future: asyncio.Future = field(repr=False)


def make_job(served: Served, req: ChatRequest, loop: asyncio.AbstractEventLoop) -> Job:
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    stop = [req.stop] if isinstance(req.stop, str) else req.stop
    greedy = req.temperature == 0
    params = {
        "max_new_tokens": req.max_completion_tokens or req.max_tokens or served.default_max_tokens,
        "answer_stop": False, "stop": stop, "temperature": req.temperature,
        "top_p": 1.0 if greedy else req.top_p, "seed": None if greedy else req.seed,
    }
    key: tuple = (params["max_new_tokens"], tuple(stop or ()), params["temperature"], params["top_p"], params["seed"])
    future = loop.create_future()
    if params["seed"] is not None:
        key += (id(future),)  # a seed reproduces a sample only in its own batch: a seeded request runs alone
    # greedy gives one answer, repeated as an API returns n equal choices
    return Job(messages, 1 if greedy else req.n, params, key, future)


def completion_body(served: Served, choices: list[Completion], n_prompt: int) -> dict:
    completion_tokens = sum(c.completion_tokens for c in choices)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": served.name,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason,
             "logprobs": None}
            for i, c in enumerate(choices)
        ],
        "usage": {"prompt_tokens": n_prompt, "completion_tokens": completion_tokens,
                  "total_tokens": n_prompt + completion_tokens},
    }


def stream_events(body: dict, include_usage: bool) -> list[str]:
    """A finished completion as OpenAI `chat.completion.chunk` server-sent events: per choice a role
    chunk, one content delta and a finish chunk; a usage chunk if asked; then [DONE]."""
    head = {"id": body["id"], "object": "chat.completion.chunk", "created": body["created"], "model": body["model"],
            "system_fingerprint": None}

    def chunk(choices: list[dict], **extra: Any) -> str:
        return f"data: {json.dumps(head | {'choices': choices} | extra)}\n\n"

    events = []
    for c in body["choices"]:
        i = c["index"]
        events.append(chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None}]))
        events.append(chunk([{"index": i, "delta": {"content": c["message"]["content"]}, "logprobs": None,
                              "finish_reason": None}]))
        events.append(chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": c["finish_reason"]}]))
    if include_usage:
        events.append(chunk([], usage=body["usage"]))
    events.append("data: [DONE]\n\n")
    return events


# ----------------------------------------------------------------------------- dynamic batching


@dataclass
class BatchStats:
    """What /health reports: how many requests went through how large batches."""

    batches: int = 0
    requests: int = 0
    rows: int = 0
    rejected_queue_full: int = 0
    generating: int = 0  # rows in the generate call running now
    sizes: Counter = field(default_factory=Counter)  # rows per generate call -> calls

    def as_json(self) -> dict:
        return {"batches": self.batches, "requests": self.requests, "rows": self.rows,
                "max_batch_rows": max(self.sizes, default=0),
                "mean_batch_rows": round(self.rows / self.batches, 2) if self.batches else 0.0,
                "batch_rows_histogram": {str(k): v for k, v in sorted(self.sizes.items())},
                "rejected_queue_full": self.rejected_queue_full, "generating": self.generating}


class Batcher:
    """The one task that turns queued jobs into engine.generate calls (see the module docstring)."""

    def __init__(self, served: Served, options: ServeOptions):
        self.served, self.options = served, options
        self.queue: asyncio.Queue[Job] = asyncio.Queue(options.max_queue)
        self.stats = BatchStats()
        self._held: Job | None = None  # a job that did not fit the last batch: first in the next
        self._task: asyncio.Task | None = None

    def submit(self, job: Job) -> None:
        """Queue the job; Refused(503, Retry-After) when the queue is full."""
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            self.stats.rejected_queue_full += 1
            raise Refused(*_error(503, f"server busy: {self.options.max_queue} requests already waiting; retry shortly",
                                  "server_busy", "server_error"), headers={"Retry-After": "1"}) from None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        gone = Refused(*_error(503, "server shutting down", "shutting_down", "server_error"))
        waiting = [self._held] if self._held else []
        while not self.queue.empty():
            waiting.append(self.queue.get_nowait())
        for job in waiting:
            if not job.future.done():
                job.future.set_exception(gone)

    async def _run(self) -> None:
        while True:
            jobs = await self._collect()
            groups: dict[tuple, list[Job]] = {}
            for job in jobs:
                groups.setdefault(job.key, []).append(job)
            for group in groups.values():
                live = [j for j in group if not j.future.done()]  # a client that went away is not generated for
                if live:
                    await self._generate(live)

    async def _collect(self) -> list[Job]:
        """The first waiting job plus whatever arrives within batch_wait_ms, up to max_batch rows."""
        first, self._held = self._held or await self.queue.get(), None
        jobs, rows = [first], first.rows
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.batch_wait_ms / 1000
        while rows < self.options.max_batch:
            try:
                job = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                try:
                    async with asyncio.timeout(max(deadline - loop.time(), 0)):
                        job = await self.queue.get()
                except TimeoutError:
                    break
            if rows + job.rows > self.options.max_batch:
                self._held = job
                break
            jobs.append(job)
            rows += job.rows
        return jobs

    async def _generate(self, jobs: list[Job]) -> None:
        try:
            outcomes = await asyncio.to_thread(self._generate_sync, jobs)
        except Exception as e:  # a model failure answers 500 instead of killing the batcher
            failed = Refused(*_error(500, f"generation failed: {type(e).__name__}: {e}", "server_error", "server_error"))
            outcomes = [failed] * len(jobs)
        for job, outcome in zip(jobs, outcomes):
            if job.future.done():
                continue
            if isinstance(outcome, Exception):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)

    def _generate_sync(self, jobs: list[Job]) -> list[tuple[list[Completion], int] | Refused]:
        """Worker thread: check each job against the context window, generate the rest as one call."""
        engine = self.served.engine
        outcomes: list[Any] = [None] * len(jobs)
        ok: list[int] = []
        for i, job in enumerate(jobs):
            try:
                n_prompt, max_new = len(engine.encode(job.messages)), job.params["max_new_tokens"]
            except Exception as e:  # the chat template refused these messages (a role it does not know, ...)
                outcomes[i] = Refused(*_error(400, f"cannot render the messages: {type(e).__name__}: {e}",
                                              "invalid_messages"))
                continue
            if n_prompt + max_new > engine.context:
                msg = f"context length is {engine.context} tokens; the request needs {n_prompt} + {max_new}"
                outcomes[i] = Refused(*_error(400, msg, "context_length_exceeded"))
            else:
                ok.append(i)
                outcomes[i] = n_prompt
        requests = [Request(jobs[i].messages) for i in ok for _ in range(jobs[i].rows)]
        if not requests:
            return outcomes
        self.stats.generating = len(requests)
        try:
            done = engine.generate(requests, **jobs[ok[0]].params)
        finally:
            self.stats.generating = 0
        self.stats.batches += 1
        self.stats.requests += len(ok)
        self.stats.rows += len(requests)
        self.stats.sizes[len(requests)] += 1
        at = 0
        for i in ok:
            outcomes[i] = (done[at : at + jobs[i].rows], outcomes[i])
            at += jobs[i].rows
        return outcomes


# ----------------------------------------------------------------------------- the app


class _TooLarge(Exception):
    pass


async def _read_body(request: Any, limit: int) -> bytes:
    """The body, refusing (without reading further) one that says or turns out to be over `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def build_app(served: Served, options: ServeOptions) -> Any:
    """The Starlette app: routes, key check, body limit, batching."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    batcher = Batcher(served, options)
    key = options.api_key.get_secret_value().encode() if options.api_key else None

    def refuse(r: Refused) -> JSONResponse:
        return JSONResponse(r.body, r.status, headers=r.headers)

    def unauthorized(request: Any) -> JSONResponse | None:
        if key is None:
            return None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key):
            return None
        status, body = _error(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'", "invalid_api_key")
        return JSONResponse(body, status, headers={"WWW-Authenticate": "Bearer"})

    async def models(request: Any) -> JSONResponse:
        if (denied := unauthorized(request)) is not None:
            return denied
        model = {"id": served.name, "object": "model", "created": 0, "owned_by": "cotdistill"}
        return JSONResponse({"object": "list", "data": [model]})

    async def health(request: Any) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": served.name, "queued": batcher.queue.qsize(),
                             "max_queue": options.max_queue, "max_batch": options.max_batch,
                             "batch_wait_ms": options.batch_wait_ms, **batcher.stats.as_json()})

    async def chat(request: Any) -> Any:
        if (denied := unauthorized(request)) is not None:
            return denied
        try:
            body = await _read_body(request, options.max_body_bytes)
        except _TooLarge:
            status, err = _error(413, f"request body over {options.max_body_bytes} bytes", "request_too_large")
            return JSONResponse(err, status, headers={"Connection": "close"})
        try:
            req = parse_chat(served, body)
            job = make_job(served, req, asyncio.get_running_loop())
            batcher.submit(job)
            choices, n_prompt = await job.future
        except Refused as r:
            return refuse(r)
        reply = completion_body(served, choices * (req.n // job.rows), n_prompt)
        if req.stream:
            include_usage = bool((req.stream_options or {}).get("include_usage"))
            async def events() -> AsyncIterator[str]:
                for event in stream_events(reply, include_usage):
                    yield event

            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return JSONResponse(reply)

    async def http_error(request: Any, exc: HTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else "method_not_allowed"
        status, body = _error(exc.status_code, f"no route {request.method} {request.url.path}", code)
        return JSONResponse(body, status)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    routes = [
        Route("/v1/chat/completions", chat, methods=["POST"]), Route("/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]), Route("/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]), Route("/v1/health", health, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.batcher = batcher
    return app


# ----------------------------------------------------------------------------- the server


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket; a bad host or a taken port is one CotdistillError line."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as e:  # gaierror included
        raise CotdistillError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e


class ChatServer:
    """uvicorn serving `build_app` on a socket bound at construction (port 0 = any free port).

    `sock`: a socket already listening (then host and port are not used).
    `serve_forever()` blocks until `shutdown()` (from another thread) or, in the main thread,
    SIGINT/SIGTERM: it stops accepting, finishes the requests in flight, then returns.
    """

    def __init__(self, served: Served, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False,
                 options: ServeOptions | None = None, sock: socket.socket | None = None):
        import uvicorn

        self.served, self.options = served, options or ServeOptions()
        self.socket = sock or _listen(host, port)
        bound, bound_port = self.socket.getsockname()[:2]
        self.url = f"http://{f'[{bound}]' if ':' in bound else bound}:{bound_port}/v1"
        self.app = build_app(served, self.options)
        config = uvicorn.Config(self.app, log_level="warning" if quiet else "info", access_log=not quiet,
                                limit_concurrency=self.options.max_connections, timeout_graceful_shutdown=60,
                                lifespan="on", server_header=False)
        self._server = _uvicorn_server_class()(config)
        self._stopped = threading.Event()

    @property
    def stats(self) -> BatchStats:
        return self.app.state.batcher.stats


    def serve_forever(self) -> None:
        self._stopped.clear()
        try:
            asyncio.run(self._server.serve(sockets=[self.socket]))
        finally:
            self._stopped.set()

    def shutdown(self, timeout: float = 60) -> None:
        self._server.should_exit = True
        self._stopped.wait(timeout)

    def server_close(self) -> None:
        self.socket.close()


def _uvicorn_server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, except that a SIGINT/SIGTERM ends `serve` after the graceful shutdown
        instead of being raised again (our CLI exits 0 after a clean stop)."""

        def capture_signals(self) -> Any:
            import contextlib
            import signal

            @contextlib.contextmanager
            def captured() -> Any:
                if threading.current_thread() is not threading.main_thread():
                    yield
                    return
                old = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
                try:
                    yield
                finally:
                    for s, h in old.items():
                        signal.signal(s, h)

            return captured()

    return Server


def serve(cfg: ServeConfig) -> None:
    """Load the model and answer chat completions until SIGINT/SIGTERM. Prints the base URL once ready."""
    sock = _listen(cfg.host, cfg.port)  # a taken port shows before a model is loaded for nothing
    if cfg.api_key is None and not is_loopback(cfg.host):
        print(f"warning: serving on {cfg.host} beyond loopback without --api-key (or ${API_KEY_ENV}): "
              "anyone who can reach this port can use the model", file=sys.stderr, flush=True)
    try:
        engine = HFEngine.load(cfg.model)
        try:
            _serve_engine(cfg, engine, sock)
        finally:
            engine.close()
    finally:
        sock.close()


def _serve_engine(cfg: ServeConfig, engine: HFEngine, sock: socket.socket) -> None:
    if cfg.max_tokens > engine.context:
        raise CotdistillError(f"serve option --max-tokens: {cfg.max_tokens} is over the model's context window "
                              f"of {engine.context} tokens")
    served = Served(engine, cfg.name or cfg.model, cfg.max_tokens)
    options = ServeOptions(**{k: getattr(cfg, k) for k in ServeOptions.model_fields})
    server = ChatServer(served, quiet=cfg.quiet, options=options, sock=sock)
    print(f"cotdistill serve: model {served.name!r} ready at {server.url}", flush=True)
    server.serve_forever()
    print("cotdistill serve: stopped", flush=True)
