"""The seven benchmarks from the real data directory, and clear errors for broken data."""

import gzip
import json
import re

import pytest

from cotdistill.benchmarks import DATASETS, load_benchmark
from cotdistill.errors import CotdistillError

SIZES = {  # the paper's splits (AQuA train: rows of aqua_only_ans with a recoverable gold letter)
    ("svamp", "train"): 700, ("svamp", "test"): 300,
    ("gsm8k", "train"): 7473, ("gsm8k", "test"): 1319,
    ("aqua", "train"): 6936, ("aqua", "test"): 254,  # 6940 rows, 4 without a recoverable gold letter
    ("math", "train"): 1297, ("math", "test"): 306, ("math", "test-all"): 500,
    ("csqa", "train"): 9740, ("csqa", "test"): 1221,
    ("obqa", "train"): 4957, ("obqa", "test"): 500,
    ("strategyqa", "train"): 2000, ("strategyqa", "test"): 290,
}


@pytest.mark.parametrize("name,split", list(SIZES))
def test_split_sizes_ids_and_kinds(data_dir, name, split):
    examples = load_benchmark(name, split, data_dir)
    assert len(examples) == SIZES[name, split]
    assert len({e.id for e in examples}) == len(examples)
    assert all(e.id.startswith(f"{name}/{split.split('-')[0]}/") and e.dataset == name for e in examples)
    kinds = {e.kind for e in examples}
    assert kinds == {{"svamp": "number", "gsm8k": "number", "math": "math", "strategyqa": "boolean"}.get(name, "choice")}
    for e in examples:
        assert e.question and e.gold
        if e.kind == "choice":
            # one rendering for every dataset and file: "stem Answer choices: (A) x (B) y ..."
            assert e.gold in e.choices
            assert e.question.endswith(" ".join(f"({k}) {v}" for k, v in e.choices.items()))
            assert " Answer choices: (A) " in e.question and not e.question.startswith("Q:")
        if e.kind == "boolean":
            assert e.gold in ("True", "False")
        if e.kind == "number":
            assert re.fullmatch(r"-?\d+(\.\d+)?", e.gold), e.gold  # "145", never "145.0" or "1,000"


def test_limit_and_stable_ids(data_dir):
    first = load_benchmark("svamp", "test", data_dir, limit=3)
    assert [e.id for e in first] == ["svamp/test/chal-1", "svamp/test/chal-4", "svamp/test/chal-7"]  # SVAMP ids
    assert first[0].gold == "51"  # SVAMP.json stores 51.0
    assert first[0].question == ("Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack "
                                 "How much do you have to pay to buy each pack?")


def test_svamp_test_is_disjoint_from_train(data_dir):
    train = {e.question for e in load_benchmark("svamp", "train", data_dir)}
    assert not train & {e.question for e in load_benchmark("svamp", "test", data_dir)}


def test_quirky_golds_are_repaired(data_dir):
    math_train = {e.id: e for e in load_benchmark("math", "train", data_dir)}
    assert math_train["math/train/608"].gold == "\\frac{1}{3}"  # upstream output '\frac{1}' (cut at a brace)
    assert math_train["math/train/399"].gold == "2\\sqrt{3}"  # upstream '2\sqrt{3'
    aqua = {e.id: e for e in load_benchmark("aqua", "train", data_dir)}
    # aqua_only_ans output 'Option E' etc. -> the letter
    assert all(len(e.gold) == 1 for e in aqua.values())
    assert {e.meta["gold_from"] for e in aqua.values()} == {"only_ans", "human", "extracted"}
    assert load_benchmark("gsm8k", "test", data_dir)[0].gold == "18"
    subjects = {e.meta["subject"] for e in load_benchmark("math", "test", data_dir)}
    assert subjects == {"Prealgebra", "Algebra", "Counting & Probability", "Number Theory"}


def test_choice_renderings_agree_across_files(data_dir):
    # csqa train writes "A: x, B: y", csqa test "A. x\nB. y", aqua "(A) x (B) y": all end up the same
    csqa_test = load_benchmark("csqa", "test", data_dir, limit=1)[0]
    assert csqa_test.question == ("A revolving door is convenient for two direction travel, but it also serves as a "
                                  "security measure at a what? Answer choices: (A) bank (B) library (C) department store "
                                  "(D) mall (E) new york")
    aqua_test = load_benchmark("aqua", "test", data_dir, limit=1)[0]
    assert aqua_test.choices["A"] == "5(√3 + 1)" and aqua_test.gold == "A"


def test_unknown_names_suggest_close_matches(data_dir):
    with pytest.raises(CotdistillError, match="unknown dataset 'svmap'; did you mean svamp"):
        load_benchmark("svmap", "test", data_dir)
    with pytest.raises(CotdistillError, match="unknown split of svamp 'tset'; did you mean test"):
        load_benchmark("svamp", "tset", data_dir)
    with pytest.raises(CotdistillError, match="did you mean test-all"):
        load_benchmark("math", "test_all", data_dir)


def _mini(tmp_path, rel: str, content: bytes):
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_missing_data_dir_and_missing_file(tmp_path, monkeypatch):
    monkeypatch.delenv("COTDISTILL_DATA", raising=False)
    with pytest.raises(CotdistillError, match="data directory .*nowhere does not exist"):
        load_benchmark("svamp", "test", tmp_path / "nowhere")
    with pytest.raises(CotdistillError, match=r"missing data file .*cot/SVAMP_only_ans.json \(or cot/SVAMP_only_ans.json.gz\)"):
        load_benchmark("svamp", "test", tmp_path)
    monkeypatch.setenv("COTDISTILL_DATA", str(tmp_path / "gone"))
    with pytest.raises(CotdistillError, match="gone does not exist"):
        load_benchmark("svamp", "test")


def test_plain_and_gzipped_files_both_load(tmp_path):
    rows = [{"instruction": "Is the sky blue?", "output": "True"}, {"instruction": "Is fire cold?", "output": "False"}]
    _mini(tmp_path, "cot/strategyQA_onlyans.json", json.dumps(rows).encode())
    _mini(tmp_path, "benchmarks/strategyqa/test.json.gz",
          gzip.compress(json.dumps([{"instruction": "Do fish swim?", "label": "True"}]).encode()))
    assert [e.gold for e in load_benchmark("strategyqa", "train", tmp_path)] == ["True", "False"]
    assert load_benchmark("strategyqa", "test", tmp_path)[0].id == "strategyqa/test/0"


@pytest.mark.parametrize(
    "rel,content,message",
    [
        ("cot/SVAMP_only_ans.json.gz", gzip.compress(b'[{"instruction": "a", "output": "1"}]')[:-12],
         "SVAMP_only_ans.json.gz: truncated or corrupt gzip file"),
        ("cot/SVAMP_only_ans.json", b'[{"instruction": "a", "output": "1"},\n {"instruction": "b"',
         r"SVAMP_only_ans.json:2: malformed JSON"),
        ("cot/SVAMP_only_ans.json", b'[{"instruction": "a", "output": "1"}, {"instruction": "b"}]',
         "SVAMP_only_ans.json: record 1 lacks field 'output' \\(expected fields: instruction, output\\)"),
        ("cot/SVAMP_only_ans.json", b'[["a", "1"]]', "record 0 is list, expected a JSON object"),
    ],
)
def test_broken_files_give_one_clear_line(tmp_path, rel, content, message):
    _mini(tmp_path, rel, content)
    with pytest.raises(CotdistillError, match=message) as e:
        load_benchmark("svamp", "train", tmp_path)
    assert "\n" not in str(e.value)


def test_malformed_jsonl_line_is_named(tmp_path):
    _mini(tmp_path, "benchmarks/gsm8k/test.jsonl",
          b'{"question": "q1", "answer": "x\\n#### 3"}\n{"question": "q2", "answer": "#### 4"\n')
    with pytest.raises(CotdistillError, match=r"test.jsonl:2: malformed JSON line"):
        load_benchmark("gsm8k", "test", tmp_path)
    _mini(tmp_path, "benchmarks/gsm8k/test.jsonl", b'{"question": "q1", "answer": "no gold here"}\n')
    with pytest.raises(CotdistillError, match=r"test.jsonl:1: field 'answer' has no '#### N' gold answer"):
        load_benchmark("gsm8k", "test", tmp_path)


def test_every_dataset_is_loadable_by_name():
    assert DATASETS == ("svamp", "gsm8k", "aqua", "math", "csqa", "obqa", "strategyqa")
