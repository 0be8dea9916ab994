"""Multiple-choice files whose records hold the question with its choices in `instruction`."""

from pathlib import Path

from cotdistill.benchmarks import Example
from cotdistill.benchmarks._files import parse_choices, read_records, render_question
from cotdistill.errors import CotdistillError


def load_choice_file(dataset: str, split: str, path: Path, gold_field: str) -> list[Example]:
    out = []
    for i, r in enumerate(read_records(path, ("instruction", gold_field))):
        stem, choices = parse_choices(r["instruction"])
        if not choices:
            at = f"line {r['_line']}" if "_line" in r else f"record {i}"
            raise CotdistillError(f"{path}: {at}: no 'Answer choices:' with lettered options in field 'instruction'")
        gold = str(r[gold_field]).strip()
        if gold not in choices:
            at = f"line {r['_line']}" if "_line" in r else f"record {i}"
            raise CotdistillError(f"{path}: {at}: gold {gold!r} in field {gold_field!r} is not one of {', '.join(choices)}")
        out.append(Example(f"{dataset}/{split}/{i}", dataset, render_question(stem, choices), gold, "choice", choices))
    return out
