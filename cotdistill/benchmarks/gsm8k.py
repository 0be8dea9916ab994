"""GSM8K: openai/grade-school-math train.jsonl (7473) and test.jsonl (1319); gold after '####'."""

import re
from pathlib import Path

from cotdistill.benchmarks import Example
from cotdistill.benchmarks._files import number_text, read_records, render_question, require_file
from cotdistill.errors import CotdistillError


def load(split: str, data_dir: Path) -> list[Example]:
    path = require_file(data_dir, f"benchmarks/gsm8k/{split}.jsonl")
    out = []
    for i, r in enumerate(read_records(path, ("question", "answer"))):
        if "####" not in r["answer"]:
            raise CotdistillError(f"{path}:{r.get('_line', i + 1)}: field 'answer' has no '#### N' gold answer")
        rationale, gold = r["answer"].rsplit("####", 1)
        out.append(
            Example(f"gsm8k/{split}/{i}", "gsm8k", render_question(r["question"], None), number_text(gold), "number",
                    meta={"human_rationale": rationale.strip()})
        )
    return out


_CALCULATOR = re.compile(r"<<[^<>]*>>")


def human_rationale(answer: str) -> str:
    """GSM8K's own solution as a rationale: calculator annotations <<48/2=24>> removed and the
    final "#### 72" written as "The answer is 72." (the form every released rationale ends with)."""
    body, _, final = answer.rpartition("####")
    if not _:
        body, final = answer, ""
    body = _CALCULATOR.sub("", body).strip()
    final = final.strip()
    return f"{body}\nThe answer is {final}." if final else body
