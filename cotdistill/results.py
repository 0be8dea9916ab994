"""Typed records of finished work: a job's (done.json / error.json, written by whoever ran it)
and a cell's (results.jsonl, written by the study's driver alone, read by the report).

results.csv is the same cell records as a table for people; programs read results.jsonl.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cotdistill.errors import CotdistillError
from cotdistill.numerics import Numerics
from cotdistill.provenance import atomic_write_text


class JobRecord(BaseModel):
    """The outcome of one job: its done.json (status done, written last) or error.json."""

    model_config = ConfigDict(extra="forbid")
    name: str
    kind: str
    key: str = Field(description="The job's content key: a done.json counts only for the same key.")
    status: Literal["done", "failed"]
    host: str
    pid: int
    started: float = Field(description="Unix time the job started.")
    seconds: float = Field(description="Wall-clock of the stage in this attempt.")
    result: dict[str, Any] | None = Field(None, description="The stage's summary (TrainResult, EvalSummary, teach counts).")
    error: str | None = Field(None, description="One line: what went wrong.")
    traceback: str | None = None
    log: str | None = Field(None, description="The worker's log, relative to the study folder (subprocess, ray).")
    numerics: Numerics | None = Field(None, description="What computed it: dtype, device, engine, full versions of this worker.")


class CellResult(BaseModel):
    """One cell of a study: what it is, how it went, its numbers."""

    model_config = ConfigDict(extra="forbid")
    cell: str = Field(description="The cell's slug (its folder under cells/).")
    status: Literal["done", "failed", "pending"]
    label: str
    dataset: str
    student: str = Field(description="Short name of the student.")
    student_ref: str = Field(description="The student as the study names it (alias, HF id, file reference).")
    teacher: str
    level: int | None
    format: str
    supervision: str = Field(description="Released name, file name, teacher slug or none.")
    supervision_kind: Literal["released", "path", "teacher", "none"]
    supervision_source: str | None = Field(description="What training read: released name or file reference (cotdistill.refs).")
    supervision_sha256: str | None
    seed: int
    train_limit: int | None = Field(description="Training examples asked for (the first N).")
    train_examples: int | None = None
    accuracy: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    correct: int | None = None
    mean_output_tokens: float | None = None
    stopped_share: float | None = None
    train_seconds: float | None = None
    eval_seconds: float | None = None
    train_tokens_per_s: float | None = None
    eval_tokens_per_s: float | None = None
    final_loss: float | None = None
    protocol: str = Field("lenient", description="How answers were read: lenient or paper (cotdistill.protocol).")
    decoding: str = Field("greedy", description="How the answers were generated: greedy or paper (beam search).")
    numerics: str | None = Field(None, description="What made the accuracy: eval dtype/device/engine and full versions.")
    train_numerics: str | None = Field(None, description="What trained the model (None: zero-shot).")
    eval_dtype: str | None = None
    train_dtype: str | None = None
    device: str | None = None
    engine: str | None = None
    torch: str | None = Field(None, description="Full torch version that evaluated it.")
    transformers: str | None = Field(None, description="Full transformers version that evaluated it.")
    teach_failed: int | None = Field(None, description="Teacher requests that failed after all retries (allow_partial): "
                                                        "questions missing from the supervision.")
    error: str | None = None


CSV_COLUMNS = [
    "cell", "status", "dataset", "student", "teacher", "level", "format", "supervision", "seed",
    "train_examples", "accuracy", "ci_low", "ci_high", "n", "correct", "mean_output_tokens", "stopped_share",
    "train_seconds", "eval_seconds", "train_tokens_per_s", "eval_tokens_per_s", "final_loss", "protocol", "decoding",
    "eval_dtype", "train_dtype", "device", "engine", "torch", "transformers", "numerics", "teach_failed", "error",
]  # fmt: skip


def write_results(study_dir: Path, records: list[CellResult]) -> Path:
    """results.jsonl (the records) and results.csv (the table); returns the CSV's path."""
    study_dir = Path(study_dir)
    atomic_write_text(study_dir / "results.jsonl", "".join(r.model_dump_json() + "\n" for r in records))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in records:
        w.writerow({k: "" if v is None else v for k, v in r.model_dump().items()})
    path = study_dir / "results.csv"
    atomic_write_text(path, buf.getvalue())
    return path


def read_results(study_dir: Path) -> list[CellResult]:
    """The cell records; a damaged or hand-edited file is one error naming its line and field."""
    from pydantic import ValidationError

    from cotdistill.benchmarks._files import read_text

    path = Path(study_dir) / "results.jsonl"
    if not path.is_file():
        raise CotdistillError(f"{study_dir} is not a study folder (no results.jsonl); run `cotdistill study` first")
    records = []
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = CellResult.model_validate_json(line)
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(x) for x in err["loc"]) or "record"
            raise CotdistillError(f"{path}:{lineno}: {field}: {err['msg']}; re-run the study to rewrite it") from None
        for name in ("cell", "dataset", "student"):  # they name files and folders: no path may hide in them
            if not _SAFE_NAME.fullmatch(getattr(r, name)):
                raise CotdistillError(f"{path}:{lineno}: {name}: {getattr(r, name)!r} is not a plain name "
                                      "(letters, digits, . _ = -)")
        records.append(r)
    return records


_SAFE_NAME = re.compile(r"[A-Za-z0-9_=-][A-Za-z0-9_.=-]*")


def status_counts(study_dir: Path) -> dict[str, int]:
    """Cells by status."""
    counts: dict[str, int] = {}
    for r in read_results(study_dir):
        counts[r.status] = counts.get(r.status, 0) + 1
    return counts
