"""StrategyQA: train = cot/strategyQA_onlyans (2000); test = strategyqa/test.json (290, label True/False)."""

from pathlib import Path

from cotdistill.benchmarks import Example
from cotdistill.benchmarks._files import read_records, render_question, require_file
from cotdistill.errors import CotdistillError


def load(split: str, data_dir: Path) -> list[Example]:
    rel, field = ("cot/strategyQA_onlyans.json", "output") if split == "train" else ("benchmarks/strategyqa/test.json", "label")
    path = require_file(data_dir, rel)
    out = []
    for i, r in enumerate(read_records(path, ("instruction", field))):
        gold = str(r[field]).strip().capitalize()
        if gold not in ("True", "False"):
            at = f"line {r['_line']}" if "_line" in r else f"record {i}"
            raise CotdistillError(f"{path}: {at}: field {field!r} is {r[field]!r}, expected True or False")
        out.append(Example(f"strategyqa/{split}/{i}", "strategyqa", render_question(r["instruction"], None), gold, "boolean"))
    return out
