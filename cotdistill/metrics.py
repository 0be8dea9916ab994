"""Supervision metrics (what a set of rationales looks like) and the statistics a study reports.

Supervision metrics answer the paper's third finding: is a teacher better because its rationales
are more accurate, or because they are longer / more diverse / more complex?  Statistics turn
per-question predictions into paired tests, so a report can say which differences are real.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

# ---------------------------------------------------------------- supervision metrics

# A binary arithmetic operation between two operands: "12 + 30", "4*3", "(2 × 5)", "x / 2".
# Operands: numbers, a closing/opening bracket, a one-letter variable, a LaTeX command (not words: "well-known").
_OPERATION = re.compile(
    r"(?:(?<=\d)|(?<=[)}])|(?<=\b[a-zA-Z]))\s*(?:[-+*/×÷^]|\\times|\\div|\\cdot)\s*"
    r"(?=\d|[({\\$]|[a-zA-Z]\b)"
)
# A sentence ends at . ! ? followed by whitespace or the end (so "3.5" is not a boundary).
_SENTENCE_END = re.compile(r"[.!?。](?:\s+|$)")
_WORD = re.compile(r"\w+|[^\w\s]")
_ANSWER_TAIL = re.compile(r"the answer is", re.IGNORECASE)


def words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens (the unit of the diversity measures)."""
    return _WORD.findall(text.lower())


def count_steps(rationale: str) -> int:
    """Reasoning steps: non-empty lines when the rationale is laid out in lines, else sentences."""
    lines = [ln for ln in rationale.splitlines() if ln.strip()]
    if len(lines) > 1:
        return len(lines)
    return len([s for s in _SENTENCE_END.split(rationale.strip()) if s.strip()])


def count_operations(rationale: str) -> int:
    """Arithmetic operations written out (+ - * / × ÷ ^ between operands)."""
    return len(_OPERATION.findall(rationale))


def count_subquestions(rationale: str) -> int:
    """Questions the rationale asks itself (the sub-question format asks one per step)."""
    return rationale.count("?")


# A check of the result: "check", "verify", "confirm", "substitute ... back", "plug ... back".
_FINAL_CHECK = re.compile(
    r"\b(?:check\w*|verif\w*|double[- ]check\w*|confirm\w*|substitut\w* (?:\w+ ){0,3}back|plug\w* (?:\w+ ){0,3}back)\b",
    re.IGNORECASE,
)
# A numbered step at the start of a line: "1.", "2)", "Step 3:", "**Step 4**", "- 5.".
_NUMBERED_LINE = re.compile(r"(?im)^\s*(?:[-*#]+\s*)?(?:\*\*)?(?:step\s*)?\d{1,2}(?:\*\*)?[.:)]")


def rationale_shape(rationale: str) -> dict[str, int | bool]:
    """What one rationale looks like, in the terms a granularity level is described by."""
    operations = count_operations(rationale)
    return {
        "words": len(rationale.split()),
        "steps": count_steps(rationale),
        "operations": operations,
        "shows_arithmetic": operations > 0,
        "final_check": bool(_FINAL_CHECK.search(rationale)),
        "numbered": len(_NUMBERED_LINE.findall(rationale)) >= 2,
        "multiline": "\n" in rationale.strip(),
        "states_answer": bool(_ANSWER_TAIL.search(rationale)),
    }


def level_stats(rationales: Sequence[str]) -> dict[str, float | int]:
    """Length and step statistics of a set of rationales (a released level, or a teacher's output):
    mean/median/quartiles of words, mean/median steps, mean operations, and the share of rationales
    showing arithmetic, ending in a check, laid out as numbered steps or lines, stating the answer."""
    return shape_stats([rationale_shape(t or "") for t in rationales])


def shape_stats(shapes: Sequence[dict]) -> dict[str, float | int]:
    """level_stats of rationales already measured by rationale_shape."""
    if not shapes:
        return {"rationales": 0}

    def col(key: str) -> np.ndarray:
        return np.array([s[key] for s in shapes], dtype=float)

    words_, steps = col("words"), col("steps")
    q1, q3 = np.quantile(words_, [0.25, 0.75])
    return {
        "rationales": len(shapes),
        "words_mean": round(float(words_.mean()), 1),
        "words_median": round(float(np.median(words_)), 1),
        "words_q1": round(float(q1), 1),
        "words_q3": round(float(q3), 1),
        "steps_mean": round(float(steps.mean()), 2),
        "steps_median": round(float(np.median(steps)), 1),
        "operations_mean": round(float(col("operations").mean()), 2),
        **{f"{key}_share": round(float(col(key).mean()), 3)
           for key in ("shows_arithmetic", "final_check", "numbered", "multiline", "states_answer")},
    }


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n: unique n-grams / all n-grams over `texts` (Li et al., 2016). NaN if none."""
    total, unique = 0, set()
    for text in texts:
        toks = words(text)
        grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else float("nan")


def _pairwise_jaccard_distance(texts: Sequence[str], n: int = 2) -> float:
    """Mean 1 - Jaccard(n-gram sets) over all pairs of texts: 0 = identical samples."""
    sets = []
    for t in texts:
        toks = words(t)
        sets.append({tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)})
    dists = []
    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            union = sets[i] | sets[j]
            dists.append(1 - len(sets[i] & sets[j]) / len(union) if union else 0.0)
    return float(np.mean(dists)) if dists else float("nan")


@dataclass
class SupervisionMetrics:
    """What one supervision set looks like. Token lengths use `length_unit` (a tokenizer or words)."""

    rows: int
    questions: int
    teacher_accuracy: float  # share of graded rationales whose final answer matches the gold (NaN: no gold)
    graded: int
    length_mean: float
    length_std: float
    length_unit: str  # "tokens" (the student's tokenizer) or "words"
    steps_mean: float
    operations_mean: float
    subquestions_mean: float
    distinct_1: float
    distinct_2: float
    within_question_diversity: float  # mean pairwise n-gram distance of a question's samples (NaN: 1 sample each)
    answer_stated_share: float  # share of rationales with "The answer is"

    def as_dict(self) -> dict:
        return asdict(self)


# The metrics a study correlates with student accuracy (numeric, comparable across sets).
CORRELATED_METRICS = (
    "teacher_accuracy",
    "length_mean",
    "length_std",
    "steps_mean",
    "operations_mean",
    "subquestions_mean",
    "distinct_1",
    "distinct_2",
    "within_question_diversity",
)


def supervision_metrics(
    rows: Sequence,
    grade_fn: Callable[[object], bool | None] | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> SupervisionMetrics:
    """Metrics of a supervision set.

    rows: objects with `.id` and `.rationale` (data.SupervisionRow).
    grade_fn(row) -> True/False, or None where the row has no gold to grade against.
    count_tokens(text) -> int: the student's tokenizer; None measures length in words.
    """
    rationales = [r.rationale or "" for r in rows]
    unit = "tokens" if count_tokens else "words"
    lengths = np.array([count_tokens(t) if count_tokens else len(t.split()) for t in rationales], dtype=float)
    graded = [g for g in (grade_fn(r) for r in rows)] if grade_fn else []
    graded = [g for g in graded if g is not None]
    by_question: dict[str, list[str]] = defaultdict(list)
    for r, text in zip(rows, rationales):
        by_question[str(r.id)].append(text)
    multi = [texts for texts in by_question.values() if len(texts) > 1]

    def mean(values) -> float:
        values = list(values)
        return float(np.mean(values)) if values else float("nan")

    return SupervisionMetrics(
        rows=len(rows),
        questions=len(by_question),
        teacher_accuracy=mean(graded),
        graded=len(graded),
        length_mean=float(lengths.mean()) if len(lengths) else float("nan"),
        length_std=float(lengths.std(ddof=1)) if len(lengths) > 1 else float("nan"),
        length_unit=unit,
        steps_mean=mean(count_steps(t) for t in rationales),
        operations_mean=mean(count_operations(t) for t in rationales),
        subquestions_mean=mean(count_subquestions(t) for t in rationales),
        distinct_1=distinct_n(rationales, 1),
        distinct_2=distinct_n(rationales, 2),
        within_question_diversity=mean(_pairwise_jaccard_distance(t) for t in multi),
        answer_stated_share=mean(bool(_ANSWER_TAIL.search(t)) for t in rationales),
    )


# ---------------------------------------------------------------- statistics


@dataclass
class PairedTest:
    """Two systems graded on the same questions: A's accuracy minus B's, and whether it is real."""

    n: int  # paired questions
    acc_a: float
    acc_b: float
    diff: float  # acc_a - acc_b
    diff_ci_low: float  # 95 % paired-bootstrap interval of the difference
    diff_ci_high: float
    a_only: int  # questions A got right and B wrong
    b_only: int
    mcnemar_p: float  # exact (binomial) McNemar test, two-sided
    bootstrap_p: float  # paired bootstrap, two-sided

    def as_dict(self) -> dict:
        return asdict(self)


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test on the discordant pairs."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(a_only, n, 0.5).pvalue)


def bootstrap_ci(correct: Sequence[bool], n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of an accuracy."""
    x = np.asarray(correct, dtype=float)
    if len(x) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def paired_test(a: Sequence[bool], b: Sequence[bool], n_boot: int = 5000, seed: int = 0) -> PairedTest:
    """Exact McNemar and paired bootstrap on per-question correctness of A and B (same order)."""
    if len(a) != len(b):
        raise ValueError(f"paired_test needs equal lengths, got {len(a)} and {len(b)}")
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    n = len(x)
    if n == 0:
        nan = float("nan")
        return PairedTest(0, nan, nan, nan, nan, nan, 0, 0, 1.0, 1.0)
    d = x - y
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    diff = float(d.mean())
    # Two-sided p: how often the resampled difference, re-centred on 0, is as extreme as observed.
    centred = boots - diff
    p_boot = float((np.sum(np.abs(centred) >= abs(diff) - 1e-12) + 1) / (n_boot + 1))
    if not np.any(d):
        p_boot = 1.0
    a_only = int(np.sum((x == 1) & (y == 0)))
    b_only = int(np.sum((x == 0) & (y == 1)))
    return PairedTest(
        n=n,
        acc_a=float(x.mean()),
        acc_b=float(y.mean()),
        diff=diff,
        diff_ci_low=float(np.quantile(boots, 0.025)),
        diff_ci_high=float(np.quantile(boots, 0.975)),
        a_only=a_only,
        b_only=b_only,
        mcnemar_p=mcnemar_exact(a_only, b_only),
        bootstrap_p=min(1.0, p_boot),
    )


def pair_up(a: dict, b: dict) -> tuple[list[bool], list[bool]]:
    """Align two {question key: correct} maps on the keys both have (sorted for determinism)."""
    keys = sorted(set(a) & set(b))
    return [bool(a[k]) for k in keys], [bool(b[k]) for k in keys]



@dataclass
class GainDifference:
    """Whether student A gains more than student B from the same kind of supervision: per question,
    (A trained - A baseline) - (B trained - B baseline), on the questions all four were graded on."""

    n: int
    gain_a: float
    gain_b: float
    diff: float  # gain_a - gain_b
    diff_ci_low: float  # 95 % paired-bootstrap interval
    diff_ci_high: float
    bootstrap_p: float  # two-sided

    def as_dict(self) -> dict:
        return asdict(self)


def gain_difference(a_trained: dict, a_base: dict, b_trained: dict, b_base: dict,
                    n_boot: int = 5000, seed: int = 0) -> GainDifference:
    """Paired bootstrap over questions of the difference between two students' gains.

    The four maps are {question key: correct}; questions are resampled together, so the test
    respects that both students answered the same questions."""
    keys = sorted(set(a_trained) & set(a_base) & set(b_trained) & set(b_base))
    nan = float("nan")
    if not keys:
        return GainDifference(0, nan, nan, nan, nan, nan, 1.0)
    col = lambda m: np.array([float(bool(m[k])) for k in keys])  # noqa: E731
    ga, gb = col(a_trained) - col(a_base), col(b_trained) - col(b_base)
    d = ga - gb
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    diff = float(d.mean())
    p = 1.0 if not np.any(d) else float((np.sum(np.abs(boots - diff) >= abs(diff) - 1e-12) + 1) / (n_boot + 1))
    return GainDifference(len(keys), float(ga.mean()), float(gb.mean()), diff, float(np.quantile(boots, 0.025)),
                          float(np.quantile(boots, 0.975)), min(1.0, p))

@dataclass
class Correlation:
    metric: str
    n: int
    spearman: float
    spearman_p: float
    pearson: float
    pearson_p: float

    def as_dict(self) -> dict:
        return asdict(self)


def correlate(metric: str, xs: Sequence[float], ys: Sequence[float]) -> Correlation:
    """Spearman and Pearson correlation of a metric with accuracy, ignoring NaN pairs.

    NaN where fewer than 3 pairs remain or either side is constant (no correlation is defined).
    """
    pairs = [(float(x), float(y)) for x, y in zip(xs, ys) if _finite(x) and _finite(y)]
    nan = float("nan")
    if len(pairs) < 3:
        return Correlation(metric, len(pairs), nan, nan, nan, nan)
    x, y = np.array(pairs).T
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return Correlation(metric, len(pairs), nan, nan, nan, nan)
    from scipy.stats import pearsonr, spearmanr

    s = spearmanr(x, y)
    p = pearsonr(x, y)
    return Correlation(metric, len(pairs), float(s.statistic), float(s.pvalue), float(p.statistic), float(p.pvalue))


def _finite(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
