"""Released supervision by name, joins to gold, audit, and the data commands (library and CLI)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cotdistill.benchmarks import load_benchmark
from cotdistill.cli.app import app
from cotdistill.data import SOURCES, audit, list_sources, load_supervision, source_file
from cotdistill.errors import CotdistillError

CLI = Path(sys.executable).parent / "cotdistill"


def test_svamp_has_every_source_addressable(data_dir):
    names = list_sources("svamp")
    assert len(names) == 24  # 22 teacher sources + human + answer-only, all present in ../shared/data
    assert all(source_file(n, data_dir) is not None for n in names)
    assert "svamp/chatgpt/level3/symbolic" in names and "svamp/llama/level4" in names


def test_every_shared_file_has_a_name(data_dir):
    stems = {stem for stem, _ in SOURCES.values()}
    files = {p.name.removesuffix(".json.gz") for p in (data_dir / "cot").glob("*.json.gz")}
    assert files <= stems, files - stems


def test_load_by_name_joins_gold_and_uses_the_benchmark_question(data_dir):
    sup = load_supervision("svamp/chatgpt/level3", data_dir)
    assert (len(sup.rows), sup.unjoined, sup.joined) == (699, 0, 699)
    train = {e.id: e for e in load_benchmark("svamp", "train", data_dir)}
    row = sup.rows[0]
    assert row.id in train and row.question == train[row.id].question and row.gold == train[row.id].gold
    assert row.rationale.rstrip().endswith("The answer is 145") and row.kind == "number"
    # "/cot" is the default format, names are case-insensitive
    assert load_supervision("SVAMP/ChatGPT/level3/cot", data_dir).rows == sup.rows
    sym = load_supervision("svamp/chatgpt/level3/symbolic", data_dir)
    assert "\u2234" in sym.rows[0].rationale  # ∴


def test_choice_questions_join_across_renderings(data_dir):
    sup = load_supervision("csqa/llama/level1", data_dir)
    assert sup.unjoined == 0 and sup.joined == 9732
    row = sup.rows[0]
    assert row.raw_question.startswith("Q: ") and "A: race track, B:" in row.raw_question
    assert row.question.endswith("Answer choices: (A) race track (B) populated areas (C) the desert (D) apartment (E) roadblock")
    assert row.choices["B"] == "populated areas" and row.gold == "B"


def test_unjoined_rows_are_kept_and_counted(data_dir):
    sup = load_supervision("gsm8k/gemini/level1", data_dir)
    assert sup.meta["rows_in_file"] == 7433 and sup.unjoined == 2 and len(sup.rows) == 7433
    loose = [r for r in sup.rows if r.gold is None]
    assert len(loose) == 2 and all(r.id.startswith("gsm8k/gemini/level1#") for r in loose)


def test_test_questions_in_a_release_are_reported_not_trained_on(data_dir):
    sup = load_supervision("strategyqa/human", data_dir)  # stqa_human_annotation holds the 290 test questions too
    assert sup.meta["rows_in_file"] == 2290 and sup.meta["test_overlap"] == 290 and len(sup.rows) == 2000


def test_math_rationale_fields(data_dir):
    # math_gemini_level1_ranked: 195 of 1297 rows hold only `chatgpt_output` (no Gemini rationale).
    # A source never mixes teachers: they are missing, not filled with ChatGPT's text.
    gem = load_supervision("math/gemini/level1", data_dir)
    assert gem.meta["missing"] == 195 and len(gem.rows) == 1297 - 195 and all(r.rationale for r in gem.rows)
    chatgpt = {r.id: r.rationale for r in load_supervision("math/chatgpt/level1", data_dir).rows}
    assert not any(chatgpt.get(r.id) == r.rationale for r in gem.rows)
    record = audit(sources=["math/gemini/level1"], data_dir=data_dir)[0]
    assert record["missing"] == 195 and record["rows"] == 1297
    human = load_supervision("math/human", data_dir)
    assert human.rows[0].rationale.startswith("The prime months are February")  # the `solution` field
    assert load_supervision("math/answer-only", data_dir).rows[0].rationale == "52"


def test_gsm8k_human_from_the_benchmark_solutions(data_dir):
    sup = load_supervision("gsm8k/human", data_dir)
    assert len(sup.rows) == 7473 and sup.unjoined == 0 and sup.meta["missing"] == 0
    # benchmarks/gsm8k/train.jsonl line 1: "Natalia sold 48/2 = <<48/2=24>>24 clips in May. ... #### 72"
    assert sup.rows[0].rationale == ("Natalia sold 48/2 = 24 clips in May.\n"
                                     "Natalia sold 48+24 = 72 clips altogether in April and May.\nThe answer is 72.")
    assert not any("<<" in r.rationale or "####" in r.rationale for r in sup.rows)
    assert audit(sources=["gsm8k/human"], data_dir=data_dir)[0]["teacher_accuracy"] == 1.0


def test_leak_check_ignores_the_order_of_choices(data_dir):
    from cotdistill.data import split_duplicates

    # 14 OpenBookQA test questions equal a training question up to the order of their choices
    # (obqa/test/3 = obqa/train/3930): their answer-only rows are not trained on.
    sup = load_supervision("obqa/answer-only", data_dir)
    assert sup.meta["test_overlap"] == 14 and len(sup.rows) == 4957 - 14
    dups = split_duplicates("obqa", data_dir)
    assert (dups["exact"], dups["near"]) == (14, 0) and ("obqa/test/3", "obqa/train/3930", 1.0) in dups["examples"]
    assert split_duplicates("svamp", data_dir)["exact"] == 0


def test_unavailable_and_unknown_names(data_dir):
    assert "gsm8k/chatgpt/level1" in list_sources("gsm8k")
    assert source_file("gsm8k/chatgpt/level1", data_dir) is None
    with pytest.raises(CotdistillError, match="'gsm8k/chatgpt/level1' is unavailable: .*gsm8k_ChatGPT_level1_ranked.json"
                       ".*create it with `cotdistill teach --dataset gsm8k --teacher openai:MODEL --level 1 --format cot"):
        load_supervision("gsm8k/chatgpt/level1", data_dir)
    with pytest.raises(CotdistillError, match="unknown teacher in 'svamp/chatpgt/level3' 'chatpgt'; did you mean chatgpt"):
        load_supervision("svamp/chatpgt/level3", data_dir)
    with pytest.raises(CotdistillError, match="unknown format in 'svamp/chatgpt/level3/symbolik' 'symbolik'; did you mean symbolic"):
        load_supervision("svamp/chatgpt/level3/symbolik", data_dir)
    with pytest.raises(CotdistillError, match="unknown supervision source 'svamp/llama/level6'; did you mean"):
        load_supervision("svamp/llama/level6", data_dir)
    with pytest.raises(CotdistillError, match="unknown dataset 'gsm'; did you mean"):
        load_supervision("gsm/gemini/level1", data_dir)


def test_jsonl_supervision(tmp_path):
    path = tmp_path / "teach.jsonl"
    path.write_text(
        json.dumps({"question": "Q1?", "rationale": "1 + 1 = 2. The answer is 2", "gold": "2", "kind": "number",
                    "question_id": "svamp/train/0", "correct": True}) + "\n\n"
        + json.dumps({"question": "Q2?", "rationale": "The answer is 3"}) + "\n"
    )
    sup = load_supervision(path)
    assert [r.id for r in sup.rows] == ["svamp/train/0", "teach.jsonl#1"]
    assert sup.rows[0].gold == "2" and sup.rows[0].meta == {"question_id": "svamp/train/0", "correct": True}
    assert sup.rows[1].gold is None and sup.unjoined == 1
    path.write_text('{"question": "Q1?", "rationale": "x"}\n{"question": "Q2?"}\n')
    with pytest.raises(CotdistillError, match=r"teach.jsonl:2: field 'rationale' missing or not a string"):
        load_supervision(str(path))
    path.write_text('{"question": "Q1?", "rationale": "x"}\n{"question": \n')
    with pytest.raises(CotdistillError, match=r"teach.jsonl:2: malformed JSON line"):
        load_supervision(path)
    with pytest.raises(CotdistillError, match="does not exist"):
        load_supervision(tmp_path / "missing.jsonl")


def test_audit_svamp(data_dir):
    from cotdistill.testing import make_tiny_tokenizer

    records = {r["source"]: r for r in audit("svamp", data_dir)}
    assert len(records) == 24 and all(r["available"] for r in records.values())
    assert records["svamp/answer-only"]["teacher_accuracy"] is None  # the gold itself
    assert records["svamp/human"]["teacher_accuracy"] == 1.0
    teachers = [r for n, r in records.items() if n != "svamp/answer-only"]
    assert all(0.96 <= r["teacher_accuracy"] <= 1.0 for r in teachers)
    chatgpt = [records[f"svamp/chatgpt/level{n}"]["mean_words"] for n in range(1, 7)]
    assert chatgpt[0] == 35.3 and chatgpt[-1] == 81.0  # README: 35 words at level 1 to 81 at level 6
    assert all(r["mean_tokens"] is None for r in teachers)
    [human] = audit(sources=["svamp/human"], data_dir=data_dir, tokenizer=make_tiny_tokenizer())
    assert human["mean_tokens"] > human["mean_words"] == 9.9
    assert records["svamp/chatgpt/level1"]["states_answer"] == 1.0


@pytest.fixture
def svamp_subset(tmp_path, data_dir) -> Path:
    """A data directory holding only three of the SVAMP sources (links to the real files)."""
    sub = tmp_path / "subset"
    for rel in ("cot/SVAMP_only_ans.json.gz", "cot/SVAMP_ChatGPT_level1_ranked.json.gz",
                "cot/svamp_human_annotation.json.gz", "benchmarks/svamp/SVAMP.json"):
        (sub / rel).parent.mkdir(parents=True, exist_ok=True)
        (sub / rel).symlink_to(data_dir / rel)
    return sub


def test_audit_lists_unavailable_sources(svamp_subset):
    records = audit("svamp", svamp_subset)
    assert len(records) == 24
    assert [r["source"] for r in records if r["available"]] == ["svamp/answer-only", "svamp/human", "svamp/chatgpt/level1"]
    gone = [r for r in records if not r["available"]]
    assert gone[0] == {"source": "svamp/chatgpt/level2", "available": False, "file": "cot/SVAMP_ChatGPT_level2_ranked.json"}


def test_cli_data_list(data_dir):
    r = CliRunner().invoke(app, ["data", "list", "--dataset", "gsm8k", "--data-dir", str(data_dir)])
    assert r.exit_code == 0, r.output
    assert "7473" in r.output and "1319" in r.output and "unavailable" in r.output
    assert "6 of 25 sources available" in r.output  # gsm8k/human comes from benchmarks/gsm8k/train.jsonl


def test_cli_audit_writes_csv_and_json(tmp_path, svamp_subset):
    out = tmp_path / "audit.json"
    args = ["data", "audit", "--dataset", "svamp", "--tokenizer", "none", "--data-dir", str(svamp_subset)]
    r = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "3 available sources, 21 unavailable" in r.output
    records = json.loads(out.read_text())
    assert records[1]["source"] == "svamp/human" and records[1]["teacher_accuracy"] == 1.0
    assert (tmp_path / "audit.json.provenance.json").is_file()
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "audit.csv")])
    lines = (tmp_path / "audit.csv").read_text().splitlines()
    assert lines[0].startswith("source,available,rows,joined,unjoined") and len(lines) == 25
    assert lines[3].startswith("svamp/chatgpt/level1,True,700,700,0,0,0,0,0.9871,35.3,")  # ...,test_overlap,missing,empty,...
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "a.txt")])
    assert isinstance(r.exception, CotdistillError) and "expected a .csv or .json" in str(r.exception)


@pytest.mark.slow
def test_cli_end_to_end_errors_and_grade(tmp_path, data_dir):
    """Through the installed entry point: one error line, exit 2, no traceback; grade writes its file."""
    def run(*args, env_data=None):
        env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
        if env_data:
            env["COTDISTILL_DATA"] = str(env_data)
        return subprocess.run([str(CLI), *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)

    r = run("data", "list", "--data-dir", str(tmp_path / "nope"))
    assert r.returncode == 2 and r.stderr.startswith("error: data directory") and "Traceback" not in r.stderr
    r = run("data", "audit", "--dataset", "svmap", "--tokenizer", "none", env_data=data_dir)
    assert r.returncode == 2 and "did you mean svamp" in r.stderr and len(r.stderr.strip().splitlines()) == 1

    preds = tmp_path / "preds.jsonl"
    preds.write_text('{"response": "The answer is 51.", "dataset": "svamp", "id": "svamp/test/chal-1"}\n'
                     '{"response": "The answer is C", "gold": "B", "kind": "choice"}\n')
    r = run("grade", str(preds), "--out", str(tmp_path / "graded.jsonl"), env_data=data_dir)
    assert r.returncode == 0, r.stderr
    assert "accuracy 0.5000 (1/2" in r.stdout
    graded = [json.loads(x) for x in (tmp_path / "graded.jsonl").read_text().splitlines()]
    assert [(g["extracted"], g["correct"]) for g in graded] == [("51", True), ("C", False)]

    preds.write_text('{"response": "The answer is 51.", "dataset": "svamp", "id": "svamp/test/chal-1"}\n{"response": 1\n')
    r = run("grade", str(preds), "--out", str(tmp_path / "graded2.jsonl"), env_data=data_dir)
    assert r.returncode == 2 and "preds.jsonl:2: malformed JSON line" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "graded2.jsonl").exists()


def test_a_study_asking_for_a_missing_release_names_the_teach_command(tmp_path, data_dir):
    repo = Path(__file__).resolve().parents[1]
    study = tmp_path / "lacks.yaml"
    study.write_text((repo / "configs" / "gsm8k.yaml").read_text().replace("  - gsm8k/human\n", "  - gsm8k/chatgpt/level3\n"))
    r = subprocess.run([sys.executable, "-m", "cotdistill", "study", str(study), "--check", "--data-dir", str(data_dir)],
                       capture_output=True, text=True)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr
    assert "'gsm8k/chatgpt/level3' is unavailable" in lines[0]
    assert "`cotdistill teach --dataset gsm8k --teacher openai:MODEL --level 3 --format cot --out " in lines[0]
