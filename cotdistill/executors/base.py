"""What every executor provides, and the one scheduling loop they share: submit the jobs whose
dependencies are done, at most `max_parallel` at once, until every job is done or failed.

An executor only runs what it is handed (cotdistill.executors.runner.run_job, somewhere) and
reports outcomes and progress; the plan decides what exists, the driver what it means.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Protocol

from cotdistill.executors.runner import Emit, Outcome
from cotdistill.locks import holder
from cotdistill.plan.jobs import Plan, is_done, job_dir

BUSY_RECHECK_S = 2.0  # how often to look again at a job another worker holds


class Executor(ABC):
    name: str = ""
    max_parallel: int = 1  # jobs in flight at once

    @abstractmethod
    def open(self, study_dir: Path, data_dir: Path | None, emit: Emit) -> None:
        """Get ready (start or join a cluster, check the study folder is visible); errors are one line."""

    @abstractmethod
    def submit(self, job) -> None:
        """Start running `job` (runner.run_job) somewhere."""

    @abstractmethod
    def wait(self, timeout: float) -> list[Outcome]:
        """Outcomes of the submitted jobs that finished (waiting at most `timeout` s for one)."""

    def close(self) -> None:
        """Give back what open() took."""


class Listener(Protocol):
    def job_started(self, job) -> None: ...
    def job_finished(self, job, outcome: Outcome) -> None: ...


def run_jobs(plan: Plan, study_dir: Path, executor: Executor, listener: Listener) -> dict[str, Outcome]:
    """Run every job of the plan not yet done; a job whose dependency failed fails without running.
    A job another live worker holds (another `cotdistill study` on the same folder) is waited for."""
    state = {name: "done" if is_done(study_dir, job) else "todo" for name, job in plan.jobs.items()}
    outcomes: dict[str, Outcome] = {}
    recheck_at: dict[str, float] = {}
    inflight: set[str] = set()

    def finish(name: str, outcome: Outcome) -> None:
        state[name] = outcome.status
        outcomes[name] = outcome
        listener.job_finished(plan.jobs[name], outcome)

    while True:
        now = time.time()
        for name, job in plan.jobs.items():
            if state[name] != "todo":
                continue
            failed = [d for d in job.deps if state[d] == "failed"]
            if failed:
                finish(name, Outcome(job=name, status="failed", error=f"needs {failed[0]}, which failed"))
            elif all(state[d] == "done" for d in job.deps) and recheck_at.get(name, 0) <= now:
                if len(inflight) >= executor.max_parallel:
                    continue
                if is_done(study_dir, job):  # another worker finished it meanwhile
                    finish(name, Outcome(job=name, status="done"))
                    continue
                h = holder(job_dir(study_dir, name) / "lock")
                if h is not None and not h.stale:  # another worker runs it: look again later
                    recheck_at[name] = now + BUSY_RECHECK_S
                    continue
                state[name] = "running"
                inflight.add(name)
                listener.job_started(job)  # first: the local executor runs the job inside submit()
                executor.submit(job)
        if not inflight:
            waiting = [recheck_at[n] for n, s in state.items() if s == "todo" and n in recheck_at]
            if not waiting and not any(s == "todo" for s in state.values()):
                return outcomes
            time.sleep(max(0.05, min(waiting, default=now + 0.2) - now))
            continue
        for outcome in executor.wait(0.5):
            inflight.discard(outcome.job)
            if outcome.status == "busy":  # claimed by another worker between our look and its start
                state[outcome.job] = "todo"
                recheck_at[outcome.job] = time.time() + BUSY_RECHECK_S
                listener.job_finished(plan.jobs[outcome.job], outcome)
            else:
                finish(outcome.job, outcome)
