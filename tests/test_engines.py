"""Generation engines: the registry; `cotdistill eval --engine openai` against the serve endpoint giving the
same predictions as the hf engine over the same tiny model; the openai engine against `cotdistill serve`."""

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

from cotdistill import evaluate as E
from cotdistill.engines import ENGINES, Completion, Request, make_engine
from cotdistill.engines.base import apply_stops
from cotdistill.engines.hf import HFEngine
from cotdistill.engines.openai import OpenAIEngine
from cotdistill.errors import CotdistillError
from cotdistill.serve import ChatServer, Served
from teach_support import CLI, SERVED_NAME, one_torch_thread, served_tiny, start_served_tiny

start_served_tiny()  # at import: the server starts while the other tests run


class ConstantEngine:
    """A complete engine in a few lines: every prompt is answered "The answer is 7. Done"."""

    name = "constant"

    def __init__(self, model: str, **options):
        self.model = model

    def generate(self, requests, *, max_new_tokens, answer_stop=True, stop=None, temperature=0.0, top_p=1.0,
                 num_beams=1, seed=None, on_result=None):
        out = []
        for i, r in enumerate(requests):
            text, reason = apply_stops("The answer is 7. Done", "stop", answer_stop=answer_stop, stop=stop)
            out.append(Completion(text, len(r.messages[0]["content"]), 6, reason, prompt=r.messages[0]["content"]))
            if on_result:
                on_result(i, out[-1])
        return out

    def close(self):
        pass


def test_a_new_engine_is_one_registry_line_and_evaluate_uses_it(monkeypatch, tmp_path, data_dir):
    assert {"hf", "openai"} <= set(ENGINES)
    monkeypatch.setitem(ENGINES, "constant", ConstantEngine)
    cfg = E.EvalConfig(model="any", dataset="svamp", limit=3, out=tmp_path / "e", engine="constant", quiet=True,
                       data_dir=data_dir)
    summary = E.evaluate(cfg)
    preds = [json.loads(x) for x in (tmp_path / "e" / "predictions.jsonl").read_text().splitlines()]
    assert summary.n == 3 and summary.engine == "constant:any@None" and summary.stopped_share == 1.0
    assert {(p["generation"], p["extracted"], p["stop_reason"]) for p in preds} == {("The answer is 7.", "7", "answer")}
    with pytest.raises(CotdistillError, match="unknown engine 'vlm'"):
        make_engine("vlm", "any")


@pytest.fixture(scope="module")
def varied_student(tmp_path_factory) -> Path:
    """A tiny random chat student with large weights: varied tokens, not one repeated id."""
    import torch
    from transformers import AutoModelForCausalLM

    from cotdistill.testing import make_tiny_student

    path = make_tiny_student(tmp_path_factory.mktemp("varied") / "student", chat_template=True)
    model = AutoModelForCausalLM.from_pretrained(path)
    torch.manual_seed(1)
    with torch.no_grad():
        for prm in model.parameters():
            if prm.dim() > 1:
                prm.normal_(0, 0.5)
    model.save_pretrained(path)
    return path


def test_eval_through_a_served_model_equals_eval_of_the_local_model(tmp_path, data_dir, varied_student):
    """`cotdistill eval --engine openai` against the serve endpoint == `--engine hf` on the same model (greedy)."""
    served = Served(HFEngine.load(str(varied_student)), "varied")
    server = ChatServer(served, "127.0.0.1", 0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    local, remote = tmp_path / "hf", tmp_path / "openai"
    env = os.environ | {"SERVE_KEY": "sk-never-written-123"}
    try:
        with one_torch_thread():  # one thread for both: the same kernels, the same float rounding
            E.evaluate(E.EvalConfig(model=str(varied_student), dataset="svamp", limit=5, out=local, max_new_tokens=12,
                                    batch_size=1, device="cpu", quiet=True, data_dir=data_dir))
            r = subprocess.run([CLI, "eval", "--engine", "openai", "--base-url", server.url, "--model", "varied",
                                "--api-key-env", "SERVE_KEY", "--dataset", "svamp", "--limit", "5",
                                "--max-new-tokens", "12", "--batch-size", "3", "--quiet", "--out", str(remote),
                                "--data-dir", str(data_dir)], capture_output=True, text=True, env=env)
    finally:
        server.shutdown()
        server.server_close()
        served.engine.close()
    assert r.returncode == 0, r.stderr
    a, b = ({p["id"]: p for p in map(json.loads, (d / "predictions.jsonl").read_text().splitlines())}
            for d in (local, remote))
    assert a.keys() == b.keys() and len(a) == 5 and len({p["generation"] for p in a.values()}) > 1
    for k in a:
        fields = ["generation", "extracted", "correct", "stopped", "stop_reason"]
        if a[k]["stop_reason"] != "answer":  # past its answer only a server goes on generating (and counting)
            fields.append("generated_tokens")
        assert {f: a[k][f] for f in fields} == {f: b[k][f] for f in fields}
    summary = json.loads((remote / "summary.json").read_text())
    assert summary["engine"] == f"openai:varied@{server.url}" and summary["n"] == 5
    prov = json.loads((remote / "provenance.json").read_text())
    assert prov["engine"] == {"name": "openai", "base_url": server.url, "model": "varied"}
    assert not any("sk-never-written" in f.read_text() for f in remote.iterdir())


def test_openai_engine_counts_tokens_and_names_server_failures():
    url = served_tiny()
    engine = OpenAIEngine(SERVED_NAME, base_url=url, retries=0)
    free = engine.generate([Request.question("2 + 2?")], max_new_tokens=6, answer_stop=False)[0]
    assert 1 <= free.completion_tokens <= 6 and free.prompt_tokens > 5 and free.finish_reason in ("stop", "length")
    with pytest.raises(CotdistillError, match="model 'nope' is not served at"):
        OpenAIEngine("nope", base_url=url, retries=0).generate([Request.question("hi")], max_new_tokens=2)
    with pytest.raises(CotdistillError, match="beam search"):
        engine.generate([Request.question("hi")], max_new_tokens=2, num_beams=2)
    closed = OpenAIEngine(SERVED_NAME, base_url="http://127.0.0.1:9/v1", retries=0, timeout=5)
    with pytest.raises(CotdistillError, match=r"server http://127.0.0.1:9/v1: Connection error"):
        closed.generate([Request.question("hi")], max_new_tokens=2)
    engine.close()


@pytest.mark.parametrize("flags, message", [
    (["--engine", "vllm"], "error: unknown engine 'vllm'"),
    (["--engine", "openai", "--base-url", "127.0.0.1:8000"], "error: --base-url '127.0.0.1:8000' is not an http(s) URL"),
])
def test_cli_bad_engine_options_are_one_error_line(flags, message, tmp_path):
    r = subprocess.run([CLI, "eval", "--model", "m", "--dataset", "svamp", "--out", str(tmp_path / "e"), *flags],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().startswith(message) and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("batching", ["continuous", "static"])
def test_gpu_batchings_give_the_pruned_loops_answers(varied_student, batching):
    """transformers' continuous batching and static-cache `generate` (the GPU options) vs our greedy loop:
    same tokens, same stops (fp32 on a CPU; transformers compiles the static decode step only on CUDA)."""
    from cotdistill.engines.base import Request

    questions = ["What is 2 + 3?", "Tom has 4 apples and buys 9 more. How many apples?", "Sam had 5 pens.", "x y z"]
    requests = [Request([{"role": "user", "content": q}]) for q in questions]
    pruned = HFEngine.load(str(varied_student), dtype="fp32", device="cpu")
    cont = HFEngine(pruned.model, pruned.tokenizer, batching=batching)
    for answer_stop in (True, False):
        a = pruned.generate(requests, max_new_tokens=16, answer_stop=answer_stop)
        b = cont.generate(requests, max_new_tokens=16, answer_stop=answer_stop)
        assert [(c.text, c.completion_tokens, c.finish_reason) for c in a] == \
               [(c.text, c.completion_tokens, c.finish_reason) for c in b]
    assert len({c.text for c in a}) > 1  # varied outputs, not one repeated token
    with pytest.raises(CotdistillError, match="unknown hf batching 'fast'"):
        HFEngine(pruned.model, pruned.tokenizer, batching="fast")
