"""Studies: a YAML grid of (dataset x student x supervision x seed) cells, run supervision ->
train -> eval, one content-addressed folder per cell, then results.csv and a report.

Layout of a study directory:
    study.yaml, study.provenance.json   the study file as given, the resolved cells, versions
    cells/<slug>-<hash>/                one cell: cell.json, eval/ (predictions.jsonl, summary.json),
                                        done.json (written last: the cell's results row) or error.json
    models/<slug>-<hash>/               a trained student, keyed by the training config only, so
                                        cells that differ in evaluation settings share it
    supervision/<slug>-<hash>.jsonl     rationales written by a teacher spec (teach.teach)
    supervision_metrics/<hash>.json     metrics of each supervision set (cached)
    results.csv, supervision_metrics.csv, report.md, report.html, figures/

Each cell is an independent job (`run_cell(cell, study_dir, data_dir)`): it needs nothing from
other cells, so a scheduler could hand cells to other machines; here they run one after another.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import re
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from cotdistill.errors import CotdistillError, unknown_name
from cotdistill.provenance import atomic_write_text, write_provenance

NONE = "none"  # supervision meaning "no training": the zero-shot baseline


# ============================================================================ YAML with line numbers


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (a silent override is a typo waiting to bite)."""


def _load_yaml(text: str, source: str) -> tuple[Any, dict[tuple, int]]:
    """Parse YAML; return the data and {path tuple: 1-based line} for every key and item."""
    loader = _LineLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        data = loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise CotdistillError(f"{where}: invalid YAML: {problem}") from None
    finally:
        loader.dispose()
    lines: dict[tuple, int] = {}

    def walk(n: yaml.Node, path: tuple) -> None:
        lines.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            seen: set = set()
            for k, v in n.value:
                key = k.value
                if key in seen:
                    raise CotdistillError(f"{source}:{k.start_mark.line + 1}: duplicate key {key!r}")
                seen.add(key)
                lines[path + (key,)] = k.start_mark.line + 1
                walk(v, path + (key,))
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                walk(item, path + (i,))

    walk(node, ())
    return data, lines


def _line_of(lines: dict[tuple, int], loc: tuple) -> int | None:
    """The line of the deepest known prefix of `loc` (pydantic locations may go past the YAML)."""
    for cut in range(len(loc), -1, -1):
        if tuple(loc[:cut]) in lines:
            return lines[tuple(loc[:cut])]
    return None


# ============================================================================ the study file


class CellSpec(BaseModel):
    """One explicit cell, added to the grid (e.g. a comparison the product would not contain)."""

    model_config = ConfigDict(extra="forbid")
    student: str = Field(description="Student: alias (smollm2-135m, gemma3-270m), model folder, .gguf path or HF id.")
    supervision: str | dict[str, Any] = Field(
        description="A released name (svamp/chatgpt/level3), a JSONL path, a teacher spec, or 'none'."
    )
    dataset: str | None = Field(None, description="Benchmark; defaults to the one a released name names.")
    seed: int | None = Field(None, description="Training seed; defaults to the study's first seed.")
    train: dict[str, Any] = Field(default_factory=dict, description="Overrides of the study's train settings.")
    eval: dict[str, Any] = Field(default_factory=dict, description="Overrides of the study's eval settings.")


class StudyConfig(BaseModel):
    """A study: the product of the lists below (plus explicit `cells`), each cell run
    supervision -> train -> evaluate."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, description="Title of the report; defaults to the file name.")
    description: str | None = Field(None, description="A sentence for the report's introduction.")
    datasets: list[str] = Field(
        default_factory=list,
        description="Benchmarks to evaluate on; defaults to those the released supervision names name.",
    )
    students: list[str] = Field(
        default_factory=list,
        description="Students: aliases (smollm2-135m, gemma3-270m), model folders, .gguf paths or HF ids.",
    )
    supervision: list[str | dict[str, Any]] = Field(
        default_factory=list,
        description=(
            "Released names with brace expansion (svamp/chatgpt/level{1..6}, svamp/{chatgpt,gemini}/level3), "
            "JSONL paths, teacher specs (a mapping of teach settings: teacher, level, format, samples ...), "
            "or 'none' for the untrained (zero-shot) student."
        ),
    )
    seeds: list[int] = Field(default_factory=lambda: [100], description="Training seeds (paper: 100); every cell runs once per seed.")
    train: dict[str, Any] = Field(
        default_factory=dict, description="Training settings (train.TrainConfig fields: epochs, lr, batch_size, limit ...)."
    )
    eval: dict[str, Any] = Field(
        default_factory=dict,
        description="Evaluation settings (evaluate.EvalConfig fields: split, limit, max_new_tokens, batch_size ...).",
    )
    cells: list[CellSpec] = Field(default_factory=list, description="Explicit cells added to the grid.")

    _source: Path | None = PrivateAttr(None)
    _display: str = PrivateAttr("")  # the file name as the user gave it, for messages
    _lines: dict = PrivateAttr(default_factory=dict)
    _text: str = PrivateAttr("")

    @field_validator("seeds")
    @classmethod
    def _seeds_nonempty(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("seeds is empty: give at least one seed")
        return v

    # -- where things are in the file, for error messages
    def where(self, *loc: Any) -> str:
        src = self._display or "<study>"
        line = _line_of(self._lines, tuple(loc))
        return f"{src}:{line}" if line else src

    def base_dir(self) -> Path:
        """Relative paths in the study file are relative to the file's folder."""
        return self._source.parent if self._source else Path.cwd()


def parse_study(text: str, source: Path | str | None = None) -> StudyConfig:
    """Validate study YAML text; errors name the file and line at fault."""
    src = str(source) if source else "<study>"
    data, lines = _load_yaml(text, src)
    if data is None:
        raise CotdistillError(f"{src}: the study file is empty")
    if not isinstance(data, dict):
        raise CotdistillError(f"{src}:1: a study file is a mapping (datasets:, students:, supervision: ...)")
    try:
        cfg = StudyConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        # pydantic tags union members in the location ("str", "dict[str,any]"); drop them.
        yaml_loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in ("str", "int"))))
        line = _line_of(lines, yaml_loc)
        what = ".".join(str(p) for p in yaml_loc) or "study"
        msg = "unknown key (not a study setting)" if err["type"] == "extra_forbidden" else err["msg"]
        more = f" (and {e.error_count() - 1} more problems)" if e.error_count() > 1 else ""
        raise CotdistillError(f"{src}:{line or 1}: {what}: {msg}{more}") from None
    cfg._source = Path(source).resolve() if source else None
    cfg._display = src
    cfg._lines = lines
    cfg._text = text
    return cfg


def load_study(path: Path | str) -> StudyConfig:
    path = Path(path)
    if not path.is_file():
        raise CotdistillError(f"study file {path} does not exist")
    return parse_study(path.read_text(encoding="utf-8"), path)


# ============================================================================ brace expansion

_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """`level{1..6}` -> level1 .. level6; `{chatgpt,gemini}` -> both; nested/multiple braces multiply."""
    m = _BRACE.search(pattern)
    if not m:
        return [pattern]
    body = m.group(1)
    rng = re.fullmatch(r"\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*", body)
    if rng:
        a, b = int(rng.group(1)), int(rng.group(2))
        options = [str(i) for i in (range(a, b + 1) if a <= b else range(a, b - 1, -1))]
    elif "," in body:
        options = [o.strip() for o in body.split(",")]
    else:
        raise CotdistillError(f"cannot expand {{{body}}} in {pattern!r}: use {{1..6}} or {{a,b,c}}")
    head, tail = pattern[: m.start()], pattern[m.end() :]
    return [x for o in options for x in expand_braces(head + o + tail)]


# ============================================================================ cells


class Supervision(BaseModel):
    """How a cell is supervised, resolved: kind + what identifies it + labels for the report."""

    model_config = ConfigDict(extra="forbid")
    kind: str  # "released" | "path" | "teacher" | "none"
    name: str  # released name, absolute path, teacher slug, or "none"
    spec: dict[str, Any] | None = None  # teacher spec (teach.TeachConfig settings)
    sha256: str | None = None  # content of a JSONL path: an edited file re-runs its cells
    teacher: str
    level: int | None = None
    format: str


class Cell(BaseModel):
    """A fully resolved cell. Its folder name is derived from everything that affects its result."""

    model_config = ConfigDict(extra="forbid")
    dataset: str
    student: str  # as written (alias / HF id) or an absolute path
    supervision: Supervision
    seed: int
    train: dict[str, Any] | None  # training settings as given (study + cell); None: zero-shot, no training
    eval: dict[str, Any]  # evaluation settings as given
    train_resolved: dict[str, Any] | None  # every setting that changes the trained model, defaults filled in
    eval_resolved: dict[str, Any]  # every setting that changes the evaluation, defaults filled in

    def identity(self) -> dict[str, Any]:
        sup = self.supervision
        return {
            "dataset": self.dataset,
            "student": self.student,
            "supervision": {"kind": sup.kind, "name": sup.name, "spec": sup.spec, "sha256": sup.sha256},
            "seed": self.seed,
            "train": self.train_resolved,
            "eval": self.eval_resolved,
        }

    def key(self) -> str:
        return _hash(self.identity())

    def train_key(self) -> str:
        ident = self.identity()
        return _hash({k: ident[k] for k in ("dataset", "student", "supervision", "seed", "train")})

    @property
    def slug(self) -> str:
        sup = self.supervision
        bits = [self.dataset, short_name(self.student), sup.teacher]
        if sup.level is not None:
            bits.append(f"l{sup.level}")
        if sup.format not in ("cot", sup.teacher):
            bits.append(sup.format)
        bits.append(f"s{self.seed}")
        return _safe("-".join(bits)) + "-" + self.key()[:10]

    @property
    def model_slug(self) -> str:
        return self.slug.rsplit("-", 1)[0] + "-" + self.train_key()[:10]

    def label(self) -> str:
        sup = self.supervision
        lvl = f" level {sup.level}" if sup.level is not None else ""
        fmt = f" {sup.format}" if sup.format not in ("cot", sup.teacher) else ""
        return f"{self.dataset} · {short_name(self.student)} · {sup.teacher}{lvl}{fmt} · seed {self.seed}"


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def short_name(student: str) -> str:
    p = Path(student)
    return p.stem if (p.is_absolute() or "/" in student and p.exists()) else student.split("/")[-1]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text)[:80]


_LEVEL = re.compile(r"level_?(\d+)", re.I)


def labels_of_released(name: str) -> tuple[str, int | None, str]:
    """(teacher, level, format) of a released name: svamp/chatgpt/level3/symbolic -> chatgpt, 3, symbolic."""
    parts = name.split("/")
    teacher = parts[1] if len(parts) > 1 else name
    level = None
    fmt = teacher if teacher in ("human", "answer-only") else "cot"
    for p in parts[2:]:
        m = _LEVEL.fullmatch(p)
        if m:
            level = int(m.group(1))
        else:
            fmt = p
    return teacher, level, fmt


# ---------------------------------------------------------------------------- resolution + checks


def _resolve_settings(
    cfg: StudyConfig, model_cls: type[BaseModel], settings: dict, required: dict, drop: tuple[str, ...], loc: tuple
) -> dict[str, Any]:
    """Validate settings against the owning stage's config (the single source of its fields and
    defaults) and return the resolved values that affect results (its identity(), if it has one)."""
    for key in settings:
        if key in required or key in drop:
            raise CotdistillError(f"{cfg.where(*loc, key)}: {'.'.join(map(str, loc))}.{key}: set by the study, not here")
    try:
        obj = model_cls(**required, **settings)
    except ValidationError as e:
        err = e.errors()[0]
        key = err["loc"][0] if err["loc"] else None
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        if err["type"] == "extra_forbidden":
            known = sorted(set(model_cls.model_fields) - set(required) - set(drop))
            msg += f" (known: {', '.join(known)})"
        where = cfg.where(*loc, key) if key in settings else cfg.where(*loc)
        raise CotdistillError(f"{where}: {'.'.join(map(str, loc))}.{key}: {msg}") from None
    full = obj.model_dump(mode="json")
    dumped = obj.identity() if hasattr(obj, "identity") else full
    # A stage may leave `limit` out of its own identity (evaluate extends a run); a cell's result depends on it.
    dumped = {**dumped, **{k: full[k] for k in _ALWAYS_IDENTITY if k in full}}
    return {k: v for k, v in dumped.items() if k not in required and k not in drop and k not in _NEVER_IDENTITY}


# Settings the study itself controls (a study file may not set them), and settings that never
# change a result (left out of a cell's hash even when a stage config has no identity()).
_TRAIN_STUDY = ("resume", "overwrite", "data_dir")
_EVAL_STUDY = ("overwrite", "resume", "data_dir")
_NEVER_IDENTITY = ("out", "resume", "overwrite", "quiet", "data_dir")
_ALWAYS_IDENTITY = ("limit",)
_TEACH_STUDY = ("progress",)
_TEACH_OPERATIONAL = ("progress", "cache", "concurrency", "rpm", "timeout", "retries", "backoff", "max_backoff",
                      "stop_after_failures", "batch_size", "price_in", "price_out")


def check_student(cfg: StudyConfig, spec: str, loc: tuple) -> str:
    """Cheap up-front check that a student can be loaded; returns the spec to use (paths made absolute)."""
    from cotdistill import students

    if spec in students.ALIASES:
        info = students.ALIASES[spec]
        if students._package_dir(info["package"]) is None:  # cheap: the file itself is checked at load
            raise CotdistillError(f"{cfg.where(*loc)}: student {spec!r} needs the package {info['pip']!r}")
        return spec
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = cfg.base_dir() / path
    if spec.lower().endswith(".gguf"):
        if not path.is_file():
            raise CotdistillError(f"{cfg.where(*loc)}: student GGUF file {spec} does not exist")
        return str(path.resolve())
    if path.exists():
        if not (path / "config.json").is_file():
            raise CotdistillError(f"{cfg.where(*loc)}: student folder {spec} has no config.json")
        return str(path.resolve())
    looks_like_hub_id = spec.count("/") == 1 and not spec.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        e = unknown_name("student", spec, students.ALIASES)
        raise CotdistillError(f"{cfg.where(*loc)}: {e} (nor an existing folder or .gguf file)")
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(spec, "config.json")
    except Exception:  # noqa: BLE001  (a malformed id is simply "not cached")
        cached = None
    if not isinstance(cached, str):
        raise CotdistillError(
            f"{cfg.where(*loc)}: student {spec!r} is neither an alias, a folder, a .gguf file, "
            "nor a model in the local Hugging Face cache (the hub is offline here)"
        )
    return spec


def _resolve_supervision(
    cfg: StudyConfig, entry: str | dict, dataset_hint: str | None, loc: tuple, data_dir: Path | None, cache: dict
) -> list[tuple[str | None, Supervision]]:
    """Expand one supervision entry into (dataset it is tied to or None, Supervision) items, checking each exists."""
    from cotdistill.data import sha256_file

    if isinstance(entry, dict):
        from cotdistill import teach

        entry = dict(entry)
        teacher = str(entry.get("teacher", ""))
        if teacher.startswith("hf:"):  # a local teacher folder / .gguf is relative to the study file
            local = cfg.base_dir() / teacher[3:]
            if not Path(teacher[3:]).is_absolute() and local.exists():
                entry["teacher"] = teacher = "hf:" + str(local.resolve())
        # Validate against teach.TeachConfig with a placeholder dataset; the real one is set per cell.
        spec = _resolve_settings(
            cfg, teach.TeachConfig, entry, {"dataset": dataset_hint or "svamp", "out": "x.jsonl"}, _TEACH_STUDY, loc
        )
        spec = {k: v for k, v in spec.items() if k not in _TEACH_OPERATIONAL}
        label = short_name(teacher.split(":", 1)[-1]) if teacher else "teacher"
        level, fmt = spec.get("level"), str(spec.get("format", "cot"))
        sup = Supervision(
            kind="teacher",
            name=_safe(f"{label}-l{level}-{fmt}") + "-" + _hash(spec)[:10],
            spec=entry,
            teacher=_safe(label),
            level=level,
            format=fmt,
        )
        return [(None, sup)]
    entry = str(entry).strip()
    if entry.lower() == NONE:
        return [(None, Supervision(kind="none", name=NONE, teacher="zero-shot", format="zero-shot"))]
    names = expand_braces(entry) if "{" in entry else [entry]
    out = []
    for name in names:
        path = Path(name).expanduser()
        if not path.is_absolute():
            path = cfg.base_dir() / path
        if name.endswith((".jsonl", ".json")) or path.is_file():
            if not path.is_file():
                raise CotdistillError(f"{cfg.where(*loc)}: supervision file {name} does not exist")
            sup_obj = _load_supervision(str(path.resolve()), data_dir, cfg, loc, cache)
            # teach writes teacher / level / format into every row; label the cell with them when present
            meta = {**(sup_obj.meta or {}), **((sup_obj.rows[0].meta or {}) if sup_obj.rows else {})}
            out.append(
                (
                    meta.get("dataset"),
                    Supervision(
                        kind="path",
                        name=str(path.resolve()),
                        sha256=sha256_file(path),
                        teacher=_safe(str(meta.get("teacher") or path.stem)),
                        level=meta.get("level"),
                        format=str(meta.get("format") or "cot"),
                    ),
                )
            )
            continue
        _load_supervision(name, data_dir, cfg, loc, cache)  # raises with the line if the name is unknown
        teacher, level, fmt = labels_of_released(name)
        out.append((name.split("/")[0], Supervision(kind="released", name=name, teacher=teacher, level=level, format=fmt)))
    return out


def _load_supervision(source: str, data_dir, cfg: StudyConfig, loc: tuple, cache: dict):
    from cotdistill import data

    if source not in cache:
        try:
            cache[source] = data.load_supervision(source, data_dir)
        except CotdistillError as e:
            raise CotdistillError(f"{cfg.where(*loc)}: {e}") from None
    return cache[source]


def _check_dataset(cfg: StudyConfig, name: str, loc: tuple) -> str:
    from cotdistill.benchmarks import DATASETS

    if name not in DATASETS:
        raise CotdistillError(f"{cfg.where(*loc)}: {unknown_name('dataset', name, DATASETS)}")
    return name


def expand_cells(cfg: StudyConfig, data_dir: Path | None = None) -> list[Cell]:
    """Every cell of the study, validated up front: an unknown key, an empty grid, a supervision
    name that does not exist, or a student that cannot be loaded fails here, with its line."""
    from cotdistill import evaluate, train

    cache: dict = {}
    datasets = [_check_dataset(cfg, d, ("datasets", i)) for i, d in enumerate(cfg.datasets)]
    students = [check_student(cfg, s, ("students", i)) for i, s in enumerate(cfg.students)]
    # The study-wide settings are checked even when no cell uses them (e.g. only zero-shot cells).
    placeholder = {"student": "x", "data": "x.jsonl", "out": "x", "seed": 0}
    _resolve_settings(cfg, train.TrainConfig, cfg.train, placeholder, _TRAIN_STUDY, ("train",))
    placeholder = {"model": "x", "dataset": "svamp", "out": "x"}
    _resolve_settings(cfg, evaluate.EvalConfig, cfg.eval, placeholder, _EVAL_STUDY, ("eval",))

    def make_cell(dataset: str, student: str, sup: Supervision, seed: int, tr: dict, ev: dict, loc: tuple) -> Cell:
        if sup.kind == "none":  # nothing is trained, so one zero-shot cell stands for every seed
            seed = cfg.seeds[0]
        tr = None if sup.kind == "none" else {**cfg.train, **tr}
        ev = {**cfg.eval, **ev}
        tr_loc = loc + ("train",) if loc[0] == "cells" else ("train",)
        ev_loc = loc + ("eval",) if loc[0] == "cells" else ("eval",)
        req = {"student": student, "data": "x.jsonl", "out": "x", "seed": seed}
        tr_res = None if tr is None else _resolve_settings(cfg, train.TrainConfig, tr, req, _TRAIN_STUDY, tr_loc)
        req = {"model": student, "dataset": dataset, "out": "x"}
        ev_res = _resolve_settings(cfg, evaluate.EvalConfig, ev, req, _EVAL_STUDY, ev_loc)
        return Cell(dataset=dataset, student=student, supervision=sup, seed=seed, train=tr, eval=ev,
                    train_resolved=tr_res, eval_resolved=ev_res)

    cells: list[Cell] = []
    # The product of the lists.
    grid_sups: list[tuple[str | None, Supervision, tuple]] = []
    for i, entry in enumerate(cfg.supervision):
        for tied, sup in _resolve_supervision(cfg, entry, datasets[0] if datasets else None, ("supervision", i), data_dir, cache):
            grid_sups.append((tied, sup, ("supervision", i)))
    if not datasets:  # default: the datasets the released names name
        datasets = list(dict.fromkeys(t for t, _, _ in grid_sups if t))
        if grid_sups and not datasets:
            raise CotdistillError(f"{cfg.where('supervision')}: no released supervision names a dataset; add datasets:")
    for tied, sup, loc in grid_sups:
        if tied and tied not in datasets:
            raise CotdistillError(
                f"{cfg.where(*loc)}: supervision {sup.name!r} is for dataset {tied!r}, which is not in datasets"
            )
    for (tied, sup, loc), student, seed, dataset in itertools.product(grid_sups, students, cfg.seeds, datasets):
        if tied and tied != dataset:
            continue
        cells.append(make_cell(dataset, student, sup, seed, {}, {}, loc))
    # Explicit cells.
    for i, spec in enumerate(cfg.cells):
        loc = ("cells", i)
        student = check_student(cfg, spec.student, loc + ("student",))
        sups = _resolve_supervision(cfg, spec.supervision, spec.dataset, loc + ("supervision",), data_dir, cache)
        for tied, sup in sups:
            dataset = spec.dataset or tied or (datasets[0] if len(datasets) == 1 else None)
            if dataset is None:
                raise CotdistillError(f"{cfg.where(*loc)}: cells[{i}]: give dataset:")
            _check_dataset(cfg, dataset, loc + ("dataset",))
            if tied and tied != dataset:
                raise CotdistillError(f"{cfg.where(*loc)}: supervision {sup.name!r} is for dataset {tied!r}, not {dataset!r}")
            seed = cfg.seeds[0] if spec.seed is None else spec.seed
            cells.append(make_cell(dataset, student, sup, seed, spec.train, spec.eval, loc))
    unique = list({c.key(): c for c in cells}.values())  # an explicit cell may repeat a grid cell
    if not unique:
        what = "students" if not cfg.students else "supervision" if not cfg.supervision else "datasets"
        raise CotdistillError(f"{cfg.where(what)}: the grid is empty ({what} is empty and no cells: are given)")
    return unique


# ============================================================================ running one cell

Progress = Callable[[str, float | None, float | None], None]  # (stage, done, total)


def cell_dir(study_dir: Path, cell: Cell) -> Path:
    return Path(study_dir) / "cells" / cell.slug


def is_done(study_dir: Path, cell: Cell) -> bool:
    return (cell_dir(study_dir, cell) / "done.json").is_file()


def _teacher_supervision(cell: Cell, study_dir: Path, data_dir: Path | None) -> Path:
    """Run the teacher spec for this cell's dataset once; teach caches its own calls."""
    from cotdistill import teach

    sup = cell.supervision
    out = Path(study_dir) / "supervision" / f"{cell.dataset}-{sup.name}.jsonl"
    if out.is_file():
        return out
    spec = dict(sup.spec or {})
    spec.update(dataset=cell.dataset, out=str(out), progress=False)
    if data_dir is not None and "data_dir" not in spec:
        spec["data_dir"] = str(data_dir)
    teach.teach(teach.TeachConfig(**spec))
    if not out.is_file():
        raise CotdistillError(f"teacher {sup.teacher} wrote no supervision file at {out}")
    return out


def _stage_progress(progress: Progress | None, stage: str):
    """Adapt a stage's progress callback (whatever numbers it reports) to (stage, done, total)."""

    def cb(*args: Any, **kwargs: Any) -> None:
        if progress is None:
            return
        done = kwargs.get("done", kwargs.get("step", args[0] if args else None))
        total = kwargs.get("total", args[1] if len(args) > 1 else None)
        if isinstance(done, dict):  # a dict of fields
            total = done.get("total", total)
            done = done.get("done", done.get("step"))
        try:
            progress(stage, float(done) if done is not None else None, float(total) if total else None)
        except (TypeError, ValueError):
            progress(stage, None, None)

    return cb


def _get(obj: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        if isinstance(obj, dict) and n in obj:
            return obj[n]
        if hasattr(obj, n):
            return getattr(obj, n)
    return default


def run_cell(cell: Cell, study_dir: Path, data_dir: Path | None = None, progress: Progress | None = None) -> dict:
    """Run one cell (supervision -> train -> evaluate) and return its results row. Idempotent:
    a finished cell returns its saved row; a half-trained one resumes from its checkpoint."""
    from cotdistill import evaluate, train

    cdir = cell_dir(study_dir, cell)
    done = cdir / "done.json"
    if done.is_file():
        return json.loads(done.read_text())["row"]
    cdir.mkdir(parents=True, exist_ok=True)
    write_provenance(cdir / "cell.json", cell, key=cell.key(), slug=cell.slug)
    t0 = time.time()
    model: str = cell.student
    train_info: dict[str, Any] = {}
    sup = cell.supervision
    if sup.kind != "none":
        if progress:
            progress("supervision", None, None)
        if sup.kind == "teacher":
            source = str(_teacher_supervision(cell, study_dir, data_dir))
        else:
            source = sup.name
        mdir = Path(study_dir) / "models" / cell.model_slug
        tcfg_kwargs = dict(cell.train or {})
        # resume: a half-trained model (the study was killed) continues from its last checkpoint.
        tcfg_kwargs.update(student=cell.student, data=source, out=str(mdir), seed=cell.seed, resume=True,
                           data_dir=str(data_dir) if data_dir else None, quiet=True)
        result = train.train(train.TrainConfig(**tcfg_kwargs), progress=_stage_progress(progress, "train"))
        model = str(result.out)
        train_info = {
            "train_examples": result.n_examples,
            "train_seconds": result.seconds,  # a model trained earlier reports its own training time
            "train_tokens_per_s": result.tokens_per_s,
            "final_loss": result.final_loss,
        }
    ecfg_kwargs = dict(cell.eval)
    ecfg_kwargs.update(model=model, dataset=cell.dataset, out=str(cdir / "eval"),
                       data_dir=str(data_dir) if data_dir else None, quiet=True)
    summary = evaluate.evaluate(evaluate.EvalConfig(**ecfg_kwargs), progress=_stage_progress(progress, "eval"))
    row = results_row(cell, "done", summary=summary, train_info=train_info, model=model)
    row["cell_seconds"] = round(time.time() - t0, 1)
    (cdir / "error.json").unlink(missing_ok=True)
    atomic_write_text(done, json.dumps({"row": row, "cell": cell.model_dump(mode="json")}, indent=2) + "\n")
    return row


RESULT_COLUMNS = [
    "cell", "status", "dataset", "student", "teacher", "level", "format", "supervision", "seed",
    "train_examples", "accuracy", "ci_low", "ci_high", "n", "correct", "mean_output_tokens", "stopped_share",
    "train_seconds", "eval_seconds", "train_tokens_per_s", "eval_tokens_per_s", "final_loss", "error",
]  # fmt: skip


def results_row(cell: Cell, status: str, summary: Any = None, train_info: dict | None = None,
                model: str | None = None, error: str | None = None) -> dict:
    sup = cell.supervision
    s = summary or {}
    t = train_info or {}
    return {
        "cell": cell.slug,
        "status": status,
        "dataset": cell.dataset,
        "student": short_name(cell.student),
        "teacher": sup.teacher,
        "level": sup.level,
        "format": sup.format,
        "supervision": sup.name if sup.kind != "path" else Path(sup.name).name,
        "seed": cell.seed,
        "train_examples": t.get("train_examples") if sup.kind != "none" else 0,
        "accuracy": _get(s, "accuracy"),
        "ci_low": _get(s, "ci_low"),
        "ci_high": _get(s, "ci_high"),
        "n": _get(s, "n"),
        "correct": _get(s, "correct"),
        "mean_output_tokens": _get(s, "mean_output_tokens"),
        "stopped_share": _get(s, "stopped_share"),
        "train_seconds": _round(t.get("train_seconds")),
        "eval_seconds": _round(_get(s, "seconds")),
        "train_tokens_per_s": _round(t.get("train_tokens_per_s")),
        "eval_tokens_per_s": _round(_get(s, "tokens_per_s")),
        "final_loss": t.get("final_loss"),
        "error": error,
    }


def _round(v: Any) -> Any:
    return round(float(v), 2) if isinstance(v, (int, float)) else v


def record_failure(cell: Cell, study_dir: Path, exc: BaseException) -> dict:
    msg = f"{type(exc).__name__}: {exc}".splitlines()[0] if not isinstance(exc, CotdistillError) else str(exc)
    cdir = cell_dir(study_dir, cell)
    cdir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        cdir / "error.json",
        json.dumps({"error": msg, "traceback": traceback.format_exc(), "cell": cell.model_dump(mode="json")}, indent=2),
    )
    return results_row(cell, "failed", error=msg)


# ============================================================================ the whole study


def write_results(study_dir: Path, rows: list[dict]) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in RESULT_COLUMNS})
    path = Path(study_dir) / "results.csv"
    atomic_write_text(path, buf.getvalue())
    return path


def pending_row(cell: Cell, study_dir: Path) -> dict:
    err = cell_dir(study_dir, cell) / "error.json"
    if err.is_file():
        return results_row(cell, "failed", error=json.loads(err.read_text()).get("error"))
    return results_row(cell, "pending")


def init_study_dir(cfg: StudyConfig, cells: list[Cell], study_dir: Path, data_dir: Path | None) -> dict[str, dict]:
    """Write the study file, its provenance (with every resolved cell) and results.csv as it stands."""
    study_dir.mkdir(parents=True, exist_ok=True)
    if cfg._text:
        atomic_write_text(study_dir / "study.yaml", cfg._text)
    write_provenance(
        study_dir / "study.provenance.json",
        cfg,
        source=str(cfg._source) if cfg._source else None,
        data_dir=str(data_dir) if data_dir else None,
        cells=[{"slug": c.slug, "key": c.key(), "label": c.label(), **c.model_dump(mode="json")} for c in cells],
    )
    rows = {c.slug: (json.loads((cell_dir(study_dir, c) / "done.json").read_text())["row"] if is_done(study_dir, c)
                     else pending_row(c, study_dir)) for c in cells}  # fmt: skip
    write_results(study_dir, list(rows.values()))
    return rows


def _quiet_transformers() -> None:
    """Loading/saving bars of every cell would scroll the study's own view away."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def run_study(
    cfg: StudyConfig,
    out: Path,
    data_dir: Path | None = None,
    view: Any = None,
    cells: list[Cell] | None = None,
    report: bool = True,
) -> Path:
    """Run every cell not yet done (failures are recorded and the study goes on), then write
    results.csv, the supervision metrics and the report. Returns the study directory."""
    from cotdistill.data import resolve_data_dir

    data_dir = resolve_data_dir(data_dir)
    cells = cells if cells is not None else expand_cells(cfg, data_dir)
    study_dir = Path(out)
    rows = init_study_dir(cfg, cells, study_dir, data_dir)
    _quiet_transformers()
    view = view or PlainView()
    view.start(cells, [c for c in cells if is_done(study_dir, c)])
    try:
        for cell in cells:
            if is_done(study_dir, cell):
                continue
            view.cell_started(cell)
            try:
                row = run_cell(cell, study_dir, data_dir, progress=view.progress)
            except Exception as e:  # noqa: BLE001  (a failed cell is recorded; the study goes on)
                row = record_failure(cell, study_dir, e)
            rows[cell.slug] = row
            write_results(study_dir, list(rows.values()))
            view.cell_finished(cell, row)
    finally:
        view.stop()
    if report:
        from cotdistill.report import write_report

        write_report(study_dir, data_dir=data_dir)
    return study_dir


def study_status(study_dir: Path) -> dict[str, int]:
    """Counts of cells by status, from results.csv."""
    counts: dict[str, int] = {}
    with open(Path(study_dir) / "results.csv", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


# ============================================================================ live view


class PlainView:
    """One line per event: for logs and pipes (and the base of the live view)."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.total = self.done = self.failed = 0
        self.t0 = time.time()
        self.ran_seconds: list[float] = []
        self.current: Cell | None = None
        self.cell_t0 = 0.0
        self.stage = ""
        self.stage_done: float | None = None
        self.stage_total: float | None = None
        self.plain_lines = True
        self.last_line = 0.0

    def start(self, cells: list[Cell], finished: list[Cell]) -> None:
        self.total, self.done = len(cells), len(finished)
        self.t0 = time.time()
        self.console.print(f"study: {self.total} cells, {self.done} already done, {self.total - self.done} to run")

    def cell_started(self, cell: Cell) -> None:
        self.current, self.cell_t0 = cell, time.time()
        self.stage, self.stage_done, self.stage_total = "start", None, None
        self.console.print(f"[{self.done + self.failed + 1}/{self.total}] {cell.label()} ({cell.slug})")

    def progress(self, stage: str, done: float | None, total: float | None) -> None:
        changed = stage != self.stage
        self.stage, self.stage_done, self.stage_total = stage, done, total
        # In a log, a line when a stage starts and then at most every 30 s.
        if self.plain_lines and (changed or time.time() - self.last_line >= 30) and done is not None and total:
            self.last_line = time.time()
            self.console.print(f"  {stage} {done:.0f}/{total:.0f}  (cell {_fmt_s(time.time() - self.cell_t0)})")

    def cell_finished(self, cell: Cell, row: dict) -> None:
        secs = time.time() - self.cell_t0
        self.ran_seconds.append(secs)
        if row["status"] == "done":
            self.done += 1
            acc = row.get("accuracy")
            self.console.print(f"  done in {secs:.0f} s: accuracy {acc:.3f}" if isinstance(acc, float) else "  done")
        else:
            self.failed += 1
            self.console.print(f"  [red]failed[/red] after {secs:.0f} s: {row.get('error')}", markup=True)
        self.current = None

    def eta_seconds(self) -> float | None:
        """Mean time of the cells run so far times the cells left, minus the current cell's elapsed."""
        left = self.total - self.done - self.failed
        if not self.ran_seconds:
            return None
        mean = sum(self.ran_seconds) / len(self.ran_seconds)
        elapsed = time.time() - self.cell_t0 if self.current else 0.0
        return max(0.0, mean * left - elapsed)

    def stop(self) -> None:
        pass


class LiveView(PlainView):
    """A rich live panel: cells done / running / failed / left, the current cell's stage and
    progress, elapsed time and the time left."""

    def __init__(self, console: Any = None) -> None:
        super().__init__(console)
        from rich.live import Live

        self.live = Live(console=self.console, refresh_per_second=2, get_renderable=self.render, transient=False)
        self.plain_lines = False

    def start(self, cells: list[Cell], finished: list[Cell]) -> None:
        super().start(cells, finished)
        self.live.start()

    def render(self):
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        t = Table.grid(padding=(0, 1))
        running = 1 if self.current else 0
        left = self.total - self.done - self.failed - running
        t.add_row(
            "cells",
            ProgressBar(total=max(self.total, 1), completed=self.done + self.failed, width=30),
            f"{self.done} done · {running} running · {self.failed} failed · {left} left",
        )
        if self.current:
            frac = (
                f"{self.stage_done:.0f}/{self.stage_total:.0f}"
                if self.stage_done is not None and self.stage_total
                else ""
            )
            bar = (
                ProgressBar(total=self.stage_total, completed=self.stage_done or 0, width=30)
                if self.stage_total
                else ""
            )
            t.add_row(self.stage, bar, f"{frac} {self.current.label()}")
        eta = self.eta_seconds()
        t.add_row(
            "time",
            "",
            f"elapsed {_fmt_s(time.time() - self.t0)} · left {_fmt_s(eta) if eta is not None else 'estimating'}",
        )
        return t

    def stop(self) -> None:
        self.live.stop()


def _fmt_s(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
