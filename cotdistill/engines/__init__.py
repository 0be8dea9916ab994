"""Generation engines: one interface (base.Engine) for evaluate, the hf: teacher and serve.

A new engine is one module with a class that has `name`, `generate` and `close`, plus one line
in ENGINES. The modules import their heavy libraries (torch, transformers, openai) only when an
engine is made.
"""

from __future__ import annotations

from typing import Any

from cotdistill.engines.base import Completion, Engine, Request
from cotdistill.engines.hf import HFEngine
from cotdistill.engines.openai import OpenAIEngine
from cotdistill.errors import unknown_name

# name -> factory(model, **options): hf loads `model` here; openai asks the server that serves it by that name.
ENGINES: dict[str, Any] = {
    "hf": HFEngine.load,
    "openai": OpenAIEngine,
}

__all__ = ["ENGINES", "Completion", "Engine", "Request", "check_engine", "make_engine"]


def check_engine(name: str) -> str:
    """`name` if it is a registered engine, else a one-line error naming the known ones."""
    if name not in ENGINES:
        raise unknown_name("engine", name, ENGINES)
    return name


def make_engine(name: str, model: str, **options: Any) -> Engine:
    """The engine `name` over `model` (a student spec for hf, the served model name for openai)."""
    return ENGINES[check_engine(name)](model, **options)
