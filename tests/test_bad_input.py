"""Bad input through the real CLI entry point (`cotdistill.cli.main`, what the console script calls).

Every case must end in exactly one `error: ...` line on stderr naming what was wrong, exit code 2,
no traceback, and the folder it ran in left exactly as it was (file tree and contents). Cases run
in-process (the entry point with sys.argv set) so that 80 of them cost seconds, not minutes; most
fail before any model loads, the few that need one use the session's tiny random student.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cotdistill import cli

# ---------------------------------------------------------------------------- helpers


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every path under root with its bytes (files), 'dir' or the link target."""
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = p.read_bytes()
    return out


def write(root: Path, rel: str, content: str | bytes) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    return p


def jsonl(*rows: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


GOOD_GRADE = jsonl({"response": "The answer is 7.", "gold": "7", "kind": "number"})
GOOD_Q = jsonl({"id": "q1", "question": "What is 3 + 4?", "gold": "7", "kind": "number"})
GOOD_SUP = jsonl({"question": "What is 3 + 4?", "rationale": "3 + 4 = 7. The answer is 7."})
STUDY_OK = "datasets: [svamp]\nstudents: [smollm2-135m]\nsupervision: [svamp/chatgpt/level1]\n"
BINARY = bytes(range(256)) * 4
LATIN1 = "question: caf\xe9\n".encode("latin-1")


def billion_laughs() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        prev = chr(ord("a") + i - 1)
        cur = chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]")
    return "\n".join(lines) + "\nsupervision: *j\n"


def truncated_student(root: Path, student: Path) -> Path:
    dst = root / "broken_student"
    shutil.copytree(student, dst)
    w = dst / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    return dst


def tiny_data_dir(root: Path, svamp_records: str) -> Path:
    """A data directory whose SVAMP files hold the given test records (train: one good row)."""
    d = root / "data"
    write(d, "cot/SVAMP_only_ans.json", json.dumps([{"instruction": "What is 1 + 1?", "output": "2"}]))
    write(d, "benchmarks/svamp/SVAMP.json", svamp_records)
    return d


def fake_study(root: Path, results_jsonl: str | bytes | None = None, csv: str | bytes | None = None,
               provenance: str | bytes | None = None) -> Path:
    s = root / "st"
    s.mkdir()
    if results_jsonl is not None:
        write(s, "results.jsonl", results_jsonl)
    if csv is not None:
        write(s, "results.csv", csv)
    if provenance is not None:
        write(s, "study.provenance.json", provenance)
    return s


_CELL = {
    "cell": "svamp-x-chatgpt-l1-s100-0123456789", "status": "done", "label": "x", "dataset": "svamp", "student": "x",
    "student_ref": "x", "teacher": "chatgpt", "level": 1, "format": "cot", "supervision": "svamp/chatgpt/level1",
    "supervision_kind": "released", "supervision_source": None, "supervision_sha256": None, "seed": 100,
    "train_limit": None, "accuracy": 0.5, "n": 2, "correct": 1,
}


def cell(**kw) -> str:
    return json.dumps({**_CELL, **kw}) + "\n"


def study_with_other(root: Path) -> Path:
    """A folder already holding a (different) study: its provenance names other cells."""
    s = root / "other"
    write(s, "study.yaml", "datasets: [gsm8k]\n")
    write(s, "study.provenance.json", json.dumps({"config": {"name": "other"}, "cells": [{"slug": "gsm8k-a"}],
                                                  "jobs": [], "study": {"id": "0" * 64}}))
    write(s, "results.jsonl", "")
    return s


# ---------------------------------------------------------------------------- the cases


@dataclass
class Case:
    id: str
    args: list[str]
    expect: str  # a substring of the error line (what or where)
    files: dict[str, str | bytes] = field(default_factory=dict)  # created before the run
    setup: Callable[[Path, Path], None] | None = None  # (root, tiny student) -> None: more set-up
    env: dict[str, str] = field(default_factory=dict)


def _c(id: str, args: str | list[str], expect: str, **kw) -> Case:
    return Case(id, args.split() if isinstance(args, str) else args, expect, **kw)


CASES = [
    # ------------------------------------------------------------------ grade
    _c("grade-missing-file", "grade nope.jsonl", "nope.jsonl"),
    _c("grade-binary", "grade g.jsonl", "not UTF-8", files={"g.jsonl": BINARY}),
    _c("grade-latin1", "grade g.jsonl", "not UTF-8", files={"g.jsonl": LATIN1}),
    _c("grade-lone-surrogate", "grade g.jsonl", "g.jsonl:1",
       files={"g.jsonl": '{"response": "The answer is \\ud800", "gold": "7", "kind": "number"}\n'}),
    _c("grade-malformed-json", "grade g.jsonl", "g.jsonl:2", files={"g.jsonl": GOOD_GRADE + "{nope\n"}),
    _c("grade-not-object", "grade g.jsonl", "g.jsonl:1", files={"g.jsonl": "[1, 2]\n"}),
    _c("grade-no-response", "grade g.jsonl", "response", files={"g.jsonl": jsonl({"gold": "7", "kind": "number"})}),
    _c("grade-bad-kind", "grade g.jsonl", "kind", files={"g.jsonl": jsonl({"response": "x", "gold": "7", "kind": "z"})}),
    _c("grade-choices-list", "grade g.jsonl", "choices",
       files={"g.jsonl": jsonl({"response": "x", "gold": "A", "kind": "choice", "choices": ["a", "b"]})}),
    _c("grade-empty-file", "grade g.jsonl", "no lines", files={"g.jsonl": ""}),
    _c("grade-out-is-dir", "grade g.jsonl --out d", "--out", files={"g.jsonl": GOOD_GRADE, "d/keep": "x"}),
    _c("grade-out-under-file", "grade g.jsonl --out f/x.jsonl", "--out", files={"g.jsonl": GOOD_GRADE, "f": "x"}),
    _c("grade-out-unwritable", "grade g.jsonl --out /proc/cotdistill-x.jsonl", "--out /proc/cotdistill-x.jsonl", files={"g.jsonl": GOOD_GRADE}),
    _c("grade-out-is-input", "grade g.jsonl --out g.jsonl", "overwrite", files={"g.jsonl": GOOD_GRADE}),
    _c("grade-bad-protocol", "grade g.jsonl --protocol strict", "protocol", files={"g.jsonl": GOOD_GRADE}),
    _c("grade-input-is-dir", "grade d", "d", files={"d/x": "x"}),
    # ------------------------------------------------------------------ data
    _c("audit-out-bad-suffix", "data audit --out a.txt", "--out"),
    _c("audit-out-is-dir", "data audit --out d.csv --tokenizer none", "--out", files={"d.csv/keep": "x"}),
    _c("audit-out-under-file", "data audit --out f/a.csv --tokenizer none", "--out", files={"f": "x"}),
    _c("audit-out-unwritable", "data audit --out /proc/cotdistill-a.csv --tokenizer none", "--out"),
    _c("audit-bad-dataset", "data audit --dataset nope", "nope"),
    _c("fetch-to-file", "data fetch --to f", "--to", files={"f": "x"}),
    _c("fetch-bad-url", "data fetch --to d --base-url notaurl", "--base-url"),
    _c("fetch-ftp-url", "data fetch --to d --base-url ftp://example.org/x", "--base-url"),
    _c("fetch-url-bad-port", "data fetch --to d --base-url http://127.0.0.1:99999/", "--base-url"),
    _c("fetch-url-no-host", "data fetch --to d --base-url http:///x", "--base-url"),
    _c("fetch-only-matches-nothing", "data fetch --to d --only nothing/*", "--only"),
    _c("compare-json-bad-suffix", "data compare svamp/chatgpt/level1 svamp/chatgpt/level2 --json x.txt", "--json"),
    _c("compare-missing-file", "data compare a.jsonl svamp/chatgpt/level2", "a.jsonl"),
    _c("compare-binary-file", "data compare a.jsonl svamp/chatgpt/level2", "a.jsonl", files={"a.jsonl": BINARY}),
    _c("data-dir-missing", "data list --data-dir nowhere", "nowhere"),
    _c("data-dir-env-missing", "data list", "nowhere", env={"COTDISTILL_DATA": "nowhere"}),
    _c("data-dir-is-file", "data list --data-dir f", "is a file", files={"f": "x"}),
    # ------------------------------------------------------------------ train
    _c("train-out-foreign-overwrite", "train --student {student} --data s.jsonl --out mine --overwrite",
       "not made by cotdistill", files={"s.jsonl": GOOD_SUP, "mine/src.py": "print('precious')\n"}),
    _c("train-out-foreign", "train --student {student} --data s.jsonl --out mine", "--out",
       files={"s.jsonl": GOOD_SUP, "mine/src.py": "print('precious')\n"}),
    _c("train-out-is-file", "train --student {student} --data s.jsonl --out f", "--out", files={"s.jsonl": GOOD_SUP, "f": "x"}),
    _c("train-out-under-file", "train --student {student} --data s.jsonl --out f/run", "--out",
       files={"s.jsonl": GOOD_SUP, "f": "x"}),
    _c("train-out-unwritable", "train --student {student} --data s.jsonl --out /proc/cotdistill-run", "--out",
       files={"s.jsonl": GOOD_SUP}),
    _c("train-data-missing", "train --student {student} --data nope.jsonl --out r", "nope"),
    _c("train-data-binary", "train --student {student} --data s.jsonl --out r", "not UTF-8", files={"s.jsonl": BINARY}),
    _c("train-data-lacks-field", "train --student {student} --data s.jsonl --out r", "rationale",
       files={"s.jsonl": jsonl({"question": "q"})}),
    _c("train-data-empty", "train --student {student} --data s.jsonl --out r", "s.jsonl", files={"s.jsonl": ""}),
    _c("train-limit-negative", "train --student {student} --data s.jsonl --out r --limit -1", "limit",
       files={"s.jsonl": GOOD_SUP}),
    _c("train-epochs-zero", "train --student {student} --data s.jsonl --out r --epochs 0", "epochs",
       files={"s.jsonl": GOOD_SUP}),
    _c("train-lr-nan", "train --student {student} --data s.jsonl --out r --lr nan", "lr", files={"s.jsonl": GOOD_SUP}),
    _c("train-bad-dtype", "train --student {student} --data s.jsonl --out r --dtype int3", "int3", files={"s.jsonl": GOOD_SUP}),
    _c("train-student-missing", "train --student ./nowhere --data s.jsonl --out r", "nowhere", files={"s.jsonl": GOOD_SUP}),
    _c("train-truncated-weights", "train --student broken_student --data s.jsonl --out r", "model.safetensors",
       files={"s.jsonl": GOOD_SUP}, setup=lambda root, st: truncated_student(root, st)),
    _c("train-config-missing", "train --config nope.yaml", "nope.yaml"),
    _c("train-config-list", "train --config c.yaml", "c.yaml", files={"c.yaml": "- 1\n- 2\n"}),
    _c("train-config-binary", "train --config c.yaml", "c.yaml", files={"c.yaml": BINARY}),
    _c("train-config-unknown-key", "train --config c.yaml", "bogus", files={"c.yaml": "bogus: 1\n"}),
    _c("train-config-trust-remote", "train --config c.yaml --student {student} --data s.jsonl --out r",
       "--trust-remote-code", files={"c.yaml": "trust_remote_code: true\n", "s.jsonl": GOOD_SUP}),
    _c("train-config-deep", "train --config c.yaml", "c.yaml", files={"c.yaml": "[" * 10000 + "]" * 10000}),
    # ------------------------------------------------------------------ eval
    _c("eval-max-new-tokens-huge", "eval --model {student} --dataset svamp --out e --limit 1 --max-new-tokens 1000000000000",
       "context window"),
    _c("eval-max-new-tokens-zero", "eval --model {student} --dataset svamp --out e --max-new-tokens 0", "max_new_tokens"),
    _c("eval-limit-negative", "eval --model {student} --dataset svamp --out e --limit -3", "limit"),
    _c("eval-batch-zero", "eval --model {student} --dataset svamp --out e --batch-size 0", "batch_size"),
    _c("eval-beams-zero", "eval --model {student} --dataset svamp --out e --beams 0", "beams"),
    _c("eval-bad-dataset", "eval --model {student} --dataset svampp --out e", "svampp"),
    _c("eval-bad-split", "eval --model {student} --dataset svamp --split dev --out e", "dev"),
    _c("eval-out-is-file", "eval --model {student} --dataset svamp --out f --limit 1", "--out", files={"f": "x"}),
    _c("eval-out-foreign", "eval --model {student} --dataset svamp --out d --limit 1", "--out", files={"d/mine.txt": "x"}),
    _c("eval-out-foreign-overwrite", "eval --model {student} --dataset svamp --out d --limit 1 --overwrite", "--out",
       files={"d/mine.txt": "x"}),
    _c("eval-out-unwritable", "eval --model {student} --dataset svamp --out /proc/cotdistill-e --limit 1", "--out"),
    _c("eval-bad-engine", "eval --model m --dataset svamp --out e --engine vllm", "vllm"),
    _c("eval-openai-bad-url", "eval --model m --dataset svamp --out e --engine openai --base-url localhost:8000", "--base-url"),
    _c("eval-openai-url-creds", "eval --model m --dataset svamp --out e --engine openai --base-url http://u:pw@h/v1",
       "credentials"),
    _c("eval-truncated-weights", "eval --model broken_student --dataset svamp --out e --limit 1", "model.safetensors",
       setup=lambda root, st: truncated_student(root, st)),
    _c("eval-benchmark-lacks-field", "eval --model {student} --dataset svamp --out e --data-dir data", "Body",
       setup=lambda root, st: tiny_data_dir(root, json.dumps([{"ID": "1", "Question": "q", "Answer": 1}]))),
    _c("eval-benchmark-empty", "eval --model {student} --dataset svamp --out e --data-dir data", "no questions",
       setup=lambda root, st: tiny_data_dir(root, "[]")),
    _c("eval-benchmark-binary", "eval --model {student} --dataset svamp --out e --data-dir data", "SVAMP.json",
       setup=lambda root, st: write(tiny_data_dir(root, "[]"), "benchmarks/svamp/SVAMP.json", BINARY)),
    _c("eval-benchmark-truncated", "eval --model {student} --dataset svamp --out e --data-dir data", "SVAMP.json",
       setup=lambda root, st: tiny_data_dir(root, '[{"ID": "1", "Body": "b", "Quest')),
    _c("eval-config-trust-remote", "eval --config c.yaml --model {student} --dataset svamp --out e",
       "--trust-remote-code", files={"c.yaml": "trust_remote_code: true\n"}),
    _c("eval-unfinished-run", "eval --model run --dataset svamp --out e", "unfinished", files={"run/run.json": "{}"}),
    # ------------------------------------------------------------------ teach
    _c("teach-questions-binary", "teach --dataset q.jsonl --teacher hf:{student} --level 1 --out o.jsonl", "not UTF-8",
       files={"q.jsonl": BINARY}),
    _c("teach-questions-lacks-gold", "teach --dataset q.jsonl --teacher hf:{student} --level 1 --out o.jsonl", "gold",
       files={"q.jsonl": jsonl({"question": "q", "kind": "number"})}),
    _c("teach-questions-empty", "teach --dataset q.jsonl --teacher hf:{student} --level 1 --out o.jsonl", "no questions",
       files={"q.jsonl": "\n"}),
    _c("teach-choices-not-object", "teach --dataset q.jsonl --teacher hf:{student} --level 1 --out o.jsonl", "choices",
       files={"q.jsonl": jsonl({"question": "q", "gold": "A", "kind": "choice", "choices": "A or B"})}),
    _c("teach-choices-values", "teach --dataset q.jsonl --teacher hf:{student} --level 1 --out o.jsonl", "choices",
       files={"q.jsonl": jsonl({"question": "q", "gold": "A", "kind": "choice", "choices": {"A": [1], "B": 2}})}),
    _c("teach-questions-surrogate", "teach --dataset q.jsonl --teacher hf:{student} --level 1 --out o.jsonl", "q.jsonl:1",
       files={"q.jsonl": '{"question": "q \\udc80", "gold": "7", "kind": "number"}\n'}),
    _c("teach-level-9", "teach --dataset q.jsonl --teacher hf:{student} --level 9 --out o.jsonl", "level",
       files={"q.jsonl": GOOD_Q}),
    _c("teach-limit-negative", "teach --dataset q.jsonl --teacher hf:{student} --level 1 --out o.jsonl --limit -1", "limit",
       files={"q.jsonl": GOOD_Q}),
    _c("teach-samples-zero", "teach --dataset q.jsonl --teacher hf:{student} --level 1 --out o.jsonl --samples 0",
       "samples", files={"q.jsonl": GOOD_Q}),
    _c("teach-retries-negative", "teach --dataset q.jsonl --teacher hf:{student} --level 1 --out o.jsonl --retries -1",
       "retries", files={"q.jsonl": GOOD_Q}),
    _c("teach-bad-teacher", "teach --dataset q.jsonl --teacher gpt4 --level 1 --out o.jsonl", "teacher",
       files={"q.jsonl": GOOD_Q}),
    _c("teach-bad-url", "teach --dataset q.jsonl --teacher openai:m --level 1 --out o.jsonl --base-url 127.0.0.1:9",
       "--base-url", files={"q.jsonl": GOOD_Q}, env={"OPENAI_API_KEY": "k"}),
    _c("teach-url-bad-port", "teach --dataset q.jsonl --teacher openai:m --level 1 --out o.jsonl --base-url http://h:70000/v1",
       "--base-url", files={"q.jsonl": GOOD_Q}, env={"OPENAI_API_KEY": "k"}),
    _c("teach-out-not-jsonl", "teach --dataset q.jsonl --teacher hf:{student} --level 1 --out o.txt", ".jsonl",
       files={"q.jsonl": GOOD_Q}),
    _c("teach-out-is-dir", "teach --dataset q.jsonl --teacher hf:{student} --level 1 --out d.jsonl", "--out",
       files={"q.jsonl": GOOD_Q, "d.jsonl/keep": "x"}),
    _c("teach-out-under-file", "teach --dataset q.jsonl --teacher hf:{student} --level 1 --out f/o.jsonl", "--out",
       files={"q.jsonl": GOOD_Q, "f": "x"}),
    _c("teach-out-unwritable", "teach --dataset q.jsonl --teacher hf:{student} --level 1 --out /proc/cotdistill-o.jsonl",
       "--out", files={"q.jsonl": GOOD_Q}),
    _c("teach-out-is-input", "teach --dataset q.jsonl --teacher hf:{student} --level 1 --out q.jsonl", "--out",
       files={"q.jsonl": GOOD_Q}),
    _c("teach-cache-env-is-file", "teach --dataset q.jsonl --teacher hf:{student} --level 1 --out o.jsonl",
       "COTDISTILL_CACHE", files={"q.jsonl": GOOD_Q, "cachefile": "x"}, env={"COTDISTILL_CACHE": "cachefile"}),
    _c("teach-cache-is-dir", "teach --dataset q.jsonl --teacher hf:{student} --level 1 --out o.jsonl --cache d",
       "--cache", files={"q.jsonl": GOOD_Q, "d/keep": "x"}),
    _c("teach-cache-not-sqlite", "teach --dataset q.jsonl --teacher hf:{student} --level 1 --out o.jsonl --cache c.sqlite",
       "c.sqlite", files={"q.jsonl": GOOD_Q, "c.sqlite": BINARY}),
    _c("teach-benchmark-empty", "teach --dataset svamp --split test --teacher hf:{student} --level 1 --out o.jsonl --data-dir data",
       "no questions", setup=lambda root, st: tiny_data_dir(root, "[]")),
    # ------------------------------------------------------------------ study
    _c("study-missing", "study nope.yaml", "nope.yaml"),
    _c("study-binary", "study s.yaml --check", "s.yaml", files={"s.yaml": BINARY}),
    _c("study-latin1", "study s.yaml --check", "s.yaml", files={"s.yaml": LATIN1}),
    _c("study-billion-laughs", "study s.yaml --check", "alias", files={"s.yaml": billion_laughs()}),
    _c("study-brace-range-huge", "study s.yaml --check", "level{1..100000000}",
       files={"s.yaml": "datasets: [svamp]\nstudents: [smollm2-135m]\nsupervision: ['svamp/chatgpt/level{1..100000000}']\n"}),
    _c("study-brace-product-huge", "study s.yaml --check", "brace",
       files={"s.yaml": "supervision: ['{a,b,c,d,e,f,g,h,i,j}{a,b,c,d,e,f,g,h,i,j}{a,b,c,d,e,f,g,h,i,j}"
                        "{a,b,c,d,e,f,g,h,i,j}{a,b,c,d,e,f,g,h,i,j}{a,b,c,d,e,f,g,h,i,j}']\n"}),
    _c("study-deep-flow", "study s.yaml --check", "nest", files={"s.yaml": "a: " + "[" * 10000 + "]" * 10000 + "\n"}),
    _c("study-deep-block", "study s.yaml --check", "nest",
       files={"s.yaml": "".join(" " * i + f"k{i}:\n" for i in range(3000)) + " " * 3000 + "v\n"}),
    _c("study-empty", "study s.yaml --check", "empty", files={"s.yaml": ""}),
    _c("study-not-mapping", "study s.yaml --check", "mapping", files={"s.yaml": "- a\n"}),
    _c("study-unknown-key", "study s.yaml --check", "s.yaml:4", files={"s.yaml": STUDY_OK + "epochs: 3\n"}),
    _c("study-duplicate-key", "study s.yaml --check", "duplicate", files={"s.yaml": STUDY_OK + "datasets: [gsm8k]\n"}),
    _c("study-syntax", "study s.yaml --check", "s.yaml:2", files={"s.yaml": "datasets: [svamp\nstudents: x: y\n"}),
    _c("study-seeds-empty", "study s.yaml --check", "seeds", files={"s.yaml": STUDY_OK + "seeds: []\n"}),
    _c("study-train-limit-negative", "study s.yaml --check", "limit", files={"s.yaml": STUDY_OK + "train: {limit: -1}\n"}),
    _c("study-eval-huge-tokens", "study s.yaml --check", "max_new_tokens",
       files={"s.yaml": STUDY_OK + "eval: {max_new_tokens: -5}\n"}),
    _c("study-trust-remote", "study s.yaml --check", "--trust-remote-code",
       files={"s.yaml": STUDY_OK + "train: {trust_remote_code: true}\n"}),
    _c("study-max-parallel-zero", "study s.yaml --check --max-parallel 0", "max-parallel", files={"s.yaml": STUDY_OK}),
    _c("study-bad-executor", "study s.yaml --check --executor slurm", "--executor: unknown executor 'slurm'", files={"s.yaml": STUDY_OK}),
    _c("study-out-is-file", "study s.yaml --out f", "--out", files={"s.yaml": STUDY_OK, "f": "x"}),
    _c("study-out-other-study", "study s.yaml --out other", "different study", files={"s.yaml": STUDY_OK},
       setup=lambda root, st: study_with_other(root)),
    _c("study-out-foreign", "study s.yaml --out mine", "--out", files={"s.yaml": STUDY_OK, "mine/notes.txt": "x"}),
    _c("study-out-unwritable", "study s.yaml --out /proc/cotdistill-study", "--out", files={"s.yaml": STUDY_OK}),
    # ------------------------------------------------------------------ report
    _c("report-missing", "report nowhere", "nowhere"),
    _c("report-not-study", "report d", "not a study", files={"d/x.txt": "x"}),
    _c("report-results-binary", "report st", "results.jsonl",
       setup=lambda root, st: fake_study(root, results_jsonl=BINARY)),
    _c("report-results-not-json", "report st", "results.jsonl:1",
       setup=lambda root, st: fake_study(root, results_jsonl="cell,status\nx,done\n")),
    _c("report-results-non-numeric", "report st", "accuracy",
       setup=lambda root, st: fake_study(root, results_jsonl=cell(accuracy="lots"))),
    _c("report-results-csv-binary", "report st", "results",
       setup=lambda root, st: fake_study(root, csv=BINARY)),
    _c("report-provenance-corrupt", "report st", "study.provenance.json",
       setup=lambda root, st: fake_study(root, results_jsonl=cell(), provenance="{not json")),
    _c("report-provenance-binary", "report st", "study.provenance.json",
       setup=lambda root, st: fake_study(root, results_jsonl=cell(), provenance=BINARY)),
    _c("report-cell-escapes", "report st", "cell",
       setup=lambda root, st: fake_study(root, results_jsonl=cell(cell="../../escaped"))),
    _c("report-dataset-escapes", "report st", "dataset",
       setup=lambda root, st: fake_study(root, results_jsonl=cell(dataset="../../../tmp/evil"))),
    # ------------------------------------------------------------------ usage
    _c("usage-unknown-command", "evl", "evl"),
    _c("usage-unknown-option", "grade g.jsonl --bogus", "--bogus"),
    _c("usage-missing-argument", "grade", "cotdistill grade: Missing argument 'file'"),
    _c("usage-bad-int", "eval --model m --dataset svamp --limit ten", "--limit"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, tiny_student, monkeypatch, capfd):
    root = tmp_path / "work"
    root.mkdir()
    for rel, content in case.files.items():
        write(root, rel, content)
    if case.setup:
        case.setup(root, tiny_student)
    monkeypatch.chdir(root)
    for k in ("COTDISTILL_CACHE", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("COTDISTILL_CACHE", str(tmp_path / "cache"))  # never the user's cache
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    before = snapshot(root)
    args = [a.replace("{student}", str(tiny_student)) for a in case.args]
    monkeypatch.setattr(sys, "argv", ["cotdistill", *args])
    capfd.readouterr()
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit {code}\nstdout: {out[-2000:]}\nstderr: {err[-3000:]}"
    assert "Traceback" not in out + err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert case.expect in lines[0], lines[0]
    assert snapshot(root) == before, "the command changed its folder"
    assert not (tmp_path / "cache").exists(), "a failed command created a cache"
