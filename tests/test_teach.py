"""`cotdistill teach`: prompts as data, verification, the supervision file, the cache across runs,
a local (hf:) teacher, an OpenAI-compatible teacher served by a real `cotdistill serve` process,
kill -9 and resume, and bad input stopped before any request is spent."""

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from cotdistill.data import load_supervision
from cotdistill.engines.base import apply_stops
from cotdistill.errors import CotdistillError
from cotdistill.prompts import LEVELS, formats, teacher_prompt
from cotdistill.teach import all_path, make_config, provenance_path, teach, trim_rationale
from teach_support import CLI, QUESTIONS, SERVED_NAME, FaultProxy, fixture_golds, one_torch_thread, request_id, served_tiny, start_served_tiny, teach_env

ASSETS = Path(__file__).parent / "assets" / "teach"
ROW_FIELDS = {"question_id", "question", "rationale", "extracted", "gold", "kind", "correct", "teacher", "level",
              "format", "sample", "prompt_hash", "usage"}

start_served_tiny()  # at import: the server starts while the other tests run


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    return served_tiny()


def _cfg(tmp_path, url, **over):
    values = dict(dataset=str(QUESTIONS), teacher=f"openai:{SERVED_NAME}", level=2, format="cot",
                  out=tmp_path / "out.jsonl", base_url=url, api_key="sk-test", cache=tmp_path / "cache.sqlite",
                  max_tokens=8, backoff=0.01, progress=False)
    values.update(over)
    return make_config(**values)


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- prompts


def test_every_level_format_and_family_renders_from_files():
    question = "Sam has 4 pens and buys 3 more. How many pens does Sam have?"
    seen = set()
    for kind in ("number", "choice", "boolean", "math"):
        lengths = []
        for level in LEVELS:
            for fmt in formats():
                p = teacher_prompt(kind, level, fmt)
                text = p.render(question)
                assert text.rstrip().endswith(f"Question: {question}\nSolution:")
                assert f"({level} of 6)" in text and f"Format ({fmt})" in text and "The answer is" in text
                assert not any(f"${name}" in text for name in [*p.fields, "question"])  # all filled in
                seen.add(p.hash)
            lengths.append(len(teacher_prompt(kind, level, "cot").fields["example_rationale"]))
        # examples are released rationales, typical of their level (tests/test_prompts.py), not hand-made to
        # grow 3x: the released levels' lengths do not rise strictly (MATH level 5 is shorter than level 4)
        assert lengths[0] < lengths[-1], kind  # level 1 terse ... 6 detailed
    assert len(seen) == 4 * len(LEVELS) * len(formats())
    assert set(formats()) == {"cot", "subquestions", "rar", "symbolic"}


def test_unknown_level_or_format_is_one_line_error():
    with pytest.raises(CotdistillError, match="level 7"):
        teacher_prompt("number", 7, "cot")
    with pytest.raises(CotdistillError, match="unknown rationale format 'symbolc'; did you mean symbolic"):
        teacher_prompt("number", 3, "symbolc")


def test_trim_rationale_ends_at_the_first_answer_sentence():
    assert trim_rationale(" 2 + 3 = 5. The answer is 5\nQuestion: next one") == "2 + 3 = 5. The answer is 5"
    assert trim_rationale("x = 3.5. The answer is 3.5. Then more text. The answer is 9") == "x = 3.5. The answer is 3.5."
    assert trim_rationale("no answer sentence here") == "no answer sentence here"
    # The hf teacher stops generating (and cuts) once the answer is stated: nothing kept is cut off.
    for text in ["2 + 3 = 5. The answer is 5\nQuestion: next", "x = 3.5. The answer is 3.5. Then more. The answer is 9"]:
        cut, reason = apply_stops(text, "length", answer_stop=True)
        assert reason == "answer" and trim_rationale(cut) == trim_rationale(text)
    assert apply_stops("So the answer is 3.5", "length", answer_stop=True) == ("So the answer is 3.5", "length")


# ----------------------------------------------------------------------------- hf: teacher


def test_hf_teacher_writes_a_verified_supervision_file_and_reruns_from_cache(tmp_path, tiny_chat_student):
    cfg = make_config(dataset=str(QUESTIONS), teacher=f"hf:{tiny_chat_student}", level=1, format="subquestions",
                      out=tmp_path / "hf.jsonl", cache=tmp_path / "c.sqlite", max_tokens=8, keep="all", progress=False,
                      batch_size=4)
    with one_torch_thread():
        first = teach(cfg)
    assert (first.counts.answered, first.counts.cached, first.counts.requests_sent) == (6, 0, 6)
    rows = _rows(cfg.out)
    assert len(rows) == 6 and all(ROW_FIELDS <= set(r) for r in rows)
    assert {r["teacher"] for r in rows} == {f"hf:{tiny_chat_student}"} and {r["format"] for r in rows} == {"subquestions"}
    assert all(r["usage"]["completion_tokens"] >= 1 and r["usage"]["prompt_tokens"] > 100 for r in rows)
    assert first.counts.kept == 6 and first.counts.rejected == sum(not r["correct"] for r in rows)
    sup = load_supervision(cfg.out)  # the data layer reads teach output as training data
    assert [r.id for r in sup.rows] == [f"fx/{i}" for i in range(1, 7)] and sup.rows[3].choices["B"] == "a dolphin"
    prov = json.loads(provenance_path(cfg.out).read_text())
    assert prov["counts"]["answered"] == 6 and prov["teacher"]["kind"] == "hf"
    assert "{question}" not in prov["prompts"]["number"]["template"] and "$question" in prov["prompts"]["number"]["template"]

    second = teach(cfg)
    assert (second.counts.answered, second.counts.cached, second.counts.requests_sent) == (0, 6, 0)
    assert _rows(cfg.out) == rows


# ----------------------------------------------------------------------------- openai: teacher (in process)


def test_openai_teacher_real_answers_flow_through_and_scripted_correct_ones_are_kept(tmp_path, server_url):
    import openai

    with FaultProxy(server_url, golds=fixture_golds()) as proxy:
        proxy.script("Tom has 3 red apples", "answer")
        proxy.script("Which of these is a mammal", "answer")
        result = teach(_cfg(tmp_path, proxy.url))
        assert len(proxy.chat_requests()) == 6 and result.counts.requests_sent == 6

    kept, every = _rows(tmp_path / "out.jsonl"), _rows(all_path(tmp_path / "out.jsonl"))
    assert [r["question_id"] for r in kept] == ["fx/1", "fx/4"] and all(r["correct"] for r in kept)
    assert [r["extracted"] for r in kept] == ["7", "B"]
    assert len(every) == 6 and all(r["status"] == "answered" and "messages" in r and "reason" in r for r in every)
    # Untouched rows carry exactly what the real server answers for the same request (greedy: deterministic).
    direct = openai.OpenAI(api_key="x", base_url=server_url, max_retries=0, timeout=60)
    for row in every:
        if row["question_id"] in ("fx/1", "fx/4"):
            continue
        resp = direct.chat.completions.create(model=SERVED_NAME, messages=row["messages"], max_tokens=8, temperature=0.0, top_p=1.0)
        assert row["raw"] == resp.choices[0].message.content
        assert row["usage"] == {"prompt_tokens": resp.usage.prompt_tokens, "completion_tokens": resp.usage.completion_tokens}
        assert row["correct"] is False
    assert result.counts.kept == 2 and result.counts.rejected == 4


def test_samples_and_reask(tmp_path, server_url):
    with FaultProxy(server_url, golds=fixture_golds()) as proxy:
        proxy.script("Tom has 3 red apples", "noanswer", "noanswer", "answer")
        result = teach(_cfg(tmp_path, proxy.url, dataset=str(QUESTIONS), limit=2, samples=2, temperature=0.9, seed=1, reask=1))
        ids = [e["id"] for e in proxy.chat_requests()]
    assert len(ids) == len(set(ids)) == 2 * 2 + 2  # 2 questions x 2 samples, then one re-ask each (none correct yet)
    kept = _rows(tmp_path / "out.jsonl")
    assert [(r["question_id"], r["sample"]) for r in kept] == [("fx/1", 2)]
    every = _rows(all_path(tmp_path / "out.jsonl"))
    assert sorted((r["question_id"], r["sample"]) for r in every) == [(f"fx/{q}", s) for q in (1, 2) for s in range(3)]
    assert result.counts.answered == 6


def test_bad_input_stops_before_any_request(tmp_path, server_url, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FaultProxy(server_url) as proxy:
        cases = [
            (dict(api_key=None), "no API key for teacher openai:tiny"),
            (dict(base_url="http://127.0.0.1:9/v1"), "cannot reach teacher endpoint http://127.0.0.1:9/v1"),
            (dict(teacher="openai:gpt-9"), "teacher model 'gpt-9' is not served at .* it has: tiny"),
            (dict(format="symbolc"), "unknown rationale format"),
            (dict(dataset=str(ASSETS / "no_gold.jsonl")), "no_gold.jsonl:1: no gold answer"),
            (dict(teacher="claude:x"), "must be openai:MODEL or hf:MODEL"),
            (dict(samples=3), "needs --temperature > 0"),
            (dict(dataset="svamq"), "unknown dataset 'svamq'"),
            (dict(out=tmp_path / "out.txt"), "must end in .jsonl"),
        ]
        for over, message in cases:
            with pytest.raises(CotdistillError, match=message):
                teach(_cfg(tmp_path, proxy.url, **over))
        with pytest.raises(CotdistillError, match="--level: Input should be less than or equal to 6"):
            _cfg(tmp_path, proxy.url, level=7)
        assert proxy.chat_requests() == []
    assert not (tmp_path / "out.jsonl").exists()


# ----------------------------------------------------------------------------- the CLI, end to end


def test_cli_teach_svamp_then_a_rerun_makes_zero_requests_and_the_key_is_never_written(tmp_path, server_url, data_dir):
    key = "sk-test-NEVER-WRITE-ME-42"
    out = tmp_path / "svamp.jsonl"
    cmd = [CLI, "teach", "--dataset", "svamp", "--split", "train", "--limit", "3", "--teacher", f"openai:{SERVED_NAME}",
           "--level", "3", "--format", "subquestions", "--out", str(out), "--keep", "all", "--max-tokens", "8",
           "--cache", str(tmp_path / "cache.sqlite"), "--data-dir", str(data_dir), "--price-in", "0.15", "--price-out", "0.6"]
    with FaultProxy(server_url) as proxy:
        first = subprocess.run(cmd, capture_output=True, text=True, env=teach_env(key) | {"OPENAI_BASE_URL": proxy.url}, timeout=120)
        assert first.returncode == 0, first.stderr
        assert len(proxy.chat_requests()) == 3 and "3 new, 0 cached" in first.stdout
        rows = _rows(out)
        # The same run again (in process, to save a CLI start-up): everything comes from the cache.
        again = teach(make_config(dataset="svamp", split="train", limit=3, teacher=f"openai:{SERVED_NAME}", level=3,
                                  format="subquestions", out=out, keep="all", max_tokens=8, cache=tmp_path / "cache.sqlite",
                                  data_dir=data_dir, price_in=0.15, price_out=0.6, base_url=proxy.url, api_key=key,
                                  progress=False))
        assert len(proxy.chat_requests()) == 3 and again.counts.requests_sent == 0 and again.counts.cached == 3
    assert _rows(out) == rows
    assert len({r["question_id"] for r in rows}) == 3 and all(r["question_id"].startswith("svamp/") for r in rows)
    assert {r["level"] for r in rows} == {3} and {r["format"] for r in rows} == {"subquestions"}
    prov = json.loads(provenance_path(out).read_text())
    assert prov["config"]["dataset"] == "svamp" and "api_key" not in prov["config"]
    assert prov["counts"]["cached"] == 3 and prov["cost"] > 0 and prov["new_cost"] == 0
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
    assert key not in first.stdout + first.stderr


def test_cli_kill_9_midway_then_resume_repeats_no_answered_request(tmp_path, server_url):
    cache = tmp_path / "cache.sqlite"
    out = tmp_path / "k.jsonl"
    cmd = [CLI, "teach", "--dataset", str(QUESTIONS), "--teacher", f"openai:{SERVED_NAME}", "--level", "1",
           "--out", str(out), "--max-tokens", "8", "--cache", str(cache), "--concurrency", "1", "--no-progress"]
    with FaultProxy(server_url, delay_s=0.2) as proxy:
        env = teach_env() | {"OPENAI_BASE_URL": proxy.url}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while _cached(cache) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        time.sleep(0.5)  # let the proxy log a request the killed run had already sent
        answered = _cached_request_ids(cache)
        answered_before = len(answered)
        assert 2 <= answered_before < 6 and not out.exists()
        first_run = len(proxy.chat_requests())
        assert answered <= {e["id"] for e in proxy.chat_requests()}

        # Re-run (in process, the same arguments: the same cache keys).
        done = teach(make_config(dataset=str(QUESTIONS), teacher=f"openai:{SERVED_NAME}", level=1, out=out, max_tokens=8,
                                 cache=cache, concurrency=1, base_url=proxy.url, api_key="sk-test-key", progress=False))
        second_run = [e["id"] for e in proxy.chat_requests()][first_run:]
    assert not answered & set(second_run)  # no answered prompt was asked twice
    assert len(second_run) == 6 - answered_before and len(set(second_run)) == len(second_run)
    assert (done.counts.answered, done.counts.cached) == (6 - answered_before, answered_before)
    assert len(_rows(all_path(out))) == 6


def _cached_request_ids(path: Path) -> set[str]:
    """The proxy's request ids (teach_support.request_id) of every request answered in the cache."""
    with sqlite3.connect(path, timeout=5) as db:
        requests = [json.loads(r[0]) for r in db.execute("SELECT request FROM responses")]
    bodies = [{"model": r["model"], "messages": r["messages"], **r["params"]} for r in requests]
    return {request_id(b) for b in bodies}


def _cached(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    except sqlite3.OperationalError:
        return 0  # table not created yet


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    res = subprocess.run([CLI, "teach", "--dataset", str(QUESTIONS), "--teacher", "openai:gpt-4o-mini", "--level", "3",
                          "--out", str(tmp_path / "x.jsonl"), "--cache", str(tmp_path / "c.sqlite")],
                         capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0
    assert res.stderr.startswith("error: no API key for teacher openai:gpt-4o-mini")
