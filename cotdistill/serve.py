"""An OpenAI-compatible chat-completions endpoint over any student or distilled model.

`POST /v1/chat/completions` (messages, max_tokens / max_completion_tokens, temperature, top_p, n,
seed, stop) and `GET /v1/models`, with real `usage` token counts. Built on the standard library's
ThreadingHTTPServer; completions come from the hf engine (cotdistill/engines/hf.py), whose
`generate` over a list of requests is the batching unit and serialises callers (one model, one
CPU/GPU). Answers end as the protocol says (end token, stop string, max_tokens): the project's
answer-stop rule is the client's to apply.
"""

import json
import sys
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cotdistill.engines import Request
from cotdistill.engines.hf import HFEngine
from cotdistill.errors import CotdistillError


@dataclass
class Served:
    """The model behind the endpoint: its engine and the name clients ask for."""

    engine: HFEngine
    name: str
    default_max_tokens: int = 256


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
    stream: bool = Field(default=False, description="streaming is not supported")


def _error(status: int, message: str, code: str, type_: str = "invalid_request_error") -> tuple[int, dict]:
    return status, {"error": {"message": message, "type": type_, "param": None, "code": code}}


def handle_chat(served: Served, body: bytes) -> tuple[int, dict]:
    """One chat-completions request -> (HTTP status, JSON body), in the OpenAI wire format."""
    try:
        req = ChatRequest.model_validate_json(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        return _error(400, f"invalid request: {where}: {first['msg']}", "invalid_request")
    if req.model != served.name:
        return _error(404, f"The model `{req.model}` does not exist; this server has `{served.name}`", "model_not_found")
    if req.stream:
        return _error(400, "stream=true is not supported by cotdistill serve", "unsupported")
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    max_new = req.max_completion_tokens or req.max_tokens or served.default_max_tokens
    n_prompt = len(served.engine.encode(messages))
    if n_prompt + max_new > served.engine.context:
        msg = f"context length is {served.engine.context} tokens; the request needs {n_prompt} + {max_new}"
        return _error(400, msg, "context_length_exceeded")
    stop = [req.stop] if isinstance(req.stop, str) else req.stop
    # n choices are n rows of one batch; greedy gives one answer, repeated as an API returns n equal choices
    rows = req.n if req.temperature > 0 else 1
    choices = served.engine.generate([Request(messages)] * rows, max_new_tokens=max_new, answer_stop=False, stop=stop,
                                     temperature=req.temperature, top_p=req.top_p, seed=req.seed)
    choices = choices * (req.n // rows)
    completion_tokens = sum(c.completion_tokens for c in choices)
    return 200, {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": served.name,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason, "logprobs": None}
            for i, c in enumerate(choices)
        ],
        "usage": {"prompt_tokens": n_prompt, "completion_tokens": completion_tokens, "total_tokens": n_prompt + completion_tokens},
    }


class _Handler(BaseHTTPRequestHandler):
    server: "ChatServer"
    protocol_version = "HTTP/1.1"

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        path = self.path.split("?")[0].rstrip("/")
        if path in ("/v1/models", "/models"):
            model = {"id": self.server.served.name, "object": "model", "created": 0, "owned_by": "cotdistill"}
            self._send(200, {"object": "list", "data": [model]})
        elif path in ("/health", "/v1/health"):
            self._send(200, {"status": "ok"})
        else:
            self._send(*_error(404, f"no route GET {path}", "not_found"))

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?")[0].rstrip("/")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if path not in ("/v1/chat/completions", "/chat/completions"):
            self._send(*_error(404, f"no route POST {path}", "not_found"))
            return
        try:
            status, reply = handle_chat(self.server.served, body)
        except Exception as e:  # a model failure answers 500 instead of killing the server
            status, reply = _error(500, f"generation failed: {type(e).__name__}: {e}", "server_error", "server_error")
        try:
            self._send(status, reply)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout, killed): nothing to answer
            self.close_connection = True
            self.log_message('"%s" client went away before the answer', self.requestline)

    def log_message(self, format: str, *args: Any) -> None:
        # One line per request, never headers (they carry the client's API key).
        if not self.server.quiet:
            print(f"{self.address_string()} {format % args}", file=sys.stderr, flush=True)


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, served: Served, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False):
        self.served, self.quiet = served, quiet
        try:
            super().__init__((host, port), _Handler)
        except OSError as e:
            raise CotdistillError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


def serve(spec: str, host: str = "127.0.0.1", port: int = 8000, name: str | None = None, max_tokens: int = 256, quiet: bool = False) -> None:
    """Load `spec` and answer chat completions until interrupted. Prints the base URL once ready."""
    served = Served(HFEngine.load(spec), name or spec, max_tokens)
    server = ChatServer(served, host, port, quiet=quiet)
    print(f"cotdistill serve: model {served.name!r} ready at {server.url}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        served.engine.close()
