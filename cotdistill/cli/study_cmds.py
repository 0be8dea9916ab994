"""`cotdistill study FILE.yaml` and `cotdistill report DIR`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from cotdistill.cli.app import DataDir, app


@app.command("study")
def study_cmd(
    file: Annotated[Path, typer.Argument(help="Study YAML (see configs/demo.yaml).")],
    out: Annotated[Optional[Path], typer.Option(help="Study folder; default runs/<file name>.")] = None,
    data_dir: DataDir = None,
    check: Annotated[bool, typer.Option("--check", help="Validate the study and list its cells; run nothing.")] = False,
    plain: Annotated[bool, typer.Option("--plain", help="One line per event instead of the live view.")] = False,
) -> None:
    """Run every cell of a study (supervision -> train -> eval), then write results.csv and the report.
    Re-running skips finished cells and resumes a half-trained one."""
    from cotdistill import study

    cfg = study.load_study(file)
    cells = study.expand_cells(cfg, data_dir)  # every check happens here, before any cell runs
    out = out or Path("runs") / file.stem
    if check:
        for c in cells:
            mark = "done" if study.is_done(out, c) else "todo"
            print(f"{mark}  {c.slug}  {c.label()}")
        print(f"{len(cells)} cells")
        return
    view = study.LiveView() if sys.stderr.isatty() and not plain else study.PlainView()
    study_dir = study.run_study(cfg, out, data_dir=data_dir, view=view, cells=cells)
    counts = study.study_status(study_dir)
    print(f"cells: {', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}")
    print(f"results: {study_dir / 'results.csv'}")
    print(f"report: {(study_dir / 'report.html').resolve()}  (also report.md)")
    from cotdistill.report import headline

    found = headline(study_dir)
    if found:  # the study's result in words, as the report's first lines state it
        print(f"finding: {found}")
    if counts.get("failed"):
        print(f"{counts['failed']} cell(s) failed; see cells/*/error.json; re-run the same command to retry them",
              file=sys.stderr)
        raise typer.Exit(1)


@app.command("report")
def report_cmd(
    study_dir: Annotated[Path, typer.Argument(help="A study folder written by `cotdistill study`.")],
    data_dir: DataDir = None,
) -> None:
    """Write report.md and a self-contained report.html for a study folder."""
    from cotdistill.report import write_report

    path = write_report(study_dir, data_dir=data_dir)
    print(f"report: {path.resolve()}  (also {path.with_suffix('.md').name})")
