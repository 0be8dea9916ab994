import pytest

from cotdistill import students
from cotdistill.errors import CotdistillError


def test_alpaca_prompt_without_chat_template(tiny_student):
    tok = students.load_tokenizer(tiny_student)
    assert students.build_prompt(tok, "What is 2+3?") == "### Instruction:\nWhat is 2+3?\n\n### Response:\n"
    assert students.end_token_id(tok) == tok.eos_token_id == tok.convert_tokens_to_ids("</s>")
    ids = students.encode_prompt(tok, "What is 2+3?")
    assert ids == tok(students.build_prompt(tok, "What is 2+3?"))["input_ids"]  # with the tokenizer's usual specials


def test_chat_prompt_and_end_of_turn_token(tiny_chat_student):
    tok = students.load_tokenizer(tiny_chat_student)
    prompt = students.build_prompt(tok, "What is 2+3?")
    assert prompt == "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert students.end_token_id(tok) == im_end
    resp = students.encode_response(tok, " Add them. The answer is 5 ")
    assert resp[-1] == im_end and resp.count(im_end) == 1
    assert tok.decode(resp[:-1]) == "Add them. The answer is 5"
    # the prompt's ids are exactly the template text's ids: no extra BOS added on top of the template
    assert students.encode_prompt(tok, "What is 2+3?") == tok(prompt, add_special_tokens=False)["input_ids"]


def test_load_student_sets_generation_stop_tokens(tiny_chat_student):
    model, tok = students.load_student(tiny_chat_student, dtype="fp32", device="cpu")
    assert str(model.dtype) == "torch.float32" and model.device.type == "cpu"
    stops = model.generation_config.eos_token_id
    stops = stops if isinstance(stops, list) else [stops]
    assert students.end_token_id(tok) in stops


def test_bad_student_specs(tmp_path):
    with pytest.raises(CotdistillError, match="unknown student 'smolm2-135m'.*smollm2-135m"):
        students.resolve_student("smolm2-135m")
    with pytest.raises(CotdistillError, match="no config.json"):
        students.resolve_student(str(tmp_path))
    with pytest.raises(CotdistillError, match="does not exist"):
        students.resolve_student(str(tmp_path / "missing.gguf"))
    with pytest.raises(CotdistillError, match="unknown dtype"):
        students.resolve_dtype("int3", "cpu")


def test_dtype_auto_follows_hardware(monkeypatch):
    monkeypatch.setattr(students, "cpu_has_native_bf16", lambda: True)
    assert students.resolve_dtype("auto", "cpu") == "bfloat16"
    monkeypatch.setattr(students, "cpu_has_native_bf16", lambda: False)
    assert students.resolve_dtype("auto", "cpu") == "float32"
    assert students.resolve_dtype("bf16", "cpu") == "bfloat16"
