"""Reading the data directory's files: JSON lists or JSON lines, plain or gzipped.

Every problem becomes a CotdistillError that names the file (and line or record) and what
was expected, so a missing, truncated or malformed file is one clear line, never a traceback.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from cotdistill.errors import CotdistillError

DEFAULT_DATA_DIR = Path("..") / "shared" / "data"
_REPO = Path(__file__).resolve().parents[2]


def resolve_data_dir(data_dir: Path | str | None = None) -> Path:
    """The --data-dir flag, then $COTDISTILL_DATA, then ../shared/data from the cwd, then from the repo."""
    if data_dir is None and os.environ.get("COTDISTILL_DATA"):
        data_dir = os.environ["COTDISTILL_DATA"]
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        if not d.is_dir():
            what = "is a file, not a folder" if d.exists() else "does not exist"
            raise CotdistillError(f"data directory {d} {what} (from --data-dir or $COTDISTILL_DATA)")
        return d
    for d in (Path.cwd() / DEFAULT_DATA_DIR, _REPO / DEFAULT_DATA_DIR):
        if d.is_dir():
            return d.resolve()
    raise CotdistillError(
        "no data directory: pass --data-dir DIR or set COTDISTILL_DATA "
        "(default ../shared/data not found; `cotdistill data fetch --to DIR` downloads the files)"
    )


def find_file(data_dir: Path, rel: str) -> Path | None:
    """`rel` or `rel`.gz inside data_dir, whichever exists (fetch writes plain JSON, the shared copy is gzipped)."""
    for cand in (data_dir / rel, data_dir / f"{rel}.gz"):
        if cand.is_file():
            return cand
    return None


def require_file(data_dir: Path, rel: str) -> Path:
    path = find_file(data_dir, rel)
    if path is None:
        raise CotdistillError(
            f"missing data file {data_dir / rel} (or {rel}.gz); "
            "point --data-dir at a complete data directory or run `cotdistill data fetch --to DIR`"
        )
    return path


def read_text(path: Path) -> str:
    """A data file's text (plain or gzipped); unreadable, corrupt or non-UTF-8 files are one error line."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return f.read()
        return path.read_text(encoding="utf-8")
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise CotdistillError(f"{path}: truncated or corrupt gzip file ({e})") from None
    except UnicodeDecodeError as e:
        raise CotdistillError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise CotdistillError(f"{path}: cannot read ({e.strerror})") from None


def parse_records(text: str, where: str) -> list[dict]:
    """A JSON list of objects, or JSON lines (one object per line; blank lines skipped)."""
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise CotdistillError(f"{where}:{e.lineno}: malformed JSON ({e.msg}, column {e.colno}); truncated file?") from None
        for i, r in enumerate(records):
            if not isinstance(r, dict):
                raise CotdistillError(f"{where}: record {i} is {type(r).__name__}, expected a JSON object")
        return records
    records = []
    for lineno, r in iter_json_lines(text, where):
        r["_line"] = lineno
        records.append(r)
    return records


def iter_json_lines(text: str, where: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON-lines text; errors name where:line."""
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise CotdistillError(f"{where}:{lineno}: malformed JSON line ({e.msg}, column {e.colno})") from None
        if not isinstance(r, dict):
            raise CotdistillError(f"{where}:{lineno}: expected a JSON object, got {type(r).__name__}")
        if _SURROGATE_ESCAPE.search(line):
            _check_unicode(r, f"{where}:{lineno}")
        yield lineno, r


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _check_unicode(obj: object, where: str) -> None:
    """JSON may escape a lone surrogate ("\\ud800"), which is no character: nothing could write it back."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise CotdistillError(f"{where}: holds a lone surrogate escape (such as \\ud800), not valid Unicode text") from None


@lru_cache(maxsize=32)
def _cached_records(path: str, mtime_ns: int, size: int) -> tuple[dict, ...]:
    return tuple(parse_records(read_text(Path(path)), path))


def read_records(path: Path, required: tuple[str, ...] = ()) -> list[dict]:
    """Records of a data file (cached per path+mtime; callers must not mutate them)."""
    st = path.stat()
    records = _cached_records(str(path), st.st_mtime_ns, st.st_size)
    for i, r in enumerate(records):
        missing = [k for k in required if k not in r]
        if missing:
            at = f"line {r['_line']}" if "_line" in r else f"record {i}"
            raise CotdistillError(
                f"{path}: {at} lacks field {missing[0]!r} (expected fields: {', '.join(required)})"
            )
    return list(records)


# ---------------------------------------------------------------- answer choices


def parse_choices(text: str, letters: str = "ABCDE") -> tuple[str, dict[str, str] | None]:
    """Split 'stem Answer choices: ...' into (stem, {letter: option}); understands the upstream
    renderings '(A) x (B) y', 'A: x, B: y' and 'A. x\\nB. y'. Options are found in letter order."""
    m = re.search(r"answer\s+choices\s*:", text, re.I)
    if not m:
        return text.strip(), None
    stem, tail = text[: m.start()].strip(), text[m.end() :]
    marks: list[tuple[str, int, int]] = []
    pos = 0
    for letter in letters:
        mk = re.compile(rf"\({letter}\)|(?<![A-Za-z0-9]){letter}[:.)]").search(tail, pos)
        if not mk:
            break
        marks.append((letter, mk.start(), mk.end()))
        pos = mk.end()
    if len(marks) < 2:
        return text.strip(), None
    choices = {}
    for i, (letter, _start, end) in enumerate(marks):
        stop = marks[i + 1][1] if i + 1 < len(marks) else len(tail)
        choices[letter] = " ".join(tail[end:stop].split()).rstrip(",").strip()
    return stem, choices


def render_question(stem: str, choices: dict[str, str] | None) -> str:
    """The one way choices are shown to every model: 'stem Answer choices: (A) x (B) y'."""
    stem = " ".join(stem.split())
    if stem[:2].lower() == "q:":
        stem = stem[2:].strip()
    if not choices:
        return stem
    return f"{stem} Answer choices: " + " ".join(f"({k}) {v}" for k, v in choices.items())


def normalise_question(text: str) -> str:
    """Join key: the question as rendered canonically, lower-cased, with NO whitespace at all
    (upstream copies differ in spacing around punctuation: 'for$ 4' vs 'for $4')."""
    stem, choices = parse_choices(text)
    return _squash(render_question(stem, choices))


def _squash(text: str) -> str:
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    return "".join(text.split())


def leak_key(text: str) -> str:
    """Identity of a question for the leak check: its normalised stem and the SET of its choices
    (14 OpenBookQA test questions equal a training question up to the order of the choices)."""
    stem, choices = parse_choices(text)
    stem = render_question(stem, None)
    if not choices:
        return _squash(stem)
    return _squash(stem) + "|" + "|".join(sorted(_squash(c) for c in choices.values()))


def number_text(x) -> str:
    """145.0 -> '145', 2.5 -> '2.5', '1,000' -> '1000'."""
    s = str(x).replace(",", "").strip()
    try:
        f = float(s)
    except ValueError:
        return s
    return str(int(f)) if f.is_integer() else s
