"""The shared Typer app and options every command group uses."""

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    name="cotdistill",
    help="Distil chain-of-thought reasoning: teach, train, evaluate, compare.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

DataDir = Annotated[
    Optional[Path],
    typer.Option("--data-dir", envvar="COTDISTILL_DATA", help="Data directory (see ../shared/data/README.md)."),
]
