"""`cotdistill serve`: the OpenAI chat-completions protocol over a real (tiny random) model,
exercised with the official `openai` client over real HTTP on 127.0.0.1."""

import json
import threading
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import openai
import pytest

from cotdistill.engines.hf import HFEngine
from cotdistill.serve import ChatServer, Served
from teach_support import SERVED_NAME, one_torch_thread, served_tiny, start_served_tiny

start_served_tiny()  # at import: the server starts while the other tests run


@pytest.fixture(scope="module")
def server(tiny_chat_student):
    served = Served(HFEngine.load(str(tiny_chat_student)), "tiny", default_max_tokens=8)
    srv = ChatServer(served, "127.0.0.1", 0, quiet=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    with one_torch_thread():
        yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(api_key="unused", base_url=server.url, max_retries=0, timeout=60)


def test_models_lists_the_served_name(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_chat_completion_has_real_usage_counts(client, server):
    messages = [{"role": "user", "content": "How many apples? The answer is"}]
    resp = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0)
    assert resp.object == "chat.completion" and len(resp.choices) == 1
    assert isinstance(resp.choices[0].message.content, str)
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage.prompt_tokens == len(server.served.engine.encode(messages)) > 5
    assert 1 <= resp.usage.completion_tokens <= 6
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    # Greedy decoding is deterministic.
    again = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0)
    assert again.choices[0].message.content == resp.choices[0].message.content


def test_n_choices_seed_and_system_messages(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say something."}]
    kw = dict(model="tiny", messages=messages, max_tokens=8, temperature=1.0, n=3, seed=7)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert len(a.choices) == 3 and [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert 3 <= a.usage.completion_tokens <= 24  # summed over the 3 choices


def test_greedy_n_and_content_parts(client):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Say "}, {"type": "text", "text": "something."}]}]
    plain = [{"role": "user", "content": "Say something."}]
    a = client.chat.completions.create(model="tiny", messages=parts, max_tokens=5, temperature=0, n=2)
    b = client.chat.completions.create(model="tiny", messages=plain, max_tokens=5, temperature=0)
    assert [c.message.content for c in a.choices] == [b.choices[0].message.content] * 2
    assert a.usage.prompt_tokens == b.usage.prompt_tokens


def test_stop_strings_cut_the_completion(client):
    messages = [{"role": "user", "content": "Count: a b c"}]
    free = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
    text = free.choices[0].message.content
    if len(text) < 2:
        pytest.skip("the random model stopped at once; nothing to cut")
    stop = text[1:3]
    cut = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_unknown_model_is_404_and_bad_requests_are_400(client, server):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="tiny", messages=[])
    with pytest.raises(openai.BadRequestError, match="context length"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=100_000)
    req = Request(server.url + "/chat/completions", data=b"{not json", headers={"Content-Type": "application/json"})
    with pytest.raises(HTTPError) as e:
        urlopen(req, timeout=30)
    assert e.value.code == 400 and "invalid request" in json.loads(e.value.read())["error"]["message"]


def test_cli_serve_process_answers():
    """`cotdistill serve` as its own process (the one the teach tests use) prints its URL and answers."""
    url = served_tiny()
    c = openai.OpenAI(api_key="unused", base_url=url, max_retries=0, timeout=60)
    assert [m.id for m in c.models.list().data] == [SERVED_NAME]
    resp = c.chat.completions.create(model=SERVED_NAME, messages=[{"role": "user", "content": "2 + 2?"}], max_tokens=4)
    assert resp.usage.completion_tokens >= 1 and resp.usage.prompt_tokens > 0
