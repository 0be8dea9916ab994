"""Every job in this process, one after another (the default)."""

from __future__ import annotations

from pathlib import Path

from cotdistill.executors.base import Executor
from cotdistill.executors.runner import Emit, Outcome, run_job


class LocalExecutor(Executor):
    name = "local"
    max_parallel = 1  # in-process jobs share one torch: one at a time

    def __init__(self, settings) -> None:
        self.done: list[Outcome] = []

    def open(self, study_dir: Path, data_dir: Path | None, emit: Emit) -> None:
        self.study_dir, self.data_dir, self.emit = Path(study_dir), data_dir, emit

    def submit(self, job) -> None:
        self.done.append(run_job(job, self.study_dir, self.data_dir, self.emit))

    def wait(self, timeout: float) -> list[Outcome]:
        out, self.done = self.done, []
        return out
