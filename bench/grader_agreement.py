"""Grader agreement with the hand-labelled set, for docs/data_audit.md.

tests/data/grader_labels.jsonl names 626 released rationales (source, row) with the answer a person
read off each ("stated"; null when it states none). This prints, per dataset and stratum, how many
rows state an answer and on how many the grader's extraction equals it, under protocol lenient and
under protocol paper (strict "[Tt]he answer is X"), then every disagreement:

    PYTHONPATH=. COTDISTILL_DATA=/work/shared/data python bench/grader_agreement.py

--print-sample prints the earlier check instead: 40 random released rationales per dataset (seed
13) with the lenient and the paper extraction side by side and the rationale's last 160
characters, rows where the two differ marked '!!', for a person to read.
"""

import collections
import json
import random
import sys
from pathlib import Path

from cotdistill.benchmarks import DATASETS
from cotdistill.data import list_sources, load_supervision, source_file
from cotdistill.grade import _to_number, extract_answer, grade

LABELS = Path(__file__).resolve().parents[1] / "tests" / "data" / "grader_labels.jsonl"
PER_DATASET = 40


def _agrees(row, stated: str, protocol: str) -> bool:
    if row.kind == "math":
        return (extract_answer(row.rationale, "math", protocol=protocol)[0] is not None
                and grade(row.rationale, stated, "math", protocol=protocol).correct)
    return extract_answer(row.rationale, row.kind, row.choices, protocol)[0] == stated


def labelled_table() -> None:
    labels = [json.loads(line) for line in LABELS.read_text(encoding="utf-8").splitlines()]
    rows: dict[str, dict] = {}
    count = collections.defaultdict(collections.Counter)
    misses = []
    for lab in labels:
        src = lab["source"]
        if src not in rows:
            rows[src] = {r.meta["row"]: r for r in load_supervision(src).rows}
        row = rows[src][lab["row"]]
        c = count[(src.split("/")[0], lab["stratum"])]
        c["rows"] += 1
        if lab["stated"] is None:
            c["none"] += 1
            c["none_read"] += extract_answer(row.rationale, row.kind, row.choices)[0] is not None
            continue
        c["stated"] += 1
        for protocol in ("lenient", "paper"):
            ok = _agrees(row, lab["stated"], protocol)
            c[protocol] += ok
            if not ok and protocol == "lenient":
                misses.append(f"{src}#{lab['row']} stated {lab['stated']!r}")
    print("| dataset | stratum | rows | states an answer | lenient agrees | paper agrees | states none (lenient reads a value) |")
    print("|---|---|---|---|---|---|---|")
    for ds in dict.fromkeys(d for d, _ in count):
        for (d, stratum), c in count.items():
            if d == ds:
                print(f"| {ds} | {stratum} | {c['rows']} | {c['stated']} | {c['lenient']} | {c['paper']} | "
                      f"{c['none']} ({c['none_read']}) |")
        t = sum((c for (d, _), c in count.items() if d == ds), collections.Counter())
        print(f"| **{ds}** | all | {t['rows']} | {t['stated']} | {t['lenient']} ({t['lenient'] / t['stated']:.1%}) | "
              f"{t['paper']} ({t['paper'] / t['stated']:.1%}) | {t['none']} ({t['none_read']}) |")
    print("\nlenient disagreements:", misses or "none")


def print_sample() -> None:
    rng = random.Random(13)
    for ds in DATASETS:
        names = [n for n in list_sources(ds) if source_file(n) and not n.endswith("answer-only")]
        pool = [(n, r) for n in names for r in load_supervision(n).rows if r.gold is not None]
        for name, r in rng.sample(pool, PER_DATASET):
            lenient = extract_answer(r.rationale, r.kind, r.choices)[0]
            paper = extract_answer(r.rationale, r.kind, r.choices, protocol="paper")[0]
            same = lenient == paper or (r.kind in ("number", "math") and lenient and paper
                                        and _to_number(lenient) is not None and _to_number(lenient) == _to_number(paper))
            ok = grade(r.rationale, r.gold, r.kind, r.choices).correct
            tail = " ".join(r.rationale[-160:].split())
            print(f"{'  ' if same else '!!'} {name}#{r.meta.get('row')} gold={r.gold!r} lenient={lenient!r} "
                  f"paper={paper!r} correct={ok} | ...{tail}")


if __name__ == "__main__":
    print_sample() if "--print-sample" in sys.argv[1:] else labelled_table()
