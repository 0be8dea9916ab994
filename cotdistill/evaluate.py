"""Evaluate a student on a benchmark: batched greedy (or beam) generation, answer extraction, accuracy.

Prompts come from `students.encode_prompt` (the same function training used). Batches are left
padded and sorted by prompt length; a row stops at its end-of-turn/EOS token or as soon as it
has stated its answer ("The answer is X" + sentence end) and then leaves the batch, KV cache
included, so the rows still generating do not pay for the finished ones (greedy; beam search
goes through `generate`). For plain full-attention models the prompts are prefilled in groups of
similar length and the KV cache lives in one preallocated buffer (`BufferedLayer`), so a step
neither computes padding nor copies the cache.
Predictions are appended batch by batch, so an interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import random
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cotdistill import students
from cotdistill.errors import CotdistillError
from cotdistill.provenance import atomic_write_text, write_provenance

ProgressFn = Callable[[int, int, dict[str, Any]], None]

# "The answer is X" closed by a sentence end followed by more text, or a newline. A bare final
# "." is not enough: "The answer is 3." may still become "3.5".
ANSWER_STATED = re.compile(r"the\s*answer\s*is\b[^\n]*?(?:[.!](?=\s)|\n)", re.I)

_NOT_IDENTITY = {"out", "device", "data_dir", "batch_size", "overwrite", "quiet", "limit"}


class EvalConfig(BaseModel):
    """One evaluation of a model on one benchmark split."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Trained run folder, HF id/folder, .gguf file, or alias (zero-shot baseline).")
    dataset: str = Field(description="Benchmark name: svamp, gsm8k, aqua, math, csqa, obqa, strategyqa.")
    split: str = Field("test", description="Benchmark split.")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N questions.")
    out: Path = Field(description="Folder for predictions.jsonl, summary.json, provenance.json.")
    max_new_tokens: int = Field(320, ge=1, description="Longest generation in tokens.")
    batch_size: int = Field(64, ge=1, description="Questions generated together (finished rows leave the batch, so large batches cost little).")
    beams: int = Field(1, ge=1, description="1 = greedy; >1 = beam search with this many beams.")
    dtype: str = Field("auto", description="auto (fp32 on CPU, measured in docs/numerics.md; bf16 on GPUs that have it), bf16, fp32.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N.")
    stop_at_answer: bool = Field(True, description="Stop a row once it has stated its answer.")
    overwrite: bool = Field(False, description="Replace a different evaluation that already occupies `out`.")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub (off unless asked).")
    data_dir: Path | None = Field(None, description="Data directory.")
    quiet: bool = Field(False, description="No progress bar.")

    def identity(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude=_NOT_IDENTITY)


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


# ----------------------------------------------------------------------------- generation


# Only the tail of a generation can newly complete the phrase; 48 tokens cover "The answer is <long number>."
_ANSWER_TAIL = 48


def _answers_stated(tokenizer: Any, tails: Any) -> list[bool]:
    """Per row of token ids (the last _ANSWER_TAIL generated): has it stated its answer?"""
    return [ANSWER_STATED.search(t) is not None for t in tokenizer.batch_decode(tails, skip_special_tokens=True)]


def _answer_stop_criteria(tokenizer: Any, prompt_width: int):
    import torch
    from transformers import StoppingCriteria

    class AnswerStated(StoppingCriteria):
        """Per-row: True once the row's generated text has stated its answer."""

        def __call__(self, input_ids, scores, **kw):
            tails = input_ids[:, prompt_width:][:, -_ANSWER_TAIL:]
            return torch.tensor(_answers_stated(tokenizer, tails), dtype=torch.bool, device=input_ids.device)

    return AnswerStated()


def _split_generation(tokenizer: Any, new_ids: list[int], stops: set[int]) -> tuple[str, int, str]:
    """(text, generated token count, stop reason in {eos, answer, length})."""
    cut = next((k for k, t in enumerate(new_ids) if t in stops), None)
    body = new_ids if cut is None else new_ids[:cut]
    text = tokenizer.decode(body, skip_special_tokens=True)
    if cut is None:
        return text, len(body), "answer" if ANSWER_STATED.search(text) else "length"
    # pad may equal the end token: after an answer-stop the row is padded, not ended by the model
    if ANSWER_STATED.search(text) and tokenizer.pad_token_id in stops:
        return text, cut, "answer"
    return text, cut + 1, "eos"


# Prompts prefilled together: sorted by length, so a group pads only to its own longest prompt.
_PREFILL_ROWS = 16


@functools.cache
def _buffered_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class BufferedLayer(DynamicLayer):
        """A full-attention KV cache layer whose keys/values live in a buffer sized for the whole generation.

        `DynamicLayer` concatenates (copies) the whole cache at every step: a quarter of a 64-row decode
        step on a CPU. Here a step writes one column and hands attention a view of the filled part.
        """

        def __init__(self, keys: Any, values: Any, capacity: int):
            super().__init__()
            self.lazy_initialization(keys, values)
            self._rows, self._n = keys.shape[0], keys.shape[-2]
            # uninitialised: only the filled part [:, :, :_n] is ever read
            self._k = keys.new_empty(*keys.shape[:2], capacity, keys.shape[-1])
            self._v = values.new_empty(*values.shape[:2], capacity, values.shape[-1])
            self._k[:, :, : self._n], self._v[:, :, : self._n] = keys, values
            self._views()

        def _views(self) -> None:
            self.keys = self._k[: self._rows, :, : self._n]
            self.values = self._v[: self._rows, :, : self._n]

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            n = self._n + key_states.shape[-2]
            if n > self._k.shape[-2]:
                raise RuntimeError(f"KV buffer of {self._k.shape[-2]} positions overflowed")
            self._k[: self._rows, :, self._n : n] = key_states
            self._v[: self._rows, :, self._n : n] = value_states
            self._n = n
            self._views()
            return self.keys, self.values

        def batch_select_indices(self, indices: Any) -> None:
            # Row i becomes row indices[i]; only rows that move are copied (`_drop_rows` moves few).
            import torch

            moved = (indices != torch.arange(len(indices), device=indices.device)).nonzero().squeeze(1)
            if len(moved):
                src = indices[moved]
                self._k[moved, :, : self._n] = self._k[src, :, : self._n]
                self._v[moved, :, : self._n] = self._v[src, :, : self._n]
            self._rows = len(indices)
            self._views()

        def crop(self, tokens_to_remove: int) -> None:
            raise NotImplementedError("BufferedLayer does not crop")

    return BufferedLayer


def _common_prefix(prompts: list[list[int]]) -> int:
    """Length of the token prefix all prompts share, leaving each at least one token of its own."""
    n = min(map(len, prompts)) - 1
    first = prompts[0]
    for i in range(max(n, 0)):
        if any(p[i] != first[i] for p in prompts):
            return i
    return max(n, 0)


def _prefill(model: Any, prompts: list[list[int]], pad: int, capacity: int, kw: dict, cache_arg: str,
             group_rows: int = _PREFILL_ROWS) -> tuple[Any, Any, Any]:
    """Run the prompts; return (cache, attention mask of the cached columns, first generated token per row).

    For models whose layers all use plain full attention, the prefix all prompts share (a chat
    template's system turn: a third of a SmolLM2 SVAMP prompt) is computed once, the rest of the
    prompts go through in groups of similar length (no compute on one long prompt's padding for every
    row), and the caches are merged into one `BufferedLayer` cache laid out [prefix | padding | own
    tokens]; padded columns are masked, positions count real tokens only, so attention sees what it
    would see for the prompt alone. Others (sliding-window layers, ...) get one left-padded
    `DynamicCache` prefill, as `generate` does.
    """
    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    config = model.config.get_text_config(decoder=True)
    width = max(map(len, prompts))
    cache = DynamicCache(config=config)
    device = model.device
    if not all(type(layer) is DynamicLayer for layer in cache.layers):
        ids, mask, pos = _left_pad(prompts, width, pad, device)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, **kw, **{cache_arg: cache}).logits
        return cache, mask, logits[:, -1].argmax(-1)
    c = _common_prefix(prompts)
    prefix = DynamicCache(config=config)  # the shared prefix's keys/values, computed once for one row
    if c:
        model(input_ids=torch.tensor([prompts[0][:c]], device=device), **kw, **{cache_arg: prefix})
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    first = torch.empty(len(prompts), dtype=torch.long, device=device)
    per_layer: list[list[tuple[Any, int, Any, Any]]] = [[] for _ in cache.layers]  # (rows, width, keys, values)
    for g in range(0, len(order), group_rows):
        rows = order[g : g + group_rows]
        part = [prompts[i][c:] for i in rows]
        w = max(map(len, part))
        ids, mask, pos = _left_pad(part, w, pad, device)
        sub = DynamicCache(config=config)
        if c:
            for i, layer in enumerate(prefix.layers):
                sub.update(layer.keys.expand(len(rows), -1, -1, -1), layer.values.expand(len(rows), -1, -1, -1), i)
            mask = torch.cat([mask.new_ones(len(rows), c), mask], dim=-1)
            pos = pos + c
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, **kw, **{cache_arg: sub}).logits
        index = torch.tensor(rows, device=device)
        first[index] = logits[:, -1].argmax(-1)
        for layer, store in zip(sub.layers, per_layer):
            store.append((index, w, layer.keys[:, :, c:], layer.values[:, :, c:]))
    layers = []
    for store, shared in zip(per_layer, prefix.layers if c else [None] * len(per_layer)):
        k0, v0 = store[0][2], store[0][3]
        k = k0.new_zeros(len(prompts), k0.shape[1], width, k0.shape[-1])
        v = v0.new_zeros(len(prompts), v0.shape[1], width, v0.shape[-1])
        if c:
            k[:, :, :c], v[:, :, :c] = shared.keys, shared.values
        for index, w, ks, vs in store:
            k[index, :, width - w :], v[index, :, width - w :] = ks, vs
        layers.append(_buffered_layer_class()(k, v, capacity))
    cache.layers = layers
    _, own, _ = _left_pad([p[c:] for p in prompts], width - c, pad, device)
    mask = torch.cat([own.new_ones(len(prompts), c), own], dim=-1)
    return cache, mask, first


@functools.cache
def _onednn_linear_available() -> bool:
    """Whether this torch build runs a linear layer through oneDNN with a prepacked weight."""
    import torch

    try:
        w = torch.ones(4, 4)
        out = torch.ops.mkldnn._linear_pointwise(torch.ones(2, 4), torch.ops.mkldnn._reorder_linear_weight(w, 2),
                                                 None, "none", [], "")
        return bool(torch.equal(out, torch.full((2, 4), 4.0)))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def _packed_forward(packed: Any, bias: Any, x: Any) -> Any:
    import torch

    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


@contextlib.contextmanager
def _packed_linears(model: Any, min_numel: int = 1 << 16):
    """On a CPU, run the model's large fp32 linear layers through oneDNN with weights packed once.

    A decode step multiplies a few rows by each weight; MKL's `x @ W^T` reaches a fraction of this
    CPU's speed there, while oneDNN with the weight reordered into its blocked layout is 1.5-2x
    faster for SmolLM2's layers and head at 4-64 rows (bench/RESULTS.md). Same products up to the
    float rounding order. Small layers (below `min_numel` weights) gain nothing and are left alone,
    as are other devices and dtypes, and layers whose forward is already replaced (accelerate hooks).
    The packed copies live only inside the block.
    """
    import torch

    patched = []
    try:
        if model.device.type == "cpu" and _onednn_linear_available():
            for mod in model.modules():
                if (type(mod) is torch.nn.Linear and "forward" not in vars(mod)
                        and mod.weight.dtype == torch.float32 and mod.weight.numel() >= min_numel):
                    packed = torch.ops.mkldnn._reorder_linear_weight(mod.weight.detach(), 64)
                    mod.forward = functools.partial(_packed_forward, packed, mod.bias)
                    patched.append(mod)
        yield
    finally:
        for mod in patched:
            del mod.forward


def _left_pad(prompts: list[list[int]], width: int, pad: int, device: Any) -> tuple[Any, Any, Any]:
    """(ids, attention mask, positions) of left-padded prompts; positions count real tokens only, as in `generate`."""
    import torch

    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return ids, mask, (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


def _drop_rows(done: list[bool]) -> Any:
    """Indices of the rows to keep, as a new order that moves as few rows as possible.

    The last live rows move into the finished rows' places (swap-remove), so a KV cache that
    supports it copies a handful of rows instead of the whole cache each time a row finishes.
    """
    import torch

    live = [i for i, d in enumerate(done) if not d]
    m = len(live)
    holes = [i for i in range(m) if done[i]]
    movers = [i for i in live if i >= m]
    order = list(range(m))
    for h, src in zip(holes, movers):
        order[h] = src
    return torch.tensor(order, dtype=torch.long)


def _greedy_pruned(model: Any, tokenizer: Any, prompts: list[list[int]], cfg: EvalConfig, stops: list[int],
                   prefill_rows: int = _PREFILL_ROWS) -> list[list[int]]:
    """Greedy decoding that drops each row from the batch (and its KV cache) once it has finished.

    `generate` keeps computing finished rows until the longest one ends; on a CPU, where a step
    costs about the same per row whatever the batch, that waste is most of a batch's time. Same
    positions and unmasked tokens as `generate`, so the tokens are the same up to float rounding.
    """
    import torch

    params = inspect.signature(model.forward).parameters
    kw: dict[str, Any] = {"use_cache": True}
    cache_arg = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5
    if "logits_to_keep" in params:
        kw["logits_to_keep"] = 1
    width = max(map(len, prompts))
    pad = tokenizer.pad_token_id
    cache, mask, nxt = _prefill(model, prompts, pad, width + cfg.max_new_tokens, kw, cache_arg, prefill_rows)
    stop_ids = torch.tensor(sorted(stops), device=model.device)
    step_pos = torch.tensor([[len(p) - 1] for p in prompts], device=model.device)
    rows = list(range(len(prompts)))  # live batch row -> question
    new: list[list[int]] = [[] for _ in rows]
    for step in range(cfg.max_new_tokens):
        for r, t in zip(rows, nxt.tolist()):
            new[r].append(t)
        done = torch.isin(nxt, stop_ids)
        if cfg.stop_at_answer:
            done |= torch.tensor(_answers_stated(tokenizer, [new[r][-_ANSWER_TAIL:] for r in rows]), device=done.device)
        if step == cfg.max_new_tokens - 1 or bool(done.all()):
            break
        if bool(done.any()):
            keep = _drop_rows(done.tolist()).to(done.device)
            cache.batch_select_indices(keep)
            mask, nxt, step_pos = mask[keep], nxt[keep], step_pos[keep]
            rows = [rows[k] for k in keep.tolist()]
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=-1)
        step_pos = step_pos + 1
        nxt = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=step_pos, **kw,
                    **{cache_arg: cache}).logits[:, -1].argmax(-1)
    return new


def _plain_greedy(model: Any) -> bool:
    """True when the model's generation config adds nothing to greedy decoding (no penalties)."""
    gc = getattr(model, "generation_config", None)
    return gc is None or (getattr(gc, "repetition_penalty", None) in (None, 1.0)
                          and not getattr(gc, "no_repeat_ngram_size", None)
                          and not getattr(gc, "bad_words_ids", None) and not getattr(gc, "suppress_tokens", None))


def generate_batch(model: Any, tokenizer: Any, prompts: list[list[int]], cfg: EvalConfig) -> list[tuple[str, int, str]]:
    """Generate for one batch of tokenised prompts (left padded). Returns per row (text, tokens, reason)."""
    import torch
    from transformers import StoppingCriteriaList

    pad = tokenizer.pad_token_id
    stops = students.stop_token_ids(tokenizer)
    stop_set = set(stops) | ({pad} if pad is not None else set())
    with torch.inference_mode(), _packed_linears(model):
        if cfg.beams == 1 and _plain_greedy(model) and getattr(model, "_supports_default_dynamic_cache", lambda: False)():
            news = _greedy_pruned(model, tokenizer, prompts, cfg, stops)
            return [_split_generation(tokenizer, new, stop_set) for new in news]
        width = max(map(len, prompts))
        ids, mask, _ = _left_pad(prompts, width, pad, model.device)
        criteria = StoppingCriteriaList()
        if cfg.stop_at_answer and cfg.beams == 1:
            criteria.append(_answer_stop_criteria(tokenizer, width))
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=cfg.max_new_tokens, do_sample=False,
            num_beams=cfg.beams, eos_token_id=stops, pad_token_id=pad, stopping_criteria=criteria,
            top_p=None, top_k=None, temperature=None,
        )
    return [_split_generation(tokenizer, row[width:].tolist(), stop_set) for row in out]


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
    out = cfg.out
    if out.exists() and not out.is_dir():
        raise CotdistillError(f"--out {out} is a file, not a folder")
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


# ----------------------------------------------------------------------------- main entry


def evaluate(cfg: EvalConfig, progress: ProgressFn | None = None) -> EvalSummary:
    """Evaluate `cfg.model` on `cfg.dataset`/`cfg.split`; write predictions.jsonl + summary.json."""
    from cotdistill.benchmarks import load_benchmark
    from cotdistill.grade import grade

    examples = load_benchmark(cfg.dataset, cfg.split, cfg.data_dir, cfg.limit)
    if not examples:
        raise CotdistillError(f"benchmark {cfg.dataset}/{cfg.split} has no questions")
    _check_model_folder(cfg.model)
    # the resolved precision is part of the evaluation's identity: a folder evaluated in bf16 never resumes in fp32
    cfg = cfg.model_copy(update={"dtype": students.resolve_dtype(cfg.dtype, students.resolve_device(cfg.device),
                                                                 evaluation=True)})
    _, done = _prepare_out(cfg)
    done_ids = {r["id"] for r in done}
    todo = [e for e in examples if e.id not in done_ids]

    t0 = time.monotonic()
    gen_tokens, gen_seconds = 0, 0.0
    if todo:
        model, tok = students.load_student(cfg.model, dtype=cfg.dtype, device=cfg.device,
                                           trust_remote_code=cfg.trust_remote_code)
        model.eval()
        encoded = [(e, students.encode_prompt(tok, e.question)) for e in todo]
        encoded.sort(key=lambda x: len(x[1]), reverse=True)  # similar lengths share a batch; OOM shows early
        bar = _bar(len(examples), len(done), cfg, progress)
        # packed once here; generate_batch leaves already packed layers alone
        with _packed_linears(model), open(cfg.out / "predictions.jsonl", "a", encoding="utf-8") as f:
            for start in range(0, len(encoded), cfg.batch_size):
                chunk = encoded[start : start + cfg.batch_size]
                g0 = time.monotonic()
                outs = generate_batch(model, tok, [p for _, p in chunk], cfg)
                gen_seconds += time.monotonic() - g0
                for (ex, prompt_ids), (text, n_tok, reason) in zip(chunk, outs):
                    g = grade(text, ex.gold, ex.kind, ex.choices)
                    gen_tokens += n_tok
                    rec = {"id": ex.id, "prompt": tok.decode(prompt_ids), "generation": text, "extracted": g.extracted,
                           "gold": ex.gold, "correct": g.correct, "reason": g.reason, "generated_tokens": n_tok,
                           "stopped": reason != "length", "stop_reason": reason}
                    f.write(json.dumps(rec) + "\n")
                    done.append(rec)
                f.flush()
                os.fsync(f.fileno())
                bar(len(done), {"accuracy": sum(r["correct"] for r in done) / len(done),
                                "tokens_per_s": gen_tokens / max(gen_seconds, 1e-9)})
    summary = _summarise(done, examples, gen_tokens, gen_seconds, time.monotonic() - t0)
    atomic_write_text(cfg.out / "summary.json", summary.model_dump_json(indent=2) + "\n")
    write_provenance(cfg.out / "provenance.json", cfg, summary=summary.model_dump(mode="json"),
                     model_provenance=_model_provenance(cfg.model))
    return summary


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
