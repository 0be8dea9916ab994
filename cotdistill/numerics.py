"""Numerics: the precision, device, engine and library versions that make a job's numbers.

They are part of every train and eval job's identity (its content key) and of every results row,
because the same job under other numerics gives other answers (bf16 vs fp32 on CPU: docs/numerics.md).

A study fixes what its `auto` settings resolve to the first time it is planned into a folder
(`numerics.json`), so that resuming it on a machine that would resolve differently keeps the
study's choice, or refuses with one line; nothing is mixed silently.

Versions enter the key as major.minor only: a patch release of torch or transformers keeps every
finished job; a minor release is a different study (refused on resume; `--numerics here` re-runs).
Rows record the full versions that ran each job.
"""

from __future__ import annotations

import platform
import socket
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cotdistill.errors import CotdistillError
from cotdistill.provenance import atomic_write_text

RECORD = "numerics.json"
KINDS = ("train", "eval")
SHORT = {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}


def library_versions() -> dict[str, str]:
    """Full versions of torch and transformers in this environment."""
    out = {}
    for name in ("torch", "transformers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "none"
    return out


def major_minor(version: str) -> str:
    """2.13.0+cpu -> 2.13: what a job's key holds (patch releases keep finished jobs)."""
    return ".".join(version.split("+")[0].split(".")[:2])


def has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def default_gpus(kind: str, gpus: float | None) -> float:
    """GPUs a job asks for: as given, else one for train/eval when this machine has CUDA."""
    return gpus if gpus is not None else (1.0 if kind != "teach" and has_cuda() else 0.0)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Numerics(BaseModel):
    """What made one job's numbers."""

    model_config = ConfigDict(extra="forbid")
    dtype: str = Field(description="Resolved compute precision: bfloat16, float32, float16.")
    device: str = Field(description="cpu or cuda (an index does not change the numbers).")
    engine: str = Field(description="What computed it: hf (transformers; training and the built-in evaluation).")
    torch: str = Field(description="torch version (full; the key holds major.minor).")
    transformers: str = Field(description="transformers version (full; the key holds major.minor).")

    def key(self) -> dict[str, str]:
        """The part of a job's identity: versions as major.minor."""
        return {"dtype": self.dtype, "device": self.device, "engine": self.engine,
                "torch": major_minor(self.torch), "transformers": major_minor(self.transformers)}

    def label(self) -> str:
        """fp32/cpu/hf torch 2.13.0 transformers 5.24.0"""
        return (f"{SHORT.get(self.dtype, self.dtype)}/{self.device}/{self.engine} "
                f"torch {self.torch} transformers {self.transformers}")

    def here(self) -> Numerics:
        """The same job as this environment runs it (its full versions)."""
        return self.model_copy(update=library_versions())


def normal_device(device: str) -> str:
    return "cuda" if device.startswith("cuda") else device


def cannot_run(dtype: str, device: str) -> str | None:
    """Why this machine cannot run `dtype` on `device` (None: it can). A CPU runs every dtype
    (bf16 without AVX512-BF16/AMX is emulated: slower, same precision)."""
    if device != "cuda":
        return None
    if not has_cuda():
        return "this machine has no CUDA GPU"
    import torch

    if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bf16"
    return None


def check_runnable(numerics: Numerics) -> None:
    """Raise (one line) when this worker would compute the job under other numerics than planned."""
    here = numerics.here()
    if here.key() != numerics.key():
        raise CotdistillError(
            f"this job was planned under torch {major_minor(numerics.torch)} / transformers "
            f"{major_minor(numerics.transformers)}; this worker has torch {here.torch} / transformers "
            f"{here.transformers}: run it where the study's versions are installed")
    why = cannot_run(numerics.dtype, numerics.device)
    if why:
        raise CotdistillError(f"this job computes in {numerics.dtype} on {numerics.device}, but {why}")


class StudyNumerics(BaseModel):
    """What a study's `auto` settings resolve to, fixed the first time it is planned into a folder."""

    model_config = ConfigDict(extra="forbid")
    dtypes: dict[str, str] = Field(description="'<kind>/<device>' -> the dtype `auto` means for it.")
    device: str = Field(description="What device `auto` means (for jobs that ask for no GPU explicitly).")
    torch: str
    transformers: str
    cpu: str = Field(description="The CPU that resolved it (for people).")
    native_bf16: bool = Field(description="Whether that CPU runs bf16 natively (AVX512-BF16 / AMX).")
    host: str
    recorded: str = Field(description="When (UTC).")

    @classmethod
    def resolve_here(cls) -> StudyNumerics:
        """What `auto` means on this machine."""
        from cotdistill import students

        cuda = has_cuda()
        dtypes = {}
        for kind in KINDS:
            dtypes[f"{kind}/cpu"] = students.resolve_dtype("auto", "cpu", evaluation=kind == "eval")
            # no GPU here to ask: bf16, which every GPU from Ampere on runs (a worker without it refuses)
            dtypes[f"{kind}/cuda"] = students.resolve_dtype("auto", "cuda", evaluation=kind == "eval") if cuda else "bfloat16"
        return cls(dtypes=dtypes, device="cuda" if cuda else "cpu", **library_versions(), cpu=cpu_name(),
                   native_bf16=students.cpu_has_native_bf16(), host=socket.gethostname(),
                   recorded=datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def job(self, kind: str, settings: dict[str, Any], gpus: float | None) -> Numerics:
        """The numerics of a train/eval job with these settings (as given) and GPU request (None: not given)."""
        from cotdistill import students

        device = str(settings.get("device") or "auto")
        if device == "auto":
            device = "cuda" if (gpus if gpus is not None else (1.0 if self.device == "cuda" else 0.0)) > 0 else "cpu"
        device = normal_device(device)
        dtype = str(settings.get("dtype") or "auto")
        dtype = self.dtypes[f"{kind}/{device}"] if dtype == "auto" else students.resolve_dtype(dtype, device)
        engine = str(settings.get("engine") or "hf") if kind == "eval" else "hf"
        return Numerics(dtype=dtype, device=device, engine=engine, torch=self.torch, transformers=self.transformers)

    def summary(self) -> str:
        return (f"train {SHORT[self.dtypes['train/' + self.device]]}, eval {SHORT[self.dtypes['eval/' + self.device]]} "
                f"on {self.device}, torch {major_minor(self.torch)} / transformers {major_minor(self.transformers)}")


def read_record(study_dir: Path) -> StudyNumerics | None:
    path = Path(study_dir) / RECORD
    if not path.is_file():
        return None
    try:
        return StudyNumerics.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise CotdistillError(f"{path}: not a numerics record ({str(e).splitlines()[0]}); "
                              "restore it, or pass --numerics here to re-run the study's jobs under this machine's") from None


def write_record(study_dir: Path, numerics: StudyNumerics) -> None:
    """numerics.json, the first time (or when `--numerics here` replaces it)."""
    path = Path(study_dir) / RECORD
    text = numerics.model_dump_json(indent=2) + "\n"
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)


def settle(study_dir: Path | None, mode: Literal["recorded", "here"] = "recorded") -> StudyNumerics:
    """The numerics a study's jobs are planned under: its folder's record when it has one (mode
    "recorded"), else this machine's. Refuses (one line) to resume a study under other versions or
    on a machine that cannot run its recorded choice."""
    here = StudyNumerics.resolve_here()
    recorded = read_record(study_dir) if study_dir is not None and mode == "recorded" else None
    if recorded is None:
        return here
    fix = "or pass --numerics here to re-run its jobs under this machine's numerics (finished jobs stay, unused)"
    was = (major_minor(recorded.torch), major_minor(recorded.transformers))
    now = (major_minor(here.torch), major_minor(here.transformers))
    if was != now:
        raise CotdistillError(
            f"study {study_dir} was run with torch {was[0]} / transformers {was[1]}, this environment has "
            f"torch {now[0]} / transformers {now[1]}: install those versions to resume it, {fix}")
    why = cannot_run(recorded.dtypes[f"train/{recorded.device}"], recorded.device)
    if why:
        raise CotdistillError(f"study {study_dir} runs its jobs on {recorded.device} (recorded {recorded.recorded} "
                              f"on {recorded.host}), but {why}: resume it where it can run, {fix}")
    return recorded


def mixed(labels: list[str | None]) -> bool:
    """Do these rows' numerics differ?"""
    return len({x for x in labels if x}) > 1
