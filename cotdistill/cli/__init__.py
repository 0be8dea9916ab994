"""The `cotdistill` command. Each command parses its arguments, calls one library function, returns.

Command groups live one per file (data, grade, train, evaluate, teach, serve, study, report);
each registers itself on the shared `app`.
"""

import os
import sys
from pathlib import Path

from cotdistill.cli.app import app
from cotdistill.errors import CotdistillError

# Importing a command module registers its commands on `app`.
from cotdistill.cli import data_cmds, study_cmds, teach_cmds, train_cmds  # noqa: F401,E402


def main() -> None:
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        # standalone_mode=False hands typer.Exit codes back as the return value.
        rc = app(standalone_mode=False, prog_name="cotdistill")
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
    except Exception as e:  # noqa: BLE001
        usage = _usage_error(e)
        if usage is not None:
            print(f"error: {usage}", file=sys.stderr)
            sys.exit(2)
        if type(e).__name__ == "Abort":
            print("aborted", file=sys.stderr)
            sys.exit(130)
        _internal_error(e)


def _usage_error(e: BaseException) -> str | None:
    """The one-line message of a command-line usage error, or None.

    Typer >= 0.24 vendors click as `typer._click`, so its exceptions are not `click.ClickException`;
    both families are recognised (by class, not by the module they come from)."""
    families = []
    for mod in ("click.exceptions", "typer._click.exceptions"):
        try:
            families.append(__import__(mod, fromlist=["ClickException"]).ClickException)
        except ImportError:
            pass
    if not isinstance(e, tuple(families)):
        return None
    msg = " ".join(e.format_message().split())
    ctx = getattr(e, "ctx", None)
    where = getattr(ctx, "command_path", None)
    return f"{where}: {msg} (see `{where} --help`)" if where else msg


def _internal_error(e: BaseException) -> None:
    """An unexpected failure: one line with the path of a log holding the traceback (exit 1)."""
    import tempfile
    import time
    import traceback

    log_dir = Path(tempfile.gettempdir()) / "cotdistill-logs"
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        log.write_text("".join(traceback.format_exception(e)), encoding="utf-8")
        where = f"; traceback in {log}"
    except OSError:
        where = ""
    first = (str(e).splitlines() or [""])[0][:300]
    print(f"error: internal error ({type(e).__name__}: {first}){where}", file=sys.stderr)
    sys.exit(1)
