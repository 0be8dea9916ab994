"""The SQLite teacher cache: keys, persistence, sharing between processes, surviving kill -9."""

import signal
import sqlite3
import subprocess
import sys

import pytest

from cotdistill.cache import ResponseCache, default_cache_path, request_key
from cotdistill.errors import CotdistillError


def _request(**over):
    req = {
        "teacher": "openai",
        "endpoint": "http://127.0.0.1:8000/v1",
        "model": "m",
        "messages": [{"role": "user", "content": "Q?"}],
        "params": {"temperature": 0.0, "top_p": 1.0, "max_tokens": 64, "seed": None},
        "sample": 0,
    }
    req.update(over)
    return req


def test_key_is_stable_and_covers_everything_that_changes_the_answer():
    base = request_key(_request())
    assert base == request_key(_request()) == request_key(dict(reversed(list(_request().items()))))
    variants = [
        _request(model="other"),
        _request(endpoint="https://api.openai.com/v1"),
        _request(teacher="hf"),
        _request(sample=1),
        _request(messages=[{"role": "user", "content": "Q? "}]),
        _request(params={"temperature": 0.7, "top_p": 1.0, "max_tokens": 64, "seed": None}),
        _request(params={"temperature": 0.0, "top_p": 1.0, "max_tokens": 65, "seed": None}),
        _request(params={"temperature": 0.0, "top_p": 1.0, "max_tokens": 64, "seed": 3}),
    ]
    keys = {request_key(v) for v in variants}
    assert base not in keys and len(keys) == len(variants)


def test_put_get_persist_and_first_answer_wins(tmp_path):
    path = tmp_path / "sub" / "c.sqlite"
    req = _request()
    key = request_key(req)
    with ResponseCache(path) as cache:
        assert cache.get(key) is None and not cache.has(key) and len(cache) == 0
        cache.put(key, req, {"content": "The answer is 1", "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
        cache.put(key, req, {"content": "The answer is 2"})  # a concurrent run's duplicate: ignored
        assert cache.get(key)["content"] == "The answer is 1"
    with ResponseCache(path) as again:
        assert again.get(key)["usage"] == {"prompt_tokens": 3, "completion_tokens": 2}
        assert again.keys() == {key} and len(again) == 1
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_two_open_caches_share_committed_answers(tmp_path):
    a, b = ResponseCache(tmp_path / "c.sqlite"), ResponseCache(tmp_path / "c.sqlite")
    key = request_key(_request())
    a.put(key, _request(), {"content": "x"})
    assert b.get(key) == {"content": "x"}  # visible at once, no close needed
    a.close(), b.close()


def test_a_commit_survives_kill_9(tmp_path):
    """Each put is durable on return: a process SIGKILLed right after loses nothing."""
    path = tmp_path / "c.sqlite"
    code = (
        "import os, signal\n"
        "from cotdistill.cache import ResponseCache, request_key\n"
        f"c = ResponseCache({str(path)!r})\n"
        "for i in range(5):\n"
        "    r = {'sample': i}\n"
        "    c.put(request_key(r), r, {'content': str(i)})\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL
    with ResponseCache(path) as cache:
        assert len(cache) == 5
        assert cache.get(request_key({"sample": 3})) == {"content": "3"}


def test_a_file_that_is_not_a_cache_is_a_one_line_error(tmp_path):
    bad = tmp_path / "c.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CotdistillError, match="cannot open teacher cache .*c.sqlite"):
        ResponseCache(bad)


def test_default_location_follows_the_environment(monkeypatch, tmp_path):
    """$COTDISTILL_CACHE is a folder (for models too); the teacher cache is a file inside it."""
    monkeypatch.setenv("COTDISTILL_CACHE", str(tmp_path / "c"))
    assert default_cache_path() == tmp_path / "c" / "teach.sqlite"
    (tmp_path / "f").write_text("x")
    monkeypatch.setenv("COTDISTILL_CACHE", str(tmp_path / "f"))
    with pytest.raises(CotdistillError, match="COTDISTILL_CACHE .* must name a folder"):
        default_cache_path()
    monkeypatch.delenv("COTDISTILL_CACHE")
    assert default_cache_path().name == "teach.sqlite" and ".cache" in default_cache_path().parts
