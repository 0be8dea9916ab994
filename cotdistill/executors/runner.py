"""Run ONE job in this process, whatever executor brought it here: claim its lock, run its stage,
write its done.json last. Every executor ends up calling `run_job`.

Outcomes: "done" (now or earlier), "failed" (the stage raised; error.json written; not retried
by executors: a raised error is deterministic), "busy" (someone alive holds the job's lock; the
driver waits for it and asks again).
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from cotdistill import refs
from cotdistill.errors import CotdistillError
from cotdistill.locks import JobLock
from cotdistill.numerics import check_runnable
from cotdistill.plan.jobs import EvalJob, TeachJob, TrainJob, done_record, job_dir
from cotdistill.provenance import atomic_write_text
from cotdistill.results import JobRecord

Emit = Callable[[dict], None]  # a progress event: {"job", "stage", "done", "total"}


class Outcome(BaseModel):
    job: str
    status: Literal["done", "failed", "busy"]
    error: str | None = None


def run_job(job: TeachJob | TrainJob | EvalJob, study_dir: Path, data_dir: Path | None,
            emit: Emit | None = None, log: str | None = None) -> Outcome:
    """Run `job` unless it is done or someone else is running it. `log`: the worker's log file
    (relative to the study folder), named in error.json."""
    study_dir = Path(study_dir)
    if done_record(study_dir, job) is not None:
        return Outcome(job=job.name, status="done")
    jdir = job_dir(study_dir, job.name)
    lock = JobLock(jdir / "lock")
    if not lock.acquire():
        return Outcome(job=job.name, status="busy")
    try:
        if done_record(study_dir, job) is not None:  # finished while we were claiming it
            return Outcome(job=job.name, status="done")
        return _run_claimed(job, study_dir, data_dir, emit, log)
    finally:
        lock.release()


def _run_claimed(job, study_dir: Path, data_dir: Path | None, emit: Emit | None, log: str | None) -> Outcome:
    jdir = job_dir(study_dir, job.name)
    started = time.time()
    who = {"host": socket.gethostname(), "pid": os.getpid()}
    _attempt(jdir, {"event": "start", "time": started, **who})
    _set_threads(job.resources.cpus)
    numerics = getattr(job, "numerics", None)
    record = dict(name=job.name, kind=job.kind, key=job.key, started=started, log=log,
                  numerics=numerics.here() if numerics else None, **who)
    try:
        if numerics is not None:
            check_runnable(numerics)  # a worker elsewhere must not compute it under other numerics
        result = STAGES[job.kind](job, study_dir, data_dir, _progress(job.name, job.kind, emit))
    except Exception as e:  # noqa: BLE001  (a failed job is recorded; the study goes on)
        msg = str(e) if isinstance(e, CotdistillError) else f"{type(e).__name__}: {e}".splitlines()[0]
        rec = JobRecord(status="failed", seconds=round(time.time() - started, 2), error=msg,
                        traceback=traceback.format_exc(), **record)
        atomic_write_text(jdir / "error.json", rec.model_dump_json(indent=2) + "\n")
        _attempt(jdir, {"event": "failed", "time": time.time(), **who})
        return Outcome(job=job.name, status="failed", error=msg)
    rec = JobRecord(status="done", seconds=round(time.time() - started, 2), result=result, **record)
    (jdir / "error.json").unlink(missing_ok=True)
    atomic_write_text(jdir / "done.json", rec.model_dump_json(indent=2) + "\n")  # last: the job is done
    _attempt(jdir, {"event": "finish", "time": time.time(), **who})
    return Outcome(job=job.name, status="done")


def record_crash(study_dir: Path, job, error: str, log: str | None = None) -> Outcome:
    """error.json for a job whose worker died on every try (the executor saw it, not the worker)."""
    rec = JobRecord(name=job.name, kind=job.kind, key=job.key, status="failed", host=socket.gethostname(),
                    pid=os.getpid(), started=time.time(), seconds=0.0, error=error, log=log)
    atomic_write_text(job_dir(study_dir, job.name) / "error.json", rec.model_dump_json(indent=2) + "\n")
    return Outcome(job=job.name, status="failed", error=error)


def throttled(emit: Emit, every_s: float = 0.5) -> Emit:
    """Pass on at most one progress event per `every_s` seconds, and always a stage's last one."""
    last = [0.0]

    def out(event: dict) -> None:
        now = time.time()
        final = event.get("done") is not None and event.get("done") == event.get("total")
        if now - last[0] >= every_s or final:
            last[0] = now
            emit({**event, "time": now})

    return out


def _attempt(jdir: Path, event: dict) -> None:
    """attempts.jsonl: one line per start/finish, for people and for the tests that count them."""
    jdir.mkdir(parents=True, exist_ok=True)
    with open(jdir / "attempts.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(event) + "\n")


def _set_threads(cpus: float) -> None:
    """A job computes with the cores it asked for, under every executor (the same thread count
    gives the same floating-point sums, so executors agree to the bit)."""
    import torch

    torch.set_num_threads(max(1, int(cpus)))


def _progress(name: str, stage: str, emit: Emit | None) -> Callable[..., None]:
    """Adapt a stage's progress callback (whatever numbers it reports) to a progress event."""

    def cb(*args: Any, **kwargs: Any) -> None:
        if emit is None:
            return
        done = kwargs.get("done", kwargs.get("step", args[0] if args else None))
        total = kwargs.get("total", args[1] if len(args) > 1 else None)
        if isinstance(done, dict):
            total = done.get("total", total)
            done = done.get("done", done.get("step"))
        try:
            emit({"job": name, "stage": stage, "done": float(done), "total": float(total) if total else None})
        except (TypeError, ValueError):
            emit({"job": name, "stage": stage, "done": None, "total": None})

    return cb


# ---------------------------------------------------------------------------- the stages


def _teach(job: TeachJob, study_dir: Path, data_dir: Path | None, progress: Callable) -> dict:
    from cotdistill import teach

    settings = dict(job.settings)
    teacher = str(settings.get("teacher", ""))
    if teacher.startswith("hf:"):
        settings["teacher"] = "hf:" + refs.resolve(teacher[3:], data_dir, study_dir)
    out = study_dir / job.out
    settings.update(dataset=job.dataset, out=str(out), progress=False)
    if data_dir is not None and "data_dir" not in settings:
        settings["data_dir"] = str(data_dir)
    cfg = teach.TeachConfig(**settings)
    result = teach.teach(cfg)  # writes `out` atomically, last
    if not out.is_file():
        raise CotdistillError(f"teacher {teacher} wrote no supervision file at {out}")
    failed = len(result.failures)
    if failed and not cfg.allow_partial:
        # Not done: a re-run asks again for exactly these requests (the answered ones are cached).
        raise CotdistillError(
            f"teacher {teacher} could not answer {failed} request(s) after all retries (first: {result.failures[0]}); "
            "re-run the study to ask again for those, or set allow_partial: true in the teacher's settings")
    return {"out": job.out, "summary": result.summary, "failed": failed}


def _train(job: TrainJob, study_dir: Path, data_dir: Path | None, progress: Callable) -> dict:
    from cotdistill import train

    settings = dict(job.settings)
    # resume: a half-trained model (its worker was killed) continues from its last checkpoint.
    settings.update(student=refs.resolve(job.student, data_dir, study_dir),
                    data=refs.resolve(job.data, data_dir, study_dir), out=str(study_dir / job.out), seed=job.seed,
                    resume=True, data_dir=str(data_dir) if data_dir else None, quiet=True, **_numerics(job))
    result = train.train(train.TrainConfig(**settings), progress=progress)
    return result.model_dump(mode="json", exclude={"out"})


def _eval(job: EvalJob, study_dir: Path, data_dir: Path | None, progress: Callable) -> dict:
    from cotdistill import evaluate

    settings = dict(job.settings)
    settings.update(model=refs.resolve(job.model, data_dir, study_dir), dataset=job.dataset,
                    out=str(study_dir / job.out), data_dir=str(data_dir) if data_dir else None, quiet=True,
                    **_numerics(job))
    return evaluate.evaluate(evaluate.EvalConfig(**settings), progress=progress).model_dump(mode="json")


def _numerics(job: TrainJob | EvalJob) -> dict[str, str]:
    """The stage computes under the job's planned numerics, not what `auto` means on this worker."""
    n = job.numerics
    if n is None:
        return {}
    device = str(job.settings.get("device") or "auto")
    return {"dtype": n.dtype, "device": n.device if device == "auto" else device}


STAGES: dict[str, Callable[..., dict]] = {"teach": _teach, "train": _train, "eval": _eval}
