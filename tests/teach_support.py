"""Test support for the teacher: a real `cotdistill serve` process and a real fault-injecting proxy.

`served_tiny()` starts ONE `cotdistill serve` subprocess per test session over a tiny random
chat student on a free 127.0.0.1 port. `FaultProxy` is a real HTTP server (127.0.0.1, own thread)
that forwards to it, except where a test scripts a fault for a request: per question text (a
substring of the prompt's question) a list of actions consumed one request at a time.

Actions: "pass" (forward), "answer" (a well-formed completion ending "The answer is <gold>"),
"noanswer" (a well-formed completion without an answer sentence), "429" (Retry-After: 1),
"500", "malformed" (200, application/json, broken body), "drop" (close without a response),
"stall" (sleep `stall_s`, then close), "html" (200 with an HTML body), "401", "404",
"400echo" (400 whose message echoes the Authorization header, as some servers do), "empty" (a
well-formed completion whose content is empty). With `upstream=None` the proxy is the whole
server: it lists SERVED_NAME under /v1/models and answers every unscripted question correctly.
"""

import atexit
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from hashlib import sha256
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import Request, urlopen

CLI = str(Path(sys.executable).parent / "cotdistill")
ASSETS = Path(__file__).parent / "assets" / "teach"
QUESTIONS = ASSETS / "questions.jsonl"
SERVED_NAME = "tiny"

_server: dict = {}


def start_served_tiny() -> None:
    """Start the session's `cotdistill serve` now (test modules call this at import, so that its
    start-up overlaps with collection and the first tests); `served_tiny()` waits for it."""
    if "proc" in _server:
        return
    from cotdistill.testing import make_tiny_student

    root = Path(tempfile.mkdtemp(prefix="cotdistill-served-"))
    atexit.register(shutil.rmtree, root, True)
    model = talkative(make_tiny_student(root / "student", chat_template=True))
    # One torch thread: on a small shared CPU box the default oversubscribes and is ~10x slower.
    proc = subprocess.Popen(
        [CLI, "serve", "--model", str(model), "--port", "0", "--name", SERVED_NAME, "--quiet", "--max-tokens", "16"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    atexit.register(proc.kill)  # runs before the rmtree above (atexit is last-in, first-out)
    _server["proc"] = proc


def talkative(model_dir: Path) -> Path:
    """Make a tiny random student answer with visible text: its tied embedding rows of special and
    whitespace-only tokens are zeroed, so greedy decoding never picks them (otherwise it repeats
    the prompt's last token, a newline or <|im_start|>, and every answer is empty, which the
    teacher rightly treats as a fault)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    blank = [i for i in range(len(tok)) if i in tok.all_special_ids or not tok.decode([i]).strip()]
    with torch.no_grad():
        model.get_input_embeddings().weight[blank] = 0
    model.save_pretrained(model_dir)
    return model_dir


def served_tiny() -> str:
    """Base URL (http://127.0.0.1:PORT/v1) of the session's `cotdistill serve` over a tiny chat student."""
    start_served_tiny()
    if "url" not in _server:
        _server["url"] = _wait_for_url(_server["proc"])
    return _server["url"]


def _wait_for_url(proc: subprocess.Popen, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"cotdistill serve exited ({proc.poll()}): {''.join(lines)[-2000:]}")
        lines.append(line)
        m = re.search(r"ready at (http://\S+)", line)
        if m:
            # Keep draining its output so a chatty server can never block on a full pipe.
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return m.group(1)
    raise RuntimeError("cotdistill serve did not print its URL in time")


@contextlib.contextmanager
def one_torch_thread():
    """Generate in-process on one torch thread (see start_served_tiny), restoring the setting after."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def question_of(body: dict) -> str:
    """The question inside a teacher prompt (after the last 'Question: ')."""
    content = body.get("messages", [{}])[-1].get("content", "")
    return content.rsplit("Question: ", 1)[-1].removesuffix("Solution:").strip()


def request_id(body: dict) -> str:
    """What identifies a teacher request: its messages and sampling parameters."""
    fields = {k: body.get(k) for k in ("model", "messages", "temperature", "top_p", "max_tokens", "seed")}
    return sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class FaultProxy:
    def __init__(self, upstream: str | None, golds: dict[str, str] | None = None, stall_s: float = 3.0,
                 delay_s: float = 0.0):
        self.upstream = upstream.rstrip("/") if upstream else None
        self.golds = golds or {}
        self.rules: dict[str, list[str]] = {}
        self.stall_s, self.delay_s = stall_s, delay_s
        self.log: list[dict] = []  # one entry per chat request: question, action, request id, t
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> "FaultProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def script(self, question_part: str, *actions: str) -> None:
        self.rules[question_part] = list(actions)

    def chat_requests(self, action: str | None = None) -> list[dict]:
        return [e for e in self.log if action is None or e["action"] == action]

    def _action(self, question: str) -> tuple[str, str | None]:
        with self.lock:
            for part, actions in self.rules.items():
                if part in question:
                    gold = next((g for q, g in self.golds.items() if part in q or q in question), None)
                    return (actions.pop(0) if actions else "pass"), gold
        return "pass", next((g for q, g in self.golds.items() if q in question), None)

    def _handler(proxy):  # noqa: N805  (closure over the proxy)
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _reply(self, status: int, body: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _forward(self, method: str, body: bytes | None) -> None:
                req = Request(proxy.upstream + self.path.removeprefix("/v1"), data=body, method=method,
                              headers={"Content-Type": "application/json"})
                try:
                    with urlopen(req, timeout=120) as r:
                        self._reply(r.status, r.read())
                except HTTPError as e:
                    self._reply(e.code, e.read())

            def do_GET(self) -> None:  # noqa: N802
                if proxy.upstream is None:
                    models = {"object": "list", "data": [{"id": SERVED_NAME, "object": "model", "owned_by": "test"}]}
                    self._reply(200, json.dumps(models).encode())
                    return
                self._forward("GET", None)

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw)
                question = question_of(body)
                action, gold = proxy._action(question)
                with proxy.lock:
                    proxy.log.append({"question": question, "action": action, "id": request_id(body), "t": time.monotonic()})
                    proxy.in_flight += 1
                    proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
                try:
                    self._act(action, gold, body, raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on us (timeout test)
                finally:
                    with proxy.lock:
                        proxy.in_flight -= 1

            def _act(self, action: str, gold: str | None, body: dict, raw: bytes) -> None:
                if action == "pass" and proxy.upstream is not None:
                    time.sleep(proxy.delay_s)
                    self._forward("POST", raw)
                elif action in ("pass", "answer", "noanswer", "empty"):
                    text = {"noanswer": "I would add the numbers together and then check the sum.",
                            "empty": ""}.get(action, f"First add the numbers. The answer is {gold}")
                    self._reply(200, json.dumps(_completion(body, text)).encode())
                elif action == "429":
                    self._reply(429, _err("rate limited", "rate_limit_exceeded"), {"Retry-After": "1"})
                elif action == "500":
                    self._reply(500, _err("internal error", "server_error"))
                elif action == "401":
                    self._reply(401, _err("invalid api key", "invalid_api_key"))
                elif action == "404":
                    self._reply(404, _err("model not found", "model_not_found"))
                elif action == "400echo":
                    self._reply(400, _err(f"bad request from {self.headers.get('Authorization')}", "bad_request"))
                elif action == "html":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", "17")
                    self.end_headers()
                    self.wfile.write(b"<html>oops</html>")
                elif action == "malformed":
                    self._reply(200, b'{"id": "chatcmpl-x", "choices": [{"message": ')
                elif action == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                elif action == "stall":
                    time.sleep(proxy.stall_s)
                    self.close_connection = True
                    self.connection.shutdown(2)
                else:
                    raise ValueError(f"unknown proxy action {action}")

        return Handler


def _err(message: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "error", "param": None, "code": code}}).encode()


def _completion(body: dict, text: str) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
        "model": body.get("model"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
    }


def fixture_golds() -> dict[str, str]:
    rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    return {r["question"]: r["gold"] for r in rows}


def teach_env(key: str = "sk-test-key") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["OPENAI_API_KEY"] = key
    return env
