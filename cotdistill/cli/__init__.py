"""The `cotdistill` command. Each command parses its arguments, calls one library function, returns.

Command groups live one per file (data, grade, train, evaluate, teach, serve, study, report);
each registers itself on the shared `app`.
"""

import os
import sys

from cotdistill.cli.app import app
from cotdistill.errors import CotdistillError

# Importing a command module registers its commands on `app`.
from cotdistill.cli import data_cmds, study_cmds, teach_cmds, train_cmds  # noqa: F401,E402


def main() -> None:
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        # standalone_mode=False hands typer.Exit codes back as the return value.
        rc = app(standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except CotdistillError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; re-run the same command to resume", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # click's own usage errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            print("aborted", file=sys.stderr)
            sys.exit(130)
        raise
