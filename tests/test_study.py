"""Study files (validation with lines), grid expansion, content-addressed cells, the runner's
resume/failure logic, and the kill-and-rerun guarantee through the real CLI."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cotdistill import plan, study
from cotdistill.errors import CotdistillError
from cotdistill.plan.jobs import job_dir

ASSETS = Path(__file__).parent / "assets" / "study"
CLI = Path(sys.executable).parent / "cotdistill"


def make_study(tmp_path: Path, student: Path, body: str) -> Path:
    """A study file in tmp_path with the tiny supervision JSONL beside it."""
    shutil.copy(ASSETS / "tiny_supervision.jsonl", tmp_path / "tiny_supervision.jsonl")
    path = tmp_path / "study.yaml"
    path.write_text(body.replace("STUDENT", str(student)))
    return path


GOOD = """\
datasets: [svamp]
students: [STUDENT]
supervision:
  - svamp/chatgpt/level{1,3}
  - tiny_supervision.jsonl
  - none
seeds: [1, 2]
train: {epochs: 1, batch_size: 4, limit: 8}
eval: {limit: 4, max_new_tokens: 8}
"""


# ---------------------------------------------------------------- validation with YAML lines


@pytest.mark.parametrize(
    "body, line, needle",
    [
        ("students: [STUDENT]\nsupervision: [none]\nbogus: 1\n", 3, "bogus: unknown key"),
        ("students: [STUDENT]\nsupervision: [none]\ndatasets: [svamp]\ntrain:\n  epochs: 1\n  epochz: 2\n", 6, "train.epochz: unknown key"),
        ("students: [STUDENT]\nsupervision: [none]\ndatasets: [svamp]\ntrain:\n  lr: -1\n", 5, "train.lr"),
        ("students: [STUDENT]\nsupervision: [none]\nseeds: [1, x]\n", 3, "seeds.1"),
        ("students: [STUDENT]\nstudents: [STUDENT]\n", 2, "duplicate key 'students'"),
        ("students: [STUDENT]\nsupervision: []\n", 2, "the grid is empty"),
        ("students: []\nsupervision: [svamp/chatgpt/level1]\n", 1, "the grid is empty"),
        ("students: [STUDENT]\nsupervision:\n  - svamp/chatgpt/level1\n  - svamp/chatgpt/level9\n", 4, "level9"),
        ("students: [STUDENT]\nsupervision:\n  - svamp/{chatgpt,gpt5}/level1\n", 3, "svamp/gpt5/level1"),
        ("students:\n  - STUDENT\n  - no-such-student\nsupervision: [none]\ndatasets: [svamp]\n", 3, "no-such-student"),
        ("students: [/nonexistent/model.gguf]\nsupervision: [none]\ndatasets: [svamp]\n", 1, "does not exist"),
        ("students: [STUDENT]\nsupervision: [missing.jsonl]\ndatasets: [svamp]\n", 2, "missing.jsonl does not exist"),
        ("students: [STUDENT]\nsupervision: [none]\ndatasets: [svmap]\n", 3, "did you mean svamp"),
        ("students: [STUDENT]\nsupervision: [svamp/chatgpt/level1]\ndatasets: [gsm8k]\n", 2, "not in datasets"),
        ("students: [STUDENT]\nsupervision: [none]\ndatasets: [svamp]\neval:\n  model: x\n", 5, "set by the study"),
        ("students: [STUDENT]\nsupervision: [none]\ndatasets: [svamp]\ncells:\n  - student: STUDENT\n"
         "    supervision: none\n    sede: 3\n", 7, "cells.0.sede: unknown key"),
        ("students: [STUDENT\nsupervision: [none]\n", 2, "invalid YAML"),
    ],
)
def test_bad_study_rejected_with_line(tmp_path, tiny_student, data_dir, body, line, needle):
    path = make_study(tmp_path, tiny_student, body)
    with pytest.raises(CotdistillError) as e:
        study.expand_cells(study.load_study(path), data_dir)
    msg = str(e.value)
    assert msg.startswith(f"{path}:{line}:"), msg
    assert needle in msg, msg
    assert "\n" not in msg


def test_bad_study_rejected_before_anything_runs(tmp_path, tiny_student, data_dir):
    body = GOOD + "cells:\n  - {student: STUDENT, supervision: svamp/chatgpt/level9}\n"
    path = make_study(tmp_path, tiny_student, body)
    out = tmp_path / "out"
    r = subprocess.run([str(CLI), "study", str(path), "--out", str(out), "--data-dir", str(data_dir)],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2
    assert f"{path}:11:" in r.stderr and "level9" in r.stderr
    assert not out.exists()  # nothing was written, no cell ran


# ---------------------------------------------------------------- grid, brace expansion, hashing


def test_expand_braces():
    assert plan.expand_braces("svamp/chatgpt/level{1..3}") == [f"svamp/chatgpt/level{i}" for i in (1, 2, 3)]
    assert plan.expand_braces("svamp/{chatgpt,gemini}/level{5..4}") == [
        "svamp/chatgpt/level5", "svamp/chatgpt/level4", "svamp/gemini/level5", "svamp/gemini/level4"]  # fmt: skip
    assert plan.expand_braces("plain") == ["plain"]
    with pytest.raises(CotdistillError, match="cannot expand"):
        plan.expand_braces("level{x}")


def test_grid_is_the_product_with_labels(tmp_path, tiny_student, data_dir):
    cfg = study.load_study(make_study(tmp_path, tiny_student, GOOD))
    cells = study.expand_cells(cfg, data_dir)
    # 3 trained supervisions x 2 seeds + one zero-shot cell (it does not depend on a seed)
    assert len(cells) == 7
    zero = [c for c in cells if c.supervision.kind == "none"]
    assert len(zero) == 1 and zero[0].train is None and zero[0].supervision.teacher == "zero-shot"
    l3 = [c for c in cells if c.supervision.name == "svamp/chatgpt/level3"]
    assert {c.seed for c in l3} == {1, 2}
    assert (l3[0].supervision.teacher, l3[0].supervision.level, l3[0].supervision.format) == ("chatgpt", 3, "cot")
    path = [c for c in cells if c.supervision.kind == "path"][0]
    assert Path(path.supervision.name).is_absolute() and len(path.supervision.sha256) == 64
    assert plan.labels_of_released("svamp/chatgpt/level3/symbolic") == ("chatgpt", 3, "symbolic")
    assert plan.labels_of_released("svamp/answer-only") == ("answer-only", None, "answer-only")
    # Resolved settings carry the stages' defaults, so the hash covers the full configuration.
    assert l3[0].train_resolved["lr"] == 5e-5 and l3[0].train_resolved["limit"] == 8
    assert l3[0].eval_resolved["limit"] == 4 and l3[0].eval_resolved["max_new_tokens"] == 8
    assert len({c.slug for c in cells}) == 7


def test_explicit_cells_added_and_deduplicated(tmp_path, tiny_student, data_dir):
    body = GOOD + (
        "cells:\n"
        "  - {student: STUDENT, supervision: svamp/chatgpt/level3, seed: 1}\n"  # repeats a grid cell
        "  - {student: STUDENT, supervision: svamp/answer-only, eval: {limit: 2}}\n"
    )
    cells = study.expand_cells(study.load_study(make_study(tmp_path, tiny_student, body)), data_dir)
    assert len(cells) == 8
    extra = [c for c in cells if c.supervision.name == "svamp/answer-only"][0]
    assert extra.seed == 1 and extra.eval["limit"] == 2 and extra.train["limit"] == 8


def test_cell_hash_tracks_what_changes_results(tmp_path, tiny_student, data_dir):
    def cells_of(body):
        (tmp_path / "s").mkdir(exist_ok=True)
        cells = study.expand_cells(study.load_study(make_study(tmp_path / "s", tiny_student, body)), data_dir)
        return {(c.supervision.name, c.seed): c for c in cells}

    base = cells_of(GOOD)
    again = cells_of(GOOD)
    assert {k: c.slug for k, c in base.items()} == {k: c.slug for k, c in again.items()}
    quiet = cells_of(GOOD.replace("batch_size: 4, limit: 8}", "batch_size: 4, limit: 8, quiet: true}"))
    assert {k: c.slug for k, c in quiet.items()} == {k: c.slug for k, c in base.items()}  # no effect on results
    more_eval = cells_of(GOOD.replace("eval: {limit: 4", "eval: {limit: 5"))
    k = ("svamp/chatgpt/level1", 1)
    assert more_eval[k].slug != base[k].slug  # a new cell ...
    assert more_eval[k].model_slug == base[k].model_slug  # ... that reuses the trained model
    more_epochs = cells_of(GOOD.replace("epochs: 1", "epochs: 2"))
    assert more_epochs[k].model_slug != base[k].model_slug
    # An edited supervision file re-runs its cells (its content is part of the hash).
    kp = [k for k in base if k[0].endswith(".jsonl")][0]
    with open(tmp_path / "s" / "tiny_supervision.jsonl", "a") as f:
        f.write('{"question": "What is 1 + 1?", "rationale": "1 + 1 = 2. The answer is 2"}\n')
    edited = study.expand_cells(study.load_study(tmp_path / "s" / "study.yaml"), data_dir)
    assert base[kp].slug not in {c.slug for c in edited}


# ---------------------------------------------------------------- running: skip, failure, results


TINY_RUN = """\
datasets: [svamp]
students: [STUDENT]
supervision: [tiny_supervision.jsonl, none]
train: {epochs: 1, batch_size: 4, lr: 1.0e-3}
eval: {limit: 3, max_new_tokens: 6, batch_size: 3}
cells:
  - student: STUDENT
    supervision: svamp/chatgpt/level1
    train: {limit: 4, max_length: 8}   # every prompt is longer than 8 tokens: this cell fails
"""


def test_run_study_records_failure_goes_on_and_skips_done(tmp_path, tiny_student, data_dir):
    cfg = study.load_study(make_study(tmp_path, tiny_student, TINY_RUN))
    out = tmp_path / "run"
    study.run_study(cfg, out, data_dir=data_dir, report=False)
    with open(out / "results.csv") as f:
        rows = {r["supervision"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"tiny_supervision.jsonl", "none", "svamp/chatgpt/level1"}
    assert rows["svamp/chatgpt/level1"]["status"] == "failed"
    assert "max-length" in rows["svamp/chatgpt/level1"]["error"]
    for name in ("tiny_supervision.jsonl", "none"):
        r = rows[name]
        assert r["status"] == "done" and r["n"] == "3" and 0 <= float(r["accuracy"]) <= 1
        assert (out / "cells" / r["cell"] / "eval" / "predictions.jsonl").is_file()
        assert json.loads((job_dir(out, "eval-" + r["cell"]) / "done.json").read_text())["status"] == "done"
    assert rows["tiny_supervision.jsonl"]["train_examples"] == "4" and rows["none"]["train_examples"] == "0"
    failed_train = [p.parent for p in out.glob("jobs/train-*chatgpt*/error.json")]
    assert len(failed_train) == 1 and "max-length" in json.loads((failed_train[0] / "error.json").read_text())["error"]
    assert not (failed_train[0] / "done.json").exists()
    assert not (job_dir(out, "eval-" + rows["svamp/chatgpt/level1"]["cell"]) / "done.json").exists()
    assert study.study_status(out) == {"done": 2, "failed": 1}

    # A second run redoes nothing finished: only the failed train job starts again (and fails again).
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("jobs/*/done.json")}
    starts = {p.parent.name: len(study.job_attempts(out, p.parent.name)) for p in out.glob("jobs/*/job.json")}
    study.run_study(cfg, out, data_dir=data_dir, report=False)
    again = {p.parent.name: len(study.job_attempts(out, p.parent.name)) for p in out.glob("jobs/*/job.json")}
    assert {n for n in again if again[n] != starts[n]} == {failed_train[0].name}
    assert {p: p.stat().st_mtime_ns for p in out.glob("jobs/*/done.json")} == stamps
    prov = json.loads((out / "study.provenance.json").read_text())
    assert len(prov["cells"]) == 3 and len(prov["jobs"]) == 5 and "versions" in prov


# ---------------------------------------------------------------- kill -9 mid-cell, re-run


KILL_STUDY = """\
# Run: cotdistill study study.yaml --out run
datasets: [svamp]
students: [STUDENT]
supervision: [none, tiny_supervision.jsonl]   # zero-shot first: a quick finished cell before the kill
train: {epochs: 3, batch_size: 2, lr: 1.0e-3, save_steps: 1}
eval: {limit: 3, max_new_tokens: 6, batch_size: 3}
"""


@pytest.mark.slow
def test_kill_mid_cell_and_rerun_loses_and_redoes_nothing(tmp_path, tiny_student, data_dir):
    path = make_study(tmp_path, tiny_student, KILL_STUDY)
    out = tmp_path / "run"
    cmd = [str(CLI), "study", str(path), "--out", str(out), "--data-dir", str(data_dir), "--plain"]
    env = {**os.environ, "COTDISTILL_DATA": str(data_dir)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    # Kill once the first cell is done and the second one has written a training checkpoint.
    deadline = time.time() + 240
    killed_mid_cell = False
    while time.time() < deadline and proc.poll() is None:
        done = list(out.glob("jobs/*/done.json"))
        ckpts = list(out.glob("models/*/checkpoints/checkpoint-*/trainer_state.json"))
        if len(done) == 1 and ckpts:
            proc.send_signal(signal.SIGKILL)
            killed_mid_cell = True
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert killed_mid_cell, proc.stdout.read()
    first = list(out.glob("jobs/*/done.json"))
    assert len(first) == 1
    before = (first[0].stat().st_mtime_ns, first[0].read_text())

    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "2 cells, 3 jobs, 1 already done, 2 to run" in r.stderr
    assert (first[0].stat().st_mtime_ns, first[0].read_text()) == before  # the finished cell was not redone
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(row["status"] == "done" and row["accuracy"] != "" for row in rows)
    assert "report:" in r.stdout and (out / "report.html").is_file()
    # The result in words ends the command's output, as it opens the report.
    found = r.stdout.strip().splitlines()[-1]
    assert found.startswith("finding: ") and "zero-shot" in found and "McNemar" in found
    assert f"**Finding:** {found.removeprefix('finding: ')}" in (out / "report.md").read_text()
    # The killed cell resumed its training run (same folder, now finished), not a second one.
    assert len(list(out.glob("models/*/provenance.json"))) == 1


def test_live_view_shows_running_jobs_and_time_left(tmp_path, tiny_student, data_dir):
    import io

    from rich.console import Console

    from cotdistill.view import LiveView

    jobs = study.plan_study(study.load_study(make_study(tmp_path, tiny_student, GOOD)), data_dir)
    names = [n for n, j in jobs.jobs.items() if j.kind == "eval"] + [n for n, j in jobs.jobs.items() if j.kind == "train"]
    assert len(names) == 13 and len(jobs.cells) == 7  # 7 eval jobs, 6 train jobs
    names = names[7:9] + names[:7] + names[9:]  # 2 train jobs done, then the rest
    console = Console(file=io.StringIO(), width=200, force_terminal=False)
    view = LiveView(console)
    view.start(jobs, set(names[:2]), "ray", parallel=2)  # 2 of 13 already done; 2 jobs at a time
    a, b = jobs.jobs[names[-2]], jobs.jobs[names[-1]]  # two train jobs running
    view.job_started(a)
    view.job_started(b)
    view.seconds = {"train": [100.0], "eval": [10.0]}  # as if one train job had taken 100 s, an eval 10 s
    view.progress({"job": a.name, "stage": "train", "done": 3, "total": 12})
    view.progress({"job": b.name, "stage": "train", "done": 5, "total": 12})
    console.print(view.render())
    view.stop()
    text = console.file.getvalue()
    assert "2 done · 2 running · 0 failed · 9 left" in text
    assert "3/12" in text and "5/12" in text and a.label in text and b.label in text
    # (2 train jobs left x 100 s + about 2 x 100 s running + 7 evals x 10 s) over 2 at once: about 235 s
    assert "left 3:5" in text, text


def test_teacher_spec_is_validated_against_teach_config(tmp_path, tiny_student, data_dir):
    body = ("datasets: [svamp]\nstudents: [STUDENT]\nsupervision:\n"
            "  - {teacher: 'hf:STUDENT', level: 3, format: subquestions, samples: 2, temperature: 0.7}\n")
    cells = study.expand_cells(study.load_study(make_study(tmp_path, tiny_student, body)), data_dir)
    sup = cells[0].supervision
    assert (sup.kind, sup.teacher, sup.level, sup.format) == ("teacher", "student", 3, "subquestions")
    assert sup.spec["samples"] == 2
    bad = body.replace("temperature: 0.7", "temprature: 0.7")
    with pytest.raises(CotdistillError, match=r"study.yaml:4: supervision.0.temprature: unknown key"):
        study.expand_cells(study.load_study(make_study(tmp_path, tiny_student, bad)), data_dir)
    with pytest.raises(CotdistillError, match=r"study.yaml:4: .*level"):
        study.expand_cells(study.load_study(make_study(tmp_path, tiny_student, body.replace("level: 3", "level: 9"))),
                           data_dir)
