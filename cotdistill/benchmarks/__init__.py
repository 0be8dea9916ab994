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
