"""An OpenAI-compatible chat-completions endpoint over any student or distilled model.

`POST /v1/chat/completions` (messages, max_tokens / max_completion_tokens, temperature, top_p, n,
seed, stop) and `GET /v1/models`, with real `usage` token counts. Built on the standard library's
ThreadingHTTPServer; generation is serialised with a lock (one model, one CPU/GPU). The same
`Generator` also runs the local `hf:` teacher in `cotdistill teach`.
"""

import json
import re
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cotdistill.errors import CotdistillError


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]


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


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class _StopOnText:
    """Stop a row once its NEW text contains a stop string or matches `pattern` (transformers'
    stop_strings also match across the prompt boundary, which the OpenAI protocol does not)."""

    def __init__(self, tokenizer: Any, start: int, stops: list[str], pattern: re.Pattern | None = None):
        self.tokenizer, self.start, self.stops, self.pattern = tokenizer, start, stops, pattern

    def _done(self, text: str) -> bool:
        return any(s in text for s in self.stops) or bool(self.pattern and self.pattern.search(text))

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        texts = self.tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
        return torch.tensor([self._done(t) for t in texts], device=input_ids.device)


class Generator:
    """A loaded model + tokenizer that turns chat messages into completions, one call at a time."""

    def __init__(self, model: Any, tokenizer: Any, name: str, default_max_tokens: int = 256):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.default_max_tokens = default_max_tokens
        self.lock = threading.Lock()
        self.model.eval()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        from cotdistill.students import context_window, has_chat_template, stop_token_ids

        self.context = context_window(model)
        self.stop_ids = set(stop_token_ids(tokenizer))
        # Tokenise exactly as students.encode_prompt does: a chat template writes its own specials.
        self.add_special_tokens = not has_chat_template(tokenizer)

    @classmethod
    def load(cls, spec: str, name: str | None = None, default_max_tokens: int = 256) -> "Generator":
        from cotdistill.students import load_student

        model, tokenizer = load_student(spec)
        return cls(model, tokenizer, name or spec, default_max_tokens)

    def render(self, messages: list[dict[str, str]]) -> str:
        """The model's prompt text: build_prompt for one user message (as train/eval do), else the chat template."""
        from cotdistill.students import build_prompt

        if len(messages) == 1 and messages[0]["role"] == "user":
            return build_prompt(self.tokenizer, messages[0]["content"])
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        turns = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        return turns + "assistant: "

    def prompt_tokens(self, prompt: str) -> int:
        return len(self.tokenizer(prompt, add_special_tokens=self.add_special_tokens)["input_ids"])

    def generate(
        self,
        prompts: list[str],
        *,
        max_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        n: int = 1,
        seed: int | None = None,
        stop: list[str] | None = None,
        stop_when: re.Pattern | None = None,
    ) -> list[list[Completion]]:
        """n completions for each prompt (a left-padded batch); greedy when temperature == 0.
        `stop_when` ends a row early once its new text matches (the text is kept whole)."""
        import torch

        if temperature == 0 and n > 1:  # greedy gives one answer; repeat it, as an API would return n equal choices
            return [c * n for c in self.generate(prompts, max_tokens=max_tokens, stop=stop, stop_when=stop_when)]

        tok = self.tokenizer
        max_new = max_tokens or self.default_max_tokens
        stops = [s for s in (stop or []) if s]
        with self.lock:
            tok.padding_side = "left"
            batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=self.add_special_tokens)
            batch = {k: v.to(self.model.device) for k, v in batch.items()}
            kwargs: dict[str, Any] = dict(max_new_tokens=max_new, pad_token_id=tok.pad_token_id, num_return_sequences=n)
            if temperature > 0:
                kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if stops or stop_when:
                kwargs["stopping_criteria"] = [_StopOnText(tok, batch["input_ids"].shape[1], stops, stop_when)]
            if seed is not None:
                torch.manual_seed(seed)
            with torch.no_grad():
                out = self.model.generate(**batch, **kwargs)
        width = batch["input_ids"].shape[1]
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        eos = self.stop_ids
        results: list[list[Completion]] = []
        for i, n_prompt in enumerate(lengths):
            choices = []
            for j in range(n):
                new = out[i * n + j, width:].tolist()
                end = next((k for k, t in enumerate(new) if t in eos), None)
                ids = new if end is None else new[:end]
                text, cut = _cut_at_stop(tok.decode(ids, skip_special_tokens=True), stops)
                finished = end is not None or cut or bool(stop_when and stop_when.search(text))
                used = len(ids) + (1 if end is not None else 0)
                choices.append(Completion(text, int(n_prompt), used, "stop" if finished else "length"))
            results.append(choices)
        return results


def _error(status: int, message: str, code: str, type_: str = "invalid_request_error") -> tuple[int, dict]:
    return status, {"error": {"message": message, "type": type_, "param": None, "code": code}}


def handle_chat(gen: Generator, body: bytes) -> tuple[int, dict]:
    """One chat-completions request -> (HTTP status, JSON body), in the OpenAI wire format."""
    try:
        req = ChatRequest.model_validate_json(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        return _error(400, f"invalid request: {where}: {first['msg']}", "invalid_request")
    if req.model != gen.name:
        return _error(404, f"The model `{req.model}` does not exist; this server has `{gen.name}`", "model_not_found")
    if req.stream:
        return _error(400, "stream=true is not supported by cotdistill serve", "unsupported")
    prompt = gen.render([{"role": m.role, "content": m.text()} for m in req.messages])
    max_new = req.max_completion_tokens or req.max_tokens or gen.default_max_tokens
    n_prompt = gen.prompt_tokens(prompt)
    if n_prompt + max_new > gen.context:
        msg = f"context length is {gen.context} tokens; the request needs {n_prompt} + {max_new}"
        return _error(400, msg, "context_length_exceeded")
    stop = [req.stop] if isinstance(req.stop, str) else req.stop
    (choices,) = gen.generate(
        [prompt], max_tokens=max_new, temperature=req.temperature, top_p=req.top_p, n=req.n, seed=req.seed, stop=stop
    )
    completion_tokens = sum(c.completion_tokens for c in choices)
    return 200, {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": gen.name,
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
            model = {"id": self.server.generator.name, "object": "model", "created": 0, "owned_by": "cotdistill"}
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
            status, reply = handle_chat(self.server.generator, body)
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

    def __init__(self, generator: Generator, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False):
        self.generator, self.quiet = generator, quiet
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
    generator = Generator.load(spec, name=name, default_max_tokens=max_tokens)
    server = ChatServer(generator, host, port, quiet=quiet)
    print(f"cotdistill serve: model {generator.name!r} ready at {server.url}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
