"""CommonsenseQA: train = cot/commonsenseQA_onlyans (9740); test = csqa/test.json (1221, label A-E)."""

from pathlib import Path

from cotdistill.benchmarks._files import require_file
from cotdistill.benchmarks._mc import load_choice_file


def load(split: str, data_dir: Path):
    if split == "train":
        return load_choice_file("csqa", split, require_file(data_dir, "cot/commonsenseQA_onlyans.json"), "output")
    return load_choice_file("csqa", split, require_file(data_dir, "benchmarks/csqa/test.json"), "label")
