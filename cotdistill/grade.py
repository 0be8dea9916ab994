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
     (math: the last inline formula outside Asymptote code that is not a lone variable, right of
     its last "=", else the last number); the last parenthesised capital letter, else an option's
     text in the last sentence, else the last standalone capital letter (choice); a leading
     yes/no, else the last true/false/yes/no, "not true" read as False (boolean).
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
_PAREN_LETTER = re.compile(r"\(([A-Z])\)|(?<![A-Za-z0-9])([A-Z])\)")
_ARTICLE_A = re.compile(r"\s+[a-z]")

# ---- numbers and words
_BRACES = re.compile(r"\\boxed\s*\{|\{|\}")
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d+(?:\.\d+)?(?:/\d+(?:\.\d+)?)?|\.\d+)")
_FRAC = re.compile(r"\\[dt]?frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}")
_MIXED = re.compile(r"(?<![\w.}^_])(-?)(\d+)\s*\\[dt]?frac\s*\{(\d+)\}\s*\{(\d+)\}")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
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
    if last is not None and kind == "choice":
        yield _window(text, last.end())


# ---------------------------------------------------------------- per-kind candidates


def _mixed_to_frac(s: str) -> str:
    """2\\frac{1}{2} -> \\frac{5}{2} (a mixed number, as MATH writes it); -1\\frac{1}{2} -> -\\frac{3}{2}."""
    return _MIXED.sub(lambda m: f"{m.group(1)}\\frac{{{int(m.group(2)) * int(m.group(4)) + int(m.group(3))}}}{{{m.group(4)}}}", s)


def _normalise_number_text(s: str) -> str:
    s = s.replace("\u2212", "-").replace("\\!", "").replace("\\,", "").replace("{,}", ",")
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
        letters = _letters(segment, valid)
        return letters[0] if letters else _choice_by_text(segment, choices)
    if kind == "boolean":
        m = _BOOL_WORD.search(segment)
        return _bool_word(m) if m else None
    # math: the whole segment, minus sentence punctuation and $ delimiters around it
    boxed = _last_boxed(segment)
    ans = boxed if boxed is not None else re.split(r"\.\s+(?=[A-Z])", segment, maxsplit=1)[0]  # its first sentence
    formulas = _formulas(ans) if boxed is None else []
    if formulas and re.fullmatch(r"[\sA-Za-z,:]*", ans[: formulas[0][0]].rstrip("$\\([")):
        ans = ans[formulas[0][0] : formulas[0][1]]  # "therefore $2019$, which ...": the formula
    if re.fullmatch(r"\s*(?:<\s*\w*\s*>|\[\s*answer\s*\]|answer)\W*", ans, re.I):
        return None  # a template placeholder ("The answer is <answer>"), not an answer
    return _clean_math(ans)


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


def _clean_math(ans: str) -> str | None:
    # "15$\pi$", "\( 2\sqrt{3} \)", "$\frac{1}{2}$.", "<14>", "16 daps" -> bare LaTeX for math-verify
    if len(ans) > _MAX_CANDIDATE:
        return None
    for token in ("\\$", "$", "\\(", "\\)", "\\[", "\\]"):
        ans = ans.replace(token, " " if token != "\\$" else "")
    ans = ans.strip().rstrip(".").strip().removeprefix("<").removesuffix(">").strip()
    if _SIDES.search(ans):  # "2\\times2!\\times3!=24 ways", "\\frac{576}{\\pi} \\approx 183": right of the last "="
        ans = _SIDES.split(ans)[-1].strip()
    return _strip_unit(ans) or None


_LONE_VARIABLE = re.compile(r"\s*\\?[A-Za-z]+'?(?:_\{?\w+\}?)?\s*")  # x, C, n', a_1, \alpha (but not 12 or 2x)
_OPEN = re.compile(r"\$\$|\$|\\\(|\\\[|\\begin\{(?:align|eqnarray|equation|gather)\*?\}")
_SIDES = re.compile(r"=|\\approx|\\equiv")
_ROW_NOISE = re.compile(r"\\pmod\s*\{[^{}]*\}|\\(?:quad|qquad|implies|Rightarrow|Longrightarrow|therefore)\b|&")
# A sentence ends at . ! ? before a new sentence, a blank line or the end (outside or at the end of a formula).
_SENTENCE_END = re.compile(r"[.!?](?=\s+[A-Z(\\$]|\s*\n\s*\n|\s*$)")
_REMARK = re.compile(r"\s*(?:\(|Note\b|Notice\b|Remark\b|Check\b)")  # "(You can check ...)", "Note that ..."


def _closer(opener: str) -> str:
    return {"$$": "$$", "$": "$", "\\(": "\\)", "\\[": "\\]"}.get(opener) or opener.replace("\\begin", "\\end")


def _formulas(text: str) -> list[tuple[int, int]]:
    """(start, end) of each inline/display formula and align-like environment, left to right;
    linear (a delimiter type with no closer left is never searched for again)."""
    out, pos, dead = [], 0, set()
    while (m := _OPEN.search(text, pos)) is not None:
        opener = m.group()
        end = -1 if opener in dead else text.find(_closer(opener), m.end())
        if end < 0:
            dead.add(opener)
            pos = m.end()
            continue
        out.append((m.end(), end))
        pos = end + len(_closer(opener))
    return out


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
    """The value a formula states: its last row (align), right of its last =, \\approx or \\equiv;
    the left side when the right is a lone variable ('$12 = x$'); None for a lone variable."""
    rows = [r for r in formula.split("\\\\") if r.strip()]
    row = _ROW_NOISE.sub(" ", rows[-1] if rows else "").strip().rstrip(".,;")
    sides = [x.strip() for x in _SIDES.split(row)]
    value = next((x for x in reversed(sides) if x and not _LONE_VARIABLE.fullmatch(x)), None)
    return _clean_math(value) if value is not None else None


def _final_math(text: str) -> str | None:
    """The final sentence's math: in the last sentence with a formula (remarks such as "(You can
    check ...)" or "Note that ..." skipped), its last formula that is not a lone variable (an
    align block counts by its last row). Measured on the 1297 human MATH solutions: 95.8 % agree
    with the gold (92.9 % with the last formula anywhere); the rest state the answer mid-sentence
    ("There are $5$ primes between $30$ and $50$"), which no position rule reads."""
    text = _without_asymptote(text.replace("\\$", ""))
    spans = [(a, b) for a, b in _formulas(text)[-_MAX_FORMULAS:] if b - a <= _MAX_CANDIDATE]
    sentences: list[list[tuple[int, int]]] = []
    remark: list[bool] = []
    prev_end = None
    for a, b in spans:
        gap = text[prev_end:a] if prev_end is not None else text[:a]
        ended = prev_end is None or bool(_SENTENCE_END.search(gap)) or text[:prev_end].rstrip("$ ").endswith((".", "!", "?"))
        if ended:
            last_end = None
            for last_end in _SENTENCE_END.finditer(gap):
                pass
            sentences.append([])
            opening = gap[last_end.end() :] if last_end else gap
            remark.append(bool(_REMARK.match(opening.lstrip("$\\)] \n"))))
        sentences[-1].append((a, b))
        prev_end = b
    for spans_in, is_remark in zip(reversed(sentences), reversed(remark)):
        if is_remark:
            continue
        for a, b in reversed(spans_in):  # its last formula that states a value
            value = _formula_value(text[a:b])
            if value is not None:
                return value
    return None


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
    s = re.sub(r"\\(?:text|mbox|mathrm|textbf)\s*", "", s)
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
