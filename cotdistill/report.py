"""The study report: results table, the paper's three comparisons with paired tests, baselines,
supervision metrics vs. accuracy. Writes report.md (PNG plots beside it in figures/) and a
self-contained report.html (the same PNGs as data URIs), both from one list of blocks.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cotdistill import metrics, refs
from cotdistill.numerics import major_minor
from cotdistill.errors import CotdistillError
from cotdistill.provenance import atomic_write_text, write_provenance
from cotdistill.results import CellResult, read_results

BASELINES = ("answer-only", "human", "zero-shot")  # teachers that are not a teacher LLM
BASELINE_LABEL = {"answer-only": "answer-only", "human": "human rationales", "zero-shot": "zero-shot (untrained)"}
ALPHA = 0.05


# ============================================================================ loading a study


def _study_meta(study_dir: Path) -> dict:
    from cotdistill.benchmarks._files import read_text

    path = study_dir / "study.provenance.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(read_text(path))
    except ValueError as e:
        raise CotdistillError(f"{path}: not valid JSON ({e}); re-run the study to rewrite it") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config", {}), dict):
        raise CotdistillError(f"{path}: expected a JSON object with a 'config' object; re-run the study to rewrite it")
    return meta


def _predictions(study_dir: Path, slug: str, seed: Any) -> dict[tuple, bool]:
    """{(seed, question id): correct} of a finished cell."""
    path = study_dir / "cells" / slug / "eval" / "predictions.jsonl"
    out: dict[tuple, bool] = {}
    if path.is_file():
        from cotdistill.benchmarks._files import iter_json_lines, read_text

        for lineno, r in iter_json_lines(read_text(path), str(path)):
            if "id" not in r or "correct" not in r:
                raise CotdistillError(f"{path}:{lineno}: lacks field 'id' or 'correct'; re-run the study to rewrite it")
            out[(str(seed), str(r["id"]))] = bool(r["correct"])
    return out


# ============================================================================ supervision metrics


def _token_counter(student: str, cache: dict):
    """The student's tokenizer as a length function; None (length in words) if it cannot load."""
    if student not in cache:
        try:
            from cotdistill.students import load_tokenizer

            tok = load_tokenizer(student)
            cache[student] = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])
        except Exception:  # noqa: BLE001  (metrics fall back to words rather than fail the report)
            cache[student] = None
    return cache[student]


def _grade_fn(row: Any) -> bool | None:
    from cotdistill.grade import grade

    if row.gold is None or not row.kind:
        return None
    return bool(grade(row.rationale, row.gold, row.kind, row.choices).correct)


def write_supervision_metrics(study_dir: Path, data_dir: Path | None = None) -> list[dict]:
    """Metrics of every supervision set the study's cells train on (the rows training used:
    the first `limit`), cached per set; writes supervision_metrics.csv. Returns its rows."""
    from cotdistill.data import load_supervision

    study_dir = Path(study_dir)
    if data_dir is None:
        data_dir = _study_meta(study_dir).get("data_dir")
    cache_dir = study_dir / "supervision_metrics"
    tokenizers: dict = {}
    out: list[dict] = []
    seen: set = set()
    for r in read_results(study_dir):
        if r.supervision_source is None:
            continue
        source = refs.resolve(r.supervision_source, data_dir, study_dir)
        if r.supervision_kind == "teacher" and not Path(source).is_file():
            continue
        limit = r.train_limit
        key_obj = {"source": r.supervision_source, "sha256": r.supervision_sha256, "limit": limit,
                   "student": r.student_ref}
        key = json.dumps(key_obj, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        path = cache_dir / (hashlib.sha256(key.encode()).hexdigest()[:16] + ".json")
        if path.is_file():
            record = json.loads(path.read_text())
        else:
            sup = load_supervision(source, data_dir)
            rows = sup.rows[:limit] if limit else sup.rows
            student = refs.resolve(r.student_ref, data_dir, study_dir)
            m = metrics.supervision_metrics(rows, _grade_fn, _token_counter(student, tokenizers))
            record = {
                "supervision": r.supervision,
                "dataset": r.dataset,
                "teacher": r.teacher,
                "level": r.level,
                "format": r.format,
                "student_tokenizer": r.student,
                "limit": limit,
                **m.as_dict(),
            }
            atomic_write_text(path, json.dumps(record, indent=2) + "\n")
        out.append(record)
    if out:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(out[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(out)
        atomic_write_text(study_dir / "supervision_metrics.csv", buf.getvalue())
    return out


# ============================================================================ conditions


@dataclass
class Condition:
    """All seeds of one (dataset, student, teacher, level, format)."""

    dataset: str
    student: str
    teacher: str
    level: int | None
    format: str
    rows: list[CellResult] = field(default_factory=list)
    correct: dict[tuple, bool] = field(default_factory=dict)  # (seed, question id) -> correct

    @property
    def accuracy(self) -> float:
        if self.correct:
            return sum(self.correct.values()) / len(self.correct)
        accs = [r.accuracy for r in self.rows if r.accuracy is not None]
        return sum(accs) / len(accs) if accs else float("nan")

    @property
    def ci(self) -> tuple[float, float]:
        if len(self.rows) == 1 and self.rows[0].ci_low is not None:
            return self.rows[0].ci_low, self.rows[0].ci_high
        return metrics.bootstrap_ci(list(self.correct.values())) if self.correct else (float("nan"),) * 2

    @property
    def name(self) -> str:
        if self.teacher in BASELINES:
            return BASELINE_LABEL[self.teacher]
        lvl = f" L{self.level}" if self.level is not None else ""
        fmt = f" {self.format}" if self.format != "cot" else ""
        return f"{self.teacher}{lvl}{fmt}"

    @property
    def seeds(self) -> set[str]:
        return {k[0] for k in self.correct}

    @property
    def numerics(self) -> set[tuple]:
        return {_numerics_key(r) for r in self.rows}


def _numerics_key(r: CellResult) -> tuple:
    """What made a row's accuracy, as far as it changes answers (patch versions do not count)."""
    return (r.train_dtype, r.eval_dtype, r.device, r.engine, major_minor(r.torch or ""),
            major_minor(r.transformers or ""), r.protocol, r.decoding)


def mixes_numerics(a: Condition, b: Condition) -> bool:
    """Does a comparison of A and B mix numerics? A zero-shot side has no training to compare."""
    keys = a.numerics | b.numerics
    evals = {k[1:] for k in keys}
    trains = {k[0] for k in keys if k[0] is not None}
    return len(evals) > 1 or len(trains) > 1


def _numerics_short(r: CellResult) -> str:
    if not r.eval_dtype:
        return "–"
    train = f"train {r.train_dtype}, " if r.train_dtype else ""
    return f"{train}eval {r.eval_dtype} {r.device}/{r.engine}, {r.protocol}/{r.decoding}"


def _conditions(study_dir: Path, rows: list[CellResult]) -> list[Condition]:
    by: dict[tuple, Condition] = {}
    for r in rows:
        if r.status != "done" or r.accuracy is None:
            continue
        key = (r.dataset, r.student, r.teacher, r.level, r.format)
        c = by.setdefault(key, Condition(*key))
        c.rows.append(r)
        c.correct.update(_predictions(study_dir, r.cell, r.seed))
    return list(by.values())


def compare(a: Condition, b: Condition) -> metrics.PairedTest:
    """Paired test of A vs B on the questions (and seeds) both were graded on. When their seeds
    differ (e.g. the zero-shot baseline has one), questions are paired within each side's first seed."""
    if a.seeds == b.seeds:
        xa, xb = metrics.pair_up(a.correct, b.correct)
    else:
        sa, sb = min(a.seeds), min(b.seeds)
        xa, xb = metrics.pair_up(
            {q: v for (s, q), v in a.correct.items() if s == sa}, {q: v for (s, q), v in b.correct.items() if s == sb}
        )
    return metrics.paired_test(xa, xb)


def headline(study_dir: Path) -> str | None:
    """What the study found, in plain words with the paired test: per (dataset, student), the best
    CoT-trained cell against the same student's zero-shot cell. None when no such pair exists."""
    study_dir = Path(study_dir)
    return _headline(_conditions(study_dir, read_results(study_dir)))


def _headline(conds: list[Condition]) -> str | None:
    sentences = []
    for zero in sorted((c for c in conds if c.teacher == "zero-shot"), key=lambda c: (c.dataset, c.student)):
        trained = [c for c in conds if c.teacher not in BASELINES and (c.dataset, c.student) == (zero.dataset, zero.student)]
        if trained:
            sentences.append(_finding(max(trained, key=lambda c: c.accuracy), zero))
    return " ".join(sentences) or None


def _finding(best: Condition, zero: Condition) -> str:
    """One sentence: fine-tuning on `best`'s rationales moved accuracy from zero-shot's to best's."""
    t = compare(best, zero)
    verb = "raised" if t.diff > 0 else "lowered" if t.diff < 0 else "did not change"
    change = f"from {_pct(t.acc_b)} % (zero-shot) to {_pct(t.acc_a)} %" if t.diff else f"({_pct(t.acc_a)} %, as zero-shot)"
    examples = {r.train_examples for r in best.rows} - {None}
    size = f"{int(float(examples.pop()))} " if len(examples) == 1 else ""
    what = f"{best.teacher} level-{best.level}" if best.level is not None else best.teacher
    fmt = f" {best.format}" if best.format != "cot" else ""
    questions = len({q for _, q in best.correct})
    p = "p < 0.001" if t.mcnemar_p < 0.001 else f"p = {_p(t.mcnemar_p)}"
    verdict = "a real difference" if t.mcnemar_p < ALPHA else "not a significant difference (p ≥ 0.05)"
    return (f"{best.student}: fine-tuning on {size}{what}{fmt} rationales {verb} its {best.dataset} accuracy {change} "
            f"on {questions} test questions (McNemar {p}; {t.a_only} questions right only after training, "
            f"{t.b_only} only before): {verdict}.")


def _test_row(a: Condition, b: Condition, t: metrics.PairedTest | None = None) -> list[str]:
    """A row of TEST_HEADERS; pass `t` when compare(a, b) was already computed (it bootstraps)."""
    t = t or compare(a, b)
    verdict = "yes" if t.mcnemar_p < ALPHA else "no"
    if mixes_numerics(a, b):
        verdict += " ⚠ mixed numerics"
    return [
        a.name, b.name, _pct(t.acc_a), _pct(t.acc_b), f"{100 * t.diff:+.1f} [{100 * t.diff_ci_low:+.1f}, {100 * t.diff_ci_high:+.1f}]",
        f"{t.a_only}/{t.b_only}", _p(t.mcnemar_p), _p(t.bootstrap_p), str(t.n), verdict,
    ]  # fmt: skip


TEST_HEADERS = ["A", "B", "acc A", "acc B", "A − B (pp, 95 % CI)", "A only / B only", "McNemar p",
                "bootstrap p", "n", "real (p<0.05)?"]  # fmt: skip


def _pct(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _p(v: float) -> str:
    return "–" if v is None or math.isnan(v) else (f"{v:.3f}" if v >= 0.001 else f"{v:.1e}")


def _num(v: Any, fmt: str = "{:.2f}") -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "–" if v in (None, "") else str(v)
    return "–" if math.isnan(f) else fmt.format(f)


# ============================================================================ figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    # Figure names hold names from results.jsonl: keep them one plain file name inside figures/.
    path = path.parent / re.sub(r"[^A-Za-z0-9_.=-]+", "_", path.name).lstrip(".")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    os.replace(tmp, path)
    return path


def _errbar(c: Condition) -> tuple[float, float]:
    lo, hi = c.ci
    acc = c.accuracy
    return (max(0.0, acc - lo) if not math.isnan(lo) else 0.0, max(0.0, hi - acc) if not math.isnan(hi) else 0.0)


def plot_granularity(conds: list[Condition], baselines: list[Condition], title: str, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    lines: dict[tuple, list[Condition]] = defaultdict(list)
    for c in conds:
        lines[(c.student, c.teacher)].append(c)
    students = sorted({c.student for c in conds} | {b.student for b in baselines})
    color_of = {s: colors[i % len(colors)] for i, s in enumerate(students)}
    markers = "osD^v<>"
    teachers = sorted({t for _, t in lines})
    for (student, teacher), cs in sorted(lines.items()):
        cs = sorted(cs, key=lambda c: c.level)
        errs = list(zip(*[_errbar(c) for c in cs]))
        ax.errorbar([c.level for c in cs], [100 * c.accuracy for c in cs], yerr=[[100 * e for e in errs[0]], [100 * e for e in errs[1]]],
                    marker=markers[teachers.index(teacher) % len(markers)], capsize=4, color=color_of[student],
                    label=f"{student} · {teacher}")  # fmt: skip
    styles = {"answer-only": ":", "human": "--", "zero-shot": "-."}
    for b in baselines:
        ax.axhline(100 * b.accuracy, linestyle=styles.get(b.teacher, ":"), color=color_of[b.student], alpha=0.8,
                   label=f"{b.student} · {b.name}")  # fmt: skip
    ax.set_xlabel("granularity level (1 = most condensed, 6 = every step)")
    ax.set_ylabel("student accuracy (%), 95 % CI")
    ax.set_xticks(range(1, 7))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def plot_bars(groups: dict[str, list[Condition]], title: str, xlabel: str, path: Path, annotate: dict | None = None) -> Path:
    """Grouped bars: one group per student, one bar per condition, CI error bars."""
    plt = _plt()
    names = sorted({c.name for cs in groups.values() for c in cs})
    fig, ax = plt.subplots(figsize=(max(5.5, 1.1 * len(names) * len(groups) + 2), 4))
    width = 0.8 / max(len(names), 1)
    for gi, (student, cs) in enumerate(sorted(groups.items())):
        by_name = {c.name: c for c in cs}
        for ni, name in enumerate(names):
            if name not in by_name:
                continue
            c = by_name[name]
            lo, hi = _errbar(c)
            x = gi + (ni - (len(names) - 1) / 2) * width
            ax.bar(x, 100 * c.accuracy, width * 0.9, yerr=[[100 * lo], [100 * hi]], capsize=3,
                   color=f"C{ni}", label=name if gi == 0 else None)  # fmt: skip
            if annotate and name in annotate:
                ax.annotate(annotate[name], (x, 100 * (c.accuracy + hi)), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(sorted(groups))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("student accuracy (%), 95 % CI")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_metric_scatter(points: list[tuple[dict, float, str]], names: list[str], path: Path) -> Path:
    """One panel per supervision metric: metric value (x) vs student accuracy (y), one colour per student."""
    plt = _plt()
    cols = 3
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    students = sorted({s for _, _, s in points})
    for ax, name in zip(axes.flat, names):
        for si, s in enumerate(students):
            xs = [m.get(name) for m, _, st in points if st == s]
            ys = [100 * a for m, a, st in points if st == s]
            ax.scatter(xs, ys, color=f"C{si}", label=s, s=18)
        ax.set_xlabel(name.replace("_", " "), fontsize=8)
        ax.set_ylabel("accuracy (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


# ============================================================================ document blocks + renderers


@dataclass
class Doc:
    blocks: list[tuple] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, headers: list[str], rows: list[list[str]]) -> None:
        if rows:
            self.blocks.append(("table", headers, rows))

    def img(self, path: Path, alt: str) -> None:
        self.blocks.append(("img", path, alt))


def render_markdown(doc: Doc, base: Path) -> str:
    out = []
    for b in doc.blocks:
        if b[0] == "h":
            out.append("#" * b[1] + " " + b[2])
        elif b[0] == "p":
            out.append(b[1])
        elif b[0] == "table":
            esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
            out.append("| " + " | ".join(map(esc, b[1])) + " |")
            out.append("|" + "---|" * len(b[1]))
            out.extend("| " + " | ".join(map(esc, r)) + " |" for r in b[2])
        elif b[0] == "img":
            out.append(f"![{b[2]}]({b[1].relative_to(base).as_posix()})")
        out.append("")
    return "\n".join(out)


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;text-align:left}
th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}img{max-width:100%;border:1px solid #eee}
code{background:#f3f3f3;padding:0 3px}"""


def _inline_md(text: str) -> str:
    """The little inline markdown the report uses (**bold**, `code`) as HTML, everything else escaped."""
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def render_html(doc: Doc, title: str) -> str:
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
           f"<style>{_CSS}</style></head><body>"]  # fmt: skip
    for b in doc.blocks:
        if b[0] == "h":
            out.append(f"<h{b[1]}>{_inline_md(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            out.append(f"<p>{_inline_md(b[1])}</p>")
        elif b[0] == "table":
            out.append("<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in b[1]) + "</tr>")
            out.extend("<tr>" + "".join(f"<td>{_inline_md(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
            out.append("</table>")
        elif b[0] == "img":
            data = base64.b64encode(b[1].read_bytes()).decode()
            out.append(f"<p><img alt='{html.escape(b[2])}' src='data:image/png;base64,{data}'></p>")
    out.append("</body></html>")
    return "\n".join(out)


# ============================================================================ the report


def write_report(study_dir: Path, data_dir: Path | None = None) -> Path:
    """Write report.md, report.html and figures/ for a study folder; return the HTML path."""
    study_dir = Path(study_dir)
    rows = read_results(study_dir)
    meta = _study_meta(study_dir)
    cfg = meta.get("config", {})
    title = cfg.get("name") or study_dir.name
    sup_metrics = write_supervision_metrics(study_dir, data_dir)
    conds = _conditions(study_dir, rows)
    fig_dir = study_dir / "figures"
    doc = Doc()
    doc.h(1, f"Study report: {title}")
    found = _headline(conds)
    if found:  # the result first, in words, before any table
        doc.p(f"**Finding:** {found}")
    if cfg.get("description"):
        doc.p(cfg["description"])
    counts = defaultdict(int)
    for r in rows:
        counts[r.status] += 1
    doc.p(
        f"{len(rows)} cells: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + f". Study folder `{study_dir}`; per-cell predictions in `cells/<cell>/eval/predictions.jsonl`; "
        "all numbers in `results.csv` and `supervision_metrics.csv`."
    )  # fmt: skip
    doc.p(
        "How to read the tests: every comparison below pairs the two systems on the same test questions "
        "(and seeds). **McNemar p** is the exact two-sided McNemar test on the questions exactly one of them "
        "got right (`A only / B only`); **bootstrap p** and the 95 % CI of the difference come from 5000 "
        "paired bootstrap resamples. A difference is called real when McNemar p < 0.05; no correction for "
        "multiple comparisons is applied, so read borderline p-values with care."
    )

    _results_section(doc, rows)
    for dataset in sorted({c.dataset for c in conds}):
        dconds = [c for c in conds if c.dataset == dataset]
        _granularity_section(doc, dataset, dconds, fig_dir)
        _format_section(doc, dataset, dconds, fig_dir)
        _teacher_section(doc, dataset, dconds, fig_dir, sup_metrics)
        _baseline_section(doc, dataset, dconds)
    for dataset in sorted({c.dataset for c in conds}):
        _matthew_section(doc, dataset, [c for c in conds if c.dataset == dataset], fig_dir)
    _metrics_section(doc, rows, sup_metrics, study_dir, fig_dir)
    failed = [r for r in rows if r.status == "failed"]
    if failed:
        doc.h(2, "Failed cells")
        doc.p("These cells raised an error; re-running the study retries them (details in `jobs/<job>/error.json`).")
        doc.table(["cell", "error"], [[r.cell, r.error or ""] for r in failed])

    md = render_markdown(doc, study_dir)
    atomic_write_text(study_dir / "report.md", md)
    out = study_dir / "report.html"
    atomic_write_text(out, render_html(doc, f"cotdistill study: {title}"))
    write_provenance(study_dir / "report.provenance.json", {"study_dir": str(study_dir)},
                     cells=len(rows), figures=sorted(p.name for p in fig_dir.glob("*.png")) if fig_dir.is_dir() else [])
    return out


def _results_section(doc: Doc, rows: list[CellResult]) -> None:
    doc.h(2, "Results")
    headers = ["dataset", "student", "teacher", "level", "format", "seed", "train ex.", "accuracy %", "95 % CI",
               "mean out tok", "train s", "eval s", "train tok/s", "eval tok/s", "numerics", "status"]  # fmt: skip
    table = []
    for r in sorted(rows, key=lambda r: (r.dataset, r.student, r.teacher, r.level or 0, r.format, r.seed)):
        ci = f"{_pct(r.ci_low)}–{_pct(r.ci_high)}" if r.ci_low is not None else "–"
        table.append([r.dataset, r.student, r.teacher, _num(r.level, "{:.0f}"), r.format, str(r.seed),
                      _num(r.train_examples, "{:.0f}"), _pct(r.accuracy), ci,
                      _num(r.mean_output_tokens, "{:.1f}"), _num(r.train_seconds, "{:.0f}"),
                      _num(r.eval_seconds, "{:.0f}"), _num(r.train_tokens_per_s, "{:.0f}"),
                      _num(r.eval_tokens_per_s, "{:.1f}"), _numerics_short(r), r.status])  # fmt: skip
    doc.table(headers, table)
    short = [r for r in rows if r.teach_failed]
    if short:  # allow_partial: trained on fewer questions than asked for; say so next to the numbers
        doc.p("**Partial supervision** (allow_partial): the teacher could not answer every request for "
              + "; ".join(f"{r.label} ({r.teach_failed} missing)" for r in short)
              + ". These cells trained on fewer questions than the others.")
    _numerics_note(doc, rows)


def _numerics_note(doc: Doc, rows: list[CellResult]) -> None:
    """Which numerics made the numbers; a warning when they differ between cells."""
    done = [r for r in rows if r.status == "done" and r.eval_dtype]
    kinds = sorted({_numerics_key(r) for r in done}, key=str)
    if not kinds:
        return
    made = sorted({r.numerics for r in done if r.numerics} | {f"training {r.train_numerics}" for r in done if r.train_numerics}
                  | {f"protocol {r.protocol}, decoding {r.decoding}" for r in done})
    if len({k[1:] for k in kinds}) == 1 and len({k[0] for k in kinds if k[0]}) <= 1:
        doc.p("Numerics: every number above was made with " + "; ".join(f"`{m}`" for m in made)
              + " (dtype/device/engine, versions; how answers were generated and read). Other numerics give other "
              "answers (docs/numerics.md); the paper's protocol reads only 'The answer is X' (cotdistill/protocol.py).")
        return
    doc.p(f"⚠ **Mixed numerics**: these cells were computed under {len(kinds)} different precisions, devices, "
          "engines, library versions or grading protocols (" + "; ".join(f"`{m}`" for m in made) + "). Accuracy differences between "
          "them may come from the numerics rather than the supervision; paired tests that mix them are marked "
          "⚠ mixed numerics.")


def _granularity_section(doc: Doc, dataset: str, conds: list[Condition], fig_dir: Path) -> None:
    """Finding 1: accuracy vs granularity per student (and teacher), plain CoT format."""
    lines: dict[tuple, list[Condition]] = defaultdict(list)
    for c in conds:
        if c.teacher not in BASELINES and c.level is not None and c.format == "cot":
            lines[(c.student, c.teacher)].append(c)
    lines = {k: v for k, v in lines.items() if len({c.level for c in v}) >= 2}
    if not lines:
        return
    doc.h(2, f"{dataset}: accuracy vs. granularity (finding 1)")
    plotted = [c for v in lines.values() for c in v]
    baselines = [c for c in conds if c.teacher in BASELINES and c.student in {s for s, _ in lines}]
    fig = plot_granularity(plotted, baselines, f"{dataset}: accuracy vs. granularity", fig_dir / f"{dataset}_granularity.png")
    doc.img(fig, f"{dataset} accuracy vs granularity")
    doc.p("Each point is a student fine-tuned on rationales of one granularity level (plain CoT format); "
          "error bars are 95 % bootstrap intervals; horizontal lines are the baselines of the same colour.")
    tests, best_levels = [], {}
    for (student, teacher), cs in sorted(lines.items()):
        cs = sorted(cs, key=lambda c: c.level)
        best = max(cs, key=lambda c: c.accuracy)
        worst = min(cs, key=lambda c: c.accuracy)
        best_levels[(student, teacher)] = best.level
        if best.accuracy == worst.accuracy:
            doc.p(f"**{student}** on {teacher} rationales: every level scores {_pct(best.accuracy)} %.")
        else:
            t = compare(best, worst)
            doc.p(f"**{student}** on {teacher} rationales: best at level {best.level} ({_pct(best.accuracy)} %), "
                  f"worst at level {worst.level} ({_pct(worst.accuracy)} %); the difference "
                  f"{'is' if t.mcnemar_p < ALPHA else 'is not'} significant (McNemar p = {_p(t.mcnemar_p)}, n = {t.n})"
                  + (" — ⚠ but the two were computed under different numerics. " if mixes_numerics(best, worst) else ". ")
                  + _shape(cs))  # fmt: skip
            tests.append([student] + _test_row(best, worst, t))
        for a, b in zip(cs, cs[1:]):
            if {a.level, b.level} != {best.level, worst.level}:  # that pair is already in the table
                tests.append([student] + _test_row(b, a))
    students = sorted({s for s, _ in best_levels})
    if len(students) > 1:
        doc.p("Best level per student: " + "; ".join(f"{s} ({t}): level {lvl}" for (s, t), lvl in sorted(best_levels.items()))
              + ". The paper's first finding is that this optimum differs between students (stronger students gain "
              "from finer steps, weaker ones from simpler rationales).")  # fmt: skip
    doc.h(3, "Paired tests: best vs. worst level, and each level vs. the one below")
    doc.table(["student"] + TEST_HEADERS, tests)


def _shape(cs: list[Condition]) -> str:
    """Words for the shape of an accuracy-vs-level curve: monotone or not."""
    accs = [c.accuracy for c in cs]
    if len(accs) < 3:
        return ""
    diffs = [b - a for a, b in zip(accs, accs[1:])]
    if all(d >= 0 for d in diffs):
        return "Accuracy never falls as the level rises (monotone)."
    if all(d <= 0 for d in diffs):
        return "Accuracy never rises with the level (monotone)."
    return "The curve is not monotone in the level."


def _groups_that_vary(conds: list[Condition], key: Callable, varying: Callable) -> dict[tuple, list[Condition]]:
    """Trained (non-baseline, levelled) conditions grouped by `key`, keeping groups where `varying` takes >= 2 values."""
    groups: dict[tuple, list[Condition]] = defaultdict(list)
    for c in conds:
        if c.teacher not in BASELINES and c.level is not None:
            groups[key(c)].append(c)
    return {k: v for k, v in groups.items() if len({varying(c) for c in v}) >= 2}


def _format_section(doc: Doc, dataset: str, conds: list[Condition], fig_dir: Path) -> None:
    """Finding 2: rationale formats at a fixed level."""
    groups = _groups_that_vary(conds, lambda c: (c.teacher, c.level), lambda c: c.format)
    if not groups:
        return
    doc.h(2, f"{dataset}: rationale format at a fixed level (finding 2)")
    tests = []
    for (teacher, level), cs in sorted(groups.items()):
        by_student: dict[str, list[Condition]] = defaultdict(list)
        for c in cs:
            by_student[c.student].append(c)
        fig = plot_bars(by_student, f"{dataset}: formats, {teacher} level {level}", "student",
                        fig_dir / f"{dataset}_formats_{teacher}_l{level}.png")  # fmt: skip
        doc.img(fig, f"{dataset} formats at level {level}")
        for student, scs in sorted(by_student.items()):
            ref = next((c for c in scs if c.format == "cot"), None) or max(scs, key=lambda c: c.accuracy)
            spread = max(c.accuracy for c in scs) - min(c.accuracy for c in scs)
            sig = []
            for c in sorted(scs, key=lambda c: c.format):
                if c is ref:
                    continue
                t = compare(c, ref)
                tests.append([student] + _test_row(c, ref, t))
                if t.mcnemar_p < ALPHA:
                    sig.append(c.format)
            doc.p(f"**{student}**, {teacher} level {level}: accuracy across formats spans {100 * spread:.1f} points; "
                  + (f"formats significantly different from {ref.name}: {', '.join(sig)}." if sig
                     else f"no format differs significantly from {ref.name}."))  # fmt: skip
    doc.h(3, "Paired tests: each format vs. plain CoT")
    doc.table(["student"] + TEST_HEADERS, tests)


def _teacher_section(doc: Doc, dataset: str, conds: list[Condition], fig_dir: Path, sup_metrics: list[dict]) -> None:
    """Finding 3: teachers at a fixed level and format; is the most accurate teacher the best one?"""
    groups = _groups_that_vary(conds, lambda c: (c.level, c.format), lambda c: c.teacher)
    if not groups:
        return
    doc.h(2, f"{dataset}: teachers (finding 3)")
    tests = []
    for (level, fmt), cs in sorted(groups.items()):
        teacher_acc = {m["teacher"]: m["teacher_accuracy"] for m in sup_metrics
                       if m["dataset"] == dataset and m["level"] == level and m["format"] == fmt}  # fmt: skip
        by_student: dict[str, list[Condition]] = defaultdict(list)
        for c in cs:
            by_student[c.student].append(c)
        note = {f"{t} L{level}" + (f" {fmt}" if fmt != "cot" else ""): f"teacher {_pct(a)} %" for t, a in teacher_acc.items()}
        fig = plot_bars(by_student, f"{dataset}: teachers at level {level} ({fmt})", "student",
                        fig_dir / f"{dataset}_teachers_l{level}_{fmt}.png", annotate=note)  # fmt: skip
        doc.img(fig, f"{dataset} teachers at level {level}")
        doc.p("Bars: student accuracy; labels: the teacher's own accuracy on the training questions.")
        for student, scs in sorted(by_student.items()):
            best = max(scs, key=lambda c: c.accuracy)
            most_accurate = max(scs, key=lambda c: teacher_acc.get(c.teacher, float("-inf")))
            for c in sorted(scs, key=lambda c: c.teacher):
                if c is not best:
                    tests.append([student] + _test_row(best, c))
            same = best.teacher == most_accurate.teacher
            doc.p(f"**{student}**, level {level}: the best teacher for this student is {best.teacher} "
                  f"({_pct(best.accuracy)} %); the most accurate teacher is {most_accurate.teacher} "
                  f"(teacher accuracy {_pct(teacher_acc.get(most_accurate.teacher))} %). "
                  + ("They coincide here." if same else "They differ: a more accurate teacher did not make a better student "
                     "(the paper's third finding; see the supervision metrics below for what else differs)."))  # fmt: skip
    doc.h(3, "Paired tests: best teacher vs. each other teacher")
    doc.table(["student"] + TEST_HEADERS, tests)


def _baseline_section(doc: Doc, dataset: str, conds: list[Condition]) -> None:
    base = [c for c in conds if c.teacher in BASELINES]
    cot = [c for c in conds if c.teacher not in BASELINES]
    if not base:
        return
    doc.h(2, f"{dataset}: baselines (answer-only, human, zero-shot)")
    tests = []
    for student in sorted({c.student for c in base}):
        best = max((c for c in cot if c.student == student), key=lambda c: c.accuracy, default=None)
        sbase = sorted((c for c in base if c.student == student), key=lambda c: c.teacher)
        doc.p(f"**{student}**: " + "; ".join(f"{b.name} {_pct(b.accuracy)} %" for b in sbase)
              + (f"; best CoT-trained cell ({best.name}) {_pct(best.accuracy)} %." if best else "."))  # fmt: skip
        if best:
            tests.extend([student] + _test_row(best, b) for b in sbase)
        others = [b for b in sbase if b.teacher != "zero-shot"]
        zero = next((b for b in sbase if b.teacher == "zero-shot"), None)
        if zero:
            tests.extend([student] + _test_row(b, zero) for b in others)
    doc.h(3, "Paired tests: best CoT cell vs. each baseline (and trained baselines vs. zero-shot)")
    doc.table(["student"] + TEST_HEADERS, tests)


@dataclass
class StudentGain:
    """One student's gain from CoT supervision on one dataset (the Matthew-effect section)."""

    student: str
    strength: float  # base strength: zero-shot accuracy (answer-only where there is no zero-shot cell)
    tiebreak: float  # answer-only accuracy: orders students of equal zero-shot accuracy
    best: Condition  # the best CoT-trained condition (chosen on these same test questions: optimistic)
    zero: Condition | None
    answer_only: Condition | None
    vs_zero: metrics.PairedTest | None
    vs_answer_only: metrics.PairedTest | None


def student_gains(conds: list[Condition]) -> list[StudentGain]:
    """Per student of one dataset: best CoT cell minus answer-only and minus zero-shot, with paired tests."""
    out = []
    for student in sorted({c.student for c in conds}):
        mine = [c for c in conds if c.student == student]
        cot = [c for c in mine if c.teacher not in BASELINES]
        zero = next((c for c in mine if c.teacher == "zero-shot"), None)
        ans = next((c for c in mine if c.teacher == "answer-only"), None)
        if not cot or not (zero or ans):
            continue
        best = max(cot, key=lambda c: c.accuracy)
        base = zero or ans
        tiebreak = ans.accuracy if (ans and zero) else 0.0
        out.append(StudentGain(student, base.accuracy, tiebreak, best, zero, ans,
                               compare(best, zero) if zero else None, compare(best, ans) if ans else None))
    return sorted(out, key=lambda g: (g.strength, g.tiebreak))


def _first_seed(c: Condition) -> dict:
    s = min(c.seeds)
    return {q: v for (seed, q), v in c.correct.items() if seed == s}


def plot_gains(gains: list[StudentGain], title: str, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for attr, label, marker in (("vs_answer_only", "best CoT − answer-only", "o"), ("vs_zero", "best CoT − zero-shot", "s")):
        pts = [(g.strength, getattr(g, attr), g.student) for g in gains if getattr(g, attr) is not None]
        if not pts:
            continue
        xs = [100 * x for x, _, _ in pts]
        ys = [100 * t.diff for _, t, _ in pts]
        err = [[100 * (t.diff - t.diff_ci_low) for _, t, _ in pts], [100 * (t.diff_ci_high - t.diff) for _, t, _ in pts]]
        ax.errorbar(xs, ys, yerr=err, fmt=marker + "-", capsize=4, label=label)
        for x, y, (_, _, name) in zip(xs, ys, pts):
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("base strength: zero-shot accuracy (%)")
    ax.set_ylabel("gain from CoT supervision (pp, 95 % CI)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _matthew_section(doc: Doc, dataset: str, conds: list[Condition], fig_dir: Path) -> None:
    """The paper's "Matthew effect": do stronger students gain more from CoT distillation?"""
    gains = student_gains(conds)
    if len(gains) < 2:
        return
    doc.h(2, f"{dataset}: do stronger students gain more? (Matthew effect)")
    doc.p("Each student's gain from CoT supervision is its best CoT-trained cell minus its answer-only cell and minus "
          "its untrained (zero-shot) self, on the same test questions; base strength is the zero-shot accuracy (ties "
          "broken by answer-only accuracy). The best cell is chosen on these same questions, so each gain is an "
          "optimistic estimate.")  # fmt: skip
    doc.img(plot_gains(gains, f"{dataset}: gain vs. base strength", fig_dir / f"{dataset}_matthew.png"), "gain vs. strength")
    rows = []
    for g in gains:
        ao = g.vs_answer_only
        zs = g.vs_zero
        rows.append([g.student, _pct(g.zero.accuracy if g.zero else None), g.best.name, _pct(g.best.accuracy),
                     f"{100 * ao.diff:+.1f} (p {_p(ao.mcnemar_p)})" if ao else "–",
                     f"{100 * zs.diff:+.1f} (p {_p(zs.mcnemar_p)})" if zs else "–"])  # fmt: skip
    doc.table(["student (weakest first)", "zero-shot %", "best CoT cell", "best %", "gain vs answer-only (pp, McNemar p)",
               "gain vs zero-shot (pp, McNemar p)"], rows)  # fmt: skip
    weak, strong = gains[0], gains[-1]
    verdicts = []
    for base_attr, what in (("answer_only", "answer-only"), ("zero", "zero-shot")):
        a_base, b_base = getattr(strong, base_attr), getattr(weak, base_attr)
        if a_base is None or b_base is None:
            continue
        t = metrics.gain_difference(_first_seed(strong.best), _first_seed(a_base), _first_seed(weak.best), _first_seed(b_base))
        real = t.bootstrap_p < ALPHA
        direction = "more" if t.diff > 0 else "less"
        verdicts.append(
            f"Over {what}, the strongest student ({strong.student}) gains {100 * t.gain_a:+.1f} pp and the weakest "
            f"({weak.student}) {100 * t.gain_b:+.1f} pp: a difference of {100 * t.diff:+.1f} pp "
            f"[{100 * t.diff_ci_low:+.1f}, {100 * t.diff_ci_high:+.1f}] (paired bootstrap p {_p(t.bootstrap_p)}, "
            f"n = {t.n}); "
            + (f"the stronger student gains significantly {direction}." if real
               else "the difference is not significant, so these data neither show nor rule out a Matthew effect.")
        )  # fmt: skip
    if len(gains) >= 3:
        c = metrics.correlate("gain", [g.strength for g in gains],
                              [(g.vs_answer_only or g.vs_zero).diff for g in gains])  # fmt: skip
        verdicts.append(f"Across {c.n} students, Spearman ρ between base strength and gain is {c.spearman:.2f} "
                        f"(p {_p(c.spearman_p) if _finite(c.spearman_p) else '–'}).")  # fmt: skip
    for v in verdicts:
        doc.p(v)


def _metrics_section(doc: Doc, rows: list[dict], sup_metrics: list[dict], study_dir: Path, fig_dir: Path) -> None:
    if not sup_metrics:
        return
    doc.h(2, "Supervision metrics vs. student accuracy")
    unit = sup_metrics[0]["length_unit"]
    headers = ["supervision", "tokenizer", "rows", "teacher acc %", f"length ({unit}) mean ± sd", "steps",
               "operations", "sub-questions", "distinct-1", "distinct-2", "within-question div."]  # fmt: skip
    doc.table(headers, [[m["supervision"], m["student_tokenizer"], str(m["rows"]), _pct(m["teacher_accuracy"]),
                         f"{_num(m['length_mean'], '{:.1f}')} ± {_num(m['length_std'], '{:.1f}')}",
                         _num(m["steps_mean"], "{:.1f}"), _num(m["operations_mean"], "{:.2f}"),
                         _num(m["subquestions_mean"], "{:.2f}"), _num(m["distinct_1"], "{:.3f}"),
                         _num(m["distinct_2"], "{:.3f}"), _num(m["within_question_diversity"], "{:.3f}")]
                        for m in sup_metrics])  # fmt: skip
    doc.p("Teacher accuracy grades each rationale's final answer against the gold answer of its training "
          "question; length is in tokens of the student's tokenizer (words if it could not be loaded); steps are "
          "lines or sentences; operations are written arithmetic operations; distinct-n is unique n-grams / all "
          "n-grams across the set; within-question diversity is the mean pairwise bigram distance between a "
          "question's samples (– when each question has one rationale).")
    points = _metric_points(rows, sup_metrics, study_dir)
    if len(points) < 3:
        doc.p(f"Correlations need at least 3 trained cells with supervision metrics; this study has {len(points)}.")
        return
    names = [n for n in metrics.CORRELATED_METRICS if any(_finite(m.get(n)) for m, _, _ in points)]
    corr = [metrics.correlate(n, [m.get(n) for m, _, _ in points], [a for _, a, _ in points]) for n in names]
    fig = plot_metric_scatter(points, names, fig_dir / "supervision_metrics_vs_accuracy.png")
    doc.img(fig, "supervision metrics vs accuracy")
    doc.p(f"Correlation of each metric with student accuracy across the study's {len(points)} trained cells "
          "(all students and datasets pooled; – where a metric is constant or has < 3 values).")  # fmt: skip
    doc.table(["metric", "n", "Spearman ρ", "p", "Pearson r", "p"],
              [[c.metric, str(c.n), _num(c.spearman, "{:+.2f}"), _p(c.spearman_p), _num(c.pearson, "{:+.2f}"),
                _p(c.pearson_p)] for c in corr])  # fmt: skip
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(corr[0].as_dict()), lineterminator="\n")
    w.writeheader()
    w.writerows(c.as_dict() for c in corr)
    atomic_write_text(study_dir / "supervision_correlations.csv", buf.getvalue())


def _metric_points(rows: list[CellResult], sup_metrics: list[dict], study_dir: Path) -> list[tuple[dict, float, str]]:
    """(metrics of the cell's supervision, cell accuracy, student) for every finished trained cell."""
    by_key = {}
    for m in sup_metrics:
        by_key[(m["supervision"], m["dataset"], m["limit"], m["student_tokenizer"])] = m
    points = []
    for r in rows:
        if r.status != "done" or r.accuracy is None or r.supervision_kind == "none":
            continue
        m = by_key.get((r.supervision, r.dataset, r.train_limit, r.student))
        if m:
            points.append((m, r.accuracy, r.student))
    return points


def _finite(v: Any) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
