"""AQuA-RAT: train = cot/aqua_only_ans (6940, choices inside the text); test = test.json (254 JSON lines).

The `output` of aqua_only_ans is a clean letter for ~5,400 rows and free text for the rest
("Option E", "C 6.5 miles ...", ":(OptionC"). Train gold, in order: the clean letter; else the
letter the human rationale (cot/aqua_human, "The answer is X") ends with; else the letter
`output` opens with ("B50%", "D West"); else the letter the grader extracts from `output`.
docs/data_audit.md lists the golds this derivation changed when the grader's letter rules were
fixed (capitals in notation such as 8C3 are not options). Rows where none of these gives a letter (5 of 6940) are left out
of the train split; `load_train_report` says how many.
"""

import re
from functools import lru_cache
from pathlib import Path

from cotdistill.benchmarks import Example
from cotdistill.benchmarks._files import (
    find_file,
    normalise_question,
    parse_choices,
    read_records,
    render_question,
    require_file,
)
from cotdistill.errors import CotdistillError

_CLEAN = re.compile(r"[\s'\"(:\-]*([A-E])[\s'\").:]*")


def _human_letters(data_dir: Path) -> dict[str, str]:
    from cotdistill.grade import extract_answer

    path = find_file(data_dir, "cot/aqua_human.json")
    if path is None:  # optional: only used to resolve messy answer-only outputs
        return {}
    out = {}
    for r in read_records(path, ("instruction", "output")):
        stem, choices = parse_choices(r["instruction"])
        letter, _ = extract_answer(r["output"], "choice", choices)
        if letter:
            out[normalise_question(r["instruction"])] = letter
    return out


# An answer-only output that opens with its option letter: "B50%", "D West", "A 230 m", ":D454585".
_OPENING_LETTER = re.compile(r"[\s'\"(:\-]*([A-E])(?![a-z])")


def _extracted_letter(output: str, choices: dict[str, str]) -> str | None:
    """The letter of a free-text answer-only output: the letter it opens with, else the grader's."""
    from cotdistill.grade import extract_answer

    m = _OPENING_LETTER.match(output)
    if m and m.group(1) in choices:
        return m.group(1)
    return extract_answer(output, "choice", choices)[0]


def _train(data_dir: Path) -> tuple[list[Example], int]:
    path = require_file(data_dir, "cot/aqua_only_ans.json")
    human = find_file(data_dir, "cot/aqua_human.json")
    stamp = (path.stat().st_mtime_ns, human.stat().st_mtime_ns if human else None)
    examples, dropped = _train_cached(path, stamp, data_dir)
    return list(examples), dropped


@lru_cache(maxsize=4)
def _train_cached(path: Path, _stamp: tuple, data_dir: Path) -> tuple[tuple[Example, ...], int]:
    from cotdistill.grade import extract_answer

    human = None
    out, dropped = [], 0
    for i, r in enumerate(read_records(path, ("instruction", "output"))):
        stem, choices = parse_choices(r["instruction"])
        if not choices:
            raise CotdistillError(f"{path}: record {i}: no 'Answer Choices:' with lettered options in field 'instruction'")
        m = _CLEAN.fullmatch(r["output"])
        gold, source = (m.group(1), "only_ans") if m else (None, None)
        if gold is None:
            human = _human_letters(data_dir) if human is None else human
            gold, source = human.get(normalise_question(r["instruction"])), "human"
        if gold is None:
            gold, source = _extracted_letter(r["output"], choices), "extracted"
        if gold is None or gold not in choices:
            dropped += 1
            continue
        out.append(Example(f"aqua/train/{i}", "aqua", render_question(stem, choices), gold, "choice", choices,
                           meta={"gold_from": source}))
    return tuple(out), dropped


def load_train_report(data_dir: Path) -> int:
    """How many aqua_only_ans rows have no recoverable gold letter (left out of the train split)."""
    return _train(data_dir)[1]


def load(split: str, data_dir: Path) -> list[Example]:
    if split == "train":
        return _train(data_dir)[0]
    path = require_file(data_dir, "benchmarks/aqua/test.json")
    out = []
    for i, r in enumerate(read_records(path, ("question", "options", "correct"))):
        choices = {}
        for opt in r["options"]:  # "A)5(√3 + 1)"
            m = re.match(r"\s*\(?([A-E])\)\s*(.*)", opt, re.S)
            if not m:
                raise CotdistillError(f"{path}:{r.get('_line', i + 1)}: option {opt!r} is not of the form 'A)text'")
            choices[m.group(1)] = " ".join(m.group(2).split())
        out.append(
            Example(f"aqua/test/{i}", "aqua", render_question(r["question"], choices), r["correct"].strip(), "choice", choices,
                    meta={"human_rationale": r.get("rationale")})
        )
    return out
