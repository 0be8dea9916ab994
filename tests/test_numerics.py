"""Numerics in a job's identity and its results row (issue 15): what `auto` resolves to is fixed in
the study folder the first time; a machine that would resolve differently keeps it; other versions
are refused with one line; rows and the report say which numerics made each number."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cotdistill import numerics, students, study
from cotdistill.errors import CotdistillError
from cotdistill.executors.runner import run_job
from cotdistill.report import Condition, _test_row, mixes_numerics
from cotdistill.results import CellResult

ASSETS = Path(__file__).parent / "assets" / "study"
CLI = Path(sys.executable).parent / "cotdistill"

TRAINED = """\
datasets: [svamp]
students: [STUDENT]
supervision: [tiny_supervision.jsonl, none]
train: {epochs: 1, batch_size: 4}
eval: {limit: 2, max_new_tokens: 4, batch_size: 2}
resources: {train: {cpus: 1}, eval: {cpus: 1}}
"""

# Two zero-shot cells of one student that differ only in evaluation precision.
TWO_PRECISIONS = """\
datasets: [svamp]
students: [STUDENT]
supervision: [none]
eval: {limit: 2, max_new_tokens: 4, batch_size: 2}
resources: {eval: {cpus: 1}}
cells:
  - {student: STUDENT, supervision: none, eval: {dtype: bf16}}
"""


def make_study(tmp_path: Path, student: Path, body: str) -> Path:
    shutil.copy(ASSETS / "tiny_supervision.jsonl", tmp_path / "tiny_supervision.jsonl")
    path = tmp_path / "study.yaml"
    path.write_text(body.replace("STUDENT", str(student)))
    return path


def keys(plan) -> dict[str, str]:
    return {name: job.key for name, job in plan.jobs.items()}


def test_resume_on_a_machine_that_resolves_differently_keeps_the_recorded_choice(tmp_path, tiny_student, data_dir,
                                                                                  monkeypatch):
    cfg = study.load_study(make_study(tmp_path, tiny_student, TRAINED))
    out = tmp_path / "run"
    monkeypatch.setattr(students, "cpu_has_native_bf16", lambda: True)  # Zen 4 / Sapphire Rapids
    first = study.plan_study(cfg, data_dir, study_dir=out)
    study.init_study_dir(cfg, first, out, data_dir)
    recorded = json.loads((out / "numerics.json").read_text())
    assert recorded["dtypes"]["train/cpu"] == "bfloat16" and recorded["dtypes"]["eval/cpu"] == "float32"
    train = next(j for j in first.jobs.values() if j.kind == "train")
    assert (train.numerics.dtype, train.numerics.device, train.numerics.engine) == ("bfloat16", "cpu", "hf")
    assert all(j.numerics.dtype == "float32" for j in first.jobs.values() if j.kind == "eval")

    monkeypatch.setattr(students, "cpu_has_native_bf16", lambda: False)  # an AVX2-only machine
    resumed = study.plan_study(cfg, data_dir, study_dir=out)
    assert keys(resumed) == keys(first)  # every finished job would be kept
    assert next(j for j in resumed.jobs.values() if j.kind == "train").numerics.dtype == "bfloat16"
    # The same study planned fresh there trains in fp32: the trained cell gets other keys (other
    # folders); the zero-shot cell evaluates in fp32 on both machines and is the same job.
    fresh = study.plan_study(cfg, data_dir, study_dir=tmp_path / "elsewhere")
    shared = {n for n, j in first.jobs.items() if j.kind == "eval" and not j.deps}
    assert len(shared) == 1 and shared <= set(keys(fresh))
    assert {n: k for n, k in keys(fresh).items() if n not in shared}.keys().isdisjoint(keys(first))
    # ... and `--numerics here` re-plans the folder under this machine's choice, recorded anew.
    here = study.plan_study(cfg, data_dir, study_dir=out, numerics="here")
    assert keys(here) == keys(fresh)
    study.init_study_dir(cfg, here, out, data_dir)
    assert json.loads((out / "numerics.json").read_text())["dtypes"]["train/cpu"] == "float32"


def test_other_versions_refused_with_one_line(tmp_path, tiny_student, data_dir):
    path = make_study(tmp_path, tiny_student, TRAINED)
    cfg = study.load_study(path)
    out = tmp_path / "run"
    plan = study.plan_study(cfg, data_dir, study_dir=out)
    study.init_study_dir(cfg, plan, out, data_dir)
    record = json.loads((out / "numerics.json").read_text())
    (out / "numerics.json").write_text(json.dumps({**record, "torch": "2.12.1"}))
    with pytest.raises(CotdistillError, match=r"torch 2\.12 .*--numerics here"):
        study.plan_study(cfg, data_dir, study_dir=out)
    # A patch release is the same numerics: its key holds major.minor only.
    (out / "numerics.json").write_text(json.dumps({**record, "torch": record["torch"].split("+")[0] + ".post9"}))
    assert keys(study.plan_study(cfg, data_dir, study_dir=out)) == keys(plan)

    (out / "numerics.json").write_text(json.dumps({**record, "transformers": "4.57.0"}))
    r = subprocess.run([str(CLI), "study", str(path), "--out", str(out), "--plan", "--data-dir", str(data_dir)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "transformers 4.57" in r.stderr, r.stderr
    assert json.loads((out / "numerics.json").read_text())["transformers"] == "4.57.0"  # untouched

    # A worker elsewhere with other versions refuses the job instead of computing it differently.
    job = next(j for j in plan.jobs.values() if j.kind == "eval" and not j.deps)
    job = job.model_copy(update={"numerics": job.numerics.model_copy(update={"transformers": "4.57.0"})})
    outcome = run_job(job, tmp_path / "worker", data_dir)
    assert outcome.status == "failed" and "planned under torch" in outcome.error and "\n" not in outcome.error


def test_rows_carry_numerics_and_the_report_warns_when_they_mix(tmp_path, tiny_student, data_dir):
    cfg = study.load_study(make_study(tmp_path, tiny_student, TWO_PRECISIONS))
    out = study.run_study(cfg, tmp_path / "run", data_dir=data_dir)
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(r["status"] == "done" for r in rows)
    versions = numerics.library_versions()
    assert sorted(r["eval_dtype"] for r in rows) == ["bf16", "fp32"]  # auto evaluates in fp32 on CPU
    for r in rows:
        assert r["numerics"] == f"{r['eval_dtype']}/cpu/hf torch {versions['torch']} transformers {versions['transformers']}"
        assert (r["device"], r["engine"], r["torch"], r["train_dtype"]) == ("cpu", "hf", versions["torch"], "")
    # the evaluation folder itself knows its precision
    dtypes = {json.loads(p.read_text())["identity"]["dtype"] for p in out.glob("cells/*/eval/eval_run.json")}
    assert dtypes == {"bfloat16", "float32"}
    report = (out / "report.md").read_text()
    assert "Mixed numerics" in report and "eval bf16 cpu/hf" in report and "eval fp32 cpu/hf" in report


def test_paired_test_across_numerics_is_marked():
    def cond(teacher: str, eval_dtype: str, train_dtype: str | None) -> Condition:
        row = CellResult(cell=teacher, status="done", label=teacher, dataset="svamp", student="s", student_ref="s",
                         teacher=teacher, level=None, format="cot", supervision=teacher, supervision_kind="released",
                         supervision_source=None, supervision_sha256=None, seed=1, train_limit=None, accuracy=0.5,
                         eval_dtype=eval_dtype, train_dtype=train_dtype, device="cpu", engine="hf",
                         torch="2.13.0", transformers="5.24.0")
        return Condition("svamp", "s", teacher, None, "cot", rows=[row],
                         correct={(1, q): q % 2 == 0 for q in range(10)})

    a, b = cond("a", "fp32", "bf16"), cond("b", "fp32", "bf16")
    zero = cond("zero-shot", "fp32", None)
    assert not mixes_numerics(a, b) and not mixes_numerics(a, zero)  # zero-shot has no training to differ in
    assert "mixed numerics" not in _test_row(a, b)[-1]
    assert mixes_numerics(a, cond("c", "bf16", "bf16")) and mixes_numerics(a, cond("d", "fp32", "fp32"))
    assert _test_row(a, cond("c", "bf16", "bf16"))[-1].endswith("⚠ mixed numerics")


def test_auto_evaluates_in_fp32_on_every_cpu_and_trains_in_bf16_where_native(monkeypatch):
    monkeypatch.setattr(students, "cpu_has_native_bf16", lambda: True)
    assert students.resolve_dtype("auto", "cpu", evaluation=True) == "float32"
    assert students.resolve_dtype("auto", "cpu") == "bfloat16"
    assert students.resolve_dtype("bf16", "cpu", evaluation=True) == "bfloat16"  # asked for, given


def test_unknown_dtype_in_the_study_names_its_line(tmp_path, tiny_student, data_dir):
    path = make_study(tmp_path, tiny_student, TRAINED.replace("batch_size: 4}", "batch_size: 4, dtype: fp8}"))
    with pytest.raises(CotdistillError, match=r"study\.yaml:4: train\.dtype: unknown dtype 'fp8'"):
        study.plan_study(study.load_study(path), data_dir)
