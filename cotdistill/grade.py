"""Extract the final answer from free text and decide whether it is correct.

Order of extraction (the same for every answer kind):
  1. the text after the LAST "The answer is" or variant ("the correct answer is", "answer should
     be", "Answer:", "answer could be considered", GSM8K's "#### 12"; spaces optional, any case:
     "TheanswerisD" counts); if that text holds no answer, the one before it, and so on;
  2. the LAST \\boxed{...};
  3. after the LAST "answer/option/choice" directly followed by a letter ("so Answer D");
  4. the last candidate anywhere in the text: last number (number), last inline formula or number
     (math), last parenthesised letter, else an option's text in the last sentence, else the last
     standalone letter (choice), a leading yes/no, else the last true/false/yes/no (boolean).
Within the text after an anchor we take its first candidate (first number, first letter, ...);
for numbers only its first sentence, and right of the last "=" there ("The answer is 5 - 3 = 2").
A response is read only up to a chat turn marker (<|im_end|>, "### Instruction", ...) after which
a model that did not stop writes the next turn.

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

KINDS = ("number", "choice", "boolean", "math")
MATH_TIMEOUT_S = 10.0  # per math-verify comparison; a pathological expression counts as wrong

_THE_ANSWER_IS = re.compile(r"the\s*(?:correct\s+|final\s+|right\s+|best\s+)?answer\s*is", re.I)
# "The answer is" and its variants ("the correct answer is", "answer should be", "Answer:", "TheanswerisD").
_ANSWER_IS = re.compile(
    r"answers?\s*(?:is|was|should\s*be|would\s*be|could\s*be(?:\s*considered)?|will\s*be|remains|:)|####", re.I
)  # "#### 12" is GSM8K's own answer line
# A bare letter after answer/option/choice ("... so Answer D", "Choice E is correct"), tried after \boxed{}.
_LETTER_PHRASE = re.compile(r"\b(?:answer|option|choice)\b(?=\s*\(?[A-E]\b)", re.I)
_LEADING_LETTER = re.compile(r"[\s:*(\[]*(?:option\s*|choice\s*)?\(?([A-Z])(?![A-Za-z])", re.I)
_BOXED = re.compile(r"\\boxed\s*\{")
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d+(?:\.\d+)?(?:/\d+(?:\.\d+)?)?|\.\d+)")
_FRAC = re.compile(r"\\[dt]?frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# A model that does not stop may write the next turn after its answer: read only up to it.
_TURN_MARKERS = ("<|im_end|>", "<|endoftext|>", "<end_of_turn>", "</s>", "<|eot_id|>", "\n### Instruction", "\n### Input")
_WORDS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty".split()
_NUMBER_WORD = re.compile(r"\b(" + "|".join(_WORDS) + r")\b", re.I)
_BOOL_WORD = re.compile(r"(?<![A-Za-z])(true|false|yes|no)(?![A-Za-z])", re.I)
_LETTER = re.compile(r"(?<![A-Za-z])\(?([A-Z])(?![A-Za-z])")
_PAREN_LETTER = re.compile(r"\(([A-Z])\)|(?<![A-Za-z])([A-Z])\)")


@dataclass(frozen=True)
class Grade:
    extracted: str | None  # the answer as found in the text (normalised), None if nothing found
    correct: bool
    reason: str | None  # why nothing could be extracted (or why it could not be checked)


def states_answer(text: str) -> bool:
    """True when a rationale states its final answer with "The answer is" (used by data audit)."""
    return bool(_THE_ANSWER_IS.search(text or ""))


# ---------------------------------------------------------------- locating the answer text


def boxed_contents(text: str) -> list[str]:
    """Contents of every \\boxed{...}, with nested braces balanced."""
    out = []
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end() : i - 1])
    return out


def _first_line(segment: str, limit: int = 200) -> str:
    # The answer ends at the end of its line; a long tail is explanation, not answer.
    return segment.lstrip(" \t:*").split("\n", 1)[0][:limit]


def _segments(text: str):
    """The places an answer can be read from, in priority order (lazily): the text after each
    "The answer is" (or a variant), last first; the last \\boxed{}; after the last letter phrase."""
    for m in reversed(list(_ANSWER_IS.finditer(text))):
        yield _first_line(text[m.end() :])
    boxed = boxed_contents(text) if "boxed" in text else []
    if boxed:
        yield boxed[-1]
    last = None
    for last in _LETTER_PHRASE.finditer(text):
        pass
    if last is not None:
        yield _first_line(text[last.end() :])


# ---------------------------------------------------------------- per-kind candidates


def _normalise_number_text(s: str) -> str:
    s = s.replace("\u2212", "-").replace("\\!", "").replace("\\,", "").replace("{,}", ",")
    s = re.sub(r"(?<=\d),?[\u202f\u2009\u00a0](?=\d{3})", ",", s)  # thin/no-break spaces as thousands separators
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "%")
    s = _FRAC.sub(r"\1/\2", s)
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
        if letter == "A" and not m.group(0).startswith("(") and re.match(r"\s+[a-z]", segment[m.end() :]):
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


def _bool_word(word: str) -> str:
    return "True" if word.lower() in ("true", "yes") else "False"


def _from_segment(segment: str, kind: str, choices: dict[str, str] | None) -> str | None:
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
        lead = _LEADING_LETTER.match(segment)  # "The answer is A bank": right after the anchor, A is the option
        if lead and lead.group(1) in valid:
            return lead.group(1)
        letters = _letters(segment, valid)
        return letters[0] if letters else _choice_by_text(segment, choices)
    if kind == "boolean":
        m = _BOOL_WORD.search(segment)
        return _bool_word(m.group(1)) if m else None
    # math: the whole segment, minus sentence punctuation and $ delimiters around it
    boxed = boxed_contents(segment)
    ans = boxed[-1] if boxed else re.split(r"\.\s+(?=[A-Z])", segment, maxsplit=1)[0]  # its first sentence
    if re.fullmatch(r"\s*(?:<\s*\w*\s*>|\[\s*answer\s*\]|answer)\W*", ans, re.I):
        return None  # a template placeholder ("The answer is <answer>"), not an answer
    return _clean_math(ans)


# Upstream JSON wrote "\\frac" as "\\f" + "rac" (a form feed), "\\binom" as a backspace, "\\times" as a tab.
_ESCAPE_DAMAGE = [("\x0c", "\\f"), ("\x08", "\\b"), ("\t", "\\t"), ("\r", "\\r")]


def _repair_latex(text: str) -> str:
    for bad, good in _ESCAPE_DAMAGE:
        text = re.sub(re.escape(bad) + r"(?=[a-z])", lambda _m, g=good: g, text)
    return text


def _clean_math(ans: str) -> str | None:
    # "15$\pi$", "\( 2\sqrt{3} \)", "$\frac{1}{2}$.", "<14>", "16 daps" -> bare LaTeX for math-verify
    for token in ("\\$", "$", "\\(", "\\)", "\\[", "\\]"):
        ans = ans.replace(token, " " if token != "\\$" else "")
    ans = ans.strip().rstrip(".").strip().removeprefix("<").removesuffix(">").strip()
    if "=" in ans:  # "2\\times2!\\times3!=24 ways": the value is right of the last "="
        ans = ans.rsplit("=", 1)[1].strip()
    m = re.fullmatch(r"(-?[\d.,/]*\d)\s+[A-Za-z][A-Za-z\s.]*", ans)  # a number with unit words
    if m:
        ans = m.group(1)
    return ans or None


def _last_anywhere(text: str, kind: str, choices: dict[str, str] | None) -> str | None:
    if kind == "math":  # the last inline formula, right of its last "=": "... he can read $6/3=2$ books"
        plain = text.replace("\\$", "").replace("$$", "$")
        formulas = list(re.finditer(r"\$([^$]+)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", plain, re.S))
        if formulas:
            last = formulas[-1]
            return _clean_math(next(g for g in last.groups() if g is not None))
    if kind in ("number", "math"):
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
    lead = re.match(r"\W*(true|false|yes|no)\b", text, re.I)  # "No, because ..." states its answer first
    if lead:
        return _bool_word(lead.group(1))
    words = _BOOL_WORD.findall(text)
    return _bool_word(words[-1]) if words else None


def extract_answer(text: str, kind: str, choices: dict[str, str] | None = None) -> tuple[str | None, str | None]:
    """(answer, None) or (None, reason). See the module docstring for the order of fallbacks."""
    if kind not in KINDS:
        raise CotdistillError(f"unknown answer kind {kind!r}; expected one of {', '.join(KINDS)}")
    text = text or ""
    if not text.strip():
        return None, "empty response"
    for marker in _TURN_MARKERS:
        text = text.split(marker, 1)[0]
    if kind == "math":
        text = _repair_latex(text)
    for segment in _segments(text):
        ans = _from_segment(segment, kind, choices)
        if ans is not None:
            return ans, None
    ans = _last_anywhere(text, kind, choices)
    if ans is not None:
        return ans, None
    what = {"number": "number", "math": "number or \\boxed{}", "choice": "choice letter", "boolean": "true/false/yes/no"}
    return None, f"no 'The answer is', no \\boxed{{}} and no {what[kind]} in the response"


# ---------------------------------------------------------------- deciding correctness


def normalise_gold(gold: str, kind: str) -> str:
    """Gold answers in the data come as '145.0', 'B', 'True', 'yes', '\\frac{1}{2}'."""
    gold = str(gold).strip()
    if kind == "choice":
        m = re.fullmatch(r"\(?([A-Za-z])\)?[.:]?", gold)
        return m.group(1).upper() if m else gold
    if kind == "boolean":
        m = _BOOL_WORD.fullmatch(gold)
        return _bool_word(m.group(1)) if m else gold
    return gold


def _numbers_equal(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)


def grade(response: str, gold: str, kind: str, choices: dict[str, str] | None = None) -> Grade:
    """Extract the answer from `response` and compare it with `gold` under the rules of `kind`."""
    answer, reason = extract_answer(response, kind, choices)
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
    g, a = _to_number(gold), _to_number(answer)
    if g is not None and a is not None:  # plain numbers: no need for the sympy round trip
        return Grade(answer, _numbers_equal(g, a), None)
    verdict = math_equal(gold, answer)
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


def grade_file(path, out=None, data_dir=None) -> GradeFileResult:
    """Grade a JSONL of model outputs. Each line: `response` plus either `gold` and `kind` (and
    optionally `choices`) or `dataset` and `id` (a benchmark example id such as svamp/test/chal-1).
    Writes every line with `extracted`, `correct`, `reason` added to `out` (default:
    <path>.graded.jsonl), atomically, with provenance beside it."""
    from pathlib import Path

    from cotdistill.benchmarks._files import iter_json_lines
    from cotdistill.provenance import atomic_write_text, write_provenance

    path = Path(path)
    if not path.is_file():
        raise CotdistillError(f"file to grade {path} does not exist")
    out = Path(out) if out is not None else path.with_name(path.name.removesuffix(".jsonl") + ".graded.jsonl")
    if out.resolve() == path.resolve():
        raise CotdistillError(f"--out {out} would overwrite the input file")
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
        g = grade(rec["response"], str(gold), kind, choices)
        n += 1
        correct += g.correct
        no_answer += g.extracted is None
        lines.append(json.dumps(rec | {"extracted": g.extracted, "correct": g.correct, "reason": g.reason}, ensure_ascii=False))
    if n == 0:
        raise CotdistillError(f"{path}: no lines to grade")
    atomic_write_text(out, "\n".join(lines) + "\n")
    result = GradeFileResult(str(out), n, correct, no_answer)
    write_provenance(out.with_name(out.name + ".provenance.json"), {"input": str(path), "out": str(out)},
                     n=n, correct=correct, accuracy=result.accuracy)
    return result
