"""Running a study: plan its jobs, run them on an executor, write results and the report.

Layout of a study folder:
    study.yaml, study.provenance.json   the study file as given, the resolved cells and jobs, versions
    jobs/<job>/                         one job: job.json, lock, attempts.jsonl, done.json (written last)
                                        or error.json, log.txt, events.jsonl (see plan.jobs)
    supervision/<dataset>-<teacher>.jsonl   rationales written by a teach job
    models/<slug>-<hash>/               a trained student (train job), keyed by its training only, so
                                        cells that differ in evaluation settings share it
    cells/<slug>-<hash>/eval/           a cell's evaluation (eval job): predictions.jsonl, summary.json
    results.jsonl, results.csv          one record per cell (cotdistill.results), written by this driver alone
    supervision_metrics.csv, report.md, report.html, figures/

The driver never runs a stage itself: the executor does (cotdistill.executors). Any number of
drivers and workers may share a study folder; each job's lock keeps it to one runner at a time.
"""

from __future__ import annotations

import fcntl
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from cotdistill import refs
from cotdistill.numerics import SHORT, settle, write_record
from cotdistill.errors import CotdistillError
from cotdistill.plan.cells import Cell, expand_cells, short_name
from cotdistill.plan.jobs import Plan, build_plan, done_record, error_record, eval_name, job_dir
from cotdistill.plan.spec import ExecutorSettings, StudyConfig, executor_settings, load_study
from cotdistill.provenance import atomic_write_text, write_provenance
from cotdistill.results import CellResult, status_counts, write_results

__all__ = ["load_study", "expand_cells", "plan_study", "run_study", "study_status", "init_study_dir",
           "cell_result", "collect_results"]


def plan_study(cfg: StudyConfig, data_dir: Path | None = None, cells: list[Cell] | None = None,
               study_dir: Path | None = None, numerics: Literal["recorded", "here"] = "recorded") -> Plan:
    """The study's jobs (every check of the study file happens here, before anything runs).
    `study_dir`: its folder, whose numerics.json (if any) fixes what `auto` means; `numerics="here"`
    replaces that record with this machine's choice."""
    from cotdistill.data import resolve_data_dir

    data_dir = resolve_data_dir(data_dir)
    fixed = settle(study_dir, numerics)
    cells = cells if cells is not None else expand_cells(cfg, data_dir, fixed)
    plan = build_plan(cells, cfg.resources, data_dir)
    plan.numerics = fixed
    return plan


# ---------------------------------------------------------------------------- records


def cell_result(cell: Cell, plan: Plan, study_dir: Path) -> CellResult:
    """A cell's record, from its jobs' done.json / error.json."""
    sup = cell.supervision
    ejob = plan.jobs[eval_name(cell)]
    source = None if sup.kind == "none" else sup.name
    if sup.kind == "teacher":
        teach = next(plan.jobs[n] for n in plan.chain(ejob.name) if plan.jobs[n].kind == "teach")
        source = refs.study_ref(teach.out)
    base = dict(
        cell=cell.slug, label=cell.label(), dataset=cell.dataset, student=short_name(cell.student),
        student_ref=cell.student, teacher=sup.teacher, level=sup.level, format=sup.format,
        supervision=refs.display_name(sup.name) if sup.kind == "path" else sup.name, supervision_kind=sup.kind,
        supervision_source=source, supervision_sha256=sup.sha256, seed=cell.seed,
        train_limit=(cell.train or {}).get("limit"), train_examples=0 if sup.kind == "none" else None,
        protocol=cell.eval_resolved.get("protocol", "lenient"), decoding=cell.eval_resolved.get("decoding", "greedy"),
    )
    base.update(_numerics_columns(ejob, study_dir, plan))
    done = done_record(study_dir, ejob)
    if done is None:
        for name in plan.chain(ejob.name):
            err = error_record(study_dir, plan.jobs[name])
            if err is not None:
                return CellResult(status="failed", error=f"{plan.jobs[name].kind}: {err.get('error')}", **base)
        return CellResult(status="pending", **base)
    s = done.get("result") or {}
    t: dict[str, Any] = {}
    if sup.kind != "none":
        tjob = next(plan.jobs[n] for n in ejob.deps if plan.jobs[n].kind == "train")
        t = (done_record(study_dir, tjob) or {}).get("result") or {}
    if sup.kind == "teacher":  # allow_partial: how many of the teacher's requests are missing
        teach = next(plan.jobs[n] for n in plan.chain(ejob.name) if plan.jobs[n].kind == "teach")
        base["teach_failed"] = ((done_record(study_dir, teach) or {}).get("result") or {}).get("failed")
    return CellResult(
        status="done", accuracy=s.get("accuracy"), ci_low=s.get("ci_low"), ci_high=s.get("ci_high"), n=s.get("n"),
        correct=s.get("correct"), mean_output_tokens=s.get("mean_output_tokens"), stopped_share=s.get("stopped_share"),
        eval_seconds=_round(s.get("seconds")), eval_tokens_per_s=_round(s.get("tokens_per_s")),
        train_seconds=_round(t.get("seconds")), train_tokens_per_s=_round(t.get("tokens_per_s")),
        final_loss=t.get("final_loss"), **{**base, "train_examples": t.get("n_examples", base["train_examples"])},
    )


def _numerics_columns(ejob: Any, study_dir: Path, plan: Plan) -> dict[str, Any]:
    """The cell's numerics: as its jobs ran (full versions of their workers), else as planned."""
    tjob = next((plan.jobs[n] for n in ejob.deps if plan.jobs[n].kind == "train"), None)

    def ran(job: Any) -> Any:
        rec = done_record(study_dir, job) if job is not None else None
        got = (rec or {}).get("numerics")
        return type(job.numerics).model_validate(got) if got else (job.numerics if job is not None else None)

    ev, tr = ran(ejob), ran(tjob)
    if ev is None:
        return {}
    return dict(numerics=ev.label(), train_numerics=tr.label() if tr else None, eval_dtype=SHORT.get(ev.dtype, ev.dtype),
                train_dtype=SHORT.get(tr.dtype, tr.dtype) if tr else None, device=ev.device, engine=ev.engine,
                torch=ev.torch, transformers=ev.transformers)


def _round(v: Any) -> Any:
    return round(float(v), 2) if isinstance(v, (int, float)) else v


def collect_results(plan: Plan, study_dir: Path) -> list[CellResult]:
    return [cell_result(c, plan, study_dir) for c in plan.cells]


# ---------------------------------------------------------------------------- the study folder


def study_name(cfg: StudyConfig) -> str:
    """What makes a study folder this study's: its name, else its file's name."""
    return cfg.name or (Path(cfg._display).stem if cfg._display else "study")


def check_study_dir(cfg: StudyConfig, study_dir: Path) -> None:
    """`study_dir` is new, empty, or this study's own folder; never another study's or the user's
    files (a study writes many files into it and a report over it)."""
    from cotdistill.checks import check_out_dir

    check_out_dir(study_dir)
    if not study_dir.is_dir() or not any(study_dir.iterdir()):
        return
    marker = study_dir / "study.provenance.json"
    if not marker.is_file():
        raise CotdistillError(f"--out {study_dir} holds files not made by cotdistill study; choose another folder")
    try:
        prov = json.loads(marker.read_text(encoding="utf-8"))
        theirs = prov.get("study_name") or prov["config"].get("name") or Path(prov.get("source") or "study").stem
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise CotdistillError(f"{marker}: unreadable study provenance; choose another --out") from None
    if theirs != study_name(cfg):
        raise CotdistillError(f"--out {study_dir} holds a different study ({theirs!r}, this one is "
                              f"{study_name(cfg)!r}); choose another folder")


def init_study_dir(cfg: StudyConfig, plan: Plan, study_dir: Path, data_dir: Path | None) -> list[CellResult]:
    """Write the study file, its provenance (every resolved cell and job), each job's job.json
    and the results as they stand."""
    study_dir.mkdir(parents=True, exist_ok=True)
    if plan.numerics is not None:
        write_record(study_dir, plan.numerics)  # the first time: what `auto` means for this study from now on
    if cfg._text:
        atomic_write_text(study_dir / "study.yaml", cfg._text)
    write_provenance(
        study_dir / "study.provenance.json", cfg, study_name=study_name(cfg),
        source=str(cfg._source) if cfg._source else None,
        data_dir=str(data_dir) if data_dir else None,
        cells=[{"slug": c.slug, "key": c.key(), "label": c.label(), **c.model_dump(mode="json")} for c in plan.cells],
        jobs=[{"name": j.name, "kind": j.kind, "key": j.key, "deps": j.deps} for j in plan.jobs.values()],
    )
    for job in plan.jobs.values():
        path = job_dir(study_dir, job.name) / "job.json"
        text = job.model_dump_json(indent=2) + "\n"
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            atomic_write_text(path, text)
    records = collect_results(plan, study_dir)
    write_results(study_dir, records)
    return records


def _quiet_transformers() -> None:
    """Loading/saving bars of every job would scroll the study's own view away."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


@contextmanager
def _study_lock(study_dir: Path):
    """One driver at a time writes the report (two drivers may share a study folder)."""
    with open(study_dir / ".report.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class _Recorder:
    """Listens to the executor loop: the view shows each event; results are rewritten as jobs end."""

    def __init__(self, plan: Plan, study_dir: Path, view: Any) -> None:
        self.plan, self.study_dir, self.view = plan, study_dir, view

    def job_started(self, job: Any) -> None:
        self.view.job_started(job)

    def job_finished(self, job: Any, outcome: Any) -> None:
        self.view.job_finished(job, outcome)
        if outcome.status != "busy":
            write_results(self.study_dir, collect_results(self.plan, self.study_dir))


def run_study(
    cfg: StudyConfig,
    out: Path,
    data_dir: Path | None = None,
    view: Any = None,
    cells: list[Cell] | None = None,
    report: bool = True,
    executor: ExecutorSettings | None = None,
    numerics: Literal["recorded", "here"] = "recorded",
) -> Path:
    """Run every job not yet done on the executor (failures are recorded and the study goes on),
    then write results and the report. Returns the study folder."""
    from cotdistill.data import resolve_data_dir
    from cotdistill.executors import make_executor
    from cotdistill.executors.base import run_jobs
    from cotdistill.plan.jobs import is_done
    from cotdistill.view import PlainView

    data_dir = resolve_data_dir(data_dir)
    study_dir = Path(out)
    check_study_dir(cfg, study_dir)
    plan = plan_study(cfg, data_dir, cells, study_dir, numerics)
    settings = executor or executor_settings(cfg)
    runner = make_executor(settings)
    view = view or PlainView()
    existed = study_dir.exists()
    try:
        runner.open(study_dir, data_dir, view.progress)
    except BaseException:
        if not existed and study_dir.is_dir() and not any(study_dir.iterdir()):
            study_dir.rmdir()  # nothing half-written
        raise
    try:
        init_study_dir(cfg, plan, study_dir, data_dir)
        _quiet_transformers()
        view.start(plan, {n for n, j in plan.jobs.items() if is_done(study_dir, j)}, settings.name, runner.max_parallel)
        try:
            run_jobs(plan, study_dir, runner, _Recorder(plan, study_dir, view))
        finally:
            view.stop()
    finally:
        runner.close()
    write_results(study_dir, collect_results(plan, study_dir))
    if report:
        from cotdistill.report import write_report

        with _study_lock(study_dir):
            write_report(study_dir, data_dir=data_dir)
    return study_dir


def study_status(study_dir: Path) -> dict[str, int]:
    """Counts of cells by status."""
    return status_counts(study_dir)


def job_attempts(study_dir: Path, name: str) -> list[dict]:
    """The start / finish / failed lines of a job (attempts.jsonl)."""
    path = job_dir(study_dir, name) / "attempts.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
