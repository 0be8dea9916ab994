"""Zero-shot accuracy of a student on every dataset under both grading protocols (issue 13).

One greedy evaluation per dataset (`cotdistill.evaluate`, protocol lenient); the same generations
are then re-read under the paper's protocol (only "The answer is X"), so the two columns differ
only in how answers are read.

    .venv/bin/python bench/protocol_zero_shot.py --student smollm2-135m --limit 32 --out runs/protocols
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from cotdistill import evaluate as E
from cotdistill.benchmarks import DATASETS, load_benchmark
from cotdistill.grade import grade
from cotdistill.metrics import bootstrap_ci


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="smollm2-135m")
    ap.add_argument("--limit", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=320)
    ap.add_argument("--out", type=Path, default=Path("runs/protocols"))
    ap.add_argument("--datasets", nargs="*", default=list(DATASETS))
    args = ap.parse_args()
    rows = []
    for ds in args.datasets:
        t0 = time.time()
        cfg = E.EvalConfig(model=args.student, dataset=ds, limit=args.limit, out=args.out / ds, quiet=True,
                           max_new_tokens=args.max_new_tokens, batch_size=args.limit)
        E.evaluate(cfg)
        gold = {e.id: e for e in load_benchmark(ds, "test", None, args.limit)}
        preds = [json.loads(x) for x in (args.out / ds / "predictions.jsonl").read_text().splitlines() if x.strip()]
        lenient = [bool(p["correct"]) for p in preds]
        paper = [grade(p["generation"], gold[p["id"]].gold, gold[p["id"]].kind, gold[p["id"]].choices, "paper").correct
                 for p in preds]
        stated = sum(grade(p["generation"], gold[p["id"]].gold, gold[p["id"]].kind, gold[p["id"]].choices,
                           "paper").extracted is not None for p in preds)
        rows.append((ds, len(preds), lenient, paper, stated, time.time() - t0))
        print(f"{ds}: done in {time.time() - t0:.0f} s", flush=True)
    print(f"\n{args.student}, zero-shot, greedy, first {args.limit} test questions, max {args.max_new_tokens} new tokens; "
          f"{platform.processor() or platform.machine()}\n")
    print("| dataset | n | lenient % [95 % CI] | paper % [95 % CI] | states 'The answer is' | seconds |")
    print("|---|---|---|---|---|---|")
    for ds, n, le, pa, stated, secs in rows:
        ci = lambda xs: "[{:.0f}, {:.0f}]".format(*(100 * v for v in bootstrap_ci(xs)))  # noqa: E731
        print(f"| {ds} | {n} | {100 * sum(le) / n:.1f} {ci(le)} | {100 * sum(pa) / n:.1f} {ci(pa)} | {stated}/{n} | {secs:.0f} |")


if __name__ == "__main__":
    main()
