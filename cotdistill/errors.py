"""One exception type for every user-facing error: the CLI prints it as one line, exit 2."""

import difflib
from collections.abc import Iterable


class CotdistillError(Exception):
    """Bad input or an unrecoverable condition, with a message that names what and where."""


def unknown_name(what: str, name: str, known: Iterable[str]) -> CotdistillError:
    """An error for a mistyped name, with the closest known names as suggestions."""
    known = sorted(set(known))
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known[:20])}"
    return CotdistillError(f"unknown {what} {name!r}{hint}")
