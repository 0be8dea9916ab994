"""The paper's released supervision, addressable by one name, joined to gold answers.

Names: `<dataset>/<teacher>/level<N>[/<format>]`, `<dataset>/human`, `<dataset>/answer-only`,
and a few odd ones (`obqa/chatgpt/zero-shot-with-gt`, `obqa/chatgpt/zero-shot-without-gt`).
The irregular upstream file and field names live in the one table SOURCES below.

Joining: each released row is matched to the benchmark's TRAIN split by normalised question
text (whitespace, case, a `Q:` prefix, the way choices are written). A joined row carries the
benchmark's rendered question (the same text the student is evaluated on) and gold answer.
A row that matches no training question stays in `rows` with gold=None and is counted in
`Supervision.unjoined`. A row whose question is a TEST question -- same text, and for multiple
choice the same SET of choices in any order -- is left out of `rows` (it would leak the test set
into training) and counted in `meta["test_overlap"]`; audit reports both.

One teacher per source: a row without the source's own rationale field (195 rows of
math_gemini_level1 hold only `chatgpt_output`) is left out and counted in `meta["missing"]`,
never filled from another teacher. `gsm8k/human` is built from GSM8K's own training solutions
(benchmarks/gsm8k/train.jsonl): calculator annotations <<...>> removed, "#### X" written as
"The answer is X.".
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from cotdistill.benchmarks import DATASETS, Example, load_benchmark
from cotdistill.benchmarks._files import (
    find_file,
    leak_key,
    normalise_question,
    parse_choices,
    parse_records,
    read_records,
    read_text,
    render_question,
    resolve_data_dir,
)
from cotdistill.errors import CotdistillError, unknown_name
from cotdistill.grade import KINDS

__all__ = [
    "SOURCES",
    "FORMATS",
    "TEACHERS",
    "Supervision",
    "SupervisionRow",
    "audit",
    "describe_data",
    "fetch",
    "list_sources",
    "load_supervision",
    "resolve_data_dir",
    "source_file",
    "compare_supervision",
    "supervision_profile",
]

TEACHERS = ("chatgpt", "gemini", "llama", "human", "answer-only")
FORMATS = ("cot", "subquestions", "rar", "symbolic")
_FORMAT_TAG = {"subquestions": "BSM", "rar": "RaR", "symbolic": "SYM"}
_L = range(1, 7)


def _levels(prefix: str, teacher: str, pattern: str, levels=_L, field: str = "output") -> list[tuple]:
    return [(f"{prefix}/{teacher}/level{n}", pattern.format(n=n), field) for n in levels]


def _formats(prefix: str, level: int, pattern: str, tags=_FORMAT_TAG) -> list[tuple]:
    return [(f"{prefix}/chatgpt/level{level}/{fmt}", pattern.format(tag=tag), "output") for fmt, tag in tags.items()]


# name -> (upstream file name without .json, field holding the rationale). Questions are in
# `instruction`, except MATH (`problem`). Built from the upstream dataset_info.json and readme.md
# (commit cc33822); files not in ../shared/data/cot are reported as unavailable.
SOURCES: dict[str, tuple[str, str]] = {
    name: (stem, fld)
    for name, stem, fld in [
        # SVAMP (upstream has LLaMA levels 1-4 only)
        ("svamp/answer-only", "SVAMP_only_ans", "output"),
        ("svamp/human", "svamp_human_annotation", "output"),
        *_levels("svamp", "chatgpt", "SVAMP_ChatGPT_level{n}_ranked"),
        *_levels("svamp", "gemini", "SVAMP_gemini_level{n}_ranked"),
        *_levels("svamp", "llama", "SVAMP_llama_level{n}_ranked", levels=range(1, 5)),
        *_formats("svamp", 3, "0_SVAMP_chatgpt_level3{tag}"),
        *_formats("svamp", 5, "0_SVAMP_chatgpt_level5{tag}"),
        # GSM8K (upstream has LLaMA levels 1-5 only)
        ("gsm8k/answer-only", "gsm_train_onlyans", "output"),
        ("gsm8k/human", "gsm8k_human", "output"),  # built from benchmarks/gsm8k/train.jsonl (FROM_BENCHMARK)
        *_levels("gsm8k", "chatgpt", "gsm8k_ChatGPT_level{n}_ranked"),
        *_levels("gsm8k", "gemini", "gsm8k_gemini_level{n}_ranked"),
        *_levels("gsm8k", "llama", "gsm8k_llama_level{n}_ranked", levels=range(1, 6)),
        *_formats("gsm8k", 3, "0_gsm8k_chatgpt_level3{tag}"),
        *_formats("gsm8k", 5, "0_gsm8k_chatgpt_level5{tag}"),
        # AQuA
        ("aqua/answer-only", "aqua_only_ans", "output"),
        ("aqua/human", "aqua_human", "output"),
        *_levels("aqua", "chatgpt", "aqua_chatgpt_level{n}_ranked"),
        *_levels("aqua", "gemini", "aqua_gemini_level{n}_ranked"),
        *_levels("aqua", "llama", "aqua_llama_level{n}_ranked"),
        *_formats("aqua", 5, "0_aqua_chatgpt_level5{tag}", {"subquestions": "BSM", "rar": "RaR", "symbolic": "Sym"}),
        *_formats("aqua", 6, "0_aqua_chatgpt_level6{tag}", {"subquestions": "BSM", "rar": "RaR"}),
        # MATH: one file per level holds problem, gold (`output`), human solution and the rationale
        ("math/answer-only", "math_human", "output"),
        ("math/human", "math_human", "solution"),
        *_levels("math", "chatgpt", "math_mix_level{n}", field="chatgpt_output"),
        *_levels("math", "gemini", "math_gemini_level{n}_ranked", field="gemini_output"),
        *_levels("math", "llama", "math_llama_level{n}_ranked", field="llama_output"),
        # CommonsenseQA (human rationales = ECQA)
        ("csqa/answer-only", "commonsenseQA_onlyans", "output"),
        ("csqa/human", "ecqa_train", "output"),
        *_levels("csqa", "chatgpt", "commonsenseQA_chatgpt_level_{n}_ranked"),
        *_levels("csqa", "gemini", "csqa_gemini_level{n}_ranked"),
        *_levels("csqa", "llama", "csqa_llama_level{n}_ranked"),
        # OpenBookQA (no human rationales upstream)
        ("obqa/answer-only", "openbookQA_onlyans", "output"),
        *_levels("obqa", "chatgpt", "openbookQA_chatgpt_level_{n}_ranked"),
        *_levels("obqa", "gemini", "obqa_gemini_level{n}_ranked"),
        *_levels("obqa", "llama", "obqa_llama_level{n}_ranked"),
        ("obqa/chatgpt/level3/subquestions", "openbookqa_chatgpt_bsm_level3_ranked", "output"),
        ("obqa/chatgpt/level3/rar", "openbookqa_chatgpt_rar_level3_ranked", "output"),
        ("obqa/chatgpt/level3/symbolic", "openbookqa_chatgpt_symbolic_level3_ranked", "output"),
        ("obqa/chatgpt/zero-shot-with-gt", "openbookQA_ChatGPT_0_shot_with_gt_ranked", "output"),
        ("obqa/chatgpt/zero-shot-without-gt", "openbookQA_ChatGPT_0_shot_without_gt_ranked", "output"),
        # StrategyQA
        ("strategyqa/answer-only", "strategyQA_onlyans", "output"),
        ("strategyqa/human", "stqa_human_annotation", "output"),
        *_levels("strategyqa", "chatgpt", "strategyQA_chatgpt_level_{n}_ranked"),
        *_levels("strategyqa", "gemini", "stqa_gemini_level{n}_ranked"),
        *_levels("strategyqa", "llama", "stqa_llama_level{n}_ranked"),
    ]
}
# Sources built from a benchmark file instead of a cot/ file: name -> file under the data directory.
FROM_BENCHMARK = {"gsm8k/human": "benchmarks/gsm8k/train.jsonl"}


def _source_rel(name: str) -> str:
    """The data-directory path behind a (canonical) source name."""
    return FROM_BENCHMARK.get(name) or f"cot/{SOURCES[name][0]}.json"


def teach_hint(name: str) -> str:
    """The `cotdistill teach` command that writes a stand-in for the released source `name`."""
    parts = name.split("/")
    level = next((p.removeprefix("level") for p in parts if p.startswith("level")), "3")
    fmt = parts[3] if len(parts) > 3 else "cot"
    return (f"cotdistill teach --dataset {parts[0]} --teacher openai:MODEL --level {level} --format {fmt} "
            f"--out {parts[0]}_{parts[1]}_level{level}_{fmt}.jsonl")


@dataclass(frozen=True)
class SupervisionRow:
    id: str  # the joined benchmark example's id (e.g. "svamp/train/17"), else "<source>#<row>"
    question: str  # the benchmark's rendered question when joined (identical to eval prompts)
    rationale: str
    gold: str | None  # None when the row did not join a training question
    kind: str | None  # AnswerKind
    choices: dict[str, str] | None = None
    raw_question: str = ""  # the question exactly as in the source file
    meta: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass
class Supervision:
    name: str
    rows: list[SupervisionRow]
    unjoined: int  # rows kept with gold=None because their question matched no training question
    meta: dict = field(default_factory=dict)  # file, rows_in_file, test_overlap, empty_rationales, ...

    @property
    def joined(self) -> int:
        return sum(r.gold is not None for r in self.rows)


# ---------------------------------------------------------------- names


def canonical_name(name: str) -> str:
    """Lower-case, strip slashes, and drop an explicit default format ('.../level3/cot')."""
    parts = [p for p in name.strip().lower().split("/") if p]
    if len(parts) == 4 and parts[3] == "cot":
        parts = parts[:3]
    return "/".join(parts)


def _check_name(name: str) -> str:
    canon = canonical_name(name)
    if canon in SOURCES:
        return canon
    parts = canon.split("/")
    if parts[0] not in DATASETS:
        raise unknown_name("dataset", parts[0], DATASETS)
    if len(parts) > 1 and parts[1] not in TEACHERS:
        raise unknown_name(f"teacher in {name!r}", parts[1], TEACHERS)
    if len(parts) > 3 and parts[3] not in FORMATS:
        raise unknown_name(f"format in {name!r}", parts[3], FORMATS)
    raise unknown_name("supervision source", name, [n for n in SOURCES if n.startswith(parts[0] + "/")])


def list_sources(dataset: str | None = None, data_dir=None) -> list[str]:
    """Released names (available here or not), in table order; `dataset` restricts to one benchmark."""
    if dataset is not None and dataset not in DATASETS:
        raise unknown_name("dataset", dataset, DATASETS)
    return [n for n in SOURCES if dataset is None or n.split("/")[0] == dataset]


def source_file(name: str, data_dir=None) -> Path | None:
    """The file behind a released name in the data directory, or None if it is not there."""
    return find_file(resolve_data_dir(data_dir), _source_rel(_check_name(name)))


# ---------------------------------------------------------------- loading


def load_supervision(source: str | Path, data_dir=None) -> Supervision:
    """Rows of a released source (by name) or of a JSONL file written by `cotdistill teach`."""
    if isinstance(source, Path) or str(source).endswith((".jsonl", ".json")) or Path(str(source)).is_file():
        return _load_jsonl(Path(source))
    name = _check_name(str(source))
    data_dir = resolve_data_dir(data_dir)
    fld = SOURCES[name][1]
    path = find_file(data_dir, _source_rel(name))
    if path is None:
        how = "answer-only rows hold the gold answers; fetch them" if name.endswith("/answer-only") else \
            f"create it with `{teach_hint(name)}` and name that file in the study"
        raise CotdistillError(
            f"supervision source {name!r} is unavailable: {data_dir / _source_rel(name)}(.gz) is not in the release "
            f"here; {how}"
        )
    dataset = name.split("/")[0]
    qfield = "problem" if dataset == "math" else "instruction"
    records = _gsm8k_human_records(path) if name in FROM_BENCHMARK else read_records(path, (qfield,))
    train, test_keys = _join_index(dataset, data_dir)
    rows, unjoined, overlap, empty, missing = [], 0, 0, 0, 0
    for i, r in enumerate(records):
        rationale = _rationale(r, fld, path, i)
        if rationale is None:  # no rationale of THIS teacher in the row: missing, never another's
            missing += 1
            continue
        empty += not rationale.strip()
        if leak_key(r[qfield]) in test_keys:
            overlap += 1
            continue
        key = normalise_question(r[qfield])
        ex: Example | None = train.get(key)
        if ex is None:
            unjoined += 1
            stem_text, choices = parse_choices(r[qfield])
            rows.append(SupervisionRow(f"{name}#{i}", render_question(stem_text, choices), rationale, None,
                                       _kind(dataset), choices, r[qfield], {"row": i}))
        else:
            rows.append(SupervisionRow(ex.id, ex.question, rationale, ex.gold, ex.kind, ex.choices, r[qfield], {"row": i}))
    meta = {"file": str(path), "rows_in_file": len(records), "test_overlap": overlap, "empty_rationales": empty,
            "missing": missing, "rationale_field": fld}
    return Supervision(name, rows, unjoined, meta)


@lru_cache(maxsize=8)
def _join_index(dataset: str, data_dir: Path) -> tuple[dict[str, Example], frozenset[str]]:
    """Normalised question -> training example (first wins), and the test questions' leak keys
    (question text plus the set of choices, in any order)."""
    train: dict[str, Example] = {}
    for ex in load_benchmark(dataset, "train", data_dir):
        train.setdefault(normalise_question(ex.question), ex)
    test = load_benchmark(dataset, "test-all" if dataset == "math" else "test", data_dir)
    return train, frozenset(leak_key(ex.question) for ex in test)


def _kind(dataset: str) -> str:
    return {"svamp": "number", "gsm8k": "number", "math": "math", "strategyqa": "boolean"}.get(dataset, "choice")


def _rationale(r: dict, fld: str, path: Path, i: int) -> str | None:
    """The row's rationale in the source's own field; None when the row has none (counted missing)."""
    value = r.get(fld)
    if value is None:
        return None
    if not isinstance(value, str):
        raise CotdistillError(f"{path}: record {i}: rationale field {fld!r} is {type(value).__name__}, expected a string")
    return value


def _gsm8k_human_records(path: Path) -> list[dict]:
    from cotdistill.benchmarks.gsm8k import human_rationale

    return [{"instruction": r["question"], "output": human_rationale(r["answer"])}
            for r in read_records(path, ("question", "answer"))]


def _load_jsonl(path: Path) -> Supervision:
    if not path.is_file():
        raise CotdistillError(f"supervision file {path} does not exist")
    records = parse_records(read_text(path), str(path))
    rows = []
    for i, r in enumerate(records):
        at = f"{path}:{r.get('_line', i + 1)}"
        for key in ("question", "rationale"):
            if not isinstance(r.get(key), str):
                raise CotdistillError(f"{at}: field {key!r} missing or not a string (expected at least question, rationale)")
        kind = r.get("kind")
        if kind is not None and kind not in KINDS:
            raise CotdistillError(f"{at}: field 'kind' is {kind!r}, expected one of {', '.join(KINDS)}")
        choices = r.get("choices")
        if choices is not None and not isinstance(choices, dict):
            raise CotdistillError(f"{at}: field 'choices' must be an object {{letter: text}}")
        gold = r.get("gold")
        extra = {k: v for k, v in r.items() if k not in ("question", "rationale", "gold", "kind", "choices", "_line")}
        rows.append(
            SupervisionRow(
                str(r.get("question_id") or r.get("id") or f"{path.name}#{i}"),
                r["question"],
                r["rationale"],
                None if gold is None else str(gold),
                kind,
                choices,
                r["question"],
                extra,
            )
        )
    return Supervision(str(path), rows, sum(r.gold is None for r in rows), {"file": str(path), "rows_in_file": len(rows)})


def describe_data(dataset: str | None = None, data_dir=None) -> dict:
    """For `data list`: split sizes per benchmark and the row count of every released source."""
    from cotdistill.benchmarks import SPLITS

    data_dir = resolve_data_dir(data_dir)
    names = DATASETS if dataset is None else [dataset]
    if dataset is not None and dataset not in DATASETS:
        raise unknown_name("dataset", dataset, DATASETS)
    splits = ["train", "test", "test-all"]
    benchmarks = {d: {s: len(load_benchmark(d, s, data_dir)) for s in SPLITS[d]} for d in names}
    sources = []
    for name in list_sources(dataset):
        path = find_file(data_dir, _source_rel(name))
        rows = len(read_records(path)) if path is not None else None
        sources.append({"source": name, "available": path is not None, "rows": rows, "file": _source_rel(name)})
    return {"data_dir": str(data_dir), "splits": splits, "benchmarks": benchmarks, "sources": sources}


# ---------------------------------------------------------------- audit


def audit(dataset: str | None = None, data_dir=None, tokenizer=None, progress=None,
          sources: list[str] | None = None) -> list[dict]:
    """One record per released source (of `dataset`, or just `sources`): availability, rows, joins,
    teacher accuracy under the grader, mean rationale length (words; tokens if a tokenizer is
    given), share stating its answer."""
    from cotdistill.grade import grade, states_answer

    data_dir = resolve_data_dir(data_dir)
    out = []
    for name in [_check_name(s) for s in sources] if sources else list_sources(dataset):
        rec: dict = {"source": name, "available": False, "file": f"cot/{SOURCES[name][0]}.json"}
        if source_file(name, data_dir) is None:
            out.append(rec)
            continue
        sup = load_supervision(name, data_dir)
        joined = [r for r in sup.rows if r.gold is not None]
        answer_only = name.endswith("/answer-only")
        verdicts = [] if answer_only else [grade(r.rationale, r.gold, r.kind, r.choices).correct for r in joined]
        words = [len(r.rationale.split()) for r in sup.rows]
        rec |= {
            "available": True,
            "rows": sup.meta["rows_in_file"],
            "joined": len(joined),
            "unjoined": sup.unjoined,
            "test_overlap": sup.meta["test_overlap"],
            "missing": sup.meta.get("missing", 0),
            "empty": sup.meta["empty_rationales"],
            # answer-only rows ARE the gold answers: no teacher to score
            "teacher_accuracy": round(sum(verdicts) / len(verdicts), 4) if verdicts else None,
            "mean_words": round(statistics.fmean(words), 1) if words else None,
            "mean_tokens": None,
            "states_answer": round(sum(states_answer(r.rationale) for r in sup.rows) / len(sup.rows), 4) if sup.rows else None,
        }
        if tokenizer is not None and sup.rows:
            counts = [len(ids) for ids in tokenizer([r.rationale for r in sup.rows], add_special_tokens=False)["input_ids"]]
            rec["mean_tokens"] = round(statistics.fmean(counts), 1)
        out.append(rec)
        if progress is not None:
            progress(rec)
    return out


AUDIT_COLUMNS = ("source", "available", "rows", "joined", "unjoined", "test_overlap", "missing", "empty",
                 "teacher_accuracy", "mean_words", "mean_tokens", "states_answer", "file")


NEAR_DUPLICATE_JACCARD = 0.8  # word-trigram Jaccard of two question stems (same choice set) counted as near


def _trigrams(text: str) -> frozenset[str]:
    import re

    words = re.findall(r"[a-z0-9]+", text.lower())
    return frozenset(" ".join(words[i : i + 3]) for i in range(max(1, len(words) - 2)))


def split_duplicates(dataset: str, data_dir=None) -> dict:
    """Test questions that repeat a training question: `exact` (same text and the same SET of
    choices, the leak key), `near` (not exact; stems with word-trigram Jaccard >= 0.8 and the same
    choice set), with up to 20 (test id, train id, similarity) examples."""
    from collections import defaultdict

    data_dir = resolve_data_dir(data_dir)
    train = load_benchmark(dataset, "train", data_dir)
    test = load_benchmark(dataset, "test-all" if dataset == "math" else "test", data_dir)

    def parts(ex: Example) -> tuple[frozenset[str], frozenset[str]]:
        stem, choices = parse_choices(ex.question)
        return _trigrams(stem), frozenset(" ".join(c.lower().split()) for c in (choices or {}).values())

    train_keys = {leak_key(ex.question): ex.id for ex in train}
    train_parts = [parts(ex) for ex in train]
    index: dict[str, list[int]] = defaultdict(list)
    for i, (grams, _) in enumerate(train_parts):
        for g in grams:
            index[g].append(i)
    exact, near = [], []
    for ex in test:
        if leak_key(ex.question) in train_keys:
            exact.append((ex.id, train_keys[leak_key(ex.question)], 1.0))
            continue
        grams, opts = parts(ex)
        shared: dict[int, int] = defaultdict(int)
        for g in grams:
            for i in index.get(g, ()):
                shared[i] += 1
        best = max(((n / (len(grams) + len(train_parts[i][0]) - n), i) for i, n in shared.items()
                    if train_parts[i][1] == opts), default=(0.0, -1))
        if best[0] >= NEAR_DUPLICATE_JACCARD:
            near.append((ex.id, train[best[1]].id, round(best[0], 3)))
    return {"dataset": dataset, "test": len(test), "train": len(train), "exact": len(exact), "near": len(near),
            "examples": (exact + near)[:20]}


def audit_to_csv(records: list[dict]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=AUDIT_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for rec in records:
        w.writerow({k: ("" if rec.get(k) is None else rec.get(k)) for k in AUDIT_COLUMNS})
    return buf.getvalue()


def audit_to_json(records: list[dict]) -> str:
    return json.dumps(records, indent=2) + "\n"


# ---------------------------------------------------------------- fetch


@dataclass
class FetchResult:
    downloaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already present with the right sha256
    unverified: list[str] = field(default_factory=list)  # downloaded, but no sha256 is known for it
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def load_manifest() -> dict:
    from importlib import resources

    return json.loads(resources.files("cotdistill").joinpath("data_manifest.json").read_text(encoding="utf-8"))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(url: str, dest: Path, sha256: str | None, timeout: float) -> None:
    """Stream `url` into a temp file beside `dest`, check the sum, then rename (never half-written)."""
    import hashlib
    import os
    import tempfile
    import urllib.error
    import urllib.request

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        h = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, os.fdopen(fd, "wb") as out:
                for block in iter(lambda: resp.read(1 << 16), b""):
                    h.update(block)
                    out.write(block)
        except urllib.error.HTTPError as e:
            raise CotdistillError(f"HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise CotdistillError(f"download failed: {getattr(e, 'reason', e)}") from None
        if sha256 is not None and h.hexdigest() != sha256:
            raise CotdistillError(f"sha256 mismatch: got {h.hexdigest()[:12]}..., expected {sha256[:12]}...")
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


def fetch(to: Path, base_url: str | None = None, only: list[str] | None = None, timeout: float = 60.0,
          progress=None) -> FetchResult:
    """Download the upstream files into `to`, laid out as the loaders expect; resume-safe.

    Files already present with the right sha256 are skipped; a failed file is reported and the
    others still fetched. Files with no known sum (not in the reference copy) are downloaded
    but reported as unverified."""
    import fnmatch

    from cotdistill.checks import check_out_dir, check_url

    manifest = load_manifest()
    base = check_url(base_url, "--base-url").rstrip("/") if base_url is not None else manifest["base_url"].rstrip("/")
    to = check_out_dir(Path(to), "--to")
    result = FetchResult()
    entries = [e for e in manifest["files"] if not only or any(fnmatch.fnmatchcase(e["path"], g) for g in only)]
    if not entries:
        raise CotdistillError(f"--only {' '.join(only)} matches no file of the manifest (paths look like cot/SVAMP_only_ans.json)")
    for e in entries:
        dest = to / e["path"]
        if dest.is_file() and (e["sha256"] is None or sha256_file(dest) == e["sha256"]):
            result.skipped.append(e["path"])
        else:
            try:
                _download(f"{base}/{e['url']}", dest, e["sha256"], timeout)
                (result.downloaded if e["sha256"] else result.unverified).append(e["path"])
            except CotdistillError as err:
                result.failed.append((e["path"], str(err)))
        if progress is not None:
            progress(e["path"])
    return result


# ---------------------------------------------------------------- compare

# (label, key) of the rows `data compare` prints, in order: size, accuracy, length and steps, the
# level-describing shares (see metrics.level_stats), then diversity.
COMPARE_METRICS = (
    ("rows", "rows"), ("questions", "questions"), ("teacher accuracy", "teacher_accuracy"),
    ("words, mean", "words_mean"), ("words, median", "words_median"), ("words, 25th percentile", "words_q1"),
    ("words, 75th percentile", "words_q3"), ("steps, mean", "steps_mean"), ("steps, median", "steps_median"),
    ("operations, mean", "operations_mean"), ("share showing arithmetic", "shows_arithmetic_share"),
    ("share with a final check", "final_check_share"), ("share numbered steps", "numbered_share"),
    ("share on several lines", "multiline_share"), ("share stating 'The answer is'", "states_answer_share"),
    ("sub-questions, mean", "subquestions_mean"), ("distinct-1", "distinct_1"), ("distinct-2", "distinct_2"),
    ("within-question diversity", "within_question_diversity"),
)


def supervision_profile(source: str | Path, data_dir=None) -> dict:
    """What one supervision set (released name or JSONL file) looks like: metrics.supervision_metrics
    (accuracy graded where a row has a gold answer, length in words, diversity) and metrics.level_stats."""
    from cotdistill.grade import grade
    from cotdistill.metrics import level_stats, supervision_metrics

    sup = load_supervision(source, data_dir)
    if not sup.rows:
        raise CotdistillError(f"supervision {source} has no rows to compare")

    def correct(r: SupervisionRow) -> bool | None:
        return None if r.gold is None or r.kind is None else grade(r.rationale, r.gold, r.kind, r.choices).correct

    m = supervision_metrics(sup.rows, correct).as_dict()
    profile = {"name": sup.name, **level_stats([r.rationale for r in sup.rows]),
               **{k: v for k, v in m.items() if k not in ("length_mean", "length_std", "length_unit")}}
    # NaN (nothing graded; one sample per question) is not JSON: None says "not measurable"
    return {k: None if isinstance(v, float) and v != v else v for k, v in profile.items()}


def compare_supervision(a: str | Path, b: str | Path, data_dir=None) -> dict:
    """Two supervision sets side by side (e.g. a `teach` output against the released level it
    imitates): {"a": profile, "b": profile, "rows": [{metric, key, a, b, diff}]}, diff = b - a."""
    pa, pb = supervision_profile(a, data_dir), supervision_profile(b, data_dir)
    rows = []
    for label, key in COMPARE_METRICS:
        va, vb = pa.get(key), pb.get(key)
        diff = vb - va if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else None
        rows.append({"metric": label, "key": key, "a": va, "b": vb, "diff": diff})
    return {"a": pa, "b": pb, "rows": rows}
