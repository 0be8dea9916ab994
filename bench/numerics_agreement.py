"""bf16 vs fp32: how many answers change, and does accuracy move beyond its bootstrap noise?

Reads two `cotdistill eval` folders of the same model and benchmark (predictions.jsonl), pairs
them on the questions both answered and prints one Markdown row per pair plus the verdict of the
rule in issue 15: if bf16 changes accuracy by more than its bootstrap noise (the half-width of
the 95 % bootstrap interval of the fp32 accuracy), or changes more than 2 % of the extracted
answers, evaluation on CPU defaults to fp32.

    python bench/numerics_agreement.py runs/numerics/smollm2-135m-bf16 runs/numerics/smollm2-135m-fp32 [...more pairs]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cotdistill import metrics

CHANGED_LIMIT = 0.02


def _predictions(folder: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines() if line.strip()]
    return {r["id"]: r for r in rows}


def compare(bf16_dir: Path, fp32_dir: Path) -> dict:
    a, b = _predictions(bf16_dir), _predictions(fp32_dir)
    ids = sorted(set(a) & set(b))
    changed = sum(a[i]["extracted"] != b[i]["extracted"] for i in ids)
    same_text = sum(a[i]["generation"] == b[i]["generation"] for i in ids)
    xa, xb = [bool(a[i]["correct"]) for i in ids], [bool(b[i]["correct"]) for i in ids]
    t = metrics.paired_test(xa, xb)
    lo_a, hi_a = metrics.bootstrap_ci(xa)
    lo_b, hi_b = metrics.bootstrap_ci(xb)
    noise = (hi_b - lo_b) / 2
    return {
        "bf16": str(bf16_dir), "fp32": str(fp32_dir), "n": len(ids),
        "answers_changed": changed, "answers_changed_share": changed / len(ids),
        "generations_identical": same_text,
        "acc_bf16": t.acc_a, "ci_bf16": [lo_a, hi_a], "acc_fp32": t.acc_b, "ci_fp32": [lo_b, hi_b],
        "diff": t.diff, "diff_ci": [t.diff_ci_low, t.diff_ci_high], "bf16_only": t.a_only, "fp32_only": t.b_only,
        "mcnemar_p": t.mcnemar_p, "fp32_noise": noise,
        "fp32_default": abs(t.diff) > noise or changed / len(ids) > CHANGED_LIMIT,
    }


def row(r: dict) -> str:
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    return (f"| {Path(r['fp32']).name.rsplit('-', 1)[0]} | {r['n']} | {r['answers_changed']} ({pct(r['answers_changed_share'])} %) "
            f"| {r['generations_identical']} | {pct(r['acc_bf16'])} [{pct(r['ci_bf16'][0])}, {pct(r['ci_bf16'][1])}] "
            f"| {pct(r['acc_fp32'])} [{pct(r['ci_fp32'][0])}, {pct(r['ci_fp32'][1])}] "
            f"| {100 * r['diff']:+.1f} [{100 * r['diff_ci'][0]:+.1f}, {100 * r['diff_ci'][1]:+.1f}] "
            f"| {r['bf16_only']}/{r['fp32_only']} | {r['mcnemar_p']:.2f} | {'fp32' if r['fp32_default'] else 'either'} |")


def main(argv: list[str]) -> None:
    if not argv or len(argv) % 2:
        sys.exit(__doc__)
    results = [compare(Path(argv[i]), Path(argv[i + 1])) for i in range(0, len(argv), 2)]
    print("| student | n | answers changed | identical generations | acc bf16 % [95 % CI] | acc fp32 % [95 % CI] "
          "| bf16 − fp32 (pp, paired 95 % CI) | bf16 only / fp32 only | McNemar p | rule says |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(row(r))
    print(json.dumps(results, indent=1), file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
