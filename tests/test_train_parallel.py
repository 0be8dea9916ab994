"""Padding-free (packed) batches, the per-device batch shape, and two-process data-parallel training."""

import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cotdistill import students
from cotdistill import train as T
from cotdistill.errors import CotdistillError
from cotdistill.kernels import attention as A
from cotdistill.kernels import loss as K
from cotdistill.testing import make_tiny_gemma3

ASSETS = Path(__file__).parent / "assets" / "train"
PAIRS = [("Tom has 3 apples and buys 7 more. How many apples?", "3 + 7 = 10. The answer is 10"),
         ("What is 12 times 2?", "12 * 2 = 24. The answer is 24"),
         ("Sam had 5 pens and lost 2. How many are left?", "5 - 2 = 3. The answer is 3")]


def _cfg(student, out, **kw):
    base = dict(student=str(student), data=str(ASSETS / "tiny.jsonl"), out=out, batch_size=4, epochs=1, quiet=True,
                dtype="fp32", device="cpu")
    return T.TrainConfig(**(base | kw))


def _logits(model, batch):
    with torch.no_grad():  # use_cache=False as in training: transformers reads packing only without a cache
        return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_packed_rows_keep_attention_inside_each_example(tiny_chat_student, arch):
    """Example A's logits are the same packed alone or after B and C: nothing attends across examples."""
    model, tok = students.load_student(tiny_chat_student, dtype="fp32", device="cpu")
    if arch == "gemma3":  # sliding-window + full-attention layers
        model = make_tiny_gemma3(tok).eval()
    examples, _, _ = T.tokenize_pairs(tok, PAIRS, 256)
    a, rest = examples[0], examples[1:]
    alone = _logits(model, T.PackCollator()([a]))
    packed = T.PackCollator()(rest + [a])
    assert packed["input_ids"].shape[0] == 1 and packed["position_ids"][0, len(rest[0]["input_ids"])] == 0
    after = _logits(model, packed)[-len(a["input_ids"]):]
    assert torch.allclose(alone, after, atol=1e-5)
    # and the leak this guards against is real: without the boundaries, A's logits change
    plain = torch.arange(packed["input_ids"].shape[1])[None]
    with torch.no_grad():
        leaked = model(input_ids=packed["input_ids"], position_ids=plain, use_cache=False).logits[0]
    assert not torch.allclose(alone[1:], leaked[-len(a["input_ids"]) + 1:], atol=1e-3)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_varlen_attention_keeps_each_example_alone_without_a_mask(tiny_chat_student, arch):
    """kernels/attention.py (the packed-training attention): the packed row's logits for every example equal
    that example run alone, on the sliding-window layers too (tiny Gemma-3 window 4 < example lengths)."""
    model, tok = students.load_student(tiny_chat_student, dtype="fp32", device="cpu")
    if arch == "gemma3":
        model = make_tiny_gemma3(tok).eval()
    examples, _, _ = T.tokenize_pairs(tok, PAIRS, 256)
    alone = [_logits(model, T.PackCollator()([e])) for e in examples]  # the model's own attention, one at a time
    before = A.use_for_training(model)
    assert before is not None and model.config._attn_implementation == A.NAME
    batch = T.PackCollator()(examples)
    assert batch["cu_seq_lens_q"].tolist() == [0, *itertools.accumulate(len(e["input_ids"]) for e in examples)]
    with torch.no_grad():
        packed = model(**{k: batch[k] for k in ("input_ids", *T.PACKING_KEYS)}, use_cache=False).logits[0]
        derived = _logits(model, batch)  # boundaries read from the position ids alone
    assert torch.allclose(torch.cat(alone), packed, atol=1e-5)
    assert torch.allclose(packed, derived, atol=1e-6)
    A.restore(model, before)
    assert model.config._attn_implementation == before


def test_packed_loss_and_gradient_equal_the_padded_ones(tiny_chat_student):
    model, tok = students.load_student(tiny_chat_student, dtype="fp32", device="cpu")
    examples, _, _ = T.tokenize_pairs(tok, PAIRS, 256)
    head = K.ResponseOnlyHead(model)
    grads = []
    for collate in (T.PadCollator(tok.pad_token_id), T.PackCollator(), "varlen"):
        if collate == "varlen":  # the packed row through the training attention (kernels/attention.py)
            A.use_for_training(model)
            collate = T.PackCollator()
        batch = collate(examples)
        loss = T.response_loss(model, head, batch, None)
        loss.backward()
        grads.append((loss.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()))
        model.zero_grad()
    for loss, grad in grads[1:]:
        assert torch.allclose(grads[0][0], loss, atol=1e-5)
        assert torch.allclose(grads[0][1], grad, atol=1e-5)


def test_padding_free_training_ends_at_the_padded_loss(tiny_chat_student, tmp_path):
    """Same data order, same effective batch: the whole run's loss curve matches within float tolerance."""
    padded = T.train(_cfg(tiny_chat_student, tmp_path / "padded", padding_free=False))
    packed = T.train(_cfg(tiny_chat_student, tmp_path / "packed", padding_free=True))
    assert packed.final_loss == pytest.approx(padded.final_loss, rel=1e-4)
    assert packed.train_loss == pytest.approx(padded.train_loss, rel=1e-4)
    assert packed.tokens == padded.tokens  # non-padding tokens of the padded run = all tokens of the packed one


def test_batch_shape_accumulates_only_what_the_device_cannot_hold():
    assert T.batch_shape(64, 1, 8, None) == (8, 8)
    assert T.batch_shape(64, 1, 64, None) == (64, 1)
    assert T.batch_shape(64, 2, 16, None) == (16, 2)
    assert T.batch_shape(64, 1, 8, 2) == (32, 2)  # an explicit accumulation wins


def test_largest_fitting_halves_until_a_batch_fits():
    tried = []

    def fits(n):
        tried.append(n)
        return n <= 10

    assert T.largest_fitting(fits, 64) == 8 and tried == [64, 32, 16, 8]
    assert T.largest_fitting(lambda n: False, 4) is None


def test_liger_loss_kernel_is_refused_on_a_cpu():
    with pytest.raises(CotdistillError, match="CUDA only"):
        T.resolve_loss_kernel("liger", "cpu")
    assert T.resolve_loss_kernel("auto", "cpu") == "chunked"


def test_cuda_without_a_gpu_is_one_error_line(tiny_chat_student, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cli = str(Path(sys.executable).parent / "cotdistill")
    r = subprocess.run([cli, "train", "--student", str(tiny_chat_student), "--data", str(ASSETS / "tiny.jsonl"),
                        "--out", str(tmp_path / "run"), "--device", "cuda"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["error: --device cuda: CUDA is not available on this machine"]
    assert not (tmp_path / "run").exists()


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_two_gloo_processes_end_with_the_weights_of_one(tiny_chat_student, tmp_path):
    """torchrun --nproc_per_node 2 (DDP over gloo, per-device batch 2) = one process (batch 4), same order;
    the two processes run each batch as one-row slices (--max-forward-tokens), all-reducing once per batch."""
    args = ["train", "--student", str(tiny_chat_student), "--data", str(ASSETS / "tiny.jsonl"), "--batch-size", "4",
            "--epochs", "1", "--limit", "8", "--dtype", "fp32", "--device", "cpu", "--random-order", "--quiet",
            "--lr", "1e-3"]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    T.train(_cfg(tiny_chat_student, tmp_path / "one", limit=8, group_by_length=False, lr=1e-3))
    torchrun = str(Path(sys.executable).parent / "torchrun")
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    two = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", port, "-m", "cotdistill", *args,
                          "--out", str(tmp_path / "two"), "--max-forward-tokens", "90"], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    prov = json.loads((tmp_path / "two" / "provenance.json").read_text())
    assert (prov["world_size"], prov["per_device_batch"], prov["grad_accum"]) == (2, 2, 1)
    w1, w2 = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    start = _weights(tiny_chat_student)
    assert w1.keys() == w2.keys()
    for k in w1:
        assert not torch.equal(w1[k], start[k]) or "norm" in k  # training moved the weights
        assert torch.allclose(w1[k], w2[k], atol=1e-5), k
