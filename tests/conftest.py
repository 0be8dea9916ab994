import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).parent / "assets"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real shared data directory (../shared/data or $COTDISTILL_DATA)."""
    d = Path(os.environ.get("COTDISTILL_DATA", REPO.parent / "shared" / "data"))
    if not (d / "cot").is_dir():
        pytest.skip(f"data directory {d} not present")
    return d


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory) -> Path:
    """A 2-layer random Llama with an Alpaca-style (no chat template) tokenizer."""
    from cotdistill.testing import make_tiny_student

    return make_tiny_student(tmp_path_factory.mktemp("tiny") / "student")


@pytest.fixture(scope="session")
def tiny_chat_student(tmp_path_factory) -> Path:
    """A 2-layer random Llama whose tokenizer has a chat template and <|im_end|> as EOS."""
    from cotdistill.testing import make_tiny_student

    return make_tiny_student(tmp_path_factory.mktemp("tinychat") / "student", chat_template=True)
