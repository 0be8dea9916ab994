"""The grader on every answer kind, with real rationales copied from the released data files
(file named in each case), their quirks included."""

import threading
from pathlib import Path

import pytest

from cotdistill.errors import CotdistillError
from cotdistill.grade import extract_answer, grade, math_equal, states_answer

CSQA = {"A": "race track", "B": "populated areas", "C": "the desert", "D": "apartment", "E": "roadblock"}
AQUA = {"A": "5(√3 + 1)", "B": "6(√3 + √2)", "C": "7(√3 – 1)", "D": "8(√3 – 2)", "E": "None of these"}

NUMBER = [
    # (response, gold, expected extraction, correct)
    ("290.0 / 2.0 = 145.0. The answer is 145.0", "145", "145.0", True),  # svamp_human_annotation
    (" Divide the total number of bananas by the number of groups. The answer is 145", "145.0", "145", True),  # SVAMP_ChatGPT_level1
    ("The answer is 1,120 dollars.", "1120", "1120", True),
    ("Jerry's breakfast: 6 * 120 = 720. The answer is $1,120.", "1120", "1120", True),
    ("The answer is 50%.", "50", "50", True),
    ("The answer is -12", "-12", "-12", True),  # gsm_train_onlyans has negative golds
    ("The answer is 1,000,000", "1,000,000", "1000000", True),  # gsm_train_onlyans gold with separators
    ("The answer is 3/4", "0.75", "3/4", True),
    ("The answer is \\frac{3}{4}", "0.75", "3/4", True),
    ("The answer is five.", "5", "5", True),
    # SVAMP_ChatGPT_level1: the answer written as a calculation; the value is right of "="
    ("Subtract the number of balloons Jake brought from the number Allan brought. The answer is 5 - 3 = 2", "2", "2", True),
    ("The answer is 79 - (24 + 51) = 79 - 75 = 4", "4", "4", True),  # SVAMP_ChatGPT_level1
    # SVAMP_ChatGPT_level4: a typo in the anchor
    ("Then, 3 new apples grew on the tree, so add 3 apples: 2 + 3 = 5 apples now. The answers is 5.", "5", "5", True),
    # 0_SVAMP_chatgpt_level5RaR: no "The answer is" at all -> last number
    ("Add the 3 new apples that grew: 2 apples + 3 apples = 5 apples. Therefore, the total number of apples now on "
     "Rachel\u2019s tree is 5.", "5", "5", True),
    # SVAMP_llama_level3: the teacher corrects itself after "The answer is 3"
    ("The difference is 8 - 5 = ? The answer is 3, but the question asks for 'how much more', so the correct answer is 2",
     "2", "2", True),
    # SVAMP_gemini_level5: a wrong teacher rationale stays wrong
    ("4 apples - 2 apples = 2 apples.  2 apples + 3 apples = 5 apples. The answer is 5", "1", "5", False),
    # 0_SVAMP_chatgpt_level3RaR: 1/16 is not 16
    ("2 beads divided by 32 necklaces equals 1/16 bead per necklace. The answer is 1/16.", "16", "1/16", False),
    ("The answer is 18.0", "18", "18.0", True),
    ("The answer is 100001", "100000", "100001", False),  # no loose tolerance on big integers
    ("So 3+2=5. The answer is 5<|im_end|>Question: what is 2+2? The answer is 4", "5", "5", True),  # next turn ignored
    # SmolLM2-135M-Instruct on svamp/test/chal-4 (a real student output)
    ("There are 43 children who rode on the bus.\nThere are 21 children left on the bus.\nSo, 43 - 21 = 12 children got "
     "off the bus.\n#### 12\nThe answer is: 12<|im_end|>", "22", "12", False),
    ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n#### 18", "18", "18", True),  # GSM8K answer line
]

CHOICE = [
    ("The answer is B", CSQA, "B", "B", True),
    ("The answer is (B)", CSQA, "B", "B", True),
    ("The answer is B: populated areas", CSQA, "B", "B", True),
    ("The answer is B) 12", None, "B", "B", True),
    ("The answer is populated areas.", CSQA, "B", "B", True),  # the option's text
    ("Birds generally inhabit forests and woods thus theyliveinlargearea dominatedbytrees.TheanswerisD", None, "D", "D", True),  # obqa_llama_level1
    ("Therefore, the correct answer is D: attached flying contraptions.", None, "D", "D", True),  # openbookQA_ChatGPT_0_shot_with_gt
    ("A cave full of old drawings (C) is not a fossil; it's a cultural artifact.", None, "C", "C", True),  # obqa_gemini_level6
    ("average speed was = 2*5*21/(5+21) = 6.5m/hr ie. 6.5 miles Answer C", None, "C", "B", False),  # aqua_llama_level1
    ("-57 represents a $57,000 advantage in favor of Store B. Choice E is correct.", None, "E", "E", True),  # aqua_gemini_level1
    ("Let's think about the multi-choice question. let x= 5, y= 3 I. 5^5 = > Odd The answer is B", None, "B", "(B)", True),  # aqua_human
    ("The answer is Option E", AQUA, "E", "E", True),  # aqua_human
    # SmolLM2-135M-Instruct on obqa/test/1 (a real student output): the option's text, no letter
    ("A desert<|im_end|>", {"A": "a marsh", "B": "a tundra", "C": "the plains", "D": "a desert"}, "D", "A", False),
]

BOOLEAN = [
    ("Julius Caesar had three children. Genghis Khan had sixteen children. The answer is True", "True", "True", True),  # stqa_human
    ("The members of The Police are musicians. The answer is False", "False", "False", True),  # strategyQA_chatgpt_level_1
    ("The answer is yes", "True", "True", True),
    ("The answer is no.", "True", "False", False),
    ("The Pearl Harbor attack occurred on December 7, 1941. December is in the winter. Therefore, the statement is False.",
     "False", "False", True),  # stqa_gemini_level4: no anchor -> last true/false word
    ("Yes, because there is no evidence against it.", "True", "True", True),  # a leading yes/no is the answer
    ("Therefore,Gandalf wasnot present at hisdeath.TheanswerisFalse", "False", "False", True),  # stqa_llama_level3
]

MATH = [
    ("The answer is \\frac{1}{2}", "0.5", True),
    ("We have $r = 3$ so the polar coordinates are $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$.",
     "\\left( 3, \\frac{\\pi}{2} \\right)", True),  # MATH-500 solution
    ("9! = 362,880. The answer is 362,880", "362,\\!880", True),  # math_gemini_level2
    ("The answer is 3\u221a10", "3\\sqrt{10}", True),  # math_gemini_level1 writes unicode roots
    ("The mean is (1/2) / 4 = 1/8. The answer is \x0crac{1}{8}", "\\frac{1}{8}", True),  # math_gemini: JSON ate "\f"
    ("(12 dops) * (4 daps/3 dops) = 16 daps. The answer is 16 daps", "16\\text{ daps}", True),  # math_gemini_level1
    ("Therefore C and D are not necessarily true.The answer is A, B", "\\text{A, B}", True),  # math_gemini_level1
    ("16$\\pi$ - 1$\\pi$ = 15$\\pi$.\n The answer is 15$\\pi$", "15\\pi", True),  # math_mix_level3
    ("Calculate the average: $600 \u00f7 4 = $150. The answer is 150", "\\$150", True),
    ("It takes $270/90=3$ hours. Thus, he can read $6/3=2$ 270-page books in six hours.", "2", True),  # math_human solution
    ("The answer is x^2+2x", "2x + x^2", True),
    ("The sum of all palindromic primes less than 50 is 11. \nThe answer is 11", "109", False),  # math_mix_level3
]


@pytest.mark.parametrize("response,gold,extracted,correct", NUMBER)
def test_number(response, gold, extracted, correct):
    g = grade(response, gold, "number")
    assert (g.extracted, g.correct, g.reason) == (extracted, correct, None)


@pytest.mark.parametrize("response,choices,extracted,gold,correct", CHOICE)
def test_choice(response, choices, extracted, gold, correct):
    g = grade(response, gold, "choice", choices)
    assert (g.extracted, g.correct) == (extracted, correct)


@pytest.mark.parametrize("response,gold,extracted,correct", BOOLEAN)
def test_boolean(response, gold, extracted, correct):
    g = grade(response, gold, "boolean")
    assert (g.extracted, g.correct) == (extracted, correct)


@pytest.mark.parametrize("response,gold,correct", MATH)
def test_math(response, gold, correct):
    g = grade(response, gold, "math")
    assert g.extracted is not None
    assert g.correct is correct, g


def test_nothing_to_extract_gives_a_reason():
    for kind in ("number", "choice", "boolean", "math"):
        g = grade("I am not sure about this one", "1", kind)
        assert g.extracted is None and g.correct is False and "no 'The answer is'" in g.reason
    assert grade("", "1", "number").reason == "empty response"
    assert extract_answer("   ", "choice") == (None, "empty response")


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(CotdistillError, match="unknown answer kind 'numeric'"):
        grade("The answer is 3", "3", "numeric")


def test_model_text_is_never_executed(tmp_path, monkeypatch):
    # The payload names a relative file (no digits, nothing from the temporary path, which may hold
    # the digit graded against: "pytest-0"); run from tmp_path so that executing it would create it there.
    monkeypatch.chdir(tmp_path)
    payload = "The answer is __import__('os').system('touch pwned')"
    for kind in ("number", "math", "choice", "boolean"):
        assert grade(payload, "0", kind).correct is False
    assert not (tmp_path / "pwned").exists()


def test_states_answer():
    assert states_answer(" Divide the bananas. The answer is 145")
    assert states_answer("TheanswerisD")
    assert not states_answer("145")
    assert not states_answer("Therefore, the total number of apples now on Rachel's tree is 5.")


def test_math_verify_has_its_own_time_limit_and_recovers():
    # sympy would try to evaluate this tower for minutes; our deadline stops it and the worker restarts.
    assert math_equal("1", "9^{9^{9^{9}}}", timeout=2) is None
    assert math_equal("\\frac{1}{2}", "0.5") is True


def test_grading_works_outside_the_main_thread():
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("g", grade("The answer is \\frac{2}{4}", "\\frac{1}{2}", "math")))
    t.start()
    t.join(120)
    assert out["g"].correct is True


def test_grade_file_against_benchmark_ids(tmp_path, data_dir):
    from cotdistill.grade import grade_file

    src = tmp_path / "preds.jsonl"
    src.write_text(
        '{"response": "The answer is 51", "dataset": "svamp", "id": "svamp/test/chal-1"}\n'
        '{"response": "The answer is 50", "dataset": "svamp", "id": "chal-1"}\n'
        '{"response": "The answer is (A)", "gold": "A", "kind": "choice"}\n'
        '{"response": "no idea", "gold": 3, "kind": "number"}\n'
    )
    r = grade_file(src, data_dir=data_dir)
    assert (r.n, r.correct, r.no_answer) == (4, 2, 1)
    lines = Path(r.out).read_text().splitlines()
    assert [('"correct": true' in line) for line in lines] == [True, False, True, False]
    assert Path(r.out + ".provenance.json").is_file()


@pytest.mark.parametrize(
    "line,message",
    [
        ('{"response": "x", "gold": "1"', "preds.jsonl:2: malformed JSON line"),
        ('{"response": "x"}', "preds.jsonl:2: needs fields 'gold' and 'kind', or 'dataset' and 'id'"),
        ('{"response": "x", "gold": "1", "kind": "numeric"}', "preds.jsonl:2: field 'kind' is 'numeric'"),
        ('{"gold": "1", "kind": "number"}', "preds.jsonl:2: field 'response' missing"),
    ],
)
def test_grade_file_bad_lines(tmp_path, line, message):
    from cotdistill.grade import grade_file

    src = tmp_path / "preds.jsonl"
    src.write_text('{"response": "The answer is 1", "gold": "1", "kind": "number"}\n' + line + "\n")
    with pytest.raises(CotdistillError, match=message.replace("(", r"\(")):
        grade_file(src, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()  # nothing half-written
