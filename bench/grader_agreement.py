"""Grader agreement sample for docs/data_audit.md: 40 released rationales per dataset (seed 13).

For each row it prints the grader's lenient extraction, the paper protocol's (a different rule:
first strict "[Tt]he answer is X" match), the gold, and the rationale's last 160 characters, so
that a person can read off the stated answer and judge the extraction. Rows where the two
extractions differ are marked '!!' and were read first.

    PYTHONPATH=. COTDISTILL_DATA=/work/shared/data python bench/grader_agreement.py > sample.txt
"""

import random

from cotdistill.benchmarks import DATASETS
from cotdistill.data import list_sources, load_supervision, source_file
from cotdistill.grade import _to_number, extract_answer, grade

PER_DATASET = 40


def main() -> None:
    rng = random.Random(13)
    for ds in DATASETS:
        names = [n for n in list_sources(ds) if source_file(n) and not n.endswith("answer-only")]
        pool = [(n, r) for n in names for r in load_supervision(n).rows if r.gold is not None]
        sample = rng.sample(pool, PER_DATASET)
        for name, r in sample:
            lenient = extract_answer(r.rationale, r.kind, r.choices)[0]
            paper = extract_answer(r.rationale, r.kind, r.choices, protocol="paper")[0]
            same = lenient == paper or (r.kind in ("number", "math") and lenient and paper
                                        and _to_number(lenient) is not None and _to_number(lenient) == _to_number(paper))
            ok = grade(r.rationale, r.gold, r.kind, r.choices).correct
            tail = " ".join(r.rationale[-160:].split())
            print(f"{'  ' if same else '!!'} {name}#{r.meta.get('row')} gold={r.gold!r} lenient={lenient!r} "
                  f"paper={paper!r} correct={ok} | ...{tail}")


if __name__ == "__main__":
    main()
