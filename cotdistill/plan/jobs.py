"""The plan: a study's cells as a DAG of typed jobs (teach -> train -> eval), each with a content
key, its dependencies and its resources. Nothing here runs anything (cotdistill.executors does).

Cells that share a trained model share one train job; cells that share a teacher spec (on the
same dataset) share one teach job. Every job has a folder `jobs/<name>/` in the study folder:
    job.json     the job as planned (written by the driver)
    lock         held while a worker runs it (cotdistill.executors.locks)
    attempts.jsonl   one line per start and finish (who, when)
    done.json    written last, atomically: the job's result; the job is never run again
    error.json   the last failure (error, traceback, log); the next run retries the job
    log.txt      the worker's output (subprocess executor)
Job records name files by portable references (cotdistill.refs) and keys never contain the
study folder's path, so a study folder copied or moved elsewhere keeps every finished job.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from cotdistill import refs
from cotdistill.numerics import Numerics, StudyNumerics, default_gpus
from cotdistill.plan.cells import Cell, _safe
from cotdistill.plan.spec import ResourceSpec

JOBS_DIR = "jobs"


class Resources(BaseModel):
    """What a job asks its executor for. `cpus` also sets the job's torch threads, so the same
    job computes the same numbers under every executor."""

    model_config = ConfigDict(extra="forbid")
    cpus: float = Field(description="CPU cores.")
    gpus: float = Field(description="GPUs (a fraction shares one).")
    memory_mb: int = Field(description="Memory estimate in MB (weights, gradients, optimizer state, overhead).")


class _Job(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Folder name under jobs/: <kind>-<readable slug>-<key prefix>.")
    key: str = Field(description="sha256 of everything that changes the job's output.")
    deps: list[str] = Field(default_factory=list, description="Names of the jobs whose outputs this one reads.")
    resources: Resources
    label: str = Field(description="One line for people.")


class TeachJob(_Job):
    """Write a supervision JSONL with a teacher (teach.teach)."""

    kind: Literal["teach"] = "teach"
    dataset: str
    settings: dict[str, Any] = Field(description="teach.TeachConfig settings as given (teacher, level, format ...).")
    out: str = Field(description="The JSONL to write, relative to the study folder.")


class TrainJob(_Job):
    """Fine-tune a student on one supervision set (train.train; resumes from its checkpoint)."""

    kind: Literal["train"] = "train"
    student: str = Field(description="Student reference (alias, HF id, data:/absolute path).")
    data: str = Field(description="Supervision reference (released name, data:/study:/absolute path).")
    seed: int
    settings: dict[str, Any] = Field(description="train.TrainConfig settings as given.")
    numerics: Numerics | None = Field(None, description="The precision, device, engine and versions it trains under.")
    out: str = Field(description="The run folder, relative to the study folder.")


class EvalJob(_Job):
    """Evaluate a model on a benchmark (evaluate.evaluate); one per cell."""

    kind: Literal["eval"] = "eval"
    cell: str = Field(description="The cell's slug.")
    model: str = Field(description="Model reference: the student itself (zero-shot) or study:models/<run>.")
    dataset: str
    settings: dict[str, Any] = Field(description="evaluate.EvalConfig settings as given.")
    numerics: Numerics | None = Field(None, description="The precision, device, engine and versions it evaluates under.")
    out: str = Field(description="The evaluation folder, relative to the study folder.")


Job = Annotated[TeachJob | TrainJob | EvalJob, Field(discriminator="kind")]
JOB_ADAPTER: TypeAdapter = TypeAdapter(Job)


class Plan(BaseModel):
    """Jobs cell by cell, each cell's after those it needs: run in this order, a cell's result
    comes as soon as its own jobs are done."""

    model_config = ConfigDict(extra="forbid")
    jobs: dict[str, Job]
    cells: list[Cell]
    numerics: StudyNumerics | None = Field(None, description="What `auto` means for this study (its numerics.json).")

    def eval_job(self, cell: Cell) -> EvalJob:
        return self.jobs[eval_name(cell)]  # type: ignore[return-value]

    def chain(self, job_name: str) -> list[str]:
        """The job and every job it depends on, dependencies first."""
        out: list[str] = []
        for dep in self.jobs[job_name].deps:
            out += [n for n in self.chain(dep) if n not in out]
        return out + [job_name]


# ---------------------------------------------------------------------------- names and folders


def teach_name(cell: Cell) -> str:
    return _safe(f"teach-{cell.dataset}-{cell.supervision.name}")


def train_name(cell: Cell) -> str:
    return f"train-{cell.model_slug}"


def eval_name(cell: Cell) -> str:
    return f"eval-{cell.slug}"


def job_dir(study_dir: Path, name: str) -> Path:
    return Path(study_dir) / JOBS_DIR / name


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def done_record(study_dir: Path, job: _Job) -> dict | None:
    """The job's done.json, if it exists and is for this very job (same content key)."""
    rec = read_json(job_dir(study_dir, job.name) / "done.json")
    return rec if rec is not None and rec.get("key") == job.key else None


def is_done(study_dir: Path, job: _Job) -> bool:
    return done_record(study_dir, job) is not None


def error_record(study_dir: Path, job: _Job) -> dict | None:
    return read_json(job_dir(study_dir, job.name) / "error.json")


# ---------------------------------------------------------------------------- building the plan


def build_plan(cells: list[Cell], resources: dict[str, ResourceSpec] | None = None,
               data_dir: Path | None = None) -> Plan:
    """The jobs of these cells, shared where their outputs are the same."""
    resources = resources or {}
    jobs: dict[str, Any] = {}
    for cell in cells:
        sup = cell.supervision
        model = cell.student
        deps: list[str] = []
        if sup.kind == "teacher":
            name = teach_name(cell)
            out = f"supervision/{cell.dataset}-{sup.name}.jsonl"
            jobs.setdefault(name, TeachJob(
                name=name, key=cell.teach_key(), dataset=cell.dataset, settings=dict(sup.spec or {}), out=out,
                resources=_resources("teach", resources, None, data_dir),
                label=f"teach {cell.dataset} · {sup.teacher} level {sup.level} {sup.format}"))
            deps = [name]
        if sup.kind != "none":
            name = train_name(cell)
            data = refs.study_ref(jobs[deps[0]].out) if deps else sup.name
            out = f"models/{cell.model_slug}"
            jobs.setdefault(name, TrainJob(
                name=name, key=cell.train_key(), deps=deps, student=cell.student, data=data, seed=cell.seed,
                settings=dict(cell.train or {}), out=out, numerics=cell.train_numerics,
                resources=_resources("train", resources, cell.student, data_dir),
                label="train " + cell.label()))
            deps, model = [name], refs.study_ref(out)
        name = eval_name(cell)
        jobs[name] = EvalJob(
            name=name, key=cell.key(), deps=deps, cell=cell.slug, model=model, dataset=cell.dataset,
            settings=dict(cell.eval), out=f"cells/{cell.slug}/eval", numerics=cell.eval_numerics,
            resources=_resources("eval", resources, cell.student, data_dir), label="eval " + cell.label())
    return Plan(jobs=jobs, cells=cells)


# ---------------------------------------------------------------------------- resources


def _resources(kind: str, given: dict[str, ResourceSpec], student: str | None, data_dir: Path | None) -> Resources:
    """The study's resources for this kind of job, the rest estimated: a GPU for train/eval when
    this machine has one; on CPU, every core of this machine (torch uses them all)."""
    spec = given.get(kind) or ResourceSpec()
    gpus = default_gpus(kind, spec.gpus)
    cpus = spec.cpus if spec.cpus is not None else (1.0 if gpus or kind == "teach" else float(os.cpu_count() or 1))
    memory = spec.memory_gb * 1024 if spec.memory_gb is not None else _memory_estimate_mb(kind, student, data_dir)
    return Resources(cpus=cpus, gpus=gpus, memory_mb=int(memory))


def _weights_bytes(student: str, data_dir: Path | None) -> int | None:
    """Bytes of the student's weight files, when they are on this machine."""
    from cotdistill import students

    if student in students.ALIASES:
        pkg = students._package_dir(students.ALIASES[student]["package"])
        path = pkg / students.ALIASES[student]["file"] if pkg else None
        # a 4-bit GGUF de-quantises to 16-bit weights: four times its size
        return 4 * path.stat().st_size if path and path.is_file() else None
    try:
        path = Path(refs.resolve(student, data_dir, None))
    except ValueError:
        return None
    if path.is_file():
        return 4 * path.stat().st_size
    files = [p for p in path.glob("*") if p.suffix in (".safetensors", ".bin")] if path.is_dir() else []
    return sum(p.stat().st_size for p in files) or None


def _memory_estimate_mb(kind: str, student: str | None, data_dir: Path | None) -> float:
    """Rough: training holds fp32 weights, gradients and two Adam moments (8x 16-bit weights);
    evaluation the weights twice over (weights and the KV cache); plus a fixed 1 GB for the runtime."""
    if kind == "teach" or student is None:
        return 1024.0
    size = _weights_bytes(student, data_dir)
    if size is None:
        return 4096.0 if kind == "train" else 2048.0
    return 1024.0 + size * (8 if kind == "train" else 2) / 2**20


def plan_lines(plan: Plan, study_dir: Path) -> list[str]:
    """`cotdistill study --plan`: every job, its state, what it needs."""
    from cotdistill.locks import holder

    lines, states = [], {}
    for job in plan.jobs.values():
        if is_done(study_dir, job):
            state = "done"
        elif (h := holder(job_dir(study_dir, job.name) / "lock")) is not None and not h.stale:
            state = "running"
        elif error_record(study_dir, job) is not None:
            state = "failed"
        else:
            state = "todo"
        states[state] = states.get(state, 0) + 1
        r = job.resources
        res = f"cpus={r.cpus:g} gpus={r.gpus:g} mem={r.memory_mb / 1024:.1f}G"
        needs = f"  needs {', '.join(job.deps)}" if job.deps else ""
        lines.append(f"{state:7s} {job.kind:5s} {job.name}  [{res}]{needs}")
    if plan.numerics is not None:
        lines.append(f"numerics: auto means {plan.numerics.summary()} (numerics.json)")
    counts = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    lines.append(f"{len(plan.jobs)} jobs for {len(plan.cells)} cells: {counts}")
    return lines
