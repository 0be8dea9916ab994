"""Nothing of the user's destroyed, nothing lost silently: --overwrite limits, a teacher that could
not answer every question inside a study, empty completions, credentials in a base URL.

The teacher is a real OpenAI-compatible HTTP server on 127.0.0.1 (teach_support.FaultProxy with no
upstream: it answers every question correctly unless a test scripts a fault for it)."""

import json
from pathlib import Path

import pytest

from cotdistill import study
from cotdistill.cache import ResponseCache
from cotdistill.errors import CotdistillError
from cotdistill.teach import make_config, teach
from cotdistill.train import TrainConfig, prepare_out
from teach_support import QUESTIONS, SERVED_NAME, FaultProxy, fixture_golds

# ---------------------------------------------------------------------------- train --overwrite


def _train_cfg(out: Path, **over) -> TrainConfig:
    return TrainConfig(student="x", data="d.jsonl", out=out, **over)


def test_overwrite_never_removes_a_folder_train_did_not_make(tmp_path):
    mine = tmp_path / "project"
    (mine / "src").mkdir(parents=True)
    (mine / "src" / "main.py").write_text("print('precious')\n")
    with pytest.raises(CotdistillError, match="not made by cotdistill train"):
        prepare_out(_train_cfg(mine, overwrite=True))
    assert (mine / "src" / "main.py").read_text() == "print('precious')\n"


def test_a_failed_first_try_does_not_block_the_corrected_command(tmp_path):
    out = tmp_path / "run"
    assert prepare_out(_train_cfg(out, lr=1.0))[0] == "fresh"  # ... and then it failed (say, out of memory)
    assert prepare_out(_train_cfg(out, lr=1e-4))[0] == "fresh"  # corrected: no --overwrite needed
    assert json.loads((out / "run.json").read_text())["identity"]["lr"] == 1e-4


def test_a_different_run_with_work_done_needs_overwrite(tmp_path):
    out = tmp_path / "run"
    prepare_out(_train_cfg(out, lr=1.0))
    (out / "provenance.json").write_text('{"status": "done"}')
    with pytest.raises(CotdistillError, match="different training run.*--overwrite"):
        prepare_out(_train_cfg(out, lr=1e-4))
    assert prepare_out(_train_cfg(out, lr=1e-4, overwrite=True))[0] == "fresh"
    assert not (out / "provenance.json").exists()


# ---------------------------------------------------------------------------- the teacher


@pytest.fixture
def svamp_golds(data_dir):
    from cotdistill.benchmarks import load_benchmark

    return {e.question: e.gold for e in load_benchmark("svamp", "train", data_dir, limit=3)}


STUDY = """\
datasets: [svamp]
students: [{student}]
supervision:
  - {{teacher: "openai:{name}", level: 1, base_url: "{url}", limit: 3, retries: 1, backoff: 0.01, max_tokens: 16{extra}}}
train: {{epochs: 1, batch_size: 4, lr: 1.0e-3}}
eval: {{limit: 2, max_new_tokens: 4, batch_size: 2}}
"""


def _study(tmp_path, tiny_student, url, extra=""):
    path = tmp_path / "s.yaml"
    path.write_text(STUDY.format(student=tiny_student, name=SERVED_NAME, url=url, extra=extra))
    return study.load_study(path)


@pytest.fixture
def teacher_env(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("COTDISTILL_CACHE", str(tmp_path / "cache"))


def test_partial_teach_fails_the_cell_and_a_rerun_asks_only_the_missing_question(
        tmp_path, tiny_student, data_dir, svamp_golds, teacher_env):
    second = list(svamp_golds)[1]
    with FaultProxy(None, golds=svamp_golds) as proxy:
        proxy.script(second[:40], "500", "500")  # first try and its one retry
        cfg = _study(tmp_path, tiny_student, proxy.url)
        out = tmp_path / "run"
        study.run_study(cfg, out, data_dir=data_dir, report=False)
        assert study.study_status(out) == {"failed": 1}
        [err] = [json.loads(p.read_text()) for p in out.glob("jobs/teach-*/error.json")]
        assert "could not answer 1 request" in err["error"] and "allow_partial" in err["error"]
        assert not list(out.glob("jobs/train-*/done.json"))  # nothing trained on the short supervision
        n = len(proxy.log)

        study.run_study(cfg, out, data_dir=data_dir, report=False)
        asked = proxy.log[n:]
        assert len(asked) == 1 and second in asked[0]["question"]  # exactly the unanswered one
        assert study.study_status(out) == {"done": 1}
        sup = next(out.glob("supervision/*.jsonl"))
        assert len([line for line in sup.read_text().splitlines() if line.strip()]) == 3


def test_allow_partial_records_the_shortfall_in_results_and_report(tmp_path, tiny_student, data_dir, svamp_golds,
                                                                   teacher_env):
    second = list(svamp_golds)[1]
    with FaultProxy(None, golds=svamp_golds) as proxy:
        proxy.script(second[:40], "500", "500")
        cfg = _study(tmp_path, tiny_student, proxy.url, extra=", allow_partial: true")
        out = study.run_study(cfg, tmp_path / "run", data_dir=data_dir)
    [rec] = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert rec["status"] == "done" and rec["teach_failed"] == 1 and rec["train_examples"] <= 2
    assert "teach_failed" in (out / "results.csv").read_text().splitlines()[0]
    assert "Partial supervision" in (out / "report.md").read_text()


def _teach_cfg(tmp_path, url, **over):
    values = dict(dataset=str(QUESTIONS), teacher=f"openai:{SERVED_NAME}", level=1, out=tmp_path / "out.jsonl",
                  base_url=url, api_key="sk-test", cache=tmp_path / "cache.sqlite", max_tokens=6, backoff=0.01,
                  timeout=30, progress=False, limit=2)
    return make_config(**{**values, **over})


def test_an_empty_completion_is_retried_and_never_cached(tmp_path):
    tom = "Tom has 3 red apples"
    with FaultProxy(None, golds=fixture_golds()) as proxy:
        proxy.script(tom, "empty", "answer")
        result = teach(_teach_cfg(tmp_path, proxy.url))
        assert [e["action"] for e in proxy.log if tom in e["question"]] == ["empty", "answer"]
    assert result.counts.retried == 1 and result.counts.failed == 0 and result.counts.kept == 2
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        assert len(cache) == 2
        assert all(json.loads(r[0])["content"].strip() for r in cache._db.execute("SELECT response FROM responses"))


def test_an_empty_completion_after_all_retries_is_a_failure_asked_again_next_time(tmp_path):
    tom = "Tom has 3 red apples"
    with FaultProxy(None, golds=fixture_golds()) as proxy:
        proxy.script(tom, "empty", "empty")
        first = teach(_teach_cfg(tmp_path, proxy.url, retries=1))
        assert first.counts.failed == 1 and "empty completion" in first.failures[0]
        second = teach(_teach_cfg(tmp_path, proxy.url, retries=1))
    assert second.failures == [] and second.counts.answered == 1 and second.counts.cached == 1


def test_credentials_in_the_base_url_are_never_written(tmp_path):
    with FaultProxy(None, golds=fixture_golds()) as proxy:
        url = proxy.url.replace("http://", "http://alice:s3cret-pw@")
        proxy.script("Tom has 3", "400echo")
        teach(_teach_cfg(tmp_path, url))
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) >= 4  # out, all samples, provenance, cache
    for p in written:
        data = p.read_bytes()
        assert b"s3cret-pw" not in data and b"alice" not in data, p
