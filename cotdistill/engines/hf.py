"""The local engine: a transformers model generating on this machine's CPU or GPU.

Greedy decoding (the evaluation default) runs its own loop: prompts sorted by length and batched,
left padded; a row stops at its end-of-turn/EOS token or, under the answer-stop rule, as soon as
it has stated its answer ("The answer is X" + sentence end) and then leaves the batch, KV cache
included, so the rows still generating do not pay for the finished ones. For plain full-attention
models the prompts are prefilled in groups of similar length after their shared prefix, and the KV
cache lives in one preallocated buffer (kernels/cache.py), so a step neither computes padding nor
copies the cache; on a CPU the large fp32 linear layers run through oneDNN with packed weights
(kernels/linear.py). Sampling, beam search, stop strings and models whose generation config adds
penalties go through `model.generate` with the same stops.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from typing import Any

from cotdistill import students
from cotdistill.errors import CotdistillError
from cotdistill.engines.base import ANSWER_STATED, Completion, OnResult, Request, apply_stops
from cotdistill.kernels.cache import buffered_layer_class
from cotdistill.kernels.linear import packed_linears


# How greedy/sampled batches are decoded: auto = pruned (our loop; sampling/beams via `generate`),
# continuous = transformers' continuous batching (`generate_batch`), or static = `generate` with a static KV
# cache, whose decode step transformers compiles on CUDA (CUDA graphs); the last two for GPUs (on one H200
# plain `generate` so compiled ran 4x our loop's tokens/s, docs/gpu_bench.md). Beams always use `generate`.
BATCHINGS = ("auto", "pruned", "continuous", "static")

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


# Prompts prefilled together: sorted by length, so a group pads only to its own longest prompt. On two Zen 4
# cores, the first 32 SVAMP test prompts prefilled in 2.4 s in groups of 8 against 3.0 s in groups of 16
# (less padding); 64 prompts took 4.3 s either way.
_PREFILL_ROWS = 8


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
        layers.append(buffered_layer_class()(k, v, capacity))
    cache.layers = layers
    _, own, _ = _left_pad([p[c:] for p in prompts], width - c, pad, device)
    mask = torch.cat([own.new_ones(len(prompts), c), own], dim=-1)
    return cache, mask, first


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


def _greedy_pruned(model: Any, tokenizer: Any, prompts: list[list[int]], stops: list[int], *, max_new_tokens: int,
                   answer_stop: bool, prefill_rows: int = _PREFILL_ROWS) -> list[list[int]]:
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
    cache, mask, nxt = _prefill(model, prompts, pad, width + max_new_tokens, kw, cache_arg, prefill_rows)
    stop_ids = torch.tensor(sorted(stops), device=model.device)
    step_pos = torch.tensor([[len(p) - 1] for p in prompts], device=model.device)
    rows = list(range(len(prompts)))  # live batch row -> question
    new: list[list[int]] = [[] for _ in rows]
    for step in range(max_new_tokens):
        for r, t in zip(rows, nxt.tolist()):
            new[r].append(t)
        done = torch.isin(nxt, stop_ids)
        if answer_stop:
            done |= torch.tensor(_answers_stated(tokenizer, [new[r][-_ANSWER_TAIL:] for r in rows]), device=done.device)
        if step == max_new_tokens - 1 or bool(done.all()):
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


def _stated_at(tokenizer: Any, new: list[int]) -> int | None:
    """Fewest leading tokens of `new` whose text states the answer (as `_greedy_pruned` checks it after
    each token), found by bisection: a prefix's text only grows, so once stated it stays stated."""
    if not ANSWER_STATED.search(tokenizer.decode(new, skip_special_tokens=True)):
        return None
    lo, hi = 1, len(new)
    while lo < hi:
        mid = (lo + hi) // 2
        if ANSWER_STATED.search(tokenizer.decode(new[:mid], skip_special_tokens=True)):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _cut_at_answers(tokenizer: Any, news: list[list[int]]) -> list[list[int]]:
    """Rows generated to their end token, cut where `_greedy_pruned`'s answer stop would have ended them."""
    return [new[: _stated_at(tokenizer, new) or len(new)] for new in news]


def _continuous(model: Any, tokenizer: Any, prompts: list[list[int]], stops: list[int], *, max_new_tokens: int,
                answer_stop: bool, temperature: float, top_p: float, seed: int | None) -> list[list[int]]:
    """All prompts through transformers' continuous batching (`generate_batch`: paged KV cache, rows
    join and leave the running batch, CUDA graphs on a GPU). A row runs to its end token; the answer
    stop is applied afterwards, cutting the tokens where `_greedy_pruned` would have stopped."""
    import torch
    from transformers import GenerationConfig

    sampling: dict[str, Any] = ({"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0
                                else {"do_sample": False})
    gc = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id,
                          **sampling)
    kw: dict[str, Any] = {"generation_config": gc, "progress_bar": False}
    if model.device.type == "cpu":  # sized for a GPU by default; a CPU gets a small paged cache
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        kw["continuous_batching_config"] = ContinuousBatchingConfig(page_size=16, num_blocks=64, max_batch_tokens=512)
    if seed is not None:
        torch.manual_seed(seed)
    out = model.generate_batch(prompts, **kw)
    news = [list(out[f"req_{i}"].generated_tokens) for i in range(len(prompts))]
    return _cut_at_answers(tokenizer, news) if answer_stop else news


def _static(model: Any, tokenizer: Any, prompts: list[list[int]], stops: list[int], *, max_new_tokens: int,
            answer_stop: bool, sampling: dict[str, Any]) -> list[list[int]]:
    """One left-padded `generate` over a static KV cache (one shape per batch: on CUDA transformers compiles
    the decode step once and replays it). A row runs to its end token; the answer stop is applied afterwards,
    cutting the tokens where `_greedy_pruned` would have stopped."""
    width = max(map(len, prompts))
    ids, mask, _ = _left_pad(prompts, width, tokenizer.pad_token_id, model.device)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, eos_token_id=stops,
                         pad_token_id=tokenizer.pad_token_id, cache_implementation="static", **sampling)
    news = [row[width:].tolist() for row in out]
    return _cut_at_answers(tokenizer, news) if answer_stop else news


class _StopOnText:
    """Stop a row once its NEW text contains a stop string (transformers' stop_strings also match
    across the prompt boundary, which the OpenAI protocol does not)."""

    def __init__(self, tokenizer: Any, start: int, stops: list[str]):
        self.tokenizer, self.start, self.stops = tokenizer, start, stops

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        texts = self.tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stops) for t in texts], device=input_ids.device)


def _plain_greedy(model: Any) -> bool:
    """True when the model's generation config adds nothing to greedy decoding (no penalties)."""
    gc = getattr(model, "generation_config", None)
    return gc is None or (getattr(gc, "repetition_penalty", None) in (None, 1.0)
                          and not getattr(gc, "no_repeat_ngram_size", None)
                          and not getattr(gc, "bad_words_ids", None) and not getattr(gc, "suppress_tokens", None))


class HFEngine:
    """A loaded model + tokenizer. One `generate` call at a time (a lock serialises callers: one
    model, one device); the packed linear layers are made on the first call and undone by `close`."""

    name = "hf"

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 64, batching: str = "auto"):
        if batching not in BATCHINGS:
            raise CotdistillError(f"unknown hf batching {batching!r}; known: {', '.join(BATCHINGS)}")
        self.model, self.tokenizer, self.batch_size, self.batching = model, tokenizer, batch_size, batching
        self.model.eval()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.stops = students.stop_token_ids(tokenizer)
        self.context = students.context_window(model)
        self._lock = threading.Lock()
        self._packed: contextlib.ExitStack | None = None

    @classmethod
    def load(cls, model: str, *, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False,
             batch_size: int = 64, batching: str = "auto") -> HFEngine:
        """Load a student spec (alias, folder, HF id, .gguf) as `students.load_student` does."""
        # generation's rule for "auto" (fp32 on a CPU, docs/numerics.md): evaluate, serve and the hf: teacher alike
        dtype = students.resolve_dtype(dtype, students.resolve_device(device), evaluation=True)
        m, tok = students.load_student(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        return cls(m, tok, batch_size=batch_size, batching=batching)

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        """Prompt token ids: `students.encode_prompt` for one user message (the prompt training used),
        else the chat template (or plain "role: content" lines), tokenised the same way."""
        tok = self.tokenizer
        if len(messages) == 1 and messages[0]["role"] == "user":
            return students.encode_prompt(tok, messages[0]["content"])
        if students.has_chat_template(tok):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return tok(text, add_special_tokens=not students.has_chat_template(tok))["input_ids"]

    def generate(self, requests: list[Request], *, max_new_tokens: int, answer_stop: bool = True,
                 stop: list[str] | None = None, temperature: float = 0.0, top_p: float = 1.0, num_beams: int = 1,
                 seed: int | None = None, on_result: OnResult | None = None) -> list[Completion]:
        """Completions in request order; batches of `batch_size` prompts of similar length, longest first
        (an out-of-memory batch shows at once). `seed` seeds each batch (sampling)."""
        prompts = [self.encode(r.messages) for r in requests]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
        results: list[Completion | None] = [None] * len(prompts)
        stop = [s for s in stop or [] if s]
        with self._lock:
            self._pack()
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                news = self._batch([prompts[i] for i in rows], max_new_tokens, answer_stop, stop, temperature,
                                   top_p, num_beams, seed)
                for i, new in zip(rows, news):
                    results[i] = self._completion(prompts[i], new, answer_stop, stop)
                    if on_result is not None:
                        on_result(i, results[i])
        return results  # type: ignore[return-value]

    def close(self) -> None:
        if self._packed is not None:
            self._packed.close()
            self._packed = None

    def _pack(self) -> None:
        if self._packed is None:
            self._packed = contextlib.ExitStack()
            self._packed.enter_context(packed_linears(self.model))

    def _batch(self, prompts: list[list[int]], max_new_tokens: int, answer_stop: bool, stop: list[str],
               temperature: float, top_p: float, num_beams: int, seed: int | None) -> list[list[int]]:
        """New token ids per prompt (ending at the token that stopped the row, if any)."""
        import torch
        from transformers import StoppingCriteriaList

        model, tok = self.model, self.tokenizer
        if self.batching == "continuous" and num_beams == 1 and hasattr(model, "generate_batch"):
            return _continuous(model, tok, prompts, self.stops, max_new_tokens=max_new_tokens,
                               answer_stop=answer_stop, temperature=temperature, top_p=top_p, seed=seed)
        if temperature > 0:
            sampling: dict[str, Any] = {"do_sample": True, "temperature": temperature, "top_p": top_p}
        else:
            sampling = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        with torch.inference_mode():
            if self.batching == "static" and num_beams == 1 and not stop:
                if seed is not None:
                    torch.manual_seed(seed)
                return _static(model, tok, prompts, self.stops, max_new_tokens=max_new_tokens,
                               answer_stop=answer_stop, sampling=sampling)
            if (num_beams == 1 and temperature == 0 and not stop and _plain_greedy(model)
                    and getattr(model, "_supports_default_dynamic_cache", lambda: False)()):
                return _greedy_pruned(model, tok, prompts, self.stops, max_new_tokens=max_new_tokens,
                                      answer_stop=answer_stop)
            width = max(map(len, prompts))
            ids, mask, _ = _left_pad(prompts, width, tok.pad_token_id, model.device)
            criteria = StoppingCriteriaList()
            if answer_stop and num_beams == 1:
                criteria.append(_answer_stop_criteria(tok, width))
            if stop:
                criteria.append(_StopOnText(tok, width, stop))
            if seed is not None:
                torch.manual_seed(seed)
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 num_beams=num_beams, eos_token_id=self.stops, pad_token_id=tok.pad_token_id,
                                 stopping_criteria=criteria, **sampling)
        return [row[width:].tolist() for row in out]

    def _completion(self, prompt: list[int], new: list[int], answer_stop: bool, stop: list[str]) -> Completion:
        tok = self.tokenizer
        # `generate` pads finished rows; the pad may equal the end token, so it ends the body too
        ends = set(self.stops) | {tok.pad_token_id}
        cut = next((k for k, t in enumerate(new) if t in ends), None)
        body = new if cut is None else new[:cut]
        text, reason = apply_stops(tok.decode(body, skip_special_tokens=True), "length" if cut is None else "stop",
                                   answer_stop=answer_stop, stop=stop)
        # an end token is generated and counted; after a stated answer `generate` pads the row
        used = len(body) + int(cut is not None and new[cut] in self.stops and reason != "answer")
        return Completion(text, len(prompt), used, reason, prompt=tok.decode(prompt))
