"""Portable references to files, so that content keys and job records survive a move.

A study names files three ways, and each is stored in the form that stays true when the study
folder or the data directory moves to another path or machine:
    data:<relative path>    a file under the data directory ($COTDISTILL_DATA)
    study:<relative path>   a file the study itself wrote (a teacher's supervision, a trained model)
    anything else           as given: a released name, an alias, an HF id, or an absolute path
"""

from __future__ import annotations

from pathlib import Path

DATA = "data:"
STUDY = "study:"


def portable(path: Path | str, data_dir: Path | str | None) -> str:
    """The reference of an existing absolute path: data-relative when under the data directory."""
    path = Path(path)
    if data_dir is not None:
        try:
            return DATA + path.resolve().relative_to(Path(data_dir).resolve()).as_posix()
        except ValueError:
            pass
    return str(path)


def study_ref(relative: str) -> str:
    return STUDY + relative


def resolve(ref: str, data_dir: Path | str | None, study_dir: Path | str | None) -> str:
    """The local form of a reference: a path for data:/study: references, else the reference itself."""
    if ref.startswith(DATA):
        if data_dir is None:
            raise ValueError(f"{ref} is relative to the data directory, but none is set")
        return str(Path(data_dir) / ref[len(DATA) :])
    if ref.startswith(STUDY):
        if study_dir is None:
            raise ValueError(f"{ref} is relative to the study folder, but none is set")
        return str(Path(study_dir) / ref[len(STUDY) :])
    return ref


def display_name(ref: str) -> str:
    """A short readable name: the file name of a path reference, else the reference."""
    for prefix in (DATA, STUDY):
        if ref.startswith(prefix):
            return Path(ref[len(prefix) :]).name
    return Path(ref).name if Path(ref).is_absolute() else ref
