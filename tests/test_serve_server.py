"""`cotdistill serve` as a server: concurrency through dynamic batching, a bounded queue, a body limit,
a Bearer key, streaming, start-up validation and a clean stop, with the `openai` client and `curl`
against real servers on 127.0.0.1 over a tiny random model."""

import json
import os
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.request import urlopen

import openai
import pytest

from cotdistill.engines.hf import HFEngine
from cotdistill.errors import CotdistillError
from cotdistill.serve import ChatServer, ServeOptions, Served, make_serve_config, serve
from teach_support import CLI, one_torch_thread

KEY = "sk-serve-test-key"
HI = [{"role": "user", "content": "How many apples are there?"}]


@pytest.fixture(scope="module")
def engine(tiny_chat_student):
    e = HFEngine.load(str(tiny_chat_student))
    with one_torch_thread():
        yield e
    e.close()


def _start(engine: HFEngine, **options) -> ChatServer:
    srv = ChatServer(Served(engine, "tiny", default_max_tokens=8), "127.0.0.1", 0, quiet=True,
                     options=ServeOptions(**options))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture(scope="module")
def keyed(engine):
    """A server that wants a key and collects concurrent requests for 50 ms (up to 64 rows)."""
    srv = _start(engine, api_key=KEY, max_batch=64, batch_wait_ms=50)
    yield srv
    srv.shutdown()
    srv.server_close()


def _client(srv: ChatServer, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=srv.url, max_retries=0, timeout=120)


def _health(srv: ChatServer) -> dict:
    with urlopen(srv.url.removesuffix("/v1") + "/health", timeout=30) as r:
        return json.loads(r.read())


def _curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "60", *args], capture_output=True, text=True)


def test_fifty_concurrent_requests_are_all_answered_in_shared_batches(keyed):
    client = _client(keyed)
    before = _health(keyed)
    questions = [f"What is {i} + {i}?" for i in range(50)]

    def ask(q: str):
        return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": q}],
                                              max_tokens=4, temperature=0)

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(ask, questions))
    assert len(answers) == 50
    for a in answers:
        assert a.object == "chat.completion" and isinstance(a.choices[0].message.content, str)
        assert 1 <= a.usage.completion_tokens <= 4 and a.usage.prompt_tokens > 5
    after = _health(keyed)
    assert after["requests"] - before["requests"] == 50
    # 50 requests in fewer generate calls than requests: batching happened
    assert after["batches"] - before["batches"] < 50 and after["max_batch_rows"] > 1
    # each answer is the one its own question gets alone (batching does not mix rows up)
    alone = ask(questions[7])
    assert alone.usage.prompt_tokens == answers[7].usage.prompt_tokens


def test_key_is_required_and_checked(keyed):
    with pytest.raises(openai.AuthenticationError, match="API key"):
        _client(keyed, "sk-wrong").chat.completions.create(model="tiny", messages=HI, max_tokens=2)
    ok = _client(keyed).chat.completions.create(model="tiny", messages=HI, max_tokens=2, temperature=0)
    assert ok.choices[0].message.content is not None
    base = keyed.url
    body = json.dumps({"model": "tiny", "messages": HI, "max_tokens": 2})
    missing = _curl("-o", "/dev/null", "-w", "%{http_code}", base + "/models")
    assert missing.stdout == "401"
    right = _curl("-w", "\n%{http_code}", "-H", f"Authorization: Bearer {KEY}", "-H", "Content-Type: application/json",
                  "-d", body, base + "/chat/completions")
    text, code = right.stdout.rsplit("\n", 1)
    assert code == "200" and json.loads(text)["object"] == "chat.completion"
    wrong = _curl("-w", "\n%{http_code}", "-H", "Authorization: Bearer nope", "-d", body, base + "/chat/completions")
    text, code = wrong.stdout.rsplit("\n", 1)
    assert code == "401" and json.loads(text)["error"]["code"] == "invalid_api_key"


def test_streaming_gives_the_same_text_as_one_answer(keyed):
    client = _client(keyed)
    whole = client.chat.completions.create(model="tiny", messages=HI, max_tokens=6, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny", messages=HI, max_tokens=6, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    raw = _curl("-N", "-H", f"Authorization: Bearer {KEY}", "-H", "Content-Type: application/json", "-d",
                json.dumps({"model": "tiny", "messages": HI, "max_tokens": 3, "stream": True}),
                keyed.url + "/chat/completions")
    assert raw.stdout.rstrip().endswith("data: [DONE]") and raw.stdout.startswith("data: {")


def test_a_10mb_body_is_refused_unread(keyed, tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(b'{"model": "tiny", "messages": [{"role": "user", "content": "' + b"x" * 10_000_000 + b'"}]}')
    r = _curl("-o", "/dev/null", "-w", "%{http_code} %{size_upload}", "-H", f"Authorization: Bearer {KEY}",
              "-H", "Content-Type: application/json", "--data-binary", f"@{big}", keyed.url + "/chat/completions")
    code, uploaded = r.stdout.split()
    assert code == "413" and int(uploaded) < 10_000_000
    # The answer comes from the declared length alone: no byte of the body is ever sent.
    host, port = keyed.socket.getsockname()[:2]
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n".encode())
        head = s.recv(4096).decode()
    assert head.startswith("HTTP/1.1 413")
    # Without a declared length (chunked), reading stops at the limit.
    chunked = _curl("-o", "/dev/null", "-w", "%{http_code}", "-H", "Transfer-Encoding: chunked", "-H",
                    f"Authorization: Bearer {KEY}", "--data-binary", f"@{big}", keyed.url + "/chat/completions")
    assert chunked.stdout == "413"


def _wait_for(srv: ChatServer, check, what: str) -> None:
    deadline = time.monotonic() + 60
    while not check(_health(srv)):
        if time.monotonic() > deadline:
            raise AssertionError(f"server never reached: {what}: {_health(srv)}")
        time.sleep(0.02)


def test_a_full_queue_answers_503_with_retry_after(engine):
    srv = _start(engine, max_queue=1, max_batch=1, batch_wait_ms=0)
    client = _client(srv, "unused")
    ask = lambda: client.chat.completions.create(model="tiny", messages=HI, max_tokens=3, temperature=0)  # noqa: E731
    try:
        with ThreadPoolExecutor(12) as pool:
            with engine._lock:  # a generation in progress: the batcher's next call waits for it
                first = pool.submit(ask)
                _wait_for(srv, lambda h: h["generating"] == 1, "first request generating")
                second = pool.submit(ask)
                _wait_for(srv, lambda h: h["queued"] == 1, "second request queued")
                burst = [pool.submit(ask) for _ in range(10)]
                errors = [f.exception() for f in burst]
            assert first.result().choices and second.result().choices
    finally:
        srv.shutdown()
        srv.server_close()
    assert all(isinstance(e, openai.InternalServerError) and e.status_code == 503 for e in errors)
    assert {e.response.headers.get("retry-after") for e in errors} == {"1"}
    assert "busy" in str(errors[0])


def test_start_up_validation_is_one_error_line(tiny_chat_student, tmp_path, capfd):
    for flags, message in [
        (["--port", "99999"], "--port: Input should be less than or equal to 65535"),
        (["--max-tokens", "-5"], "--max-tokens: Input should be greater than or equal to 1"),
        (["--max-queue", "0"], "--max-queue"),
        (["--batch-wait-ms", "-1"], "--batch-wait-ms"),
        (["--api-key", " "], "must not be empty"),
        (["--host", "192.0.2.1"], "cannot listen on 192.0.2.1:8000"),  # an address this machine does not have
    ]:
        r = subprocess.run([CLI, "serve", "--model", str(tiny_chat_student), *flags], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2, (flags, r.stderr)
        errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in r.stderr, r.stderr
    # (in-process from here: the same CotdistillError the CLI prints, without a new process per case)
    with pytest.raises(CotdistillError, match="--max-tokens: 100000 is over the model's context window of"):
        serve(make_serve_config(model=str(tiny_chat_student), port=0, max_tokens=100_000))
    # bound beyond loopback without a key: a warning as soon as the port is bound, before the model loads
    with pytest.raises(CotdistillError, match="unknown student"):
        serve(make_serve_config(model=str(tmp_path / "none"), host="0.0.0.0", port=0))
    assert "warning: serving on 0.0.0.0 beyond loopback without --api-key" in capfd.readouterr().err


def test_key_from_the_environment_and_a_clean_stop_on_sigterm(tiny_chat_student):
    env = os.environ | {"COTDISTILL_API_KEY": KEY, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([CLI, "serve", "--model", str(tiny_chat_student), "--host", "0.0.0.0", "--port", "0",
                             "--name", "tiny", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        port = proc.stdout.readline().rsplit(":", 1)[1].split("/")[0]
        url = f"http://127.0.0.1:{port}/v1"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(api_key="sk-wrong", base_url=url, max_retries=0, timeout=60).models.list()
        c = openai.OpenAI(api_key=KEY, base_url=url, max_retries=0, timeout=60)
        assert c.chat.completions.create(model="tiny", messages=HI, max_tokens=2).choices
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "stopped" in out
    assert "warning" not in err and "Traceback" not in err
