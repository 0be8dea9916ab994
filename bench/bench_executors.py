"""Wall-clock of one 6-cell study (a tiny random student: 6 train + 6 eval jobs) under each
executor, in one run: local (in process), subprocess (a process per job, 2 at a time) and ray
(a local Ray with 2 workers), and each executor's overhead per job.

Overhead per job = (wall-clock x workers - work) / jobs, where work is the sum of the stage
seconds the local executor measured (imports warmed up first, so it is the jobs' own time):
the worker-seconds an executor spends on anything but the jobs themselves (process start and
imports, scheduling, Ray start-up, reading and writing the study folder), per job.

Usage (repo root):  .venv/bin/python bench/bench_executors.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

STUDY = """\
datasets: [svamp]
students: [{student}]
supervision: [{supervision}, svamp/chatgpt/level1, svamp/chatgpt/level3]
seeds: [1, 2]
train: {{epochs: 1, batch_size: 4, limit: 8, lr: 1.0e-3}}
eval: {{limit: 4, max_new_tokens: 16, batch_size: 4}}
resources: {{train: {{cpus: 1}}, eval: {{cpus: 1}}}}
"""

RUNS = [("local", {}, 1), ("subprocess", {"max_parallel": 2}, 2), ("ray", {"ray_num_cpus": 2}, 2)]


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="Keep the study folders here (default: a temp folder, removed).")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from cotdistill import evaluate, study, train  # noqa: F401  (warm imports: local's work is the jobs alone)
    from cotdistill.plan.spec import ExecutorSettings
    from cotdistill.testing import make_tiny_student
    from cotdistill.view import PlainView
    from rich.console import Console

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_executors-"))
    root.mkdir(parents=True, exist_ok=True)
    student = make_tiny_student(root / "student")
    sup = Path(__file__).resolve().parents[1] / "tests" / "assets" / "study" / "tiny_supervision.jsonl"
    (root / "study.yaml").write_text(STUDY.format(student=student, supervision=sup))
    cfg = study.load_study(root / "study.yaml")
    quiet = PlainView(Console(file=open(os.devnull, "w")))
    rows = []
    for name, extra, workers in RUNS:
        out = root / name
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        study.run_study(cfg, out, view=quiet, report=False, executor=ExecutorSettings(name=name, **extra))
        wall = time.perf_counter() - t0
        records = [json.loads(p.read_text()) for p in out.glob("jobs/*/done.json")]
        rows.append((name, workers, wall, len(records), sum(r["seconds"] for r in records)))
    work = rows[0][4]  # the local executor's stage seconds
    print(f"6-cell study, tiny student; {cpu_name()}, {os.cpu_count()} CPUs (shared with other work)")
    print(f"{'executor':<11} {'workers':>7} {'jobs':>5} {'wall s':>8} {'job-stage s':>12} {'overhead/job s':>15}")
    for name, workers, wall, jobs, stage in rows:
        print(f"{name:<11} {workers:>7} {jobs:>5} {wall:>8.1f} {stage:>12.1f} {(wall * workers - work) / jobs:>15.2f}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
