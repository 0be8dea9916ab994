from transformers import AutoModelForCausalLM, AutoTokenizer


def test_tiny_student_loads_and_generates(tiny_student, tiny_chat_student):
    for path in (tiny_student, tiny_chat_student):
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        ids = tok("The answer is 12", return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
        assert out.shape[1] == ids["input_ids"].shape[1] + 3 or tok.eos_token_id in out[0]
        assert sum(p.numel() for p in model.parameters()) < 100_000
    assert AutoTokenizer.from_pretrained(tiny_chat_student).chat_template
