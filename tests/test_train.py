import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cotdistill import students
from cotdistill import train as T
from cotdistill.errors import CotdistillError
from cotdistill.kernels import loss as K

ASSETS = Path(__file__).parent / "assets" / "train"
CLI = str(Path(sys.executable).parent / "cotdistill")
PAIRS = [("Tom has 3 apples and buys 7 more. How many apples?", "3 + 7 = 10. The answer is 10"),
         ("What is 12 times 2?", "12 * 2 = 24. The answer is 24")]


def _cfg(student, out, **kw):
    base = dict(student=str(student), data=str(ASSETS / "tiny.jsonl"), out=out, batch_size=4, epochs=1, quiet=True,
                dtype="fp32", device="cpu")
    return T.TrainConfig(**(base | kw))


def test_labels_mask_the_prompt_and_keep_the_end_token(tiny_chat_student):
    tok = students.load_tokenizer(tiny_chat_student)
    examples, truncated, dropped = T.tokenize_pairs(tok, PAIRS, max_length=256)
    assert (truncated, dropped) == (0, 0)
    for (q, r), ex in zip(PAIRS, examples):
        prompt = students.encode_prompt(tok, q)
        response = students.encode_response(tok, r)
        assert ex["input_ids"] == prompt + response
        assert ex["labels"] == [-100] * len(prompt) + response
        assert ex["labels"][-1] == tok.convert_tokens_to_ids("<|im_end|>")


def test_too_long_rationales_are_truncated_and_counted(tiny_student):
    tok = students.load_tokenizer(tiny_student)
    prompt_len = len(students.encode_prompt(tok, PAIRS[0][0]))
    examples, truncated, dropped = T.tokenize_pairs(tok, PAIRS[:1] + [("x " * 400, "y")], max_length=prompt_len + 3)
    assert (truncated, dropped) == (1, 1)
    assert len(examples[0]["input_ids"]) == prompt_len + 3


def test_response_only_loss_equals_full_logits_loss(tiny_chat_student):
    """The lm_head pre-hook must give exactly the loss of full logits with prompt/padding masked."""
    model, tok = students.load_student(tiny_chat_student, dtype="fp32", device="cpu")
    examples, _, _ = T.tokenize_pairs(tok, PAIRS, 256)
    batch = T.PadCollator(tok.pad_token_id)(examples)
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    head = K.ResponseOnlyHead(model)
    ours = T.response_loss(model, head, batch, None)
    ours.backward()
    g_ours = model.model.layers[0].mlp.up_proj.weight.grad.clone()
    model.zero_grad()
    head.remove()
    full = model(**batch).loss  # transformers' own shifted, masked mean over all positions
    full.backward()
    assert torch.allclose(ours, full, atol=1e-5)
    assert torch.allclose(g_ours, model.model.layers[0].mlp.up_proj.weight.grad, atol=1e-6)


@pytest.mark.parametrize("fused", [True, False])
def test_response_only_head_gives_the_full_logits_gradients(tiny_chat_student, fused):
    """Both paths (chunked fused loss; gathered logits) match the model's own loss, tied embedding included."""
    model, tok = students.load_student(tiny_chat_student, dtype="fp32", device="cpu")
    batch = T.PadCollator(tok.pad_token_id)(T.tokenize_pairs(tok, PAIRS, 256)[0])
    model(**batch).loss.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    head = K.ResponseOnlyHead(model, fused=fused)
    assert head.fused == fused
    T.response_loss(model, head, batch, None).backward()
    for n, p in model.named_parameters():
        assert not p.grad.is_sparse and torch.allclose(p.grad, ref[n], atol=1e-6), n
    T.response_loss(model, head, batch, None).backward()  # gradient accumulation adds a second, equal one
    for n, p in model.named_parameters():
        assert not p.grad.is_sparse and torch.allclose(p.grad, 2 * ref[n], atol=1e-6), n
    emb = model.get_input_embeddings()
    assert ("forward" in vars(emb)) == fused  # the tied lookup adds its rows into the head's gradient
    head.remove()
    assert "forward" not in vars(emb)


def test_tied_scaled_embedding_gradient_lands_in_the_head_gradient():
    """Gemma-style scaled, tied embedding with a padding row: the replaced lookup keeps every gradient."""
    from cotdistill.testing import make_tiny_gemma3, make_tiny_tokenizer

    tok = make_tiny_tokenizer()
    model = make_tiny_gemma3(tok, seed=3)
    emb = model.get_input_embeddings()
    assert emb.weight is model.get_output_embeddings().weight and emb.padding_idx == tok.pad_token_id
    assert K._tied_lookup_scale(emb, model.get_output_embeddings()) is emb.embed_scale
    batch = T.PadCollator(tok.pad_token_id)(T.tokenize_pairs(tok, PAIRS, 256)[0])
    assert (batch["input_ids"] == tok.pad_token_id).any()  # padding looked up: its row must get no lookup gradient
    model(**batch).loss.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    head = K.ResponseOnlyHead(model)
    assert "forward" in vars(emb)
    for k in (1, 2):  # and gradient accumulation
        T.response_loss(model, head, batch, None).backward()
        for n, p in model.named_parameters():
            assert torch.allclose(p.grad, k * ref[n], atol=1e-5), n
    head.remove()
    assert "forward" not in vars(emb)


def test_tied_lookup_adds_into_the_head_gradient_in_place():
    """The head's [V, H] gradient becomes .grad without a copy, with the lookup's rows added into it."""

    class Sink(list):
        def pop(self, *a):
            grad = super().pop(*a)
            self.popped = grad.data_ptr()  # not the tensor: a reference kept here would make autograd copy it
            return grad

    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(50, 16))
    head = torch.nn.Linear(16, 50, bias=False)
    head.weight = weight
    ids, target = torch.tensor([3, 7, 7, 0, 49]), torch.tensor([1, 2, 3, 4, 5])
    sink = Sink()
    x = K._tied_lookup_function().apply(ids, weight, None, 0, sink)
    K.chunked_linear_cross_entropy(torch.tanh(x), head, target, sink=sink).backward()
    assert not sink and sink.popped == weight.grad.data_ptr()
    ours = weight.grad.clone()
    weight.grad = None
    x = torch.nn.functional.embedding(ids, weight, padding_idx=0)
    torch.nn.functional.cross_entropy(head(torch.tanh(x)), target, reduction="sum").backward()
    assert torch.allclose(ours, weight.grad, atol=1e-6)


def test_chunked_linear_cross_entropy_without_rows():
    head = torch.nn.Linear(16, 50)
    hidden = torch.randn(0, 16, requires_grad=True)
    loss = K.chunked_linear_cross_entropy(hidden, head, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.detach().item() == 0 and not head.weight.grad.any() and not head.bias.grad.any()


@pytest.mark.parametrize("softcap, bias, vocab", [(None, False, 50), (30.0, True, 50), (None, False, 128)])
def test_chunked_linear_cross_entropy_matches_autograd(softcap, bias, vocab):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, vocab, bias=bias)
    hidden = torch.randn(37, 16, requires_grad=True)
    target = torch.randint(0, vocab, (37,))
    params = [hidden, head.weight] + ([head.bias] if bias else [])
    logits = head(hidden)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    ref = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
    ref_grads = torch.autograd.grad(ref * 0.5, params)
    ours = K.chunked_linear_cross_entropy(hidden, head, target, softcap, chunk=5)  # 8 chunks, the last short
    grads = torch.autograd.grad(ours * 0.5, params)
    assert torch.allclose(ours, ref, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-5)


def test_column_max_in_two_stages_is_the_max():
    z = torch.randn(128, 7)
    assert torch.equal(K._column_max(z), z.amax(dim=0, keepdim=True))
    assert torch.equal(K._column_max(z[:100]), z[:100].amax(dim=0, keepdim=True))


def test_gradient_checkpointing_and_random_order_train(tiny_chat_student, tmp_path):
    plain = T.train(_cfg(tiny_chat_student, tmp_path / "a", group_by_length=False))
    ckpt = T.train(_cfg(tiny_chat_student, tmp_path / "b", group_by_length=False, gradient_checkpointing=True))
    assert ckpt.final_loss == pytest.approx(plain.final_loss, rel=1e-4)


def test_row_slices_keep_every_row_once_within_the_budget():
    lengths = [5, 9, 3, 9, 7]
    width = max(lengths)
    ids = torch.tensor([[10 * r + c + 1 if c < n else 0 for c in range(width)] for r, n in enumerate(lengths)])
    mask = (ids != 0).long()
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.where(mask == 1, ids, -100)}
    assert T.row_slices(batch, 45) == [batch]  # fits: left whole
    parts = T.row_slices(batch, 18)
    assert [p["input_ids"].shape for p in parts] == [(2, 9), (2, 7), (1, 3)]  # longest first, cut to own width
    rows = sorted(tuple(r[m == 1].tolist()) for p in parts for r, m in zip(p["input_ids"], p["attention_mask"]))
    assert rows == sorted(tuple(r[m == 1].tolist()) for r, m in zip(ids, mask))
    for p in parts:
        assert torch.equal(p["labels"], torch.where(p["attention_mask"] == 1, p["input_ids"], -100))
    assert [p["input_ids"].shape[0] for p in T.row_slices(batch, 4)] == [1] * 5  # rows wider than the budget go alone


def test_recast_linears_give_autocast_gradients_without_keeping_bf16_weight_copies(tiny_chat_student):
    """bf16 autocast: the same loss and bit-identical gradients, and no bf16 weight copy saved for the backward."""
    from cotdistill.kernels.recast import recast_linears

    model, tok = students.load_student(tiny_chat_student, dtype="fp32", device="cpu")
    batch = T.PadCollator(tok.pad_token_id)(T.tokenize_pairs(tok, PAIRS, 256)[0])
    head = K.ResponseOnlyHead(model)
    params = {q.untyped_storage().data_ptr() for q in model.parameters()}

    def run():
        saved = {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:  # the fp32 weights live anyway
                saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = T.response_loss(model, head, batch, None)
        loss.backward()
        grads = {n: q.grad.clone() for n, q in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        return loss.item(), grads, sum(saved.values())

    loss, grads, saved = run()
    with recast_linears(model, skip=head.head):
        loss_r, grads_r, saved_r = run()
    assert loss_r == loss and all(torch.equal(grads[n], grads_r[n]) for n in grads)
    copies = sum(2 * m.weight.numel() for m in model.modules() if type(m) is torch.nn.Linear and m is not head.head)
    assert saved - saved_r == copies
    assert not any("forward" in vars(m) for m in model.modules() if type(m) is torch.nn.Linear)  # undone


def test_only_a_right_padded_cpu_batch_drops_its_attention_mask():
    right = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert T._right_padded_on_cpu(right) and T._right_padded_on_cpu(torch.ones(2, 3, dtype=torch.long))
    assert not T._right_padded_on_cpu(right.flip(1))  # left padding: a real token would attend to a pad


def test_row_slices_train_the_same_weights_as_whole_batches(tiny_chat_student, tmp_path):
    """Forwards capped at a few positions (one row each) end at the weights of whole padded batches."""
    from transformers import AutoModelForCausalLM

    whole = T.train(_cfg(tiny_chat_student, tmp_path / "whole", max_forward_tokens=10**6, save_steps=2))
    sliced = T.train(_cfg(tiny_chat_student, tmp_path / "sliced", max_forward_tokens=40, save_steps=2))
    assert sliced.train_loss == pytest.approx(whole.train_loss, rel=1e-5) and sliced.tokens == whole.tokens
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "whole").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "sliced").state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert any((a[k] - AutoModelForCausalLM.from_pretrained(tiny_chat_student).state_dict()[k]).abs().max() > 1e-4
               for k in a)  # and training did move them


def test_train_save_load_and_idempotence(tiny_chat_student, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    r = T.train(_cfg(tiny_chat_student, out))
    assert r.n_examples == 16 and r.steps == 4 and r.tokens > 0 and not r.already_done
    AutoModelForCausalLM.from_pretrained(out)  # plain transformers loads the run folder
    curve = [json.loads(x) for x in (out / "loss_curve.jsonl").read_text().splitlines()]
    assert [c["step"] for c in curve] == [1, 2, 3, 4] and (out / "loss_curve.png").stat().st_size > 0
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["status"] == "done" and prov["result"]["n_examples"] == 16 and "torch" in prov["versions"]
    assert not (out / "checkpoints").exists()
    again = T.train(_cfg(tiny_chat_student, out))
    assert again.already_done and again.final_loss == r.final_loss
    with pytest.raises(CotdistillError, match="different training run.*--overwrite"):
        T.train(_cfg(tiny_chat_student, out, lr=1e-4))
    assert T.train(_cfg(tiny_chat_student, out, lr=1e-4, overwrite=True)).final_loss != r.final_loss


def test_lora_run_saves_a_merged_plain_model(tiny_student, tmp_path):
    from transformers import AutoModelForCausalLM

    T.train(_cfg(tiny_student, tmp_path / "lora", lora=True, lora_r=4))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "lora")
    assert not any("lora" in name for name, _ in model.named_parameters())


@pytest.mark.parametrize("content, message", [
    ("", "no examples|empty"),
    ('{"question": "q"}\n', "rationale"),
    ("not json\n", "line 1|JSON|json"),
])
def test_bad_training_data(tiny_student, tmp_path, content, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    with pytest.raises(CotdistillError, match=message):
        T.train(_cfg(tiny_student, tmp_path / "run", data=str(bad)))
    assert not (tmp_path / "run").exists()  # nothing written for bad input


def test_unknown_data_name(tiny_student, tmp_path, data_dir):
    with pytest.raises(CotdistillError, match="svamp/chatgpt/level9|unknown"):
        T.train(_cfg(tiny_student, tmp_path / "run", data="svamp/chatgpt/level9", data_dir=data_dir))


def _cli_train(student, out, *extra):
    return [CLI, "train", "--student", str(student), "--data", str(ASSETS / "tiny.jsonl"), "--out", str(out),
            "--limit", "8", "--batch-size", "2", "--epochs", "2", "--save-steps", "2", "--dtype", "fp32",
            "--device", "cpu", "--quiet", *extra]


@pytest.mark.slow
def test_resume_after_kill_ends_where_an_uninterrupted_run_ends(tiny_chat_student, tmp_path):
    ref = T.train(_cfg(tiny_chat_student, tmp_path / "ref", limit=8, batch_size=2, epochs=2, save_steps=2))

    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli_train(tiny_chat_student, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while T.last_complete_checkpoint(out / "checkpoints") is None and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "provenance.json").exists()  # a killed run never looks finished

    resumable = _cfg(tiny_chat_student, out, limit=8, batch_size=2, epochs=2, save_steps=2)
    with pytest.raises(CotdistillError, match="unfinished run.*--resume"):
        T.train(resumable)
    resumed = subprocess.run(_cli_train(tiny_chat_student, out, "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    loss = json.loads((out / "provenance.json").read_text())["result"]["final_loss"]
    assert loss == pytest.approx(ref.final_loss, rel=1e-4)
    steps = [json.loads(x)["step"] for x in (out / "loss_curve.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def _kept_checkpoints(monkeypatch):
    """train() deletes its checkpoints when done and rotation keeps one: keep them all for inspection."""
    from cotdistill import checkpoints

    rmtree = T.shutil.rmtree
    monkeypatch.setattr(T.shutil, "rmtree", lambda p, **kw: None if Path(p).name == "checkpoints" else rmtree(p, **kw))
    import transformers.trainer

    monkeypatch.setattr(checkpoints, "_rotate", lambda trainer, run_dir: None)
    monkeypatch.setattr(transformers.trainer, "rotate_checkpoints", lambda *a, **kw: None)


def _checkpoint_contents(path: Path) -> dict:
    from safetensors.torch import load_file

    state = json.loads((path / "trainer_state.json").read_text())
    timing = {"train_runtime", "train_tokens_per_second"}  # wall-clock figures differ between any two runs
    state["log_history"] = [{k: v for k, v in e.items() if k not in timing} for e in state["log_history"]]
    return {"files": sorted(p.name for p in path.iterdir()), "weights": load_file(path / "model.safetensors"),
            "optimizer": torch.load(path / "optimizer.pt", weights_only=True),
            "scheduler": torch.load(path / "scheduler.pt", weights_only=True),
            "rng": torch.load(path / "rng_state.pth", weights_only=False),
            "state": {k: state[k] for k in ("global_step", "epoch", "log_history", "num_input_tokens_seen")}}


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if hasattr(a, "__array__"):
        import numpy as np

        return np.array_equal(a, b)
    return a == b


def test_checkpoints_written_while_training_hold_what_the_trainer_writes(tiny_chat_student, tmp_path, monkeypatch):
    """Weights and optimizer state are written by a thread during the next step; the step's optimizer update
    waits for it. A slowed-down writer still saves each step's own state, equal to the Trainer's own save."""
    from cotdistill import checkpoints

    _kept_checkpoints(monkeypatch)
    start = checkpoints.BackgroundWrite.start

    def slow_start(self, write, then):
        def slow():
            time.sleep(0.3)  # far longer than a tiny step: a missing wait would let the next update in
            write()
        start(self, slow, then)

    monkeypatch.setattr(checkpoints.BackgroundWrite, "start", slow_start)
    background = T.train(_cfg(tiny_chat_student, tmp_path / "bg", save_steps=1))
    monkeypatch.setattr(checkpoints, "ENABLED", False)
    reference = T.train(_cfg(tiny_chat_student, tmp_path / "sync", save_steps=1))
    assert background.final_loss == reference.final_loss and background.steps == 4
    for step in (1, 2, 3):
        a = _checkpoint_contents(tmp_path / "bg" / "checkpoints" / f"checkpoint-{step}")
        b = _checkpoint_contents(tmp_path / "sync" / "checkpoints" / f"checkpoint-{step}")
        assert a["files"] == b["files"] and a["state"] == b["state"]
        for part in ("weights", "optimizer", "scheduler", "rng"):
            assert _same(a[part], b[part]), (step, part)
    # the final model is saved right after the last step: no checkpoint of it is written only to be deleted
    assert not (tmp_path / "bg" / "checkpoints" / "checkpoint-4").exists()
    assert not (tmp_path / "sync" / "checkpoints" / "checkpoint-4").exists()


def test_a_checkpoint_is_complete_only_after_its_large_parts(tiny_chat_student, tmp_path, monkeypatch):
    """trainer_state.json (what resuming looks for) is written after the weights and optimizer state, and a
    failed write surfaces in the training thread with the older checkpoint kept."""
    from cotdistill import checkpoints

    calls = {"n": 0}
    save = torch.save

    def failing_save(obj, f, *a, **kw):
        if str(f).endswith("optimizer.pt"):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(28, "No space left on device")
        return save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(CotdistillError, match="no space left"):
        T.train(_cfg(tiny_chat_student, tmp_path / "run", save_steps=1))
    ckpts = tmp_path / "run" / "checkpoints"
    assert T.last_complete_checkpoint(ckpts).name == "checkpoint-1"
    assert not (ckpts / "checkpoint-2" / "trainer_state.json").exists()
    monkeypatch.setattr(torch, "save", save)
    resumed = T.train(_cfg(tiny_chat_student, tmp_path / "run", save_steps=1, resume=True))
    assert resumed.steps == 4 and checkpoints.ENABLED
