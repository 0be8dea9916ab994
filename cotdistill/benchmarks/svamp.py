"""SVAMP: train = the 700 questions of cot/SVAMP_only_ans; test = the other 300 of SVAMP.json."""

from pathlib import Path

from cotdistill.benchmarks import Example
from cotdistill.benchmarks._files import normalise_question, number_text, read_records, require_file, render_question


def load(split: str, data_dir: Path) -> list[Example]:
    train = read_records(require_file(data_dir, "cot/SVAMP_only_ans.json"), ("instruction", "output"))
    if split == "train":
        return [
            Example(f"svamp/train/{i}", "svamp", render_question(r["instruction"], None), number_text(r["output"]), "number")
            for i, r in enumerate(train)
        ]
    train_keys = {normalise_question(r["instruction"]) for r in train}
    out = []
    for r in read_records(require_file(data_dir, "benchmarks/svamp/SVAMP.json"), ("ID", "Body", "Question", "Answer")):
        question = render_question(f"{r['Body'].strip()} {r['Question'].strip()}", None)
        if normalise_question(question) in train_keys:
            continue
        out.append(
            Example(f"svamp/test/{r['ID']}", "svamp", question, number_text(r["Answer"]), "number",
                    meta={"equation": r.get("Equation"), "type": r.get("Type")})
        )
    return out
