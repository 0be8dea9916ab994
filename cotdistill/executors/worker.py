"""Run one planned job in a fresh process: `python -m cotdistill.executors.worker STUDY_DIR JOB
[--data-dir DIR]`. The job is read from STUDY_DIR/jobs/JOB/job.json; progress events go, one JSON
line each, to jobs/JOB/events.jsonl; the exit code says how it went (EXIT_CODES)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cotdistill.executors.runner import Emit, run_job, throttled
from cotdistill.plan.jobs import JOB_ADAPTER, job_dir

EXIT_CODES = {"done": 0, "failed": 10, "busy": 11}


def events_writer(path: Path) -> Emit:
    """Progress events as JSON lines in `path` (the driver reads them as they come)."""

    def write(event: dict) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")

    return throttled(write)


def load_job(study_dir: Path, name: str):
    return JOB_ADAPTER.validate_json((job_dir(study_dir, name) / "job.json").read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cotdistill.executors.worker")
    p.add_argument("study_dir", type=Path)
    p.add_argument("job")
    p.add_argument("--data-dir", type=Path, default=None)
    args = p.parse_args(argv)
    job = load_job(args.study_dir, args.job)
    jdir = job_dir(args.study_dir, job.name)
    outcome = run_job(job, args.study_dir, args.data_dir, events_writer(jdir / "events.jsonl"),
                      log=f"jobs/{job.name}/log.txt")
    if outcome.error:
        print(f"job {job.name} failed: {outcome.error}", flush=True)
    return EXIT_CODES[outcome.status]


if __name__ == "__main__":
    raise SystemExit(main())
