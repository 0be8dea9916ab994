"""Cells: the study's grid resolved and checked. A cell is one (dataset, student, supervision,
seed, train settings, eval settings); its key is a hash of everything that changes its result.

Files are named by portable references (cotdistill.refs): a file under the data directory is
`data:<relative path>`, so keys stay the same when the data directory or the study moves.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from cotdistill import refs
from cotdistill.errors import CotdistillError, unknown_name
from cotdistill.numerics import Numerics, StudyNumerics
from cotdistill.plan.spec import StudyConfig, expand_braces

NONE = "none"  # supervision meaning "no training": the zero-shot baseline




class SupervisionSpec(BaseModel):
    """How a cell is supervised, resolved: kind + what identifies it + labels for the report."""

    model_config = ConfigDict(extra="forbid")
    kind: str  # "released" | "path" | "teacher" | "none"
    name: str  # released name, file reference (cotdistill.refs), teacher slug, or "none"
    spec: dict[str, Any] | None = None  # teacher spec (teach.TeachConfig settings)
    sha256: str | None = None  # content of a JSONL path: an edited file re-runs its cells
    teacher: str
    level: int | None = None
    format: str


class Cell(BaseModel):
    """A fully resolved cell. Its folder name is derived from everything that affects its result."""

    model_config = ConfigDict(extra="forbid")
    dataset: str
    student: str  # as written (alias / HF id) or a file reference (cotdistill.refs)
    supervision: SupervisionSpec
    seed: int
    train: dict[str, Any] | None  # training settings as given (study + cell); None: zero-shot, no training
    eval: dict[str, Any]  # evaluation settings as given
    train_resolved: dict[str, Any] | None  # every setting that changes the trained model, defaults filled in
    eval_resolved: dict[str, Any]  # every setting that changes the evaluation, defaults filled in
    train_numerics: Numerics | None = None  # precision, device, engine, versions of its training
    eval_numerics: Numerics | None = None  # ... and of its evaluation (cotdistill.numerics)

    def identity(self) -> dict[str, Any]:
        sup = self.supervision
        return {
            "dataset": self.dataset,
            "student": self.student,
            "supervision": {"kind": sup.kind, "name": sup.name, "spec": sup.spec, "sha256": sup.sha256},
            "seed": self.seed,
            "train": self.train_resolved,
            "eval": self.eval_resolved,
            "train_numerics": self.train_numerics.key() if self.train_numerics else None,
            "eval_numerics": self.eval_numerics.key() if self.eval_numerics else None,
        }

    def key(self) -> str:
        return _hash(self.identity())

    def train_key(self) -> str:
        ident = self.identity()
        return _hash({k: ident[k] for k in ("dataset", "student", "supervision", "seed", "train", "train_numerics")})

    def teach_key(self) -> str | None:
        """Key of the teacher's supervision file (None: no teacher); the teacher's name hashes its settings."""
        sup = self.supervision
        return _hash({"dataset": self.dataset, "teacher": sup.name}) if sup.kind == "teacher" else None

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
    """A student's readable name: a path's stem, an HF id's last part, an alias as it is."""
    student = student.removeprefix(refs.DATA)
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
    if settings.get("trust_remote_code") and not cfg._trust_remote_code:
        raise CotdistillError(f"{cfg.where(*loc, 'trust_remote_code')}: {'.'.join(map(str, loc))}.trust_remote_code: "
                              "runs code from the model's repository; also pass --trust-remote-code to allow it")
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
                      "stop_after_failures", "batch_size", "price_in", "price_out", "allow_partial")


def check_student(cfg: StudyConfig, spec: str, loc: tuple, data_dir: Path | None = None) -> str:
    """Cheap up-front check that a student can be loaded; returns the spec to use (a path as its
    portable reference: data-relative under the data directory, else absolute)."""
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
        return refs.portable(path.resolve(), data_dir)
    if path.exists():
        if not (path / "config.json").is_file():
            raise CotdistillError(f"{cfg.where(*loc)}: student folder {spec} has no config.json")
        return refs.portable(path.resolve(), data_dir)
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
) -> list[tuple[str | None, SupervisionSpec]]:
    """Expand one supervision entry into (dataset it is tied to or None, Supervision) items, checking each exists."""
    from cotdistill.data import sha256_file

    if isinstance(entry, dict):
        from cotdistill import teach

        entry = dict(entry)
        teacher = str(entry.get("teacher", ""))
        if teacher.startswith("hf:"):  # a local teacher folder / .gguf is relative to the study file
            local = cfg.base_dir() / teacher[3:]
            if not Path(teacher[3:]).is_absolute() and local.exists():
                entry["teacher"] = teacher = "hf:" + refs.portable(local.resolve(), data_dir)
        # Validate against teach.TeachConfig with a placeholder dataset; the real one is set per cell.
        spec = _resolve_settings(
            cfg, teach.TeachConfig, entry, {"dataset": dataset_hint or "svamp", "out": "x.jsonl"}, _TEACH_STUDY, loc
        )
        spec = {k: v for k, v in spec.items() if k not in _TEACH_OPERATIONAL}
        label = short_name(teacher.split(":", 1)[-1]) if teacher else "teacher"
        level, fmt = spec.get("level"), str(spec.get("format", "cot"))
        sup = SupervisionSpec(
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
        return [(None, SupervisionSpec(kind="none", name=NONE, teacher="zero-shot", format="zero-shot"))]
    try:
        names = expand_braces(entry) if "{" in entry else [entry]
    except CotdistillError as e:
        raise CotdistillError(f"{cfg.where(*loc)}: {e}") from None
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
                    SupervisionSpec(
                        kind="path",
                        name=refs.portable(path.resolve(), data_dir),
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
        out.append((name.split("/")[0], SupervisionSpec(kind="released", name=name, teacher=teacher, level=level, format=fmt)))
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


def expand_cells(cfg: StudyConfig, data_dir: Path | None = None, numerics: StudyNumerics | None = None) -> list[Cell]:
    """Every cell of the study, validated up front: an unknown key, an empty grid, a supervision
    name that does not exist, or a student that cannot be loaded fails here, with its line.
    `numerics`: what `auto` means (the study folder's record); default: this machine."""
    from cotdistill import evaluate, train

    numerics = numerics or StudyNumerics.resolve_here()
    gpus = {kind: spec.gpus for kind, spec in cfg.resources.items()}
    cache: dict = {}
    datasets = [_check_dataset(cfg, d, ("datasets", i)) for i, d in enumerate(cfg.datasets)]
    students = [check_student(cfg, s, ("students", i), data_dir) for i, s in enumerate(cfg.students)]
    # The study-wide settings are checked even when no cell uses them (e.g. only zero-shot cells).
    placeholder = {"student": "x", "data": "x.jsonl", "out": "x", "seed": 0}
    _resolve_settings(cfg, train.TrainConfig, cfg.train, placeholder, _TRAIN_STUDY, ("train",))
    placeholder = {"model": "x", "dataset": "svamp", "out": "x"}
    _resolve_settings(cfg, evaluate.EvalConfig, cfg.eval, placeholder, _EVAL_STUDY, ("eval",))

    def make_cell(dataset: str, student: str, sup: SupervisionSpec, seed: int, tr: dict, ev: dict, loc: tuple) -> Cell:
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
                    train_resolved=tr_res, eval_resolved=ev_res,
                    train_numerics=None if tr is None else job_numerics("train", tr, tr_loc),
                    eval_numerics=job_numerics("eval", ev, ev_loc))

    def job_numerics(kind: str, settings: dict, loc: tuple) -> Numerics:
        try:
            return numerics.job(kind, settings, gpus.get(kind))
        except CotdistillError as e:  # an unknown dtype: name the study file's line
            raise CotdistillError(f"{cfg.where(*loc, 'dtype')}: {'.'.join(map(str, loc))}.dtype: {e}") from None

    cells: list[Cell] = []
    # The product of the lists.
    grid_sups: list[tuple[str | None, SupervisionSpec, tuple]] = []
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
        student = check_student(cfg, spec.student, loc + ("student",), data_dir)
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
