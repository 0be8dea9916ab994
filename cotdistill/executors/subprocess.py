"""Every job in its own Python process (cotdistill.executors.worker): GPU memory and the CUDA
context are freed between jobs, and a crash, an out-of-memory kill or a segfault fails that job
only. The worker's output is kept in jobs/<job>/log.txt; its progress arrives through
jobs/<job>/events.jsonl. A worker that dies is started again, up to `max_retries` times."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cotdistill.executors.base import Executor
from cotdistill.executors.runner import Emit, Outcome, record_crash
from cotdistill.executors.worker import EXIT_CODES
from cotdistill.plan.jobs import error_record, job_dir


@dataclass
class _Running:
    job: object
    proc: subprocess.Popen
    tries: int
    events_offset: int


class SubprocessExecutor(Executor):
    name = "subprocess"

    def __init__(self, settings) -> None:
        self.max_parallel = settings.max_parallel or 1
        self.max_retries = settings.max_retries
        self.running: dict[str, _Running] = {}

    def open(self, study_dir: Path, data_dir: Path | None, emit: Emit) -> None:
        self.study_dir, self.data_dir, self.emit = Path(study_dir).resolve(), data_dir, emit

    def submit(self, job, tries: int = 1) -> None:
        jdir = job_dir(self.study_dir, job.name)
        jdir.mkdir(parents=True, exist_ok=True)
        events = jdir / "events.jsonl"
        cmd = [sys.executable, "-m", "cotdistill.executors.worker", str(self.study_dir), job.name]
        if self.data_dir is not None:
            cmd += ["--data-dir", str(self.data_dir)]
        threads = str(max(1, int(job.resources.cpus)))
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
        with open(jdir / "log.txt", "a", encoding="utf-8") as log:
            log.write(f"--- attempt {tries} at {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        offset = events.stat().st_size if events.is_file() else 0
        self.running[job.name] = _Running(job, proc, tries, offset)

    def wait(self, timeout: float) -> list[Outcome]:
        deadline = time.time() + timeout
        while True:
            self._forward_events()
            out = [o for name, r in list(self.running.items()) if (o := self._reap(name, r)) is not None]
            if out or time.time() >= deadline:
                return out
            time.sleep(0.05)

    def _reap(self, name: str, r: _Running) -> Outcome | None:
        rc = r.proc.poll()
        if rc is None:
            return None
        del self.running[name]
        for status, code in EXIT_CODES.items():
            if rc == code:
                err = error_record(self.study_dir, r.job) if status == "failed" else None
                return Outcome(job=name, status=status, error=(err or {}).get("error"))
        why = f"killed by signal {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
        if r.tries <= self.max_retries:
            self.submit(r.job, r.tries + 1)
            return None
        return record_crash(self.study_dir, r.job, f"worker process died ({why}) {r.tries} time(s)",
                            log=f"jobs/{name}/log.txt")

    def _forward_events(self) -> None:
        for name, r in self.running.items():
            path = job_dir(self.study_dir, name) / "events.jsonl"
            try:
                with open(path, "rb") as f:
                    f.seek(r.events_offset)
                    chunk = f.read()
            except FileNotFoundError:
                continue
            complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next look
            r.events_offset += len(complete)
            for line in complete.decode("utf-8").splitlines():
                if line.strip():
                    self.emit(json.loads(line))

    def close(self) -> None:
        for r in self.running.values():  # interrupted: the workers' finished work is saved
            r.proc.terminate()
        for r in self.running.values():
            try:
                r.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                r.proc.kill()
