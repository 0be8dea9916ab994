"""Supervision metrics and the statistics of the report, on inputs with hand-computed answers."""

import math
from dataclasses import dataclass

import pytest

from cotdistill import metrics


@dataclass
class Row:
    id: str
    rationale: str
    gold: str | None = None


def test_steps_operations_subquestions():
    text = "There are 3.5 apples. Then 2 + 3 = 5! So 10 / 2 = 5? The answer is 5."
    assert metrics.count_steps(text) == 4  # "3.5" is not a sentence end
    assert metrics.count_steps("Step 1: 2 + 3 = 5\nStep 2: 5 * 2 = 10\n\nThe answer is 10") == 3  # lines win
    assert metrics.count_operations(text) == 2
    assert metrics.count_operations("(2 × 5) - x ÷ 4 and \\frac{1}{2} \\times 3") == 4
    assert metrics.count_operations("no arithmetic here, only words - dashes") == 0
    assert metrics.count_subquestions("How many? 5. How many more? 2. The answer is 7") == 2


def test_distinct_n():
    assert metrics.distinct_n(["a b a b"], 1) == pytest.approx(2 / 4)
    assert metrics.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)  # (a b), (b a), (a b)
    assert metrics.distinct_n(["a b", "a b"], 2) == pytest.approx(1 / 2)
    assert math.isnan(metrics.distinct_n(["a"], 2))


def test_supervision_metrics_lengths_accuracy_diversity():
    rows = [
        Row("q1", "one two three. The answer is 3", "3"),
        Row("q1", "one two three. The answer is 3", "3"),  # an identical second sample
        Row("q2", "four five. 2 + 2 = 4. The answer is 4", "5"),
        Row("q3", "no gold here", None),
    ]
    grade = lambda r: None if r.gold is None else r.rationale.endswith(r.gold)  # noqa: E731
    m = metrics.supervision_metrics(rows, grade_fn=grade, count_tokens=lambda t: len(t.split()))
    assert m.rows == 4 and m.questions == 3
    assert m.graded == 3 and m.teacher_accuracy == pytest.approx(2 / 3)
    assert m.length_unit == "tokens"
    assert m.length_mean == pytest.approx((7 + 7 + 11 + 3) / 4)
    assert m.operations_mean == pytest.approx(1 / 4)
    assert m.within_question_diversity == pytest.approx(0.0)  # q1's two samples are the same text
    assert m.answer_stated_share == pytest.approx(3 / 4)
    words = metrics.supervision_metrics(rows[:1])
    assert words.length_unit == "words" and math.isnan(words.teacher_accuracy)
    assert math.isnan(words.within_question_diversity)
    different = [Row("q", "alpha beta gamma"), Row("q", "delta epsilon zeta")]
    assert metrics.supervision_metrics(different).within_question_diversity == pytest.approx(1.0)


def test_mcnemar_exact_matches_binomial():
    assert metrics.mcnemar_exact(10, 0) == pytest.approx(2 * 0.5**10)
    assert metrics.mcnemar_exact(0, 0) == 1.0
    assert metrics.mcnemar_exact(5, 5) == pytest.approx(1.0)
    # 7 vs 2 discordant: two-sided binomial = 2 * P(X <= 2 | n=9) = 2 * (1 + 9 + 36) / 512
    assert metrics.mcnemar_exact(7, 2) == pytest.approx(2 * 46 / 512)


def test_paired_test_real_and_null_differences():
    a = [True] * 40 + [False] * 10
    b = [True] * 20 + [False] * 30  # A is right on 20 questions B misses, never the reverse
    t = metrics.paired_test(a, b)
    assert t.n == 50 and t.a_only == 20 and t.b_only == 0
    assert t.diff == pytest.approx(0.4) and t.diff_ci_low < 0.4 < t.diff_ci_high
    assert t.mcnemar_p < 1e-5 and t.bootstrap_p < 0.01
    same = metrics.paired_test(a, a)
    assert same.diff == 0 and same.mcnemar_p == 1.0 and same.bootstrap_p == 1.0
    # Swapped discordant answers: equal accuracy, nothing real.
    x = [True, False] * 20
    y = [False, True] * 20
    t = metrics.paired_test(x, y)
    assert t.diff == 0 and t.mcnemar_p == pytest.approx(1.0) and t.bootstrap_p > 0.5
    with pytest.raises(ValueError):
        metrics.paired_test([True], [True, False])


def test_pair_up_uses_common_keys():
    a, b = metrics.pair_up({"q1": True, "q2": False, "q3": True}, {"q2": True, "q3": True, "q4": False})
    assert a == [False, True] and b == [True, True]


def test_bootstrap_ci_brackets_accuracy():
    lo, hi = metrics.bootstrap_ci([True] * 30 + [False] * 70)
    assert lo < 0.3 < hi and 0.15 < lo and hi < 0.45
    assert all(math.isnan(v) for v in metrics.bootstrap_ci([]))


def test_correlate():
    c = metrics.correlate("length", [1, 2, 3, 4, 5], [0.1, 0.2, 0.25, 0.4, 0.5])
    assert c.n == 5 and c.spearman == pytest.approx(1.0) and c.pearson > 0.95 and c.spearman_p < 0.05
    neg = metrics.correlate("x", [1, 2, 3, 4], [0.4, 0.3, 0.2, 0.1])
    assert neg.spearman == pytest.approx(-1.0)
    assert math.isnan(metrics.correlate("x", [1, 1, 1], [0.1, 0.2, 0.3]).spearman)  # constant metric
    nan_dropped = metrics.correlate("x", [1, float("nan"), 3, None], [0.1, 0.2, 0.3, 0.4])
    assert nan_dropped.n == 2 and math.isnan(nan_dropped.pearson)
