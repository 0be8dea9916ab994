"""The study file: YAML with line numbers, the validated StudyConfig, brace expansion.

Nothing here looks at the data or the students; cells.py resolves the grid and checks it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from cotdistill.errors import CotdistillError

# ============================================================================ YAML with line numbers


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (a silent override is a typo waiting to bite)."""


# Limits on what a YAML file may make us build: a settings file is small and flat, so these only
# stop hostile or broken input (a 400-byte file whose nested aliases expand to a billion items,
# or brackets nested thousands deep) before it costs memory or a recursion error.
MAX_YAML_DEPTH = 64  # nested mappings/lists
MAX_YAML_NODES = 100_000  # values after expanding aliases (*name)
MAX_BRACE_EXPANSIONS = 10_000  # names one brace pattern may expand to


def check_yaml_bounds(text: str, source: str) -> None:
    """Walk the YAML's parse events (a flat loop, no recursion) and refuse input deeper than
    MAX_YAML_DEPTH or larger than MAX_YAML_NODES once aliases are expanded."""
    sizes: dict[str, int] = {}  # anchor -> values it expands to
    open_: list[tuple[str | None, int]] = []  # (anchor, total before it) of each open collection
    total = 0
    try:
        for ev in yaml.parse(text, Loader=yaml.SafeLoader):
            line = ev.start_mark.line + 1
            if isinstance(ev, yaml.AliasEvent):
                total += sizes.get(ev.anchor, 1)
            elif isinstance(ev, yaml.ScalarEvent):
                total += 1
                if ev.anchor:
                    sizes[ev.anchor] = 1
            elif isinstance(ev, yaml.CollectionStartEvent):
                open_.append((ev.anchor, total))
                total += 1
                if len(open_) > MAX_YAML_DEPTH:
                    raise CotdistillError(f"{source}:{line}: nested more than {MAX_YAML_DEPTH} levels deep")
            elif isinstance(ev, yaml.CollectionEndEvent) and open_:
                anchor, before = open_.pop()
                if anchor:
                    sizes[anchor] = total - before
            if total > MAX_YAML_NODES:
                raise CotdistillError(
                    f"{source}:{line}: more than {MAX_YAML_NODES} values once aliases (*name) are expanded"
                )
    except yaml.YAMLError:
        return  # the loader reports syntax errors with their line


def load_yaml_text(text: str, source: str) -> Any:
    """Safe-load bounded YAML (see check_yaml_bounds); errors name the file and line."""
    return _load_yaml(text, source)[0]


def read_yaml_file(path: Path, option: str = "") -> Any:
    """A YAML file's data; a missing, binary or malformed file is one line naming it."""
    what = f"{option} {path}".strip()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CotdistillError(f"{what}: not UTF-8 text ({e.reason} at byte {e.start}); expected a YAML file") from None
    except OSError as e:
        raise CotdistillError(f"{what}: cannot read ({e.strerror or e})") from None
    if "\x00" in text:
        raise CotdistillError(f"{what}: binary data (NUL bytes); expected a YAML file")
    return load_yaml_text(text, str(path))


def _load_yaml(text: str, source: str) -> tuple[Any, dict[tuple, int]]:
    """Parse YAML; return the data and {path tuple: 1-based line} for every key and item."""
    check_yaml_bounds(text, source)
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


EXECUTORS = ("local", "subprocess", "ray")
JOB_KINDS = ("teach", "train", "eval")


class ExecutorSettings(BaseModel):
    """Where and how the study's jobs run (the command's flags override the study file)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field("local", description="local (in this process), subprocess (a process per job) or ray.")
    max_parallel: int | None = Field(None, ge=1, description="Jobs running at once; default 1 (local), 2 (subprocess), the cluster's fill (ray).")
    max_retries: int = Field(2, ge=0, description="Re-runs of a job whose worker died (crash, OOM kill); a raised error is not retried.")
    ray_address: str | None = Field(None, description="Ray cluster: auto, HOST:PORT or ray://HOST:PORT; default: a local Ray started for the run.")
    ray_num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray started for the run (default: all).")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        return _known_executor(v)


def _known_executor(name: str) -> str:
    from cotdistill.errors import unknown_name

    if name not in EXECUTORS:  # a ValueError, so that pydantic names the study file's line
        raise ValueError(str(unknown_name("executor", name, EXECUTORS)))
    return name


class ResourceSpec(BaseModel):
    """What one job asks the executor for; unset values are estimated (see plan.jobs)."""

    model_config = ConfigDict(extra="forbid")
    cpus: float | None = Field(None, gt=0, description="CPU cores (also the job's torch threads).")
    gpus: float | None = Field(None, ge=0, description="GPUs; a fraction packs several jobs on one GPU (Ray).")
    memory_gb: float | None = Field(None, gt=0, description="Memory to reserve in GB (Ray schedules by it).")


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
    executor: str | ExecutorSettings = Field(
        "local", description="local, subprocess or ray, or a mapping of ExecutorSettings (name, max_parallel, ray_address ...)."
    )
    resources: dict[str, ResourceSpec] = Field(
        default_factory=dict, description="Per job kind (teach, train, eval): cpus, gpus, memory_gb to request."
    )

    _source: Path | None = PrivateAttr(None)
    _display: str = PrivateAttr("")  # the file name as the user gave it, for messages
    _lines: dict = PrivateAttr(default_factory=dict)
    _text: str = PrivateAttr("")
    _trust_remote_code: bool = PrivateAttr(False)  # --trust-remote-code given: the file may ask for remote code

    @field_validator("seeds")
    @classmethod
    def _seeds_nonempty(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("seeds is empty: give at least one seed")
        return v

    @field_validator("executor")
    @classmethod
    def _executor(cls, v: str | ExecutorSettings) -> ExecutorSettings:
        return ExecutorSettings(name=_known_executor(v)) if isinstance(v, str) else v

    @field_validator("resources")
    @classmethod
    def _kinds(cls, v: dict[str, ResourceSpec]) -> dict[str, ResourceSpec]:
        from cotdistill.errors import unknown_name

        for kind in v:
            if kind not in JOB_KINDS:
                raise ValueError(str(unknown_name("job kind", kind, JOB_KINDS)))
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
        msg = msg.removeprefix("Value error, ")
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
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CotdistillError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); expected a study YAML file") from None
    if "\x00" in text:
        raise CotdistillError(f"{path}: binary data (NUL bytes); expected a study YAML file")
    return parse_study(text, path)


# ============================================================================ brace expansion

_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str, _made: list[int] | None = None) -> list[str]:
    """`level{1..6}` -> level1 .. level6; `{chatgpt,gemini}` -> both; nested/multiple braces multiply.
    At most MAX_BRACE_EXPANSIONS names, checked before they are made."""
    made = _made if _made is not None else [0]
    m = _BRACE.search(pattern)
    if not m:
        made[0] += 1
        if made[0] > MAX_BRACE_EXPANSIONS:
            raise CotdistillError(f"brace pattern expands to more than {MAX_BRACE_EXPANSIONS} names")
        return [pattern]
    body = m.group(1)
    rng = re.fullmatch(r"\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*", body)
    if rng:
        a, b = int(rng.group(1)), int(rng.group(2))
        if abs(b - a) >= MAX_BRACE_EXPANSIONS:
            raise CotdistillError(f"brace range {{{body}}} in {pattern!r} has {abs(b - a) + 1} values; "
                                  f"at most {MAX_BRACE_EXPANSIONS} are allowed")
        options = [str(i) for i in (range(a, b + 1) if a <= b else range(a, b - 1, -1))]
    elif "," in body:
        options = [o.strip() for o in body.split(",")]
    else:
        raise CotdistillError(f"cannot expand {{{body}}} in {pattern!r}: use {{1..6}} or {{a,b,c}}")
    head, tail = pattern[: m.start()], pattern[m.end() :]
    return [x for o in options for x in expand_braces(head + o + tail, made)]


def executor_settings(cfg: StudyConfig, **overrides: Any) -> ExecutorSettings:
    """The study file's executor settings with the command's flags (those not None) on top."""
    base = cfg.executor if isinstance(cfg.executor, ExecutorSettings) else ExecutorSettings(name=cfg.executor)
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return ExecutorSettings(**{**base.model_dump(), **given})
    except ValidationError as e:
        err = e.errors()[0]
        flag = {"name": "executor"}.get(str(err["loc"][0]), str(err["loc"][0]))
        raise CotdistillError(f"--{flag.replace('_', '-')}: {err['msg'].removeprefix('Value error, ')}") from None
