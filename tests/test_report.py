"""The report on a study folder whose cells have known per-question predictions (no training):
every section, the paired tests' numbers, self-contained HTML, PNGs, the CLI command."""

import base64
import csv
import json
import re
import shutil
from types import SimpleNamespace
from pathlib import Path

import pytest

from cotdistill import metrics, report, results, study
from cotdistill.errors import CotdistillError
from cotdistill.plan.jobs import job_dir
from cotdistill.provenance import atomic_write_text
from cotdistill.results import JobRecord

N = 20  # test questions per cell

STUDY = """\
name: synthetic
datasets: [svamp]
students: [STRONG, WEAK]
supervision:
  - svamp/chatgpt/level{1,3,6}
  - svamp/chatgpt/level3/{subquestions,symbolic}
  - svamp/{gemini,llama}/level3
  - svamp/answer-only
  - none
train: {limit: 30}
eval: {limit: 20}
"""

# Questions right (the first k of N) per (student folder name, teacher, level, format).
# "strong" peaks at level 6 and "weak" at level 1: the non-monotone, student-dependent finding.
RIGHT = {
    ("strong", "chatgpt", 1, "cot"): 4, ("strong", "chatgpt", 3, "cot"): 10, ("strong", "chatgpt", 6, "cot"): 18,
    ("weak", "chatgpt", 1, "cot"): 12, ("weak", "chatgpt", 3, "cot"): 8, ("weak", "chatgpt", 6, "cot"): 5,
    ("strong", "chatgpt", 3, "subquestions"): 10, ("weak", "chatgpt", 3, "subquestions"): 8,
    ("strong", "chatgpt", 3, "symbolic"): 9, ("weak", "chatgpt", 3, "symbolic"): 7,
    ("strong", "gemini", 3, "cot"): 14, ("weak", "gemini", 3, "cot"): 9,
    ("strong", "llama", 3, "cot"): 6, ("weak", "llama", 3, "cot"): 3,
    ("strong", "answer-only", None, "answer-only"): 2, ("weak", "answer-only", None, "answer-only"): 1,
    ("strong", "zero-shot", None, "zero-shot"): 0, ("weak", "zero-shot", None, "zero-shot"): 0,
}  # fmt: skip


def _done(study_dir: Path, job, result: dict) -> None:
    """A job's done.json, as a worker writes it."""
    rec = JobRecord(name=job.name, kind=job.kind, key=job.key, status="done", host="h", pid=1, started=0.0,
                    seconds=1.0, result=result)
    atomic_write_text(job_dir(study_dir, job.name) / "done.json", rec.model_dump_json())


@pytest.fixture(scope="module")
def synthetic_study(tmp_path_factory, tiny_student, tiny_chat_student, data_dir) -> Path:
    root = tmp_path_factory.mktemp("report")
    strong, weak = root / "strong", root / "weak"
    shutil.copytree(tiny_student, strong)
    shutil.copytree(tiny_chat_student, weak)
    (root / "study.yaml").write_text(STUDY.replace("STRONG", str(strong)).replace("WEAK", str(weak)))
    cfg = study.load_study(root / "study.yaml")
    plan = study.plan_study(cfg, data_dir)
    out = root / "run"
    study.init_study_dir(cfg, plan, out, data_dir)
    for cell in plan.cells:
        sup = cell.supervision
        k = RIGHT[(Path(cell.student).name, sup.teacher, sup.level, sup.format)]
        correct = [i < k for i in range(N)]
        ejob = plan.eval_job(cell)
        preds = "".join(json.dumps({"id": f"svamp/test/{i}", "correct": c, "generated_tokens": 30}) + "\n"
                        for i, c in enumerate(correct))  # fmt: skip
        atomic_write_text(out / ejob.out / "predictions.jsonl", preds)
        lo, hi = metrics.bootstrap_ci(correct)
        summary = {"accuracy": k / N, "ci_low": lo, "ci_high": hi, "n": N, "correct": k, "mean_output_tokens": 30.0,
                   "stopped_share": 1.0, "tokens_per_s": 50.0, "seconds": 4.0}  # fmt: skip
        _done(out, ejob, summary)
        for dep in ejob.deps:
            _done(out, plan.jobs[dep], {"n_examples": 30, "seconds": 10.0, "tokens_per_s": 900.0})
    records = study.collect_results(plan, out)
    failed = records[0].model_copy(update={"cell": records[0].cell + "-x", "seed": 7, "status": "failed",
                                           "accuracy": None, "error": "CotdistillError: boom"})
    results.write_results(out, records + [failed])
    # The report is written once, through the CLI command (in-process: typer's runner).
    from typer.testing import CliRunner

    from cotdistill.cli import app

    r = CliRunner().invoke(app, ["report", str(out)])
    assert r.exit_code == 0, r.output
    assert f"report: {(out / 'report.html').resolve()}" in r.output
    return out


def test_report_sections_tests_and_files(synthetic_study):
    html_path = synthetic_study / "report.html"
    md = (synthetic_study / "report.md").read_text()
    for heading in ("## Results", "accuracy vs. granularity (finding 1)", "rationale format at a fixed level (finding 2)",
                    "teachers (finding 3)", "baselines (answer-only, human, zero-shot)",
                    "Supervision metrics vs. student accuracy", "## Failed cells"):  # fmt: skip
        assert heading in md, heading
    # Finding 1 in words: each student's optimum, and that they differ.
    assert "**strong** on chatgpt rationales: best at level 6 (90.0 %), worst at level 1 (20.0 %)" in md
    assert "**weak** on chatgpt rationales: best at level 1 (60.0 %), worst at level 6 (25.0 %)" in md
    assert "Accuracy never falls as the level rises (monotone)." in md and "Accuracy never rises with the level" in md
    # strong L6 vs L1: nested correct sets -> 14 discordant pairs all one way: exact McNemar 2 * 0.5**14.
    row = next(line for line in md.splitlines() if line.startswith("| strong | chatgpt L6 | chatgpt L1 |"))
    assert "14/0" in row and f"{2 * 0.5**14:.1e}" in row and row.endswith("| 20 | yes |")
    # Formats differ by at most one question: nothing real.
    assert "no format differs significantly from chatgpt L3" in md
    # Teachers: the best teacher for the strong student is gemini (70 %), not chatgpt.
    assert "the best teacher for this student is gemini (70.0 %)" in md
    assert "boom" in md
    # Results table: one line per cell.
    results = [line for line in md.splitlines() if line.startswith("| svamp |")]
    assert len(results) == len(RIGHT) + 1
    # Every image the markdown links exists and is a PNG; the HTML embeds each of them.
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 5  # granularity, formats, teachers, Matthew effect, metrics vs accuracy
    for link in links:
        assert (synthetic_study / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = html_path.read_text()
    uris = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(uris) == len(links)
    assert all(base64.b64decode(u)[:4] == b"\x89PNG" for u in uris)
    assert "figures/" not in re.sub(r"<p>.*?</p>", "", html)  # no file references outside paragraphs of text
    assert html.count("<table>") == sum(line.startswith("|---") for line in md.splitlines()) and "<script" not in html
    assert (synthetic_study / "report.provenance.json").is_file()


def test_matthew_effect_section(synthetic_study):
    """Two students: the stronger (higher answer-only accuracy at equal zero-shot) gains more."""
    md = (synthetic_study / "report.md").read_text()
    assert "## svamp: do stronger students gain more? (Matthew effect)" in md
    # strong: best L6 18/20, answer-only 2/20, zero-shot 0/20; weak: best L1 12/20, answer-only 1/20, zero-shot 0.
    assert "Over zero-shot, the strongest student (strong) gains +90.0 pp and the weakest (weak) +60.0 pp: " \
           "a difference of +30.0 pp" in md
    assert "Over answer-only, the strongest student (strong) gains +80.0 pp and the weakest (weak) +55.0 pp: " \
           "a difference of +25.0 pp" in md
    assert "the stronger student gains significantly more" in md
    row = next(line for line in md.splitlines() if line.startswith("| weak | 0.0 | chatgpt L1 | 60.0 |"))
    assert "+55.0" in row and "+60.0" in row


def test_gain_difference_is_paired():
    """Per question (A gain - B gain): identical gains give 0 and p = 1; opposite gains are the full difference."""
    right = {i: True for i in range(10)}
    wrong = {i: False for i in range(10)}
    same = metrics.gain_difference(right, wrong, right, wrong)
    assert same.diff == 0 and same.bootstrap_p == 1.0 and same.n == 10
    opposite = metrics.gain_difference(right, wrong, wrong, right)
    assert opposite.gain_a == 1 and opposite.gain_b == -1 and opposite.diff == 2 and opposite.bootstrap_p < 0.05


def test_headline_states_the_best_distilled_cell_against_zero_shot(synthetic_study):
    md = (synthetic_study / "report.md").read_text()
    strong = ("strong: fine-tuning on 30 chatgpt level-6 rationales raised its svamp accuracy from 0.0 % (zero-shot) "
              "to 90.0 % on 20 test questions (McNemar p < 0.001; 18 questions right only after training, 0 only "
              "before): a real difference.")  # fmt: skip
    weak = "weak: fine-tuning on 30 chatgpt level-1 rationales raised its svamp accuracy from 0.0 % (zero-shot) to 60.0 %"
    found = report.headline(synthetic_study)
    assert found.startswith(strong) and weak in found
    # The report opens with it: the paragraph right after the title, before any table (also in the HTML).
    assert md.splitlines()[2] == f"**Finding:** {found}" and md.index(found) < md.index("| ")
    html = (synthetic_study / "report.html").read_text()
    assert html.index("90.0 % on 20 test questions") < html.index("<table>")


def _condition(teacher: str, level: int | None, right: list[bool]) -> report.Condition:
    fmt = "zero-shot" if teacher == "zero-shot" else "cot"
    c = report.Condition("svamp", "s", teacher, level, fmt, rows=[SimpleNamespace(train_examples=40)])
    c.correct = {("100", f"q{i}"): r for i, r in enumerate(right)}
    return c


def test_headline_says_plainly_when_nothing_is_significant():
    zero = _condition("zero-shot", None, [True] + [False] * 9)
    level3 = _condition("chatgpt", 3, [False, True, True] + [False] * 7)  # 2 gained, 1 lost: p = 1
    found = report._headline([zero, level3, _condition("chatgpt", 1, [False] * 10)])
    assert found == ("s: fine-tuning on 40 chatgpt level-3 rationales raised its svamp accuracy from 10.0 % (zero-shot) "
                     "to 20.0 % on 10 test questions (McNemar p = 1.000; 2 questions right only after training, "
                     "1 only before): not a significant difference (p ≥ 0.05).")  # fmt: skip
    assert report._headline([level3]) is None and report._headline([zero]) is None  # nothing to compare


def test_supervision_metrics_and_correlations(synthetic_study):
    with open(synthetic_study / "supervision_metrics.csv") as f:
        sm = list(csv.DictReader(f))
    # 7 rationale sets + answer-only, each measured with both students' tokenizers.
    assert len(sm) == 16
    l6 = next(r for r in sm if r["supervision"] == "svamp/chatgpt/level6" and r["student_tokenizer"] == "strong")
    l1 = next(r for r in sm if r["supervision"] == "svamp/chatgpt/level1" and r["student_tokenizer"] == "strong")
    assert int(l6["rows"]) == 30 and l6["length_unit"] == "tokens"
    assert float(l6["length_mean"]) > float(l1["length_mean"])  # finer levels write longer rationales
    assert 0.9 <= float(l6["teacher_accuracy"]) <= 1.0
    with open(synthetic_study / "supervision_correlations.csv") as f:
        corr = {r["metric"]: r for r in csv.DictReader(f)}
    assert int(corr["length_mean"]["n"]) == 16 and -1 <= float(corr["length_mean"]["spearman"]) <= 1


def test_report_of_a_folder_that_is_no_study(tmp_path):
    with pytest.raises(CotdistillError, match="not a study folder"):
        report.write_report(tmp_path)
