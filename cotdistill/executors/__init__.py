"""Executors run a plan's jobs: `local` (in this process), `subprocess` (a process per job),
`ray` (a Ray task per job). Adding one is a module with an Executor subclass and a line here."""

from __future__ import annotations

from importlib import import_module

from cotdistill.executors.base import Executor

REGISTRY = {
    "local": "cotdistill.executors.local:LocalExecutor",
    "subprocess": "cotdistill.executors.subprocess:SubprocessExecutor",
    "ray": "cotdistill.executors.ray:RayExecutor",
}


def make_executor(settings) -> Executor:
    """The executor named by `settings.name` (plan.spec.ExecutorSettings; the name is validated there)."""
    module, cls = REGISTRY[settings.name].split(":")
    return getattr(import_module(module), cls)(settings)
