"""Fault tests: `teach` against a real fault-injecting HTTP proxy in front of a real `cotdistill serve`.

Each fault is either retried (429 with Retry-After, 500, malformed JSON, an HTML body, a dropped
connection, a stall past the timeout) or recorded (no answer sentence, a request that keeps
failing, a bad request); nothing answered is lost, and a run that cannot go on stops with one clear
line."""

import json
import subprocess

import pytest

from cotdistill.cache import ResponseCache
from cotdistill.errors import CotdistillError
from cotdistill.teach import all_path, make_config, teach
from teach_support import CLI, QUESTIONS, SERVED_NAME, FaultProxy, fixture_golds, served_tiny, start_served_tiny, teach_env

TOM, BOX = "Tom has 3 red apples", "A box holds 12 pencils"

start_served_tiny()  # at import: the server starts while the other tests run


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    return served_tiny()


@pytest.fixture
def proxy(server_url):
    with FaultProxy(server_url, golds=fixture_golds(), stall_s=3.0) as p:
        yield p


def _cfg(tmp_path, url, **over):
    values = dict(dataset=str(QUESTIONS), teacher=f"openai:{SERVED_NAME}", level=1, out=tmp_path / "out.jsonl",
                  base_url=url, api_key="sk-test-fault-key", cache=tmp_path / "cache.sqlite", max_tokens=6,
                  backoff=0.01, timeout=30, progress=False, keep="all")
    values.update(over)
    return make_config(**values)


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _actions(proxy, part):
    return [e["action"] for e in proxy.log if part in e["question"]]


@pytest.mark.parametrize("fault", ["429", "500", "malformed", "html", "drop", "stall"])
def test_transient_fault_is_retried_and_the_answer_kept(tmp_path, proxy, fault):
    proxy.script(TOM, fault, "answer")
    timeout = 1.5 if fault == "stall" else 30
    result = teach(_cfg(tmp_path, proxy.url, limit=2, keep="correct", timeout=timeout))
    assert _actions(proxy, TOM) == [fault, "answer"]
    assert result.counts.failed == 0 and result.counts.retried == 1 and result.counts.answered == 2
    assert [(r["question_id"], r["correct"]) for r in _rows(tmp_path / "out.jsonl")] == [("fx/1", True)]
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        assert len(cache) == 2  # the retried answer and the untouched one, both committed
    tries = [e["t"] for e in proxy.log if TOM in e["question"]]
    if fault == "429":
        assert tries[1] - tries[0] >= 0.95  # waited the server's Retry-After: 1, not the 0.01 s back-off
    if fault == "stall":
        assert tries[1] - tries[0] >= 1.4  # gave up on the stalled request only at the 1.5 s timeout


def test_answer_without_answer_sentence_is_recorded_rejected_and_not_asked_again(tmp_path, proxy):
    proxy.script(TOM, "noanswer")
    first = teach(_cfg(tmp_path, proxy.url, limit=2, keep="correct"))
    assert first.counts.retried == 0 and first.counts.rejected == 2
    every = {r["question_id"]: r for r in _rows(all_path(tmp_path / "out.jsonl"))}
    assert every["fx/1"]["correct"] is False and every["fx/1"]["reason"] == "no 'The answer is X' sentence"
    assert every["fx/1"]["raw"].startswith("I would add")
    assert _rows(tmp_path / "out.jsonl") == []
    teach(_cfg(tmp_path, proxy.url, limit=2, keep="correct"))
    assert _actions(proxy, TOM) == ["noanswer"]  # paid for once, then served from the cache


def test_request_that_keeps_failing_is_recorded_others_kept_rerun_asks_only_it(tmp_path, proxy):
    proxy.script(BOX, "500", "500", "500")
    out = tmp_path / "out.jsonl"
    cmd = [CLI, "teach", "--dataset", str(QUESTIONS), "--teacher", f"openai:{SERVED_NAME}", "--level", "1", "--out", str(out),
           "--max-tokens", "6", "--cache", str(tmp_path / "cache.sqlite"), "--retries", "2", "--backoff", "0.01",
           "--keep", "all", "--base-url", proxy.url, "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=teach_env(), timeout=120)
    assert res.returncode == 3, res.stderr
    assert "warning: 1 requests failed after all retries (first: fx/2#0: gave up after 3 tries: HTTP 500" in res.stderr
    assert "re-run the same command to retry only those" in res.stderr
    assert [r["question_id"] for r in _rows(out)] == ["fx/1", "fx/3", "fx/4", "fx/5", "fx/6"]
    failed = [r for r in _rows(all_path(out)) if r["status"] == "failed"]
    assert [r["question_id"] for r in failed] == ["fx/2"] and "messages" in failed[0]
    n = len(proxy.log)

    result = teach(_cfg(tmp_path, proxy.url))
    assert result.failures == [] and result.counts.answered == 1 and result.counts.cached == 5
    assert [e["question"][:22] for e in proxy.log[n:]] == [BOX]
    assert len(_rows(out)) == 6


def test_bad_request_is_not_retried_and_an_echoed_key_is_redacted(tmp_path, proxy):
    proxy.script(TOM, "400echo")
    result = teach(_cfg(tmp_path, proxy.url, limit=2, api_key="sk-ECHOED-SECRET"))
    assert _actions(proxy, TOM) == ["400echo"] and result.counts.failed == 1
    (failed,) = [r for r in _rows(all_path(tmp_path / "out.jsonl")) if r["status"] == "failed"]
    assert "HTTP 400: bad request from Bearer ***" in failed["error"]
    assert all(b"ECHOED-SECRET" not in p.read_bytes() for p in tmp_path.iterdir() if p.is_file())


def test_revoked_key_midway_stops_with_a_clear_line_and_keeps_what_was_answered(tmp_path, proxy):
    proxy.script(BOX, "401")
    with pytest.raises(CotdistillError, match=r"teacher rejected the API key \(HTTP 401\)"):
        teach(_cfg(tmp_path, proxy.url, concurrency=1))
    assert not (tmp_path / "out.jsonl").exists()
    n = len(proxy.log)
    teach(_cfg(tmp_path, proxy.url, concurrency=1))
    assert TOM not in " ".join(e["question"] for e in proxy.log[n:])  # answered before the 401: cached


def test_endpoint_that_keeps_dropping_stops_the_run(tmp_path, proxy):
    proxy.script("", *["drop"] * 20)  # "" matches every question
    with pytest.raises(CotdistillError, match="stopped: 3 teacher requests in a row failed .*re-run the same command"):
        teach(_cfg(tmp_path, proxy.url, concurrency=1, retries=1, stop_after_failures=3))
    assert len(proxy.log) == 6  # 3 requests x 2 tries, then no more


def test_concurrency_and_requests_per_minute_limits(tmp_path, server_url):
    with FaultProxy(server_url, delay_s=0.3) as proxy:
        teach(_cfg(tmp_path, proxy.url, concurrency=2))
        assert proxy.max_in_flight <= 2 and len(proxy.log) == 6
    with FaultProxy(server_url) as proxy:
        teach(_cfg(tmp_path, proxy.url, limit=3, rpm=200, level=2))  # one start per 0.3 s (unlimited: all at once)
        starts = [e["t"] for e in proxy.log]
        assert len(starts) == 3 and starts[-1] - starts[0] >= 0.5
