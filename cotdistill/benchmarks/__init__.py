"""The seven benchmarks as one typed record. One small module per benchmark does the parsing.

Contract (used by grade/train/evaluate/teach/study):
    Example                       one question with its gold answer
    DATASETS                      canonical dataset names
    load_benchmark(name, split, data_dir=None, limit=None) -> list[Example]
"""

from dataclasses import dataclass, field
from typing import Literal

AnswerKind = Literal["number", "choice", "boolean", "math"]

DATASETS = ("svamp", "gsm8k", "aqua", "math", "csqa", "obqa", "strategyqa")


@dataclass(frozen=True)
class Example:
    id: str  # stable within a dataset, e.g. "svamp/test/chal-12"
    dataset: str  # one of DATASETS
    question: str  # the text shown to a model, choices rendered in it ("Answer choices: (A) ... (B) ...")
    gold: str  # "145", "B", "True", "\\frac{1}{2}"
    kind: AnswerKind
    choices: dict[str, str] | None = None  # letter -> option text, for kind == "choice"
    meta: dict = field(default_factory=dict, compare=False, hash=False)


SPLITS = {name: ("train", "test") for name in DATASETS} | {"math": ("train", "test", "test-all")}


def load_benchmark(name: str, split: str = "test", data_dir=None, limit: int | None = None) -> list[Example]:
    """The examples of one benchmark split, in file order (the first `limit` if given).

    Splits as in the paper: svamp 700/300, gsm8k 7473/1319, aqua 6940/254, math 1297/306 (the four
    training subjects of MATH-500; "test-all" = all 500), csqa 9740/1221, obqa 4957/500,
    strategyqa 2000/290."""
    from importlib import import_module

    from cotdistill.benchmarks._files import resolve_data_dir
    from cotdistill.errors import CotdistillError, unknown_name

    if name not in DATASETS:
        raise unknown_name("dataset", name, DATASETS)
    if split not in SPLITS[name]:
        raise unknown_name(f"split of {name}", split, SPLITS[name])
    if limit is not None and limit < 0:
        raise CotdistillError(f"limit must be >= 0, got {limit}")
    module = import_module(f"cotdistill.benchmarks.{name}")
    examples = module.load(split, resolve_data_dir(data_dir))
    return examples if limit is None else examples[:limit]
