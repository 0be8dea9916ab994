"""Teacher prompts as data: the template, levels, formats and one-shot examples live in files here.

- `teacher.txt`   the prompt template ($placeholders, string.Template syntax)
- `formats.yaml`  rationale formats: cot, subquestions, rar, symbolic
- `families.yaml` answer kind -> answer form and default dataset; dataset -> family and what it borrows
- `levels.yaml`   GENERATED (derive.py): per dataset and level 1-6, an instruction describing what the
  released rationales of that level look like, with their measured statistics
- `examples/<dataset>.yaml`  GENERATED (derive.py): per dataset one released training rationale per
  level (`cot`) and per released level of each other format
- `examples/written/<family>.yaml`  hand-written format examples, used only where the release has none

Regenerate the generated files with `python -m cotdistill.prompts.derive --data-dir DATA`.
"""

import json
from dataclasses import dataclass
from functools import cache
from hashlib import sha256
from pathlib import Path
from string import Template

import yaml

from cotdistill.errors import CotdistillError, unknown_name

PROMPT_DIR = Path(__file__).parent
LEVELS = (1, 2, 3, 4, 5, 6)


@cache
def _yaml(name: str) -> dict:
    return yaml.safe_load((PROMPT_DIR / name).read_text(encoding="utf-8"))


def formats() -> list[str]:
    return list(_yaml("formats.yaml"))


def check_level_format(level: int, fmt: str) -> None:
    if level not in LEVELS:
        raise CotdistillError(f"unknown granularity level {level}; levels are 1 (most condensed) to 6 (every step)")
    if fmt not in formats():
        raise unknown_name("rationale format", fmt, formats())


@dataclass(frozen=True)
class TeacherPrompt:
    """The filled-in pieces for one (answer kind, level, format); `render` adds the question."""

    template: str
    fields: dict[str, str]

    def render(self, question: str) -> str:
        return Template(self.template).substitute(self.fields, question=question.strip())

    @property
    def hash(self) -> str:
        """Identifies the exact template + example + instructions (everything but the question)."""
        blob = json.dumps({"template": self.template, "fields": self.fields}, sort_keys=True)
        return sha256(blob.encode("utf-8")).hexdigest()[:16]


def teacher_prompt(kind: str, level: int, fmt: str, dataset: str | None = None) -> TeacherPrompt:
    """The prompt for questions of answer `kind` (number, choice, boolean, math) at `level` in `fmt`,
    with the level definition and example derived from `dataset`'s released rationales (None: the
    default dataset of `kind`, see families.yaml)."""
    check_level_format(level, fmt)
    kinds = _yaml("families.yaml")["kinds"]
    if kind not in kinds:
        raise unknown_name("answer kind", kind, kinds)
    dataset = dataset or kinds[kind]["dataset"]
    levels = _yaml("levels.yaml")
    if dataset not in levels:
        raise unknown_name("dataset for a teacher prompt", dataset, levels)
    example = example_for(dataset, level, fmt)
    definition = levels[dataset][level]
    fields = {
        "level": str(level),
        "level_instruction": definition["instruction"],
        "format": fmt,
        "format_instruction": _yaml("formats.yaml")[fmt],
        "answer_form": kinds[kind]["answer_form"],
        "example_question": example["question"].strip(),
        "example_rationale": example["rationale"].strip(),
        # not in the template: recorded in teach provenance, so a run says what it asked for
        "dataset": dataset,
        "example_source": example["source"],
        "example_id": str(example["id"]),
        "level_source": definition["source"],
        "level_stats": json.dumps(definition["stats"], sort_keys=True),
    }
    return TeacherPrompt((PROMPT_DIR / "teacher.txt").read_text(encoding="utf-8"), fields)


def example_for(dataset: str, level: int, fmt: str) -> dict:
    """The derived example entry (source, id, row, question, rationale) of `dataset` for `level` in
    `fmt`; a format released at other levels only gives its nearest level (ties: the lower)."""
    examples = _yaml(f"examples/{dataset}.yaml")
    by_level = examples[fmt]
    return by_level[min(by_level, key=lambda n: (abs(n - level), n))]
