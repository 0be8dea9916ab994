"""`cotdistill data list|audit|fetch` and `cotdistill grade`: parse, call the library, print."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cotdistill.checks import check_out_file
from cotdistill.cli.app import DataDir, app
from cotdistill.errors import CotdistillError

data_app = typer.Typer(name="data", help="The data directory: list, audit and fetch benchmarks and released rationales.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")


def _table(title: str, columns: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*["-" if v is None else str(v) for v in r])
    Console(width=200).print(t)


@data_app.command("list")
def list_cmd(
    dataset: Annotated[Optional[str], typer.Option(help="Only this benchmark (svamp, gsm8k, aqua, math, csqa, obqa, strategyqa).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Benchmarks with their split sizes, and every released supervision source with its row count."""
    from cotdistill.data import describe_data

    info = describe_data(dataset, data_dir)
    _table("benchmarks", ["dataset", *info["splits"]],
           [[d, *[sizes.get(s) for s in info["splits"]]] for d, sizes in info["benchmarks"].items()])
    _table("supervision sources", ["source", "rows", "file"],
           [[s["source"], s["rows"] if s["available"] else "unavailable", s["file"]] for s in info["sources"]])
    n_avail = sum(s["available"] for s in info["sources"])
    typer.echo(f"{n_avail} of {len(info['sources'])} sources available in {info['data_dir']}")


@data_app.command("audit")
def audit_cmd(
    dataset: Annotated[Optional[str], typer.Option(help="Only this benchmark's sources.")] = None,
    tokenizer: Annotated[str, typer.Option(help="Tokenizer for lengths in tokens: smollm2-135m, gemma3-270m, a folder, a .gguf, or 'none'.")] = "smollm2-135m",
    out: Annotated[Optional[Path], typer.Option(help="Also write the table as .csv or .json.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Per source: rows, joined rows, teacher accuracy under the grader, mean length, share stating its answer."""
    from cotdistill.data import AUDIT_COLUMNS, audit, audit_to_csv, audit_to_json, list_sources, resolve_data_dir
    from cotdistill.provenance import atomic_write_text, write_provenance

    if out is not None and out.suffix not in (".csv", ".json"):
        raise CotdistillError(f"--out {out}: expected a .csv or .json file name")
    if out is not None:
        check_out_file(out)
    list_sources(dataset)  # bad names and a missing data directory fail before the tokenizer loads
    data_dir = resolve_data_dir(data_dir)
    tok = None
    if tokenizer.lower() != "none":
        from cotdistill.students import load_tokenizer

        tok = load_tokenizer(tokenizer)
    records = audit(dataset, data_dir, tok)
    cols = [c for c in AUDIT_COLUMNS if c not in ("available", "file")]
    _table(f"supervision audit{f' ({dataset})' if dataset else ''}", cols,
           [[r.get(c) if r["available"] or c == "source" else ("unavailable" if c == "rows" else None) for c in cols]
            for r in records])
    avail = [r for r in records if r["available"]]
    typer.echo(f"{len(avail)} available sources, {len(records) - len(avail)} unavailable")
    from cotdistill.benchmarks import DATASETS
    from cotdistill.data import split_duplicates

    dups = [split_duplicates(d, data_dir) for d in ([dataset] if dataset else DATASETS)]
    _table("test questions that repeat a training question (exact: same text and set of choices; near: "
           "word-trigram Jaccard >= 0.8)", ["dataset", "train", "test", "exact", "near", "first examples (test, train)"],
           [[d["dataset"], d["train"], d["test"], d["exact"], d["near"],
             ", ".join(f"{t}={u}" for t, u, _ in d["examples"][:3])] for d in dups])
    if out is not None:
        atomic_write_text(out, audit_to_csv(records) if out.suffix == ".csv" else audit_to_json(records))
        write_provenance(out.with_name(out.name + ".provenance.json"),
                         {"dataset": dataset, "tokenizer": tokenizer, "data_dir": str(data_dir)})
        typer.echo(f"wrote {out}")


@data_app.command("fetch")
def fetch_cmd(
    to: Annotated[Path, typer.Option(help="Directory to download into (becomes a --data-dir).")],
    base_url: Annotated[Optional[str], typer.Option(help="Mirror of raw.githubusercontent.com (same paths).")] = None,
    only: Annotated[Optional[list[str]], typer.Option(help="Only manifest paths matching this glob, e.g. 'cot/SVAMP_*' (repeatable).")] = None,
) -> None:
    """Download the released rationales and benchmark files, checking sha256; re-run to resume."""
    from cotdistill.data import fetch

    r = fetch(to, base_url=base_url, only=only)
    for path, reason in r.failed:
        typer.echo(f"failed: {path}: {reason}", err=True)
    for path in r.unverified:
        typer.echo(f"unverified (no known sha256): {path}", err=True)
    typer.echo(f"{len(r.downloaded)} downloaded, {len(r.skipped)} already present, "
               f"{len(r.unverified)} unverified, {len(r.failed)} failed -> {to}")
    if r.failed:
        raise typer.Exit(1)


@data_app.command("compare")
def compare_cmd(
    a: Annotated[str, typer.Argument(help="A supervision set: a released name (svamp/chatgpt/level3) or a JSONL file (a teach output).")],
    b: Annotated[str, typer.Argument(help="The other supervision set, compared with A.")],
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the comparison as JSON to this file.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Compare two supervision sets on length, steps, operations and diversity: did a teacher follow the level?"""
    import json

    from cotdistill.data import compare_supervision
    from cotdistill.provenance import atomic_write_text

    if json_out is not None and json_out.suffix != ".json":
        raise CotdistillError(f"--json {json_out}: expected a .json file name")
    if json_out is not None:
        check_out_file(json_out, "--json")
    r = compare_supervision(a, b, data_dir)

    def show(v) -> str | None:
        return f"{v:.3f}".rstrip("0").rstrip(".") if isinstance(v, float) else v

    _table(f"A = {r['a']['name']}   B = {r['b']['name']}   (lengths in words)", ["metric", "A", "B", "B - A"],
           [[row["metric"], show(row["a"]), show(row["b"]), show(row["diff"])] for row in r["rows"]])
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(r, indent=2) + "\n")
        typer.echo(f"wrote {json_out}")


@app.command("grade")
def grade_cmd(
    file: Annotated[Path, typer.Argument(help="JSONL: response + gold + kind, or response + dataset + id, per line.")],
    out: Annotated[Optional[Path], typer.Option(help="Graded JSONL (default: FILE with .graded.jsonl).")] = None,
    protocol: Annotated[str, typer.Option(help="lenient (our fallbacks) or paper (only 'The answer is X', as the paper's scripts read it).")] = "lenient",
    data_dir: DataDir = None,
) -> None:
    """Grade any model's outputs: adds extracted, correct and reason to every line; prints the accuracy."""
    from cotdistill.grade import grade_file

    r = grade_file(file, out, data_dir, protocol=protocol)
    typer.echo(f"accuracy {r.accuracy:.4f} ({r.correct}/{r.n}; {r.no_answer} without an answer; protocol {protocol}) -> {r.out}")
