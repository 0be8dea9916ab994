"""Extract the final answer from free text and decide whether it is correct.

Two protocols (cotdistill.protocol): ``paper`` reads only "[Tt]he answer is X" as the paper's
released scripts do; ``lenient`` (the default) reads, in this order:
  1. math only: the LAST \\boxed{...};
  2. the text after the LAST "The answer is" or a variant ("the correct answer is", "answer should
     be", "Answer:", "answer could be considered", GSM8K's "#### 12"; spaces optional, any case:
     "TheanswerisD" counts); if that text holds no answer, the one before it, and so on;
  3. (not math) the LAST \\boxed{...};
  4. (not math) after the LAST "answer/option/choice" directly followed by an option letter
     ("so Answer D", "Choice E is correct", "option c", "choice (b)");
  5. the last candidate anywhere in the text: last number (number); the final sentence's math
     (math: in the last sentence with a value -- remarks, questions, Asymptote code and tables
     skipped -- the value the sentence states: "There are $5$ primes between $30$ and $50$" -> 5,
     not a bound, an operand, a side clause or a lone variable; a formula by its last row, right of
     its last "="; numbers in the prose where the sentence has no formula; see _final_math); the
     last parenthesised capital letter, else an option's text in the last sentence, else the last
     standalone capital letter (choice); a leading yes/no, else the last true/false/yes/no, "not
     true" read as False (boolean).
For math, an "answer is" whose words describe rather than state ("our answer is the number of
integers between $0$ and $24$", "the answer would be greater than $999$") is passed over.
Within the text after an anchor we take its first candidate (first number, first letter, ...);
for numbers only its first sentence, and right of the last "=" there ("The answer is 5 - 3 = 2").
A self-correction inside that text counts from where it corrects itself ("23 no wait its 46" -> 46).
Capitals inside notation are not options: 8C3, 30C2, C.I., A1. Lowercase letters are options
only where the text names them as such ("option c", "(b)" right after an anchor).
Numbers: units with exponents are dropped ("15 cm^2" -> 15); a mixed number 2\\frac{1}{2} is 5/2
(number and math kinds, gold and answer alike).
A response is read only up to a chat turn marker (<|im_end|>, "### Instruction", ...) after which
a model that did not stop writes the next turn.

Bounded work: only the first MAX_READ_CHARS characters of a response are read (32,768: more than
twice the longest released rationale, 13 KB, and far beyond any evaluation's max_new_tokens), and
every step is linear in what is read (a brace matcher with a stack, bounded windows after anchors,
no backtracking regular expression on unbounded text), so a 1 MB runaway generation grades in
milliseconds.

Model text is data: it is matched with regular expressions and handed to math-verify as a
string, never executed or eval()'d. math-verify runs in a child process with our own deadline,
because its built-in timeout uses signal.alarm, which only works in the main thread and cannot
stop a runaway sympy computation from another thread.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from cotdistill.errors import CotdistillError
from cotdistill.protocol import check_protocol, cut_at_paper_stop

KINDS = ("number", "choice", "boolean", "math")  # the one list of answer kinds
MATH_TIMEOUT_S = 10.0  # per math-verify comparison; a pathological expression counts as wrong
MAX_READ_CHARS = 32_768  # a response is read up to here (see the module docstring)
_WINDOW = 400  # characters read after an anchor; an answer is short
_MAX_CANDIDATE = 1_000  # a formula longer than this is not a final answer
_MAX_FORMULAS = 50  # formulas tried from the end for the final sentence's math

# ---- the one place for the "answer is" rules
# "The answer is" (states_answer, used by data audit and teach)
_THE_ANSWER_IS = re.compile(r"the\s*(?:correct\s+|final\s+|right\s+|best\s+)?answer\s*is", re.I)
# "The answer is" and its variants ("the correct answer is", "answer should be", "Answer:", "TheanswerisD").
_ANSWER_IS = re.compile(
    r"answers?\s*(?:is|was|should\s*be|would\s*be|could\s*be(?:\s*considered)?|will\s*be|remains|:)|####", re.I
)  # "#### 12" is GSM8K's own answer line
# The paper's trigger (protocol "paper"), and its choice/boolean reading (run_reasoning.py).
_PAPER_TRIGGER = re.compile(r"[Tt]he answer is")
_PAPER_LABEL = re.compile(r"[Tt]he answer is ([A-E]|True|False)")

# ---- option letters
# A letter that names an option, right after an anchor or an option phrase: "(b)", "'C'", "Option c",
# "D", "e." -- a capital not glued to a letter or digit (8C3) and not an abbreviation (C.I.);
# a lowercase letter only in brackets/quotes, after option/choice, or closing the phrase ("is b.").
_OPTION_TOKEN = re.compile(
    r"[\s:*\[\-=>(]*(?P<opt>(?i:option|choice)\s*[:\-]?\s*)?"
    r"(?:\((?P<p>[A-Ea-e])\)|'(?P<q>[A-Ea-e])'|(?P<u>[A-E])(?![A-Za-z0-9])(?!\.[A-Za-z])"
    r"|(?P<l>[a-e])(?=\s*(?:[).:,;!]|$)))"
)
_LETTER_PHRASE = re.compile(r"\b(?i:answer|option|choice)\b(?=\s*[:\-]?\s*(?:\(?[A-E](?![A-Za-z0-9])|\([a-e]\)|[a-e](?=\s*(?:[).:,;!]|$))))")
# A standalone capital (not notation: 8C3, 30C2, A1, C.I., U.S.).
_LETTER = re.compile(r"(?<![A-Za-z0-9])(?<![A-Za-z]\.)\(?([A-Z])(?![A-Za-z0-9])(?!\.[A-Za-z])")
# a letter glued to the word after the anchor ("isD", "istrC", "istrueisA"), not to a number ("3D")
_GLUED_LETTER = re.compile(r"[^\sA-Z]{0,11}[a-z\u0080-\uffff]([A-E])(?![A-Za-z0-9])")
_PAREN_LETTER = re.compile(r"\(([A-Z])\)|(?<![A-Za-z0-9])([A-Z])\)")
_ARTICLE_A = re.compile(r"\s+[a-z]")

# ---- numbers and words
_BRACES = re.compile(r"\\boxed\s*\{|\{|\}")
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d+(?:\.\d+)?(?:/\d+(?:\.\d+)?)?|\.\d+)")
_FRAC = re.compile(r"\\[dt]?frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}")
_MIXED = re.compile(r"(?<![\w.}^_])(-?)(\d+)\s*\\[dt]?frac\s*\{(\d+)\}\s*\{(\d+)\}")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_THIN_SPACE = re.compile(r"\\+!")  # "\!" in "12,\!650", also escaped twice ("20\\\\!:\\\\!34")
_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")  # "12,\u200b650": invisible, never meaning
_UNIT_POWER = re.compile(r"(?<=[A-Za-z}])\s*(?:\^\s*\{?\s*[23]\s*\}?|[\u00b2\u00b3])")  # cm^2, m^{3}, m²
# A number followed by its unit ("16 daps", "15 cm^2", "6\text{ inches}"): the value is the number.
_NUMBER_WITH_UNIT = re.compile(
    r"(-?\d[\d,]*(?:\.\d+)?(?:/\d+)?)(?:\s*\\(?:text|mbox|mathrm)\s*\{[^{}]*\}|\s+[A-Za-z][A-Za-z .]*)"
    r"(?:\s*(?:\^\s*\{?\s*[23]\s*\}?|[\u00b2\u00b3]))?[\sA-Za-z.]*"
)
# A model that does not stop may write the next turn after its answer: read only up to it.
_TURN_MARKERS = ("<|im_end|>", "<|endoftext|>", "<end_of_turn>", "</s>", "<|eot_id|>", "\n### Instruction", "\n### Input")
_WORDS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty".split()
_NUMBER_WORD = re.compile(r"\b(" + "|".join(_WORDS) + r")\b", re.I)
_BOOL_WORD = re.compile(r"(?<![A-Za-z])(not\s+)?(true|false|yes|no)(?![A-Za-z])", re.I)
# A rationale that corrects itself: read from the correction on ("23 no wait its 46").
_CORRECTION = re.compile(r"\b(?:no,?\s+wait|wait,?\s+no|I\s+mean|correction\s*:|I\s+made\s+a\s+mistake)\b", re.I)


@dataclass(frozen=True)
class Grade:
    extracted: str | None  # the answer as found in the text (normalised), None if nothing found
    correct: bool
    reason: str | None  # why nothing could be extracted (or why it could not be checked)


def states_answer(text: str) -> bool:
    """True when a rationale states its final answer with "The answer is" (used by data audit)."""
    return bool(_THE_ANSWER_IS.search((text or "")[:MAX_READ_CHARS]))


# ---------------------------------------------------------------- locating the answer text


def _boxed_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of the contents of every closed \\boxed{...}, in order of their start.
    One pass with a stack of open braces: linear even for 100,000 unclosed \\boxed{."""
    spans, stack = [], []
    for m in _BRACES.finditer(text):
        if m.group() == "}":
            if stack:
                start = stack.pop()
                if start >= 0:
                    spans.append((start, m.start()))
        else:
            stack.append(m.end() if m.group() != "{" else -1)
    spans.sort()
    return spans


def boxed_contents(text: str) -> list[str]:
    """Contents of every \\boxed{...}, with nested braces balanced."""
    return [text[a:b] for a, b in _boxed_spans(text)]


def _last_boxed(text: str) -> str | None:
    spans = _boxed_spans(text) if "boxed" in text else []
    return text[spans[-1][0] : spans[-1][1]] if spans else None


def _window(text: str, pos: int) -> str:
    # The answer ends at the end of its line; a long tail is explanation, not answer.
    return text[pos : pos + _WINDOW].lstrip(" \t:*").split("\n", 1)[0][:200]


def _segments(text: str, kind: str):
    """The places an answer can be read from, in priority order (lazily): see the module docstring."""
    boxed = _last_boxed(text)
    if kind == "math" and boxed is not None:
        yield boxed
    for m in reversed(list(_ANSWER_IS.finditer(text))):
        yield _window(text, m.end())
    if kind != "math" and boxed is not None:
        yield boxed[:_MAX_CANDIDATE]
    last = None
    for last in _LETTER_PHRASE.finditer(text):
        pass
    # "Option D, going for a walk, is not an adaptation. Therefore, ... is A.": a phrase that only
    # discusses an option is not the answer when an option letter stands after it
    if last is not None and kind == "choice" and not _letters(text[last.end() :].lstrip(" :-(")[1:], "ABCDE"):
        yield _window(text, last.end())


# ---------------------------------------------------------------- per-kind candidates


def _mixed_to_frac(s: str) -> str:
    """2\\frac{1}{2} -> \\frac{5}{2} (a mixed number, as MATH writes it); -1\\frac{1}{2} -> -\\frac{3}{2}."""
    return _MIXED.sub(lambda m: f"{m.group(1)}\\frac{{{int(m.group(2)) * int(m.group(4)) + int(m.group(3))}}}{{{m.group(4)}}}", s)


def _normalise_number_text(s: str) -> str:
    s = _ZERO_WIDTH.sub("", s.replace("\u2212", "-")).replace("\\,", "").replace("{,}", ",")
    s = _THIN_SPACE.sub("", s)
    s = re.sub(r"(?<=\d),?[\u202f\u2009\u00a0](?=\d{3})", ",", s)  # thin/no-break spaces as thousands separators
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "%")
    s = _UNIT_POWER.sub("", s)  # "15 cm^2": the 2 is the unit's
    s = _FRAC.sub(r"\1/\2", _mixed_to_frac(s))
    return _THOUSANDS.sub("", s)


def _to_number(s: str) -> float | None:
    s = _normalise_number_text(s).strip().rstrip(".%").strip()
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            return float(num) / float(den)
        return float(s)
    except (ValueError, ZeroDivisionError):
        return None


def _numbers(segment: str) -> list[str]:
    return _NUMBER.findall(_normalise_number_text(segment))


def _letters(segment: str, valid: str) -> list[str]:
    out = []
    for m in _LETTER.finditer(segment):
        letter = m.group(1)
        if letter not in valid:
            continue
        # "A" followed by a lower-case word is the article ("A cave full of ..."), not option A.
        if letter == "A" and not m.group(0).startswith("(") and _ARTICLE_A.match(segment, m.end()):
            continue
        out.append(letter)
    return out


def _choice_by_text(segment: str, choices: dict[str, str] | None) -> str | None:
    """The option whose text appears in the segment (longest match wins), e.g. 'populated areas'."""
    if not choices:
        return None
    low = " ".join(segment.lower().split())
    hits = [(len(t), k) for k, t in choices.items() if t and " ".join(t.lower().split()) in low]
    return max(hits)[1] if hits else None


def _bool_word(m: re.Match) -> str:
    value = m.group(2).lower() in ("true", "yes")
    return "True" if value != bool(m.group(1)) else "False"  # "not true" is False


def _option_letter(segment: str, valid: str) -> str | None:
    """The option letter the segment starts with ("B", "(b)", "Option c"), if any."""
    m = _OPTION_TOKEN.match(segment)
    if not m:
        return None
    letter = (m.group("p") or m.group("q") or m.group("u") or m.group("l")).upper()
    return letter if letter in valid else None


def _from_segment(segment: str, kind: str, choices: dict[str, str] | None) -> str | None:
    fix = None
    for fix in _CORRECTION.finditer(segment):
        pass
    if fix is not None:  # "23 no wait its 46": the correction, when it holds an answer
        corrected = _from_segment(segment[fix.end() :], kind, choices)
        if corrected is not None:
            return corrected
    if kind == "number":
        # the first sentence only; in "12 + 13 = 25" the value is right of the last "="
        clause = re.split(r"[.!?;](?:\s|$)", segment, maxsplit=1)[0]
        if "=" in clause and _numbers(clause.rsplit("=", 1)[1]):
            clause = clause.rsplit("=", 1)[1]
        nums = _numbers(clause) or _numbers(segment)
        if nums:
            return nums[0]
        word = _NUMBER_WORD.search(clause)  # "The answer is five."
        return str(_WORDS.index(word.group(1).lower())) if word else None
    if kind == "choice":
        valid = "".join(choices) if choices else "ABCDE"
        lead = _option_letter(segment, valid)  # "The answer is A bank": right after the anchor, A is the option
        if lead:
            return lead
        glued = _GLUED_LETTER.match(segment)  # "The answer is isD", "The answer istrC"
        if glued and glued.group(1) in valid:
            return glued.group(1)
        letters = _letters(segment, valid)
        return letters[0] if letters else _choice_by_text(segment, choices)
    if kind == "boolean":
        m = _BOOL_WORD.search(segment)
        return _bool_word(m) if m else None
    # math: the boxed, else the first sentence, minus sentence punctuation and $ delimiters around it
    boxed = _last_boxed(segment)
    ans = boxed if boxed is not None else _stated_formula(re.split(r"\.\s+(?=[A-Z])", segment, maxsplit=1)[0])
    if ans is None or re.fullmatch(r"\s*(?:<\s*\w*\s*>|\[\s*answer\s*\]|answer)\W*", ans, re.I):
        return None  # a template placeholder ("The answer is <answer>"), not an answer
    if boxed is None and _PROSE.fullmatch(ans):
        return None  # "the final answer is a common one": words, not a value
    return _clean_math(ans)


# After "The answer is", words that still let the formula after them be the answer ("is therefore $2019$").
_ANSWER_LEAD = re.compile(r"(?:[\s,:\-]|\b(?:therefore|thus|then|so|hence|simply|just|clearly|indeed|now|also|still|exactly|"
                          r"precisely|approximately|about|equal\s+to|given\s+by|in\s+fact|actually|obviously)\b)*")
_CHAIN_GAP = re.compile(r"\s*(?:,?\s*(?:or|i\.e\.,?|that\s+is,?|which\s+is)\s*)?")
_PROSE = re.compile(r"\s*[A-Za-z]+(?:\s+[A-Za-z]+)+\s*[.!]?\s*")


def _stated_formula(sentence: str) -> str | None:
    """What the sentence after an anchor states when words come before its first formula: that
    formula, continued by the ones that restate it ("$\\sum ...$ $= 1 \\cdot 2 + ...$ $= 704$",
    "$(8)(14)$, or $112$"), if the words only lead to it ("is therefore $2019$"); None if they
    describe it ("our answer is the number of integers between $0$ and $24$", "the answer would be
    greater than $999$"). Else the sentence as it is."""
    spans = _formula_spans(sentence)
    if not spans or not re.fullmatch(r"[\sA-Za-z,:\-]*", sentence[: spans[0][0]]):
        return sentence
    if not _ANSWER_LEAD.fullmatch(sentence[: spans[0][0]]):
        return None
    _, a, b, c = spans[0]
    for o2, a2, b2, c2 in spans[1:]:
        gap = sentence[c:o2]
        if not _CHAIN_GAP.fullmatch(gap) or not (gap.strip() or sentence[a2:b2].lstrip().startswith(("=", "\\approx"))):
            break
        a, b, c = a2, b2, c2
    return sentence[a:b]


# Upstream JSON wrote "\\frac" as "\\f" + "rac" (a form feed), "\\binom" as a backspace, "\\times" as a tab.
_ESCAPE_DAMAGE = [("\x0c", "\\f"), ("\x08", "\\b"), ("\t", "\\t"), ("\r", "\\r")]


def _repair_latex(text: str) -> str:
    for bad, good in _ESCAPE_DAMAGE:
        text = re.sub(re.escape(bad) + r"(?=[a-z])", lambda _m, g=good: g, text)
    return text


def _strip_unit(ans: str) -> str:
    """'16 daps' -> '16', '15 cm^2' -> '15', '6\\text{ inches}' -> '6'; anything else unchanged."""
    m = _NUMBER_WITH_UNIT.fullmatch(ans.strip())
    return m.group(1) if m else ans


_ANSWER_TAG = re.compile(r"</?\s*answer\s*>|</?[A-Z][A-Za-z ]{0,30}>", re.I)  # "<answer>5", "36405</Solution Path>"
_COMMENT = re.compile(r"\s+\((?=[^()]*[A-Za-z]{3})[^()]*\)\s*$")  # a bracketed remark in words after the answer


def _clean_math(ans: str) -> str | None:
    # "15$\pi$", "\( 2\sqrt{3} \)", "$\frac{1}{2}$.", "<14>", "16 daps" -> bare LaTeX for math-verify
    if len(ans) > _MAX_CANDIDATE:
        return None
    for token in ("\\$", "$", "\\(", "\\)", "\\[", "\\]"):
        ans = ans.replace(token, " " if token != "\\$" else "")
    ans = _ANSWER_TAG.sub("", _THIN_SPACE.sub("", ans))  # "<answer>5", "20\\!:\\!34"
    ans = ans.strip().rstrip(".").strip().removeprefix("<").removesuffix(">").strip()
    ans = _COMMENT.sub("", ans) or ans  # "7 (correct calculation adjustment)": the answer, not the comment
    if _SIDES.search(ans):  # "2\\times2!\\times3!=24 ways", "\\frac{576}{\\pi} \\approx 183": right of the last "="
        ans = _SIDES.split(ans)[-1].strip()
    return _strip_unit(ans) or None


_LONE_VARIABLE = re.compile(r"\s*\\?[A-Za-z]+'?(?:_\{?\w+\}?)?\s*")  # x, C, n', a_1, \alpha (but not 12 or 2x)
_OPEN = re.compile(r"\$\$|\$|\\\(|\\\[|\\begin\{(?:align|eqnarray|equation|gather)\*?\}")
# right of the last of these is a formula's value: "=", "\approx", "\equiv", "\Longrightarrow 840"
_SIDES = re.compile(r"=|\\approx|\\equiv|\\(?:implies|Rightarrow|Longrightarrow)\b")
_ROW_NOISE = re.compile(r"\\pmod\s*\{[^{}]*\}|\\(?:quad|qquad|therefore)\b|&")
_TABLE = re.compile(r"\\begin\{(?:array|matrix|[pbvB]matrix|tabular)\}")  # a table lists values, it does not state one
_NAME = re.compile(r"[\sA-Za-z\\{}'^]*")  # "\angle DEF", "AB", "\overline{BC}": names a thing, states no value
_LATEX_WORD = re.compile(r"\\[A-Za-z]+|\\text\s*\{[^{}]*\}")
# A sentence ends at . ! ? before a new sentence (also unspaced: "is 871.The"), a blank line or the end; after a bracketed remark
# before a capital ("(Think of ...)  Plugging in"); at a line break before a new step ("\n4. Width").
_SENTENCE_END = re.compile(
    r"[.!?]\)?(?=\s+[A-Z(\\$]|\s*\n\s*\n|\s*$|[A-Z][a-z])|\)(?=[ \t]+[A-Z])|\n(?=[ \t]*(?:[A-Z#*\u2022-]|\d+[.)]\s))"
)
# A remark is not where a solution states its answer: "(You can check ...)", "Notice that ...",
# "Checking our answer ...", "If you don't have ... memorized", "Alternatively, ...".
_REMARK = re.compile(r"\s*(?:\((?=[A-Za-z])|Note\b|Notice\b|Remark\b|Check(?:ing)?\s+(?:our|your|the\s+answer|that|this)\b"
                     r"|If\s+you\b|Alternatively\b)")
# "Remark: ...", "Note: ..." and an alternative solution ("We could also ..."): remarks to the end
_REMARK_TO_END = re.compile(r"\s*(?:(?:Note|Remark)\s*:|We\s+could\s+also\b)")

# ---- which value of the final sentence states the answer (_sentence_value)
# a number in the prose (after _normalise_number_text): "5", "12,650", "3.5%", "5/11", "1:2", "3\sqrt{10}", "2\pi"
_PROSE_NUMBER = re.compile(
    r"(?<![\w.\\^_{}])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+(?:\.\d+)?|[ \t]*:[ \t]*\d+(?![\w.]))?%?"
    r"(?:\\sqrt\s*\{\d+\}|\\pi\b)?(?![\w^_\\]|[.,]\d)"
)
_NUMBER_LABEL = re.compile(r"\b(?:step|case|row|part|method|figure|equation|level|line|page|question|problem|day)\s*$", re.I)
_CLAUSE_MARK = re.compile(r"[,;:](?=\s)|\bnamely\b")
_LIST_GAP = re.compile(r"[\s,]*(?:and|or)?\s*")  # "$4$, $5$, and $7$": one list
_LEAD_CLAUSE = re.compile(r"\W*(?:(?:thus|so|therefore|hence|and|but|now|then|finally)\W+)?(?:since|because|if|when|whenever|as|"
                          r"although|though|while|given|after|before|once|unless|suppose|assuming)\b", re.I)
_TRAIL_CLAUSE = re.compile(r"\s*(?:while|whereas|as|since|because|although|though|where|if|when|unless|so\s+that|such\s+that)\b", re.I)
_ADVERB_END = re.compile(r"(?:\s+(?:exactly|only|just|precisely|approximately|about|roughly|both|all|also|still|simply|"
                         r"indeed|clearly|actually|then|now))+\s*$")
_NEG_BEFORE = re.compile(r"\b(?:not|never|cannot)(?:\s+\w+)?\s*$")
_NEG_AFTER = re.compile(r"\s*(?:(?:is|are|was|were|would|will|can|could|should|must)\s+(?:not|never)\b|cannot\b|can't\b|"
                        r"isn't\b|aren't\b|won't\b|wouldn't\b)", re.I)
# words before a value that make it a stated one where _DESC_BEFORE would read a bound or an operand
_CUE_BEFORE = re.compile(
    r"(?:\b(?:answer(?:\s+(?:is|of|as))?|equal\s+to|congruent\s+to|other\s+than|which\s+is|left\s+with|leaves?(?:\s+us)?\s+with|"
    r"(?:a|an)\s+(?!(?:multiple|factor|divisor|power|root|digit|member|term|element|subset|solution)s?\s)(?:[a-z\-]+\s+){1,2}of|"
    r"total\s+of|(?:simplif|reduc|amount|round|come|sum|add)\w*(?:\s+(?:out|up))?\s+to)|=)\s*$"
)
# a value that is a bound, an operand, a range or a side condition: "between $30$ and $50$", "of $13$",
# "than $350$", "divisible by $8$", "to bake $3$ cookies", "in the form $8n + 2$", "namely $a = 0$"
_DESC_BEFORE = re.compile(
    r"\b(?:of|between|than|divisible\s+by|divided\s+by|from|to|with|without|within|under|over|per|among|except|through|via|"
    r"mod|modulo|namely|like|as|whose|since|because|such\s+that|so\s+that|(?:for|in|of|to)\s+which|"
    r"to\s+(?!(?:get|obtain|find|give|yield|reach|arrive|be)\b)[a-z]+(?:\s+(?:the|a|an|all|up|out))?|"
    r"form|digit|palindrome|expression|equation|set|list|sequence|term|point|polynomial|function)\s*$"
)


def _describes(before: str, after: str) -> bool:
    """Whether the words around a value of the final sentence make it a bound, an operand, a range
    or a side case rather than what the sentence states ("between $30$ and $50$", "of $13$", "to
    bake $3$ cookies", "$4\\cdot14=56$ is not")."""
    b = _ADVERB_END.sub("", before.lower())
    if _NEG_AFTER.match(after) or _NEG_BEFORE.search(b):
        return True
    return not _CUE_BEFORE.search(b) and bool(_DESC_BEFORE.search(b))


def _formula_spans(text: str) -> list[tuple[int, int, int, int]]:
    """(open, start, end, close) of each inline/display formula and align-like environment, left to
    right: text[start:end] is its content, text[open:close] with its delimiters. Linear (a delimiter
    type with no closer left is never searched for again). A "$" before a number is a currency sign,
    not a delimiter, when its "formula" runs over the end of a sentence ("be $100.\\n2. The stock")
    or ends in a space or right before a number ("$50 - $45 = $5"). A "$" left open in the last 200
    characters (not before a number: that is currency) runs to the end."""
    out, pos, dead = [], 0, set()
    while (m := _OPEN.search(text, pos)) is not None:
        opener = m.group()
        end = -1 if opener in dead else text.find(_closer(opener), m.end())
        if end < 0 and opener == "$" and len(text) - m.end() <= 200 and not text[m.end() : m.end() + 1].isdigit():
            end = len(text)  # "which gives us $x = \\frac{25}{125} = 0.2.": the last formula left open at the end
        if end < 0:
            dead.add(opener)
            pos = m.end()
            continue
        body = text[m.end() : end]
        after = text[end + 1 : end + 2]
        if opener == "$" and body[:1].isdigit() and (re.search(r"[.!?]\s+[A-Z][a-z]+\s", body) or body[-1:].isspace()
                                                     or after.isdigit()):
            pos = m.end()
            continue
        out.append((m.start(), m.end(), end, end + len(_closer(opener))))
        pos = end + len(_closer(opener))
    return out


def _formulas(text: str) -> list[tuple[int, int]]:
    """(start, end) of the content of each formula (see _formula_spans)."""
    return [(a, b) for _, a, b, _ in _formula_spans(text)]


def _closer(opener: str) -> str:
    return {"$$": "$$", "$": "$", "\\(": "\\)", "\\[": "\\]"}.get(opener) or opener.replace("\\begin", "\\end")


def _without_asymptote(text: str) -> str:
    """Text with every [asy]...[/asy] block removed (an unclosed one to the end): its letters and
    coordinates are drawing code, never the answer."""
    parts, pos = [], 0
    while (i := text.find("[asy]", pos)) >= 0:
        parts.append(text[pos:i])
        j = text.find("[/asy]", i)
        pos = len(text) if j < 0 else j + len("[/asy]")
    parts.append(text[pos:])
    return "".join(parts)


def _formula_value(formula: str) -> str | None:
    """The value a formula states: its last row (align), right of its last =, \\approx, \\equiv or
    implication arrow; the left side when the right is a lone variable ('$12 = x$'); None for a lone
    variable or a table."""
    if _TABLE.search(formula):
        return None
    rows = [r for r in formula.split("\\\\") if r.strip()]
    row = _ROW_NOISE.sub(" ", rows[-1] if rows else "").strip().rstrip(".,;")
    sides = [x.strip() for x in _SIDES.split(row)]
    value = next((x for x in reversed(sides) if x and not _LONE_VARIABLE.fullmatch(x)), None)
    return _clean_math(value) if value is not None else None


@dataclass(frozen=True)
class _Value:
    """A candidate answer in a sentence: a formula's value or a number in the prose."""
    text: str
    computed: bool  # the formula works it out ("$2\\cdot3=6$"): a result, never an item of a list
    numeric: bool  # no variable left in it (a MATH answer is mostly a number)
    name: bool  # letters only ("\\angle DEF", "AB"): names a thing


def _formula_token(s: str) -> tuple[str, object]:
    value = _formula_value(s)
    if value is None:
        return ("text", " X ")  # a lone variable reads as a noun ("$n$ can be")
    bare = _LATEX_WORD.sub("", value)
    return ("value", _Value(value, bool(_SIDES.search(s)), not re.search(r"[A-Za-z]", bare), bool(_NAME.fullmatch(value))))


def _prose_tokens(s: str, first: bool, numbers: bool) -> list[tuple[str, object]]:
    """Prose as text and number tokens (only text unless `numbers`); "Step 4" and a list's "5."
    opening a sentence (`first`) are not values."""
    if not numbers:
        return [("text", s)]
    s = _normalise_number_text(s)  # "2\frac{1}{2}" -> "5/2", "\dfrac{5}{11}" -> "5/11", "12{,}650"
    tokens, at, opening = [], 0, len(s) - len(s.lstrip())
    for m in _PROSE_NUMBER.finditer(s):
        enumerator = first and m.start() == opening and re.match(r"[.)](?:\s|$)|:", s[m.end() : m.end() + 2])
        if enumerator or _NUMBER_LABEL.search(s[max(0, m.start() - 12) : m.start()]):
            continue
        computed = s[max(0, m.start() - 3) : m.start()].strip().endswith("=")  # "= 5/2": a result, not a list item
        tokens += [("text", s[at : m.start()]), ("value", _Value(m.group(), computed, True, False))]
        at = m.end()
    return tokens + [("text", s[at:])]


def _is_number_list(tokens: list[tuple[str, object]]) -> bool:
    """Three or more values with only commas and "and" between them ("are 1, 2, 3, 5, and 30.")."""
    at = [i for i, (k, _) in enumerate(tokens) if k == "value"]
    return len(at) >= 3 and all(tokens[i][0] == "value" or _LIST_GAP.fullmatch(tokens[i][1]) for i in range(at[0], at[-1]))


def _sentence_value(pieces: list[tuple[str, str]]) -> str | None:
    """The value a sentence states: among its formulas' values (the numbers in its prose where it
    has no formula value), the last of those that score best: +1 when the words
    around do not describe it (_describes) and it is not in a clause or list that does ("Since ...,
    ", ", while ...", "of both $4$ and $14$", the list after "...: " or "namely" that follows a stated
    value), +1 when no variable is left in it. None when it has no value, or its prose only lists
    numbers ("The factors are 1, 2, 3, 5, 6, 10, 15, and 30.")."""
    formulas = [_formula_token(s) for k, s in pieces if k == "f"]
    has_formula = any(k == "value" for k, _ in formulas)
    tokens: list[tuple[str, object]] = []
    for kind, s in pieces:
        tokens += [formulas.pop(0)] if kind == "f" else _prose_tokens(s, not tokens, not has_formula)
    if not has_formula and _is_number_list(tokens):
        return None
    first_text = tokens[0][1] if tokens and tokens[0][0] == "text" else ""
    lead = bool(_LEAD_CLAUSE.match(first_text))  # "Since ..., " / "If ..., ": until its comma
    trail = False  # ", while ..." / ", as ...": until the next comma
    listing = ""  # "" / ":" / "namely": a list that follows a stated value
    before, stated, prev, best = "", False, None, None
    for i, (kind, tok) in enumerate(tokens):
        if kind == "text":
            for m in _CLAUSE_MARK.finditer(tok):
                lead, trail = False, bool(_TRAIL_CLAUSE.match(tok, m.end()))
                if stated and m.group() in (":", "namely"):
                    listing = m.group()
            before = (before + tok)[-80:]
            continue
        after = tokens[i + 1][1][:80] if i + 1 < len(tokens) and tokens[i + 1][0] == "text" else ""
        if prev is not None and not tok.computed and _LIST_GAP.fullmatch(before):
            by_words = prev  # an item of the list before it ("of both $4$ and $14$")
        else:
            by_words = tok.name or _describes(before, after)
        describes = by_words or lead or trail or listing == "namely" or (listing == ":" and not tok.computed)
        score = (not describes) + tok.numeric
        if best is None or score >= best[0]:
            best = (score, tok.text)
        before, prev, stated = "", by_words, stated or not describes
    return _clean_math(best[1]) if best is not None else None


def _sentences(text: str) -> list[tuple[list[tuple[str, str]], bool]]:
    """The text (from its last _MAX_FORMULAS formulas on) as sentences: each a list of pieces, ("p",
    prose) or ("f", formula content), and whether it is a remark or a question. Linear in the text."""
    spans = _formula_spans(text)
    pos = spans[-_MAX_FORMULAS - 1][3] if len(spans) > _MAX_FORMULAS else 0
    spans, pieces = spans[-_MAX_FORMULAS:], []
    for o, a, b, c in spans:
        if o > pos:
            pieces.append(("p", text[pos:o], False))
        display = text.startswith(("$$", "\\[", "\\begin"), o)
        pieces.append(("f", text[a:b], display) if b - a <= _MAX_CANDIDATE else ("p", " ", False))
        pos = c
    pieces.append(("p", text[pos:], False))
    sentences: list[list[tuple[str, str]]] = [[]]
    for i, (kind, s, display) in enumerate(pieces):
        if kind == "f":
            sentences[-1].append((kind, s))
            nxt = pieces[i + 1] if i + 1 < len(pieces) else ("p", "", False)
            ended = s.rstrip().endswith((".", "!", "?")) or display  # "... digit $2.$ There", "$$15,30$$ This leaves"
            if ended and nxt[0] == "p" and re.match(r"\s*[A-Z(\\$]|\s*\n\s*\n|\s*$", nxt[1]):
                sentences.append([])
            continue
        at = 0
        for m in _SENTENCE_END.finditer(s):
            sentences[-1].append(("p", s[at : m.end()]))
            sentences.append([])
            at = m.end()
        sentences[-1].append(("p", s[at:]))
    out, to_end = [], False
    for sent in sentences:
        opening = sent[0][1].lstrip("$\\)] \n") if sent and sent[0][0] == "p" else ""
        to_end = to_end or bool(_REMARK_TO_END.match(opening))
        closing = sent[-1][1].rstrip() if sent and sent[-1][0] == "p" else ""
        if any(k == "f" or s.strip() for k, s in sent):
            out.append((sent, to_end or bool(_REMARK.match(opening)) or closing.endswith(("?", "?)"))))
    return out


def _final_math(text: str) -> str | None:
    """The final sentence's math: in the last sentence with a value, remarks and questions skipped
    ("(You can check ...)", "Notice that ...", "Checking our answer ...", everything after "Remark:"),
    the value the sentence states (_sentence_value): "There are $5$ primes between $30$ and $50$"
    -> 5, "Thus, $29\\cdot12=348$ is the largest multiple of $12$ which is less than $350.$" -> 348.
    Values are formulas that are not a lone variable or a table; numbers in the prose count only in
    a sentence without one (a text in plain words: "Thus, the remainder is 7."); a sentence that only
    names a thing ("\\text{Area}", "\\angle DEF") counts only when no earlier one states a value. Measured on the
    1297 human MATH solutions: see docs/data_audit.md."""
    text = _without_asymptote(text.replace("\\$", ""))
    named = None  # a sentence whose only value names a thing ("is given by \\( \\text{Area} \\)"): the last resort
    for pieces, skip in reversed(_sentences(text)):
        if not skip:
            value = _sentence_value(pieces)
            if value is not None and not _NAME.fullmatch(value):
                return value
            named = named or value
    return named


def _last_anywhere(text: str, kind: str, choices: dict[str, str] | None) -> str | None:
    if kind == "math":
        found = _final_math(text)
        if found is not None:
            return found
        nums = _numbers(_without_asymptote(text))
        return nums[-1] if nums else None
    if kind == "number":
        nums = _numbers(text)
        return nums[-1] if nums else None
    if kind == "choice":
        valid = "".join(choices) if choices else "ABCDE"
        paren = [a or b for a, b in _PAREN_LETTER.findall(text) if (a or b) in valid]
        if paren:
            return paren[-1]
        sentences = [x for x in re.split(r"(?<=[.!?])\s+|\n+", text.strip()) if x.strip()]
        by_text = _choice_by_text(sentences[-1], choices) if sentences else None  # "A desert" = (D) a desert
        if by_text:
            return by_text
        letters = _letters(text, valid)
        return letters[-1] if letters else None
    lead = re.match(r"\W*(not\s+)?(true|false|yes|no)\b", text, re.I)  # "No, because ..." states its answer first
    if lead:
        return _bool_word(lead)
    last = None
    for last in _BOOL_WORD.finditer(text):
        pass
    return _bool_word(last) if last is not None else None


def _extract_paper(text: str, kind: str) -> str | None:
    """The paper's reading (see cotdistill.protocol for the scripts it follows, line by line)."""
    text = cut_at_paper_stop(text)
    if kind in ("choice", "boolean"):  # run_reasoning.py::extract_answer_label: the FIRST match
        m = _PAPER_LABEL.search(text)
        return m.group(1) if m else None
    parts = _PAPER_TRIGGER.split(text)  # utils.py::answer_clean: the text after the LAST trigger
    if len(parts) < 2:
        return None
    pred = parts[-1][:_WINDOW * 4].strip("\n").rstrip(".").rstrip("/").strip(" ")
    if kind == "number":
        nums = re.findall(r"-?\d+/?\.?\d*", pred.replace(",", ""))
        return nums[0] if nums else None
    if "boxed" in pred:  # utils.py::extract_math_answer(pred, answer_flag=True)
        boxed = _last_boxed(pred)
        pred = boxed if boxed is not None else pred
    else:
        pred = pred.split("=")[-1].strip()
        if re.match(r"[\d.]+\s\D+$", pred):
            pred = pred.split(" ")[0]
    pred = pred.replace("\n", "").replace("\\!", "").replace("\\left", "").replace("\\right", "").strip("$").strip()
    return pred or None


_NOTHING = {"number": "number", "math": "number or \\boxed{}", "choice": "choice letter", "boolean": "true/false/yes/no"}


def extract_answer(text: str, kind: str, choices: dict[str, str] | None = None,
                   protocol: str = "lenient") -> tuple[str | None, str | None]:
    """(answer, None) or (None, reason). See the module docstring for the order of fallbacks."""
    if kind not in KINDS:
        raise CotdistillError(f"unknown answer kind {kind!r}; expected one of {', '.join(KINDS)}")
    check_protocol(protocol)
    text = (text or "")[:MAX_READ_CHARS]
    if not text.strip():
        return None, "empty response"
    for marker in _TURN_MARKERS:
        text = text.split(marker, 1)[0]
    if kind == "math":
        text = _repair_latex(text)
    if protocol == "paper":
        ans = _extract_paper(text, kind)
        return (ans, None) if ans is not None else (None, "no 'The answer is X' (protocol paper)")
    text = _ZERO_WIDTH.sub("", text)
    for segment in _segments(text, kind):
        ans = _from_segment(segment, kind, choices)
        if ans is not None:
            return ans, None
    ans = _last_anywhere(text, kind, choices)
    if ans is not None:
        return ans, None
    return None, f"no 'The answer is', no \\boxed{{}} and no {_NOTHING[kind]} in the response"


# ---------------------------------------------------------------- deciding correctness


def normalise_gold(gold: str, kind: str) -> str:
    """Gold answers in the data come as '145.0', 'B', 'True', 'yes', '\\frac{1}{2}'."""
    gold = str(gold).strip()
    if kind == "choice":
        m = re.fullmatch(r"\(?([A-Za-z])\)?[.:]?", gold)
        return m.group(1).upper() if m else gold
    if kind == "boolean":
        m = _BOOL_WORD.fullmatch(gold)
        return _bool_word(m) if m else gold
    return gold


def _numbers_equal(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)


def grade(response: str, gold: str, kind: str, choices: dict[str, str] | None = None,
          protocol: str = "lenient") -> Grade:
    """Extract the answer from `response` (under `protocol`: "lenient" or "paper", see
    cotdistill.protocol) and compare it with `gold` under the rules of `kind`."""
    answer, reason = extract_answer(response, kind, choices, protocol)
    if answer is None:
        return Grade(None, False, reason)
    gold = normalise_gold(gold, kind)
    if kind == "number":
        g, a = _to_number(gold), _to_number(answer)
        if g is None:
            return Grade(answer, False, f"gold {gold!r} is not a number")
        return Grade(answer, a is not None and _numbers_equal(g, a), None)
    if kind == "choice":
        if len(gold) != 1 and choices:  # gold given as option text
            gold = _choice_by_text(gold, choices) or gold
        return Grade(answer, answer == gold, None)
    if kind == "boolean":
        return Grade(answer, answer == gold, None)
    return _grade_math(answer, gold)


def _plain(s: str) -> str:
    """'\\text{A, B}' and 'A,B' -> 'a,b', '\\text{(E)},' -> 'e': a literal comparison before any parsing."""
    s = _THIN_SPACE.sub("", re.sub(r"\\(?:text|mbox|mathrm|textbf)\s*", "", s))
    return re.sub(r"[\s{}$()]", "", s).lower().rstrip(",.")


def _grade_math(answer: str, gold: str) -> Grade:
    if _plain(answer) == _plain(gold):
        return Grade(answer, True, None)
    answer_v, gold_v = _mixed_to_frac(_strip_unit(answer)), _mixed_to_frac(_strip_unit(gold))
    g, a = _to_number(gold_v), _to_number(answer_v)
    if g is not None and a is not None:  # plain numbers: no need for the sympy round trip
        return Grade(answer, _numbers_equal(g, a), None)
    verdict = math_equal(gold_v, answer_v)
    if verdict is None:
        return Grade(answer, False, f"math-verify gave no verdict within {MATH_TIMEOUT_S:g} s")
    return Grade(answer, verdict, None)


# ---------------------------------------------------------------- math-verify in a child process

_UNICODE_MATH = [
    (re.compile(r"√\s*\(([^()]*)\)"), r"\\sqrt{\1}"),
    (re.compile(r"√\s*(\d+|[a-zA-Z])"), r"\\sqrt{\1}"),
    (re.compile("π"), r"\\pi "),
    (re.compile("[×·]"), r"\\times "),
    (re.compile("÷"), r"\\div "),
    (re.compile("°"), r"^\\circ"),
]


def _as_latex(s: str) -> str:
    for pattern, repl in _UNICODE_MATH:
        s = pattern.sub(repl, s)
    return s if "$" in s or "\\(" in s or "\\[" in s else f"${s}$"


def serve_math_verify() -> None:
    """The child process: one JSON request per stdin line -> one JSON verdict per stdout line."""
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    from math_verify import parse, verify

    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        gold, answer = json.loads(line)
        try:
            # signal-based timeouts off: the parent enforces the deadline by killing this process.
            g = parse(_as_latex(gold), parsing_timeout=None)
            a = parse(_as_latex(answer), parsing_timeout=None)
            ok = bool(g) and bool(a) and bool(verify(g, a, timeout_seconds=None))  # gold first
        except Exception:  # noqa: BLE001 - an unparsable answer is simply wrong
            ok = False
        sys.stdout.write(json.dumps(ok) + "\n")
        sys.stdout.flush()


class _MathVerifier:
    """One child process running math-verify; killed and restarted when a call overruns.

    A plain subprocess (not multiprocessing) so that it never re-imports the caller's __main__."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None

    def _start(self) -> None:
        code = "from cotdistill.grade import serve_math_verify; serve_math_verify()"
        self._proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            bufsize=0,
        )
        # the child's imports (sympy, antlr) take a few seconds; they do not count against a call
        if self._read_line(time.monotonic() + 120.0) != b"ready\n":
            self._stop()
            raise CotdistillError("the math-verify worker process did not start")

    def _stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def _read_line(self, deadline: float) -> bytes | None:
        buf = b""
        fd = self._proc.stdout.fileno()
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:  # child died
                return None
            buf += chunk
        return buf

    def equal(self, gold: str, answer: str, timeout: float) -> bool | None:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            try:
                self._proc.stdin.write((json.dumps([gold, answer]) + "\n").encode())
                line = self._read_line(time.monotonic() + timeout)
            except (BrokenPipeError, OSError):
                line = None
            if line is None:
                self._stop()
                return None
            return bool(json.loads(line))


_VERIFIER = _MathVerifier()


def math_equal(gold: str, answer: str, timeout: float | None = None) -> bool | None:
    """math-verify's verdict on gold == answer, or None when it did not finish within `timeout`."""
    return _VERIFIER.equal(gold, answer, MATH_TIMEOUT_S if timeout is None else timeout)


# ---------------------------------------------------------------- grading a file


@dataclass
class GradeFileResult:
    out: str
    n: int
    correct: int
    no_answer: int  # lines where nothing could be extracted

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0


def _gold_lookup(dataset: str, data_dir) -> dict:
    from cotdistill.benchmarks import DATASETS, SPLITS, load_benchmark
    from cotdistill.errors import unknown_name

    if dataset not in DATASETS:
        raise unknown_name("dataset", dataset, DATASETS)
    return {ex.id: ex for split in SPLITS[dataset] for ex in load_benchmark(dataset, split, data_dir)}


def grade_file(path, out=None, data_dir=None, protocol: str = "lenient") -> GradeFileResult:
    """Grade a JSONL of model outputs. Each line: `response` plus either `gold` and `kind` (and
    optionally `choices`) or `dataset` and `id` (a benchmark example id such as svamp/test/chal-1).
    `protocol`: "lenient" (default) or "paper" (cotdistill.protocol); every line records it.
    Writes every line with `extracted`, `correct`, `reason`, `protocol` added to `out` (default:
    <path>.graded.jsonl), atomically, with provenance beside it."""
    from pathlib import Path

    from cotdistill.benchmarks._files import iter_json_lines
    from cotdistill.checks import check_out_file
    from cotdistill.provenance import atomic_write_text, write_provenance

    check_protocol(protocol)
    path = Path(path)
    if not path.is_file():
        raise CotdistillError(f"file to grade {path} does not exist")
    out = Path(out) if out is not None else path.with_name(path.name.removesuffix(".jsonl") + ".graded.jsonl")
    if out.resolve() == path.resolve():
        raise CotdistillError(f"--out {out} would overwrite the input file")
    check_out_file(out)
    golds: dict[str, dict] = {}
    lines, n, correct, no_answer = [], 0, 0, 0
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CotdistillError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for lineno, rec in iter_json_lines(text, str(path)):
        at = f"{path}:{lineno}"
        if not isinstance(rec.get("response"), str):
            raise CotdistillError(f"{at}: field 'response' missing or not a string")
        if "gold" in rec and "kind" in rec:
            gold, kind, choices = rec["gold"], rec["kind"], rec.get("choices")
            if kind not in KINDS:
                raise CotdistillError(f"{at}: field 'kind' is {kind!r}, expected one of {', '.join(KINDS)}")
            if choices is not None and not isinstance(choices, dict):
                raise CotdistillError(f"{at}: field 'choices' must be an object {{letter: text}}")
        elif "dataset" in rec and "id" in rec:
            ds = str(rec["dataset"])
            if ds not in golds:
                golds[ds] = _gold_lookup(ds, data_dir)
            ex = golds[ds].get(str(rec["id"])) or golds[ds].get(f"{ds}/test/{rec['id']}")
            if ex is None:
                raise CotdistillError(f"{at}: id {rec['id']!r} is not an example of {ds} (ids look like {next(iter(golds[ds]))})")
            gold, kind, choices = ex.gold, ex.kind, ex.choices
        else:
            raise CotdistillError(f"{at}: needs fields 'gold' and 'kind', or 'dataset' and 'id' (besides 'response')")
        g = grade(rec["response"], str(gold), kind, choices, protocol)
        n += 1
        correct += g.correct
        no_answer += g.extracted is None
        lines.append(json.dumps(rec | {"extracted": g.extracted, "correct": g.correct, "reason": g.reason,
                                       "protocol": protocol}, ensure_ascii=False))
    if n == 0:
        raise CotdistillError(f"{path}: no lines to grade")
    atomic_write_text(out, "\n".join(lines) + "\n")
    result = GradeFileResult(str(out), n, correct, no_answer)
    write_provenance(out.with_name(out.name + ".provenance.json"), {"input": str(path), "out": str(out), "protocol": protocol},
                     n=n, correct=correct, accuracy=result.accuracy)
    return result
