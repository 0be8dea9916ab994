"""Level prompts from the released data (cotdistill/prompts/derive.py) and `cotdistill data compare`."""

import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from cotdistill.benchmarks import DATASETS, load_benchmark
from cotdistill.benchmarks._files import leak_key
from cotdistill.data import list_sources, load_supervision, source_file
from cotdistill.metrics import level_stats, rationale_shape
from cotdistill.prompts import LEVELS, PROMPT_DIR, example_for, formats, teacher_prompt

CLI = str(Path(sys.executable).parent / "cotdistill")
KIND = {"svamp": "number", "gsm8k": "number", "aqua": "choice", "math": "math", "csqa": "choice", "obqa": "choice",
        "strategyqa": "boolean"}
STAT_KEYS = {"words_mean", "words_median", "words_q1", "words_q3", "steps_mean", "steps_median", "operations_mean",
             "shows_arithmetic_share", "final_check_share", "numbered_share", "states_answer_share"}


def test_rationale_shape_reads_steps_arithmetic_numbering_and_a_check():
    text = "1. She has 48 - 30 = 18 left.\n2. Then 18 + 12 = 30.\n3. Check: 30 - 12 = 18. The answer is 30"
    s = rationale_shape(text)
    assert (s["steps"], s["operations"], s["shows_arithmetic"], s["final_check"], s["numbered"], s["states_answer"]) == \
        (3, 3, True, True, True, True)
    plain = rationale_shape("Add what she sold to what is left. The answer is 30")  # no digits worked out, no check
    assert not plain["shows_arithmetic"] and not plain["final_check"] and not plain["numbered"] and plain["steps"] == 2
    stats = level_stats([text, "Add them. The answer is 30"])
    assert stats["shows_arithmetic_share"] == 0.5 and stats["final_check_share"] == 0.5 and stats["words_median"] == (27 + 6) / 2


def test_every_dataset_level_and_format_prompt_shows_a_released_training_rationale_with_its_statistics(data_dir):
    levels = yaml.safe_load((PROMPT_DIR / "levels.yaml").read_text(encoding="utf-8"))
    assert set(levels) == set(DATASETS)
    for dataset in DATASETS:
        for level in LEVELS:
            definition = levels[dataset][level]
            stats = definition["stats"]
            assert STAT_KEYS <= set(stats) and stats["rationales"] >= 100, (dataset, level)
            # the definition is written from the statistics, and the example is typical of its level
            assert f"{round(stats['words_median'])} words" in definition["instruction"]
            assert _level_of(definition["source"]) == level
            for fmt in formats():
                p = teacher_prompt(KIND[dataset], level, fmt, dataset)
                ex = example_for(dataset, level, fmt)
                assert ex["rationale"].strip() in p.render("Q?") and json.loads(p.fields["level_stats"]) == stats
                if ex["id"] is None:  # hand-written: only where no dataset it may draw on released the format
                    assert fmt != "cot" and "written for cotdistill" in ex["source"]
                    assert not [n for n in list_sources(dataset) if n.endswith("/" + fmt) and source_file(n, data_dir)]
                    continue
                _check_released_training_row(ex, data_dir)
                if fmt == "cot":
                    assert ex["source"] == definition["source"]
                    assert stats["words_q1"] <= len(ex["rationale"].split()) <= stats["words_q3"]
                else:
                    assert ex["source"].endswith("/" + fmt) and STAT_KEYS <= set(ex["stats"])


def _check_released_training_row(ex: dict, data_dir: Path) -> None:
    src_dataset = ex["source"].split("/")[0]
    row = _rows(ex["source"], data_dir)[ex["id"]]
    assert row.rationale.strip() == ex["rationale"] and row.meta["row"] == ex["row"]
    assert ex["id"] in _train_ids(src_dataset, data_dir) and ex["id"].startswith(f"{src_dataset}/train/")
    assert leak_key(row.raw_question) not in _test_keys(src_dataset, data_dir)  # never a test question


@cache
def _rows(name: str, data_dir: Path) -> dict:
    return {r.id: r for r in load_supervision(name, data_dir).rows if r.gold is not None}


@cache
def _train_ids(dataset: str, data_dir: Path) -> frozenset[str]:
    return frozenset(ex.id for ex in load_benchmark(dataset, "train", data_dir))


@cache
def _test_keys(dataset: str, data_dir: Path) -> frozenset[str]:
    return frozenset(leak_key(ex.question) for ex in load_benchmark(dataset, "test-all" if dataset == "math" else "test", data_dir))


def _level_of(name: str) -> int:
    return int(next(p for p in name.split("/") if p.startswith("level")).removeprefix("level"))


def test_derive_regenerates_the_committed_svamp_prompts(data_dir):
    from cotdistill.prompts.derive import _Deriver

    d = _Deriver(data_dir)
    committed = yaml.safe_load((PROMPT_DIR / "levels.yaml").read_text(encoding="utf-8"))
    assert d.levels_doc(["svamp"])["svamp"] == committed["svamp"]
    assert d.examples_doc("svamp") == yaml.safe_load((PROMPT_DIR / "examples" / "svamp.yaml").read_text(encoding="utf-8"))
    # the released level 1 shows its arithmetic more often than not, and level 6 rarely checks: the
    # definitions say so instead of "no intermediate numbers" and "finish with a check"
    s1, s6 = committed["svamp"][1], committed["svamp"][6]
    assert s1["stats"]["shows_arithmetic_share"] > 0.5 and "calculations" in s1["instruction"]
    assert s6["stats"]["final_check_share"] < 0.15 and "No separate check" in s6["instruction"]
    from cotdistill.prompts.derive import levels_table

    assert levels_table(committed) in (PROMPT_DIR.parents[1] / "docs" / "levels.md").read_text(encoding="utf-8")


def test_teach_uses_the_prompt_of_its_dataset():
    aqua = teacher_prompt("choice", 1, "cot", "aqua")
    csqa = teacher_prompt("choice", 1, "cot")  # a question file: the kind's default dataset
    assert aqua.fields["example_source"].startswith("aqua/") and csqa.fields["example_source"].startswith("csqa/")
    assert aqua.hash != csqa.hash


def _env(data_dir: Path) -> dict:
    return os.environ | {"COTDISTILL_DATA": str(data_dir)}


def test_data_compare_two_released_levels_through_the_cli(tmp_path, data_dir):
    out = tmp_path / "cmp.json"
    r = subprocess.run([CLI, "data", "compare", "svamp/chatgpt/level1", "svamp/chatgpt/level6/cot", "--json", str(out)],
                       capture_output=True, text=True, env=_env(data_dir), timeout=300)
    assert r.returncode == 0, r.stderr
    assert "svamp/chatgpt/level1" in r.stdout and "share with a final check" in r.stdout and "distinct-2" in r.stdout
    cmp = json.loads(out.read_text())
    rows = {row["key"]: row for row in cmp["rows"]}
    level6 = [x.rationale for x in load_supervision("svamp/chatgpt/level6", data_dir).rows]
    assert rows["words_median"]["b"] == level_stats(level6)["words_median"]
    assert rows["words_median"]["diff"] > 20 and rows["steps_mean"]["diff"] > 1  # level 6 is longer, more steps
    assert 0.9 < rows["teacher_accuracy"]["a"] <= 1 and rows["rows"]["a"] > 600
    assert rows["within_question_diversity"]["a"] is None  # one rationale per question: not measurable

    bad = tmp_path / "bad.json"
    r = subprocess.run([CLI, "data", "compare", "svamp/chatgpt/level1", "svamp/chatgpt/levle6", "--json", str(bad)],
                       capture_output=True, text=True, env=_env(data_dir), timeout=300)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "levle6" in lines[0], r.stderr
    assert not bad.exists()


def test_derive_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    from cotdistill.prompts.derive import main

    assert main(["--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: data directory") and not (tmp_path / "p").exists()
