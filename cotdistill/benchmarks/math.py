"""MATH: train = cot/math_human (1297, four subjects); test = MATH-500 restricted to those four
subjects (306, as in the paper) or all 500 ("test-all")."""

from pathlib import Path

from cotdistill.benchmarks import Example
from cotdistill.benchmarks._files import read_records, render_question, require_file

SUBJECTS = ("Prealgebra", "Algebra", "Counting & Probability", "Number Theory")


def _train_gold(r: dict) -> str:
    """math_human's `output` was cut at a closing brace upstream for some rows ('\\frac{1}' for
    '\\frac{1}{3}', '2\\sqrt{3'); the full answer is then the human solution's \\boxed{} that starts with it."""
    from cotdistill.grade import boxed_contents

    gold = r["output"].strip()
    for boxed in boxed_contents(r.get("solution") or ""):
        boxed = boxed.strip()
        cut_after_group = gold.endswith("}") and boxed.startswith(gold + "{")  # '\\frac{1}' of '\\frac{1}{3}'
        unbalanced = gold.count("{") != gold.count("}") and boxed.startswith(gold)  # '2\\sqrt{3'
        if cut_after_group or unbalanced:
            return boxed
    return gold


def load(split: str, data_dir: Path) -> list[Example]:
    if split == "train":
        path = require_file(data_dir, "cot/math_human.json")
        return [
            Example(f"math/train/{i}", "math", render_question(r["problem"], None), _train_gold(r), "math",
                    meta={"subject": r.get("type"), "level": r.get("level"), "human_rationale": r.get("solution")})
            for i, r in enumerate(read_records(path, ("problem", "output")))
        ]
    path = require_file(data_dir, "benchmarks/math/math500_test.jsonl")
    out = []
    for i, r in enumerate(read_records(path, ("problem", "answer", "subject"))):
        if split == "test" and r["subject"] not in SUBJECTS:
            continue
        uid = str(r.get("unique_id") or i).removeprefix("test/").removesuffix(".json")
        out.append(
            Example(f"math/test/{uid}", "math", render_question(r["problem"], None), r["answer"].strip(), "math",
                    meta={"subject": r["subject"], "level": r.get("level"), "human_rationale": r.get("solution")})
        )
    return out
