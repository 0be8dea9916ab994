import json
import subprocess
import sys
from pathlib import Path

import pytest

from cotdistill import evaluate as E
from cotdistill import students
from cotdistill.engines import Request
from cotdistill.engines import hf as H
from cotdistill.engines.base import ANSWER_STATED, Completion
from cotdistill.engines.hf import HFEngine
from cotdistill.errors import CotdistillError
from cotdistill.kernels.linear import onednn_linear_available, packed_linears

CLI = str(Path(sys.executable).parent / "cotdistill")
ASSETS = Path(__file__).parent / "assets" / "train"


@pytest.mark.parametrize("text, stated", [
    ("So 3 + 4 = 7. The answer is 7.\n", True),
    ("The answer is 7. Next", True),
    ("The answer is 3.", False),  # may still become 3.5
    ("The answer is 3.5", False),
    ("the answer is (B)\n", True),
    ("No final statement. 7.\n", False),
])
def test_answer_stated_pattern(text, stated):
    assert (ANSWER_STATED.search(text) is not None) == stated


def test_bootstrap_interval_brackets_the_accuracy():
    lo, hi = E.bootstrap_ci([True] * 30 + [False] * 70)
    assert 0.2 < lo < 0.3 < hi < 0.4
    assert E.bootstrap_ci([True] * 5) == (1.0, 1.0)


def test_batched_left_padded_greedy_equals_one_at_a_time(tiny_chat_student):
    """Left padding + attention mask must not change greedy outputs."""
    engine = HFEngine.load(str(tiny_chat_student), dtype="fp32", device="cpu")
    questions = ["What is 2+3?", "Tom has 12 apples and eats 5 of them. How many are left now?", "7*8?"]
    requests = [Request.question(q) for q in questions]
    together = engine.generate(requests, max_new_tokens=12)
    alone = [engine.generate([r], max_new_tokens=12)[0] for r in requests]
    assert together == alone
    assert [c.prompt_tokens for c in together] == [len(students.encode_prompt(engine.tokenizer, q)) for q in questions]


def test_generation_split_reasons(tiny_chat_student):
    engine = HFEngine.load(str(tiny_chat_student), dtype="fp32", device="cpu")
    tok = engine.tokenizer
    end = students.end_token_id(tok)
    ids = tok("The answer is 5", add_special_tokens=False)["input_ids"]
    assert engine._completion([1, 2], ids + [end, end], True, []) == Completion("The answer is 5", 2, len(ids) + 1, "stop")
    assert engine._completion([1, 2], ids, True, []).finish_reason == "length"
    # stopped at its stated answer, then padded: cut right after the answer sentence, padding not counted
    stated = tok("The answer is 5. Then", add_special_tokens=False)["input_ids"]
    c = engine._completion([1, 2], stated + [tok.pad_token_id], True, [])
    assert (c.text, c.completion_tokens, c.finish_reason) == ("The answer is 5.", len(stated), "answer")
    assert engine._completion([1, 2], stated, False, []).finish_reason == "length"


def _eval(model, out, *extra):
    return [CLI, "eval", "--model", str(model), "--dataset", "svamp", "--limit", "6", "--out", str(out),
            "--max-new-tokens", "8", "--batch-size", "4", "--device", "cpu", "--quiet", *extra]


@pytest.mark.slow
def test_train_then_eval_through_the_cli_and_resume(tiny_chat_student, tmp_path, data_dir):
    run = tmp_path / "run"
    t = subprocess.run([CLI, "train", "--student", str(tiny_chat_student), "--data", str(ASSETS / "tiny.jsonl"),
                        "--out", str(run), "--batch-size", "8", "--epochs", "1", "--quiet"],
                       capture_output=True, text=True)
    assert t.returncode == 0, t.stderr
    out = tmp_path / "eval"
    e = subprocess.run(_eval(run, out, "--data-dir", str(data_dir)), capture_output=True, text=True)
    assert e.returncode == 0, e.stderr
    assert "accuracy" in e.stdout
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 6 and {"id", "prompt", "generation", "extracted", "correct", "generated_tokens",
                                "stopped"} <= set(preds[0])
    assert preds[0]["prompt"].endswith("<|im_start|>assistant\n")  # the training template
    summary = json.loads((out / "summary.json").read_text())
    for key in ("accuracy", "ci_low", "ci_high", "n", "correct", "mean_output_tokens", "max_output_tokens",
                "stopped_share", "tokens_per_s", "seconds"):
        assert key in summary
    assert summary["n"] == 6 and summary["ci_low"] <= summary["accuracy"] <= summary["ci_high"]
    assert (out / "provenance.json").is_file()

    # a killed evaluation: the torn last record is dropped and only the missing questions are redone
    lines = (out / "predictions.jsonl").read_text().splitlines()
    (out / "predictions.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])
    (out / "summary.json").unlink()
    cfg = E.EvalConfig(model=str(run), dataset="svamp", limit=6, out=out, max_new_tokens=8, batch_size=4,
                       device="cpu", quiet=True, data_dir=data_dir)
    assert E.evaluate(cfg).n == 6
    again = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in again) == sorted(r["id"] for r in preds)

    # a different evaluation in the same folder is refused
    with pytest.raises(CotdistillError, match="different evaluation.*--overwrite"):
        E.evaluate(cfg.model_copy(update={"beams": 2}))


def test_unknown_dataset_and_unfinished_model(tiny_student, tmp_path, data_dir):
    with pytest.raises(CotdistillError, match="unknown dataset"):
        E.evaluate(E.EvalConfig(model=str(tiny_student), dataset="svampp", out=tmp_path / "e", data_dir=data_dir))
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "run.json").write_text("{}")
    with pytest.raises(CotdistillError, match="unfinished training run"):
        E.evaluate(E.EvalConfig(model=str(unfinished), dataset="svamp", out=tmp_path / "e", data_dir=data_dir))


def test_pruned_greedy_equals_generate_when_rows_finish_at_different_steps(tiny_chat_student):
    """Rows that stop early leave the batch; the others must go on exactly as under `generate`."""
    import torch

    model, tok = students.load_student(tiny_chat_student, dtype="fp32", device="cpu")
    torch.manual_seed(1)
    with torch.no_grad():  # larger random weights: varied tokens instead of one repeated id
        for prm in model.parameters():
            if prm.dim() > 1:
                prm.normal_(0, 0.5)
    qs = ["What is 2+3?", "Tom has 12 apples. He eats 5. Left?", "7*8?", "A train goes 60 km in 2 hours. Speed?"]
    chat = [students.encode_prompt(tok, q) for q in qs]
    shared = H._common_prefix(chat)
    assert shared > 0  # the chat template's start: computed once, then [prefix | padding | own tokens]
    for prompts in (chat, [p[shared:] for p in chat]):  # with and without a shared prefix
        _check_pruned_against_generate(model, tok, prompts)


def _check_pruned_against_generate(model, tok, prompts):
    import torch

    width = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    free = H._greedy_pruned(model, tok, prompts, [10**9], max_new_tokens=16, answer_stop=False)  # never generated: no row stops
    stop = free[0][3]  # row 0 stops at its 4th token; rows without this token run on
    ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16, do_sample=False, eos_token_id=[stop],
                         pad_token_id=tok.pad_token_id, top_p=None, top_k=None, temperature=None)
    # one prefill of the whole batch, and prompts prefilled in groups of 2 whose caches are merged
    for rows in (len(prompts), 2):
        pruned = H._greedy_pruned(model, tok, prompts, [stop], max_new_tokens=16, answer_stop=False, prefill_rows=rows)
        assert len(pruned[0]) == 4 and len({len(r) for r in pruned}) > 1 and max(map(len, pruned)) == 16
        for row, new in zip(ref, pruned):
            assert row[width:].tolist()[: len(new)] == new


def test_beam_search_runs_through_generate(tiny_chat_student):
    engine = HFEngine.load(str(tiny_chat_student), dtype="fp32", device="cpu")
    out = engine.generate([Request.question(q) for q in ["What is 2+3?", "7*8?"]], max_new_tokens=6, num_beams=3)
    assert len(out) == 2 and all(0 < c.completion_tokens <= 6 and c.finish_reason in ("stop", "answer", "length")
                                 for c in out)


def test_common_prefix_leaves_each_prompt_a_token_of_its_own():
    assert H._common_prefix([[1, 2, 3], [1, 2, 4]]) == 2
    assert H._common_prefix([[1, 2, 3], [1, 2]]) == 1
    assert H._common_prefix([[1, 2, 3], [1, 2, 3]]) == 2
    assert H._common_prefix([[5], [5]]) == 0 and H._common_prefix([[1, 2], [3, 2]]) == 0


def test_packed_linears_compute_the_same_layers_and_are_undone(tiny_chat_student):
    import torch

    model, tok = students.load_student(tiny_chat_student, dtype="fp32", device="cpu")
    ids = torch.tensor([students.encode_prompt(tok, "What is 2+3?")])
    with torch.inference_mode():
        ref = model(input_ids=ids).logits
        with packed_linears(model, min_numel=0):
            patched = [m for m in model.modules() if "forward" in vars(m)]
            packed = model(input_ids=ids).logits
    if onednn_linear_available():  # every linear layer ran through oneDNN, within float rounding
        assert len(patched) == sum(type(m) is torch.nn.Linear for m in model.modules()) > 0
        assert torch.allclose(ref, packed, atol=1e-5, rtol=1e-4)
    assert not [m for m in model.modules() if "forward" in vars(m)]


def test_finished_rows_are_replaced_by_the_last_live_rows():
    order = H._drop_rows([False, True, False, True, False, False]).tolist()
    assert order == [0, 4, 2, 5]  # rows 0 and 2 stay put; 4 and 5 fill the holes
    assert H._drop_rows([True, False]).tolist() == [1] and H._drop_rows([False, True]).tolist() == [0]


def test_pruned_greedy_equals_generate_with_sliding_window_layers():
    """Gemma-3-style layers (sliding window + full attention) keep the plain DynamicCache path."""
    import torch

    from cotdistill.testing import make_tiny_gemma3, make_tiny_tokenizer

    tok = make_tiny_tokenizer()
    model = make_tiny_gemma3(tok, seed=2).eval()
    with torch.no_grad():  # varied tokens, not one repeated id
        for prm in model.parameters():
            if prm.dim() > 1:
                prm.normal_(0, 0.1)
    prompts = [tok(q)["input_ids"] for q in ["What is 2+3?", "Tom has 12 apples. He eats 5. Left?", "7*8?"]]
    free = H._greedy_pruned(model, tok, prompts, [10**9], max_new_tokens=12, answer_stop=False)
    stop = free[1][2]
    pruned = H._greedy_pruned(model, tok, prompts, [stop], max_new_tokens=12, answer_stop=False, prefill_rows=1)
    assert len({len(r) for r in pruned}) > 1
    width = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = (ids != tok.pad_token_id).long()
    ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, eos_token_id=[stop],
                         pad_token_id=tok.pad_token_id, top_p=None, top_k=None, temperature=None)
    for row, new in zip(ref, pruned):
        assert row[width:].tolist()[: len(new)] == new


def test_protocol_and_decoding_are_part_of_the_evaluation(tiny_chat_student, tmp_path, data_dir):
    """--decoding paper is the paper's beam search (5 beams, its stops, no answer-stop); --protocol paper
    reads only 'The answer is X'; both are in the identity, the summary and every prediction's grading."""
    cfg = E.EvalConfig(model=str(tiny_chat_student), dataset="svamp", limit=2, out=tmp_path / "p", max_new_tokens=6,
                       data_dir=data_dir, quiet=True, decoding="paper", protocol="paper")
    assert (cfg.beams, cfg.stop_at_answer, cfg.max_new_tokens) == (5, False, 6)
    assert E.EvalConfig(model="m", dataset="svamp", out="o", decoding="paper").max_new_tokens == 640
    lenient = E.EvalConfig(model=str(tiny_chat_student), dataset="svamp", out="o")
    assert cfg.identity()["protocol"] == "paper" and lenient.identity()["protocol"] == "lenient"
    assert cfg.identity()["decoding"] == "paper" and lenient.identity()["decoding"] == "greedy"
    s = E.evaluate(cfg)
    assert (s.protocol, s.decoding, s.n) == ("paper", "paper", 2)
    preds = [json.loads(line) for line in (tmp_path / "p" / "predictions.jsonl").read_text().splitlines()]
    # a random model states no answer: under the paper's protocol nothing is read
    assert all(p["extracted"] is None and "protocol paper" in p["reason"] for p in preds)
    with pytest.raises(CotdistillError, match="leave --beams out"):
        E.EvalConfig(model="m", dataset="svamp", out="o", decoding="paper", beams=3)
    with pytest.raises(CotdistillError, match="grading protocol"):
        E.EvalConfig(model="m", dataset="svamp", out="o", protocol="strict")


def test_unknown_protocol_or_decoding_is_one_line(tmp_path):
    for flag, value in (("--protocol", "strict"), ("--decoding", "sampling")):
        r = subprocess.run([CLI, "eval", "--model", "m", "--dataset", "svamp", "--out", str(tmp_path / "o"), flag, value],
                           capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert value in r.stderr and not (tmp_path / "o").exists()
