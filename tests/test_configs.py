"""Every shipped study YAML loads, validates against the real data, and says how to run it."""

import re
from pathlib import Path

import pytest

from cotdistill import study
from cotdistill.errors import CotdistillError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "configs").glob("*.yaml"))
ASSET_STUDIES = sorted((REPO / "tests" / "assets" / "study").glob("*.yaml"))


def test_there_are_shipped_studies():
    names = {p.name for p in SHIPPED}
    assert {"demo.yaml", "svamp_full.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED + ASSET_STUDIES, ids=lambda p: p.name)
def test_study_file_starts_with_its_command_and_parses(path):
    first = path.read_text().splitlines()[0]
    rel = path.relative_to(REPO).as_posix()
    assert re.fullmatch(rf"# Run: cotdistill study {re.escape(rel)} --out \S+.*", first), first
    study.load_study(path)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_study_validates_every_cell(path, data_dir):
    cfg = study.load_study(path)
    try:
        cells = study.expand_cells(cfg, data_dir)
    except CotdistillError as e:
        if "needs the package" in str(e):  # an optional student (pip install -e ".[gemma]")
            pytest.skip(str(e))
        raise
    assert cells and len({c.slug for c in cells}) == len(cells)


def test_demo_is_the_documented_study(data_dir):
    cells = study.expand_cells(study.load_study(REPO / "configs" / "demo.yaml"), data_dir)
    names = sorted(c.supervision.name for c in cells)
    assert names == ["none", "svamp/chatgpt/level3"]  # the zero-shot self is the yardstick
    assert {c.student for c in cells} == {"smollm2-135m"} and {c.dataset for c in cells} == {"svamp"}
    # fp32 forced: the demo's time is measured with the slowest numerics (CPUs without native bf16).
    assert all(c.eval_resolved["dtype"] == "fp32" for c in cells)
    assert all(c.train_resolved["dtype"] == "fp32" for c in cells if c.train_resolved)
    assert all(c.eval["limit"] >= 100 for c in cells)
    assert "make demo" in (REPO / "Makefile").read_text() and "configs/demo.yaml" in (REPO / "Makefile").read_text()


def test_full_svamp_grid(data_dir):
    cells = study.expand_cells(study.load_study(REPO / "configs" / "svamp_full.yaml"), data_dir)
    got = {(c.supervision.teacher, c.supervision.level, c.supervision.format) for c in cells}
    want = {("chatgpt", lvl, "cot") for lvl in range(1, 7)}
    want |= {("chatgpt", 3, f) for f in ("subquestions", "rar", "symbolic")}
    want |= {("gemini", 3, "cot"), ("llama", 3, "cot"), ("human", None, "human"), ("answer-only", None, "answer-only"),
             ("zero-shot", None, "zero-shot")}
    assert got == want
