"""Grader classes fixed for issue 13 and the grader's bounded work (issue 14), each on real text
from the released data files (file and row named; rows are 0-based record indexes)."""

import pytest

from cotdistill.errors import CotdistillError
from cotdistill.grade import MAX_READ_CHARS, extract_answer, grade
from cotdistill.protocol import PAPER_DECODING, PROTOCOLS, check_protocol

# ---------------------------------------------------------------- MATH solutions without a stated answer

MATH_HUMAN = [
    # cot/math_human.json row 642 (solution): the last formula is the lone variable $C$ -> the 3 before it
    ("Plugging in each possible digit for $C$ gives us that $1+C+3$ is a multiple of 3 only for $C=2, 5, 8$. "
     "Thus, $1C3$ is a multiple of 3 for $3$ digits $C$.", "3"),
    # row 2: the final sentence's math, right of its "="
    ("Since she uses $12$ quarts of white paint, she should use $12 \\div 2 = 6$ quarts of green paint.", "6"),
    # row 268: an align block ends the solution: its last row
    ("we have \\begin{align*}\n(4+8)^2 + (4^2 + 8^2) &= (12)^2 + (4^2 + 8^2)\\\\\n&= 144 + (16+64) \\\\\n"
     "&= 144+ 80 \\\\\n&= 224.\\end{align*}", "224"),
    # row 53: Asymptote code after the answer; its numbers and letters are drawing code
    ("The square garden's area is 900 square feet ($30\\times 30)$. and this has increased the garden area by "
     "$400$ square feet. [asy]\n/* AMC8 1999 #5 Solution*/\ndraw((0,0)--(10,0)--(10,50)--(0,50)--cycle);\n"
     "label(\"30\", (25, 35), W);\n[/asy]", "400"),
    # row 46: a closing remark in brackets is not the answer
    ("Then the least common multiple is $6\\times 126=756.$\n\n(You can check that this product is equal to the "
     "product of the original two numbers, $18$ and $42$. Is that just a coincidence?)", "756"),
    # row 1241: "The answer is therefore $2019$." -> the formula after the anchor
    ("$2+9=11$, so take $1$ as the tens digit and $0$ as the hundreds digit. The answer is therefore $2019$.", "2019"),
    # MATH-500 test/algebra/2470 solution: a mixed number in \boxed{}
    ("Thus, the car would travel a total of $100 + 37 \\frac{1}{2}= \\boxed{137 \\frac{1}{2}}$ miles.", "137 \\frac{1}{2}"),
]


@pytest.mark.parametrize("text,expected", MATH_HUMAN)
def test_math_fallback_order(text, expected):
    got, _ = extract_answer(text, "math")
    assert got == expected


def test_math_never_reads_a_lone_variable_or_asymptote():
    text = MATH_HUMAN[0][0]
    assert grade(text, "3", "math").correct
    assert extract_answer(MATH_HUMAN[3][0], "math")[0] == "400"  # not "W" or "30" from label(...)


@pytest.mark.parametrize("answer,gold", [
    ("\\boxed{1\\frac{4}{5}}", "1.8"),  # MATH-500 test/geometry/826 gold 1\frac{4}{5}
    ("The answer is \\frac{9}{5}", "1\\frac{4}{5}"),
    ("The answer is 1.8", "1\\frac{4}{5}"),
    ("The answer is 2\\frac{1}{2}", "2.5"),
    ("The answer is \\frac{5}{2}", "2\\frac{1}{2}"),
    ("The answer is 137.5", "137 \\frac{1}{2}"),  # MATH-500 test/algebra/2470 gold
])
def test_mixed_numbers(answer, gold):
    assert grade(answer, gold, "math").correct


def test_mixed_number_is_not_read_as_its_digits_for_number_kind():
    assert grade("The answer is 2\\frac{1}{2}", "2.5", "number").correct
    assert not grade("The answer is 2\\frac{1}{2}", "21", "number").correct


# ---------------------------------------------------------------- option letters

AQUA_8C3 = {"A": "65", "B": "62", "C": "61", "D": "56", "E": "58"}


@pytest.mark.parametrize("text,choices,expected", [
    # cot/aqua_human.json (joined to aqua_only_ans row 2504): "8C3" holds a capital C that is not option C
    ("There are 8C3 ways to determine where to place the separators. Hence, The answer is 8C3 = 56. D", AQUA_8C3, "D"),
    # aqua_human for aqua_only_ans row 1630: "(30C2)"
    ("So The answer is in a sense (30C2) x 2 = 870. Ans A", {"A": "870", "B": "920", "C": "1398", "D": "4950", "E": "9900"}, "A"),
    # aqua_human for aqua_only_ans row 4769: "C.I." (compound interest) is not option C; "a" is option A
    ("Amount = [500 * (1 + 5/100)2] = Rs. 551.25 C.I. = (551.25 - 500) = Rs.51.25. The answer is a",
     {"A": "51.25", "B": "51.29", "C": "51.22", "D": "51.38", "E": "51.12"}, "A"),
    # aqua_human row for aqua_only_ans 1320: "The answer is :(OptionC"
    ("Solving for x, we get the shares as 12000. The answer is :(OptionC", None, "C"),
    # aqua_human row 5888: "hence option(a) is correct" without the final line
    ("Which is same as given in the first statement hence option(a) is correct", None, "A"),
    # aqua_human row 2294 without its final line: "option b)" is read as b
    ("all the options except option b) 4!+1 are multiples of 3!+4", None, "B"),
    # cot/aqua_gemini_level1: "Choice E is correct."
    ("-57 represents a $57,000 advantage in favor of Store B. Choice E is correct.", None, "E"),
    # aqua/gemini/level1 row 264 and obqa/llama/level3 row 3814, obqa/llama/level2 row 575: a letter glued to the
    # word after the anchor
    ("1.14 * 0.75 * x = 54 \n 0.855 * x = 54 \n x = 54 / 0.855 \n x = 63.4\nThe answer is isC", None, "C"),
    ("places at low elevations would suffer heavily during floods causing damage both physically and economically "
     "The answer istrC", None, "C"),
    ("hence increasing their susceptibility for floods.The answer istrueisA", None, "A"),
    # obqa/gemini/level4 row 198: options discussed ("Option D, going for a walk, ..."), then the letter chosen
    ("Option C, having a drink of water, addresses immediate thirst, but it's not a long-term adaptation strategy. "
     "Option D, going for a walk, is a choice of activity, not an adaptation. Therefore, the most accurate example of "
     "adapting to survive is A.", None, "A"),
])
def test_choice_letters(text, choices, expected):
    assert extract_answer(text, "choice", choices)[0] == expected


def test_aqua_training_golds_rederived(data_dir):
    from cotdistill.benchmarks import load_benchmark

    aqua = {e.id: e for e in load_benchmark("aqua", "train", data_dir)}
    # each was C (from "8C3", "(30C2)", "C.I.") or a wrong fallback before; the new letter is the worked result
    # 2566: the answer-only output discusses "Answer E: ... ELIMINATE E." and ends with its letter "B"
    want = {"1589": "A", "1630": "A", "2504": "D", "2799": "D", "4769": "A", "5246": "E", "6086": "C", "6319": "E",
            "6330": "B", "2566": "B"}
    assert {k: aqua[f"aqua/train/{k}"].gold for k in want} == want
    assert aqua["aqua/train/6086"].choices["C"] == "110 miles"


# ---------------------------------------------------------------- small classes


def test_not_true_is_false():
    # cot/stqa_gemini_level1_ranked.json row 1197, without its final "The answer is False"
    text = ("Many movies portray nerds as successful or even heroic characters.  Therefore, the statement that movies "
            "*always* show nerds as losers is not true.")
    assert extract_answer(text, "boolean") == ("False", None)
    assert grade(text + "\n The answer is False", "False", "boolean").correct  # the full row


def test_units_with_exponents():
    # cot/gsm8k_llama_level1_ranked.json row 3478, its first sentence (no "The answer is")
    assert extract_answer("3 hectares = 3 * 10000 m^2 = 30000 m^2.", "number")[0] == "30000"
    # cot/math_gemini_level1_ranked.json row 174, one line of it
    assert extract_answer("The area of square ABCD is s^2 = (sqrt(10))^2 = 10 cm^2.", "math")[0] == "10"
    assert grade("The answer is 15 cm^2", "15", "math").correct
    assert grade("The answer is 15 cm^2", "15", "number").correct


def test_self_correction():
    # cot/gsm8k_llama_level1_ranked.json row 2498 (gold 46)
    text = "98 - 75 = 23. 23 / 2 = 11.5. 11.5 * 2 = 23. The answer is 23 no wait its 46"
    g = grade(text, "46", "number")
    assert (g.extracted, g.correct) == ("46", True)


# ---------------------------------------------------------------- protocols


@pytest.mark.parametrize("text,kind,gold,lenient,paper", [
    # cot/SVAMP_ChatGPT_level1_ranked.json: the paper's answer_clean takes the first number after the trigger
    ("Subtract the number of balloons Jake brought from the number Allan brought. The answer is 5 - 3 = 2", "number", "2",
     True, False),
    # cot/obqa_llama_level1_ranked.json: no spaces -> the paper's regex finds nothing
    ("Birds generally inhabit forests and woods thus theyliveinlargearea dominatedbytrees.TheanswerisD", "choice", "D",
     True, False),
    # cot/stqa_human_annotation.json
    ("Julius Caesar had three children. Genghis Khan had sixteen children. The answer is True", "boolean", "True", True, True),
    # cot/aqua_gemini_level1_ranked.json: no "The answer is" at all
    ("-57 represents a $57,000 advantage in favor of Store B. Choice E is correct.", "choice", "E", True, False),
    # cot/math_mix_level3.json
    ("16$\\pi$ - 1$\\pi$ = 15$\\pi$.\n The answer is 15$\\pi$", "math", "15\\pi", True, True),
    ("The answer is yes", "boolean", "True", True, False),  # the paper reads only True/False
])
def test_protocols(text, kind, gold, lenient, paper):
    assert grade(text, gold, kind).correct is lenient
    assert grade(text, gold, kind, protocol="lenient").correct is lenient
    assert grade(text, gold, kind, protocol="paper").correct is paper


def test_paper_protocol_reads_the_first_label_and_stops_where_generation_stopped():
    assert extract_answer("The answer is B. Wait, the answer is C", "choice", protocol="paper")[0] == "B"
    assert extract_answer("So 3+2=5.\n#### The answer is 4", "number", protocol="paper")[0] is None  # "####" stops
    assert extract_answer("Thus $x=3$.", "math", protocol="paper")[1] == "no 'The answer is X' (protocol paper)"


def test_unknown_protocol_is_one_error_line():
    with pytest.raises(CotdistillError, match="unknown grading protocol 'strict'"):
        grade("The answer is 3", "3", "number", protocol="strict")
    assert PROTOCOLS == ("lenient", "paper") and check_protocol("paper") == "paper"
    assert PAPER_DECODING["num_beams"] == 5 and PAPER_DECODING["do_sample"] is False


# ---------------------------------------------------------------- bounded work


@pytest.mark.timeout(60)
@pytest.mark.parametrize("text", [
    "\\boxed{" * 150_000,  # 1 MB of unclosed \boxed{ (72 s for 70 KB before)
    "The answer is " * 75_000,
    "\\(" * 500_000,
    "A " * 500_000,
    "no wait " * 130_000,
    "$" + "1" * 1_000_000,
], ids=["boxed", "anchor", "paren", "letters", "correction", "digits"])
def test_degenerate_megabyte_responses_complete(text):
    for kind in ("number", "choice", "boolean", "math"):
        for protocol in PROTOCOLS:
            g = grade(text, "1", kind, protocol=protocol)
            assert g.correct in (True, False)
    assert MAX_READ_CHARS == 32_768


def test_only_the_first_max_read_chars_are_read():
    assert extract_answer("x" * MAX_READ_CHARS + " The answer is 7", "number")[0] is None
    assert extract_answer("The answer is 7. " + "x" * 2 * MAX_READ_CHARS, "number")[0] == "7"



def test_cli_grade_protocol(tmp_path):
    import json
    import subprocess
    import sys

    src = tmp_path / "outputs.jsonl"
    rows = [  # cot/SVAMP_ChatGPT_level1_ranked.json and cot/0_SVAMP_chatgpt_level5RaR.json (no "The answer is")
        {"response": "The answer is 5 - 3 = 2", "gold": "2", "kind": "number"},
        {"response": "Therefore, the total number of apples now on Rachel's tree is 5.", "gold": "5", "kind": "number"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = {}
    for protocol in ("lenient", "paper"):
        out = tmp_path / f"{protocol}.jsonl"
        r = subprocess.run([sys.executable, "-m", "cotdistill", "grade", str(src), "--out", str(out), "--protocol", protocol],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        runs[protocol] = [json.loads(line) for line in out.read_text().splitlines()]
        assert f"protocol {protocol}" in r.stdout
    assert [x["correct"] for x in runs["lenient"]] == [True, True]
    assert [x["correct"] for x in runs["paper"]] == [False, False] and {x["protocol"] for x in runs["paper"]} == {"paper"}
    bad = subprocess.run([sys.executable, "-m", "cotdistill", "grade", str(src), "--protocol", "strict"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: unknown grading protocol 'strict'; known: lenient, paper"]
    assert not (tmp_path / "outputs.graded.jsonl").exists()
