"""OpenBookQA: train = cot/openbookQA_onlyans (4957); test = obqa/test.json (500, label A-D)."""

from pathlib import Path

from cotdistill.benchmarks._files import require_file
from cotdistill.benchmarks._mc import load_choice_file


def load(split: str, data_dir: Path):
    if split == "train":
        return load_choice_file("obqa", split, require_file(data_dir, "cot/openbookQA_onlyans.json"), "output")
    return load_choice_file("obqa", split, require_file(data_dir, "benchmarks/obqa/test.json"), "label")
