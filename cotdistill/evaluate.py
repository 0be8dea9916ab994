"""Evaluate a student on a benchmark: generation through an engine, answer extraction, accuracy.

Completions come from an engine (cotdistill/engines): `hf` loads the model here and generates in
sorted, pruned batches from `students.encode_prompt` prompts (the ones training used); `openai`
asks any OpenAI-compatible server that serves the model (`--model` is then its served name).
Both stop a generation once it has stated its answer ("The answer is X" + sentence end) unless
`stop_at_answer` is off. Each prediction is appended as it arrives, so an interrupted evaluation
resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cotdistill import students
from cotdistill.engines import Completion, Request, check_engine, make_engine
from cotdistill.engines.openai import check_base_url
from cotdistill.errors import CotdistillError, unknown_name
from cotdistill.protocol import PAPER_DECODING, check_protocol
from cotdistill.provenance import atomic_write_text, write_provenance

ProgressFn = Callable[[int, int, dict[str, Any]], None]

_NOT_IDENTITY = {"out", "device", "data_dir", "batch_size", "batching", "overwrite", "quiet", "limit", "api_key_env"}
# What the hf engine is named in an evaluation's identity: nothing (identities from before engines existed stay valid).
_HF_DEFAULTS = {"engine", "base_url"}
DECODINGS = ("greedy", "paper")
# Predictions keep their stop_reason names: an end token is "eos".
_STOP_REASON = {"answer": "answer", "stop": "eos", "length": "length"}


class EvalConfig(BaseModel):
    """One evaluation of a model on one benchmark split."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Trained run folder, HF id/folder, .gguf file, or alias (zero-shot baseline); "
                                   "with engine openai, the model's name on the server.")
    dataset: str = Field(description="Benchmark name: svamp, gsm8k, aqua, math, csqa, obqa, strategyqa.")
    split: str = Field("test", description="Benchmark split.")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N questions.")
    out: Path = Field(description="Folder for predictions.jsonl, summary.json, provenance.json.")
    max_new_tokens: int = Field(320, ge=1, description="Longest generation in tokens.")
    batch_size: int = Field(64, ge=1, description="Questions generated together (finished rows leave the batch, so large batches cost little); "
                                                   "engine openai: requests in flight at once.")
    batching: Literal["auto", "pruned", "continuous", "static"] = Field("auto", description="engine hf: auto/pruned (our greedy loop: finished rows leave the batch), continuous (transformers' continuous batching) or static (`generate` with a static KV cache, compiled on CUDA); the last two for GPUs.")
    beams: int = Field(1, ge=1, description="1 = greedy; >1 = beam search with this many beams.")
    dtype: str = Field("auto", description="auto (fp32 on CPU, measured in docs/numerics.md; bf16 on GPUs that have it), bf16, fp32.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N.")
    stop_at_answer: bool = Field(True, description="Stop a row once it has stated its answer.")
    overwrite: bool = Field(False, description="Replace a different evaluation that already occupies `out`.")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub (off unless asked).")
    data_dir: Path | None = Field(None, description="Data directory.")
    quiet: bool = Field(False, description="No progress bar.")
    engine: str = Field("hf", description="Generation engine: hf (load the model here) or openai (ask an OpenAI-compatible server).")
    base_url: str | None = Field(None, description="engine openai: the server's URL, e.g. http://127.0.0.1:8000/v1 (no credentials).")
    api_key_env: str = Field("OPENAI_API_KEY", description="engine openai: environment variable holding the API key (unset: no key).")
    protocol: str = Field("lenient", description="How answers are read: lenient (our fallbacks) or paper (only "
                                                 "'The answer is X', as the paper's released scripts read it).")
    decoding: str = Field("greedy", description="greedy (default; --beams N for beam search) or paper (the paper's: "
                                                "5 beams, its stop strings, no answer-stop, 640 new tokens unless given).")

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, v: str) -> str:
        return check_engine(v)

    @field_validator("protocol")
    @classmethod
    def _known_protocol(cls, v: str) -> str:
        return check_protocol(v)

    @field_validator("decoding")
    @classmethod
    def _known_decoding(cls, v: str) -> str:
        if v not in DECODINGS:
            raise unknown_name("decoding", v, DECODINGS)
        return v

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else check_base_url(v)

    @model_validator(mode="after")
    def _engine_options(self) -> EvalConfig:
        if self.engine == "openai" and not self.base_url:
            raise CotdistillError("--engine openai needs --base-url (the server, e.g. http://127.0.0.1:8000/v1)")
        if self.engine == "openai" and self.beams > 1:
            raise CotdistillError("--beams > 1 needs --engine hf (servers do not offer beam search)")
        if self.engine != "openai" and self.base_url:
            raise CotdistillError(f"--base-url is for --engine openai, not --engine {self.engine}")
        if self.decoding == "paper":
            # The paper's run_reasoning.py: beam search (5), its stop strings, max length 640 (autoevaluate.py).
            given = self.model_fields_set
            if self.engine != "hf":
                raise CotdistillError("--decoding paper needs --engine hf (beam search; servers do not offer it)")
            if "beams" in given and self.beams != PAPER_DECODING["num_beams"]:
                raise CotdistillError(f"--decoding paper sets beams to {PAPER_DECODING['num_beams']}; leave --beams out")
            if "stop_at_answer" in given and self.stop_at_answer:
                raise CotdistillError("--decoding paper does not stop at the answer (the paper's generation ran on); "
                                      "leave stop_at_answer out")
            self.beams, self.stop_at_answer = PAPER_DECODING["num_beams"], False
            if "max_new_tokens" not in given:
                self.max_new_tokens = PAPER_DECODING["max_new_tokens"]
        return self

    def stop_strings(self) -> list[str] | None:
        """Extra strings that end a generation: the paper's, under its decoding."""
        return list(PAPER_DECODING["stop"]) if self.decoding == "paper" else None

    def identity(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude=_NOT_IDENTITY | (_HF_DEFAULTS if self.engine == "hf" else set()))

    def engine_label(self) -> str:
        """Which engine generated, for the summary: hf, or openai:<served model>@<base url>."""
        return "hf" if self.engine == "hf" else f"{self.engine}:{self.model}@{self.base_url}"

    def engine_options(self) -> dict[str, Any]:
        if self.engine == "openai":
            return {"base_url": self.base_url, "api_key_env": self.api_key_env, "concurrency": self.batch_size}
        return {"dtype": self.dtype, "device": self.device, "trust_remote_code": self.trust_remote_code,
                "batch_size": self.batch_size, "batching": self.batching}


class EvalSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    accuracy: float
    ci_low: float
    ci_high: float
    n: int
    correct: int
    mean_output_tokens: float
    max_output_tokens: int
    stopped_share: float = Field(description="Share of generations that ended by themselves (end token or answer stated).")
    eos_share: float = Field(description="Share that emitted the end-of-turn/EOS token.")
    tokens_per_s: float = Field(description="Generated tokens per second in this session.")
    seconds: float
    engine: str = Field("hf", description="The engine that generated: hf, or openai:<served model>@<base url>.")
    protocol: str = Field("lenient", description="How answers were read: lenient or paper.")
    decoding: str = Field("greedy", description="How text was generated: greedy (or --beams N) or paper.")


# ----------------------------------------------------------------------------- statistics


def bootstrap_ci(correct: list[bool], n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the accuracy."""
    n = len(correct)
    if n == 0:
        return 0.0, 0.0
    rng = random.Random(seed)
    hits = [int(c) for c in correct]
    means = sorted(sum(rng.choices(hits, k=n)) / n for _ in range(n_boot))
    return means[int(0.025 * n_boot)], means[min(n_boot - 1, int(0.975 * n_boot))]


# ----------------------------------------------------------------------------- run folder


def _read_predictions(path: Path) -> list[dict]:
    """Complete records of an earlier (maybe killed) run; a torn last line is dropped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            break
    return rows


def _prepare_out(cfg: EvalConfig) -> tuple[str, list[dict]]:
    from cotdistill.checks import check_out_dir

    out = check_out_dir(cfg.out)
    run = None
    if (out / "eval_run.json").is_file():
        try:
            run = json.loads((out / "eval_run.json").read_text())
        except ValueError:
            run = None
    occupied = out.is_dir() and any(out.iterdir())
    if occupied and (run is None or run.get("identity") != cfg.identity()):
        if not cfg.overwrite:
            what = "a different evaluation" if run else "files that are not an evaluation"
            raise CotdistillError(f"--out {out} already holds {what}; pass --overwrite to replace it or choose another folder")
        for name in ("predictions.jsonl", "summary.json", "provenance.json", "eval_run.json"):
            (out / name).unlink(missing_ok=True)
        if any(out.iterdir()):
            raise CotdistillError(f"--out {out} holds other files; choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "eval_run.json", json.dumps({"identity": cfg.identity()}, indent=2) + "\n")
    done = _read_predictions(out / "predictions.jsonl")
    # rewrite without a torn tail so appends start on a clean line
    atomic_write_text(out / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in done))
    return "resume" if done else "fresh", done


def _check_model_folder(spec: str) -> None:
    p = Path(spec)
    if (p / "run.json").is_file() and not (p / "config.json").is_file():
        raise CotdistillError(f"--model {spec} is an unfinished training run (no final model yet); finish it with `cotdistill train ... --resume`")


def _check_model(cfg: EvalConfig) -> None:
    """A local model is whole, and --max-new-tokens fits its context window (a huge value would
    otherwise try to allocate a cache of that many positions)."""
    from cotdistill import students

    students.check_student(cfg.model)
    window = students.model_context_window(cfg.model)
    if window is not None and cfg.max_new_tokens >= window:
        raise CotdistillError(f"--max-new-tokens {cfg.max_new_tokens} does not fit the context window of "
                              f"{cfg.model} ({window} tokens, the prompt included); use at most {window - 1}")


# ----------------------------------------------------------------------------- main entry


def evaluate(cfg: EvalConfig, progress: ProgressFn | None = None) -> EvalSummary:
    """Evaluate `cfg.model` on `cfg.dataset`/`cfg.split`; write predictions.jsonl + summary.json."""
    from cotdistill.benchmarks import load_benchmark

    examples = load_benchmark(cfg.dataset, cfg.split, cfg.data_dir, cfg.limit)
    if not examples:
        raise CotdistillError(f"benchmark {cfg.dataset}/{cfg.split} has no questions")
    if cfg.engine == "hf":
        _check_model_folder(cfg.model)
        _check_model(cfg)
        # the resolved precision is part of the evaluation's identity: a folder evaluated in bf16 never resumes in fp32
        cfg = cfg.model_copy(update={"dtype": students.resolve_dtype(cfg.dtype, students.resolve_device(cfg.device),
                                                                     evaluation=True)})
    _, done = _prepare_out(cfg)
    done_ids = {r["id"] for r in done}
    todo = [e for e in examples if e.id not in done_ids]

    t0 = time.monotonic()
    gen_tokens, gen_seconds = 0, 0.0
    if todo:
        engine = make_engine(cfg.engine, cfg.model, **cfg.engine_options())
        bar = _bar(len(examples), len(done), cfg, progress)
        with open(cfg.out / "predictions.jsonl", "a", encoding="utf-8") as f:
            g0 = synced = time.monotonic()

            def record(i: int, c: Completion) -> None:
                nonlocal gen_tokens, synced
                rec = _prediction(todo[i], c, cfg.protocol)
                f.write(json.dumps(rec) + "\n")
                f.flush()  # a killed run keeps every prediction written so far
                if time.monotonic() - synced > 1.0:  # and a crashed machine loses at most a second of them
                    os.fsync(f.fileno())
                    synced = time.monotonic()
                done.append(rec)
                gen_tokens += c.completion_tokens
                bar(len(done), {"accuracy": sum(r["correct"] for r in done) / len(done),
                                "tokens_per_s": gen_tokens / max(time.monotonic() - g0, 1e-9)})

            try:
                engine.generate([Request.question(e.question) for e in todo], max_new_tokens=cfg.max_new_tokens,
                                answer_stop=cfg.stop_at_answer, num_beams=cfg.beams, stop=cfg.stop_strings(),
                                on_result=record)
            finally:
                gen_seconds = time.monotonic() - g0
                os.fsync(f.fileno())
                engine.close()
    summary = _summarise(done, examples, gen_tokens, gen_seconds, time.monotonic() - t0)
    summary.engine, summary.protocol, summary.decoding = cfg.engine_label(), cfg.protocol, cfg.decoding
    atomic_write_text(cfg.out / "summary.json", summary.model_dump_json(indent=2) + "\n")
    write_provenance(cfg.out / "provenance.json", cfg, summary=summary.model_dump(mode="json"),
                     engine={"name": cfg.engine, "base_url": cfg.base_url, "model": cfg.model},
                     model_provenance=_model_provenance(cfg.model) if cfg.engine == "hf" else None)
    return summary


def _prediction(ex: Any, c: Completion, protocol: str = "lenient") -> dict[str, Any]:
    """One predictions.jsonl record: the completion graded (under `protocol`) against the example's gold answer."""
    from cotdistill.grade import grade

    g = grade(c.text, ex.gold, ex.kind, ex.choices, protocol)
    return {"id": ex.id, "prompt": c.prompt, "generation": c.text, "extracted": g.extracted, "gold": ex.gold,
            "correct": g.correct, "reason": g.reason, "generated_tokens": c.completion_tokens,
            "stopped": c.finish_reason != "length", "stop_reason": _STOP_REASON[c.finish_reason]}


def _summarise(done: list[dict], examples: list, gen_tokens: int, gen_seconds: float, seconds: float) -> EvalSummary:
    wanted = {e.id for e in examples}
    rows = [r for r in done if r["id"] in wanted]
    correct = [bool(r["correct"]) for r in rows]
    lo, hi = bootstrap_ci(correct)
    toks = [int(r["generated_tokens"]) for r in rows]
    n = len(rows)
    return EvalSummary(
        accuracy=sum(correct) / n, ci_low=lo, ci_high=hi, n=n, correct=sum(correct),
        mean_output_tokens=sum(toks) / n, max_output_tokens=max(toks),
        stopped_share=sum(r["stopped"] for r in rows) / n,
        eos_share=sum(r.get("stop_reason") == "eos" for r in rows) / n,
        tokens_per_s=round(gen_tokens / gen_seconds, 2) if gen_seconds else 0.0, seconds=round(seconds, 2),
    )


def _model_provenance(spec: str) -> dict | None:
    p = Path(spec) / "provenance.json"
    try:
        return json.loads(p.read_text()) if p.is_file() else None
    except ValueError:
        return None


def _bar(total: int, initial: int, cfg: EvalConfig, progress: ProgressFn | None) -> Callable[[int, dict], None]:
    if progress is not None:
        return lambda n, info: progress(n, total, info)
    if cfg.quiet:
        return lambda n, info: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=initial, desc=f"eval {cfg.dataset}", unit="q", dynamic_ncols=True, file=sys.stderr)

    def update(n: int, info: dict) -> None:
        bar.set_postfix(acc=f"{info['accuracy']:.3f}", tok_s=f"{info['tokens_per_s']:.0f}")
        bar.update(n - bar.n)
        if n >= total:
            bar.close()

    return update
