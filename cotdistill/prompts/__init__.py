"""Teacher prompts as data: the template, levels, formats and one-shot examples live in files here.

- `teacher.txt`   the prompt template ($placeholders, string.Template syntax)
- `levels.yaml`   granularity levels 1-6 (1 = most condensed, 6 = every step, with a check)
- `formats.yaml`  rationale formats: cot, subquestions, rar, symbolic
- `families.yaml` answer kind -> task family (one-shot example file) and the answer form asked for
- `examples/<family>.yaml`  one one-shot example per task family, written for this project:
  a `cot` rationale for each level, and one rationale per other format (written at level 3)
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


def teacher_prompt(kind: str, level: int, fmt: str) -> TeacherPrompt:
    """The prompt for questions of answer `kind` (number, choice, boolean, math) at `level` in `fmt`."""
    check_level_format(level, fmt)
    families = _yaml("families.yaml")
    if kind not in families:
        raise unknown_name("answer kind", kind, families)
    family = families[kind]
    example = _yaml(f"examples/{family['family']}.yaml")
    rationale = example["cot"][level] if fmt == "cot" else example[fmt]
    fields = {
        "level": str(level),
        "level_instruction": _yaml("levels.yaml")[level],
        "format": fmt,
        "format_instruction": _yaml("formats.yaml")[fmt],
        "answer_form": family["answer_form"],
        "example_question": example["question"].strip(),
        "example_rationale": rationale.strip(),
    }
    return TeacherPrompt((PROMPT_DIR / "teacher.txt").read_text(encoding="utf-8"), fields)
