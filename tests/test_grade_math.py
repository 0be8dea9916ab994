"""MATH solutions without a stated answer: which value of the final sentence the grader reads, and
the normalisation in front of math-verify. Each case is real text from the released data, quoted
(the solution's last sentences) with its source and 0-based row (`cotdistill.data.load_supervision`
row meta; math/human = the `solution` field of cot/math_human.json)."""

import pytest

from cotdistill.grade import extract_answer, grade


def _read(text: str) -> str | None:
    return extract_answer(text, "math")[0]


# ---------------------------------------------------------------- the value the final sentence states

STATED = [
    # math/human 322: a count, then the bounds it counts between
    ("There are $5$ prime numbers between $30$ and $50$.", "5"),
    # math/human 959: "Since ..., " is a side clause; "of $11! + 12!$" an operand
    ("Since no prime greater than 11 divides $11!$, $13$ is the largest prime factor of $11! + 12!$.", "13"),
    # math/human 567: "which is less than $350.$" is a bound
    ("Thus, $29\\cdot12=348$ is the largest multiple of $12$ which is less than $350.$", "348"),
    # math/human 238: "to bake $3$ cookies" is a purpose, not the result
    ("Because the proportion of milk to cookies is constant, divide both the pints of milk and the number of cookies "
     "by $4$ to obtain that $1$ pint of milk is needed to bake $3$ cookies.", "1"),
    # math/human 746: "namely ..." lists what the count counts
    ("There are $2$ solutions to this equation, namely $a = 0$ and $a = 1$.", "2"),
    # math/human 1190: the list after "...: " that follows the stated count
    ("Therefore, there are $4$ perfect square divisors of 180: $2^0\\cdot3^0$, $2^0\\cdot3^2$, $2^2\\cdot3^0$, and "
     "$2^2\\cdot3^2$.", "4"),
    # math/human 627: ", while ..." is a side clause
    ("Chandra will read the first $3\\cdot152 =456$ pages, while Bob reads the last $2\\cdot152=304$ pages.", "456"),
    # math/human 1197: "... is not a palindrome" is denied, not stated
    ("This gives us $505$ as our answer and we see that $101 \\cdot 505 = 51005$ is not a palindrome.", "505"),
    # math/human 1273: "in the form $8n + 2$" names a form; "from 1 to 12" and "by 8" are bounds
    ("Since $n$ can be any integer from 1 to 12, there are $12$ two-digit integers in the form $8n + 2$ (that leave a "
     "remainder of 2 when divided by 8).", "12"),
    # math/human 137: "of both $4$ and $14$": both items of the list are operands; "Notice that ..." is a remark
    ("Listing out the first few positive multiples of $4$ and of $14$ shows that $28$ is the smallest multiple of both "
     "$4$ and $14.$ Notice that the least common multiple is not simply $4\\cdot14=56.$", "28"),
    # math/human 1140: "which is $ 5$" restates the value; "the units digit of $2+8+5+0=15$" is an operand
    ("Therefore, the units digit of the sum of the squares of the first 2007 odd, positive integers is the units digit "
     "of the sum $802\\cdot1+802\\cdot9+401\\cdot5+1+9$, which is $ 5$, the units digit of $2+8+5+0=15$.", "5"),
    # math/human 2 (unchanged): the last value when nothing describes it
    ("Since she uses $12$ quarts of white paint, she should use $12 \\div 2 = 6$ quarts of green paint.", "6"),
]


@pytest.mark.parametrize("text,expected", STATED)
def test_final_sentence_value(text, expected):
    assert _read(text) == expected


REMARKS_AND_SENTENCES = [
    # math/human 266: a bracketed remark without a full stop ends before "Plugging in"
    ("The area of a rhombus can be expressed as: $\\frac{d_1 d_2}{2}$, where $d_1 , d_2$ are the lengths of the "
     "diagonals.  (Think of each quadrant as a triangle, and sum those areas - you'll see it comes out to this formula)  "
     "Plugging in $d_1 = 24$ and $d_2 = 10$, we get $\\frac{24\\cdot 10}{2} = 120$ square units.", "120"),
    # math/human 636: "Checking our answer ..." checks, it does not answer
    ("So, the smallest possible $x$ is $2^2\\cdot3^2=4\\cdot9=36$.\n\nChecking our answer to make sure that "
     "$400\\cdot (2^2\\cdot 3^2)$ is a multiple of 576, we see that $$400(2^2\\cdot 3^2) =2^4\\cdot 5^2\\cdot 2^2\\cdot "
     "3^2 = 5^2(2^4\\cdot 2^2\\cdot 3^2) = 5^2(2^6\\cdot 3^2) = 25\\cdot 576.$$", "36"),
    # math/human 1215: "Remark: ..." to the end is a remark
    ("We get \\begin{align*}\n\\text{gcd}(957,1537) &= \\text{gcd}(957, 1537 - 957) \\\\\n&= \\text{gcd}(174,29) "
     "\\\\\n&= 29.\n\\end{align*}Remark: Note that we could have computed $\\text{gcd}(957,580)$ more quickly by "
     "observing that ... long division gives $957 \\div 58 = 16\\text{ remainder }29$.", "29"),
    # math/human 428: "We could also ..." starts an alternative that runs to the end
    ("Because the negation of $99$ is $-99$, $99$ is the largest multiple of $9$ whose negation is greater than $-100$."
     "\n\nWe could also divide $-100$ by $9$ to get $-12$ with a positive remainder of $11$. However, $-12 \\cdot 9$ is "
     "less than $-100$, so $$-100 = -12 \\cdot 9 + 11$$would not help.", "99"),
    # math/human 351: "If you don't have ... memorized" is an aside; "a sum of $210$" states the sum
    ("The interior angle of a square is 90, and the interior angle of a hexagon is 120, making for a sum of $210$.  If "
     "you don't have the interior angles memorized, you can calculate them using the following formula: "
     "$180\\left(\\frac{n-2}{n}\\right),$ where $n$ is the number of sides in the polygon.", "210"),
    # math/human 837: questions are not statements
    ("So, there are $3000$ positive integers that are multiples of 3.  Notice that this happens to equal $9000/3$.  Is "
     "this a coincidence?  (Beware of always using this reasoning!  What if we asked for the number of multiples of 7?)",
     "3000"),
    # math/human 65: a table after the answer lists values, it states none
    ("Adding up the possibilities gives us $19$ possible three-digit numbers.\n\n$\\begin{matrix}\n100 & 101 & 102 & & "
     "104 & 105 \\\\\n140 & & & & 144 \\\\\n150\n\\end{matrix}$", "19"),
    # math/human 998: right of an implication arrow
    ("Since the percentage of tagged fish in September is proportional to the percentage of tagged fish in May, "
     "$\\frac{3}{42} = \\frac{60}{x} \\Longrightarrow 840$.", "840"),
    # math/human 1291: a last sentence that only lists numbers is not where the answer is
    ("Thus, there are $2\\cdot2\\cdot2=8$ factors of 30. The factors are 1, 2, 3, 5, 6, 10, 15, and 30.", "8"),
]


@pytest.mark.parametrize("text,expected", REMARKS_AND_SENTENCES)
def test_remarks_questions_tables_and_sentence_ends(text, expected):
    assert _read(text) == expected


ANCHORS = [
    # math/human 503: "our answer is the number of ..." describes the answer; the final sentence states it
    ("Therefore our answer is the number of integers between $0$ and $24$.  There are $25$ integers in all.", "25"),
    # math/human 1236: "the answer would be greater than $999$" is a bound
    ("$h$ cannot be greater than $5$, since if that were the case then the answer would be greater than $999$, which "
     "would be impossible for the AIME.\nThus the sum of all paintable numbers is $757$.", "757"),
    # math/human 701: "the final answer is a common one" is words; "Note: ..." is a remark to the end
    ("If we add 46 and 37, we get 83. Rounding 83 to the nearest ten gives $80$ since 83 is closer to 80 than it is to "
     "90.\n\nNote: Van's mistake of rounding before arriving at the final answer is a common one. It is called "
     "\"intermediate rounding.\"", "80"),
    # math/human 848: formulas that continue the stated one ("$= ...$")
    ("Thus, the answer is $\\sum_{k=0}^{7} {7 \\choose k}(k+2)$ $= 1 \\cdot 2 + 7 \\cdot 3 + 21 \\cdot 4 + 35 \\cdot 5 "
     "+ 35 \\cdot 6 + 21 \\cdot 7 + 7 \\cdot 8 + 1 \\cdot 9$ $= 704$.", "704"),
    # math/human 1211: ", or $112$" restates it
    ("It follows that the answer is equal to $(1 + 7)(1 + 13) = (8)(14)$, or $112$.", "112"),
    # math/human 1241 (unchanged): words that only lead to the formula
    ("$2+9=11$, so take $1$ as the tens digit and $0$ as the hundreds digit. The answer is therefore $2019$.", "2019"),
]


@pytest.mark.parametrize("text,expected", ANCHORS)
def test_anchors_that_describe_fall_through(text, expected):
    assert _read(text) == expected


PLAIN_TEXT = [
    # math/llama/level6 1156: no "The answer is"; the last sentence in plain words
    ("Their product is $3 × 5 × 7 × 11 × 13 = 15015$. Dividing 15015 by $2^4 = 16$, the remainder is 7. Thus, the "
     "remainder is 7.", "7"),
    # math/gemini/level5 1285
    ("$c_3 = 14, c_4 = 14, c_5 = 21$.\nIf $N = 149$, $c_2 = 6, c_1 = 27$.\nThe smallest value of N is 149.", "149"),
    # math/chatgpt/level5 125: a mixed number in plain text
    ("10. Calculate the average of b and c:\n    b + c = 2 + 3 = 5.\n    Their average = (b + c) / 2 = 5 / 2 = 2.5 = "
     "2\\frac{1}{2}", "5/2"),
    # math/chatgpt/level3 315: "$" as a currency sign, not a formula delimiter
    ("3. Determine the savings by using Promotion A over Promotion B: $50 - $45 = $5.\n\nConclusion: You save $5 by "
     "choosing Promotion A over Promotion B.", "5"),
    # math/chatgpt/level6 155 (escape-damaged "\\frac" as in the file): the last formula is left open
    ("5. Simplify to find x: $125 - 125x = 100$. \n6. Solve for x: $125x = 25$ which gives us $x = \x0crac{25}{125} = "
     "0.2.", "0.2"),
    # math/chatgpt/level4 50: "be $100.\n2. The stock ..." is currency too
    ("1. Let the initial stock value be $100.\n2. The stock decreases by $20\\%$ on the first day: $100 - 0.20 \\times "
     "100 = 100 - 20 = 80$.\n5. Therefore, the overall percent increase in Bill's stock is: $\\frac{4}{100} \\times "
     "100\\% = 4\\%$.", "4\\%"),
]


@pytest.mark.parametrize("text,expected", PLAIN_TEXT)
def test_plain_text_and_currency(text, expected):
    assert _read(text) == expected


# ---------------------------------------------------------------- normalisation in front of math-verify

@pytest.mark.parametrize("text,gold", [
    ("The answer is 12,\u200b650", "12,\\!650"),  # math/chatgpt/level1 888: a zero-width space
    ("The answer is 20\\\\!:\\\\!34", "20\\!:\\!34"),  # math/gemini/level2 1277: "\\!" escaped twice
    ("The answer is <answer>5", "5"),  # math/chatgpt/level4 1059: a template tag left in
    ("The answer is 7 (correct calculation adjustment).\n", "7"),  # math/chatgpt/level1 148: a comment after it
    # math/chatgpt/level3 827: a closing tag after it
    ("Finally, round to the nearest thousandth:The answer is 0.155</Solution Path>", ".155"),
])
def test_math_normalisation(text, gold):
    assert grade(text, gold, "math").correct


def test_final_sentence_reading_is_bounded():
    # 1 MB of the shapes the final-sentence reading works on completes (each step is linear)
    for text in ("1 " * 500_000, "Since 1, " * 110_000, "$1$ of " * 130_000, "1, " * 330_000, "A 1. " * 200_000):
        assert extract_answer(text, "math")[0] == "1"
