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
    plan: Annotated[bool, typer.Option("--plan", help="Print the jobs, their dependencies and which are done; run nothing.")] = False,
    executor: Annotated[Optional[str], typer.Option(help="local (default), subprocess or ray; overrides the study file's executor:.")] = None,
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster: auto or HOST:PORT; default: a local Ray for this run.")] = None,
    max_parallel: Annotated[Optional[int], typer.Option(help="Jobs running at once (subprocess, ray).")] = None,
    max_retries: Annotated[Optional[int], typer.Option(help="Re-runs of a job whose worker died.")] = None,
    plain: Annotated[bool, typer.Option("--plain", help="One line per event instead of the live view.")] = False,
    numerics: Annotated[str, typer.Option(help="recorded: keep the precision/versions the study folder recorded the first time (numerics.json); here: re-plan under this machine's (jobs re-run).")] = "recorded",
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Allow model code from the hub where the study file asks for it (trust_remote_code: true).")] = False,
) -> None:
    """Run every job of a study (teach -> train -> eval) on an executor, then write results.csv and
    the report. Re-running skips finished jobs and resumes a half-trained one."""
    from cotdistill import study
    from cotdistill.plan.jobs import is_done, plan_lines
    from cotdistill.plan.spec import executor_settings
    from cotdistill.view import LiveView, PlainView

    from cotdistill.errors import unknown_name

    if numerics not in ("recorded", "here"):
        raise unknown_name("--numerics", numerics, ("recorded", "here"))
    cfg = study.load_study(file)
    cfg._trust_remote_code = trust_remote_code
    settings = executor_settings(cfg, name=executor, ray_address=ray_address, max_parallel=max_parallel,
                                 max_retries=max_retries)
    out = out or Path("runs") / file.stem
    jobs = study.plan_study(cfg, data_dir, study_dir=out, numerics=numerics)  # every check happens here
    if check:
        for c in jobs.cells:
            mark = "done" if is_done(out, jobs.eval_job(c)) else "todo"
            print(f"{mark}  {c.slug}  {c.label()}")
        print(f"{len(jobs.cells)} cells")
        return
    if plan:
        print("\n".join(plan_lines(jobs, out)))
        return
    view = LiveView() if sys.stderr.isatty() and not plain else PlainView()
    study_dir = study.run_study(cfg, out, data_dir=data_dir, view=view, cells=jobs.cells, executor=settings,
                                numerics=numerics)
    counts = study.study_status(study_dir)
    print(f"cells: {', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}")
    print(f"results: {study_dir / 'results.csv'}")
    print(f"report: {(study_dir / 'report.html').resolve()}  (also report.md)")
    from cotdistill.report import headline

    found = headline(study_dir)
    if found:  # the study's result in words, as the report's first lines state it
        print(f"finding: {found}")
    if counts.get("failed") or counts.get("pending"):
        print(f"{counts.get('failed', 0)} cell(s) failed; see jobs/*/error.json (and log.txt); "
              "re-run the same command to retry them", file=sys.stderr)
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
