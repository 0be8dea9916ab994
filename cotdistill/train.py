"""Fine-tune a student on (question -> rationale) with the HF Trainer used as a library.

What makes it fast and small (see bench/): length-grouped batches with dynamic padding, logits
and loss only at response positions (a pre-hook on lm_head gathers those hidden states first,
so the vocabulary projection never runs on prompt or padding tokens), computed a chunk of rows
at a time with their gradients (no [tokens, vocabulary] tensor is ever held: with a 262k
vocabulary that tensor is most of a plain Trainer's memory), padded batches wider than
`max_forward_tokens` run as row slices (the longest length-grouped batch would otherwise set the peak),
optional gradient checkpointing, bf16 autocast where the hardware runs it natively. Checkpoints are complete only once
trainer_state.json is written, so `--resume` after Ctrl-C or kill -9 restarts from the last
complete one; the run folder gets its model files and, written last, provenance.json (the
"done" marker).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cotdistill import checkpoints, students
from cotdistill.errors import CotdistillError
from cotdistill.kernels import attention
from cotdistill.kernels.loss import (ResponseOnlyHead, chunked_linear_cross_entropy, liger_available,
                                     liger_linear_cross_entropy)
from cotdistill.kernels.recast import recast_linears
from cotdistill.provenance import atomic_write_text, write_provenance

ProgressFn = Callable[[int, int, dict[str, Any]], None]

# Fields that do not change what a run computes (so they are left out of its identity).
# The speed knobs compute the same run up to float rounding (same data order, same effective batch).
_NOT_IDENTITY = {"out", "resume", "overwrite", "device", "data_dir", "save_steps", "quiet", "gradient_checkpointing",
                 "padding_free", "per_device_batch", "loss_kernel", "compile", "max_forward_tokens"}


class TrainConfig(BaseModel):
    """One fine-tuning run. Defaults are the paper's hyper-parameters."""

    model_config = ConfigDict(extra="forbid")

    student: str = Field(description="HF id, local folder, .gguf file, or alias smollm2-135m / gemma3-270m.")
    data: str = Field(description="Released supervision name (e.g. svamp/chatgpt/level1) or a JSONL of {question, rationale}.")
    out: Path = Field(description="Run folder: checkpoints, final model, loss curve, provenance.")
    epochs: float = Field(3.0, gt=0, description="Training epochs (paper: 3).")
    lr: float = Field(5e-5, gt=0, description="Peak learning rate, cosine schedule (paper: 5e-5).")
    batch_size: int = Field(64, ge=1, description="Effective batch size = per-device batch x grad-accum x devices (paper: 64).")
    grad_accum: int | None = Field(None, ge=1, description="Gradient-accumulation steps; default: per-device batches of at most 8.")
    limit: int | None = Field(None, ge=1, description="Use only the first N examples.")
    seed: int = Field(100, description="Seed for init, data order and dropout (paper: 100).")
    lora: bool = Field(False, description="Train LoRA adapters (peft) instead of all weights; the saved model is merged.")
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha.")
    max_length: int | None = Field(None, ge=8, description="Longest prompt+response in tokens; default: the student's context window (at most 2048). Longer responses are truncated and counted.")
    dtype: str = Field("auto", description="Compute precision: auto (bf16 where native), bf16, fp32.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Share of steps with linear warm-up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    padding_free: bool | None = Field(None, description="Pack each per-device batch into one row with position ids (no padding; attention kept inside each example); default: on for CUDA, off on a CPU.")
    per_device_batch: int | None = Field(None, ge=1, description="Examples per device per forward; default: 8 on a CPU, on CUDA the largest that fits (probed, halving on out-of-memory). Gradient accumulation makes up the effective batch.")
    loss_kernel: Literal["auto", "chunked", "liger"] = Field("auto", description="Response-token cross-entropy: chunked (ours, any device) or liger (Liger's fused Triton kernel, CUDA, extra [gpu]); auto: liger on CUDA when installed.")
    max_forward_tokens: int | None = Field(None, ge=1, description="Most token positions (rows x padded width) one forward of a padded batch holds; a wider batch runs as row slices (same gradients, less memory). Default: 512 on a CPU, no limit on CUDA.")
    compile: bool = Field(False, description="torch.compile the model (Trainer's torch_compile).")
    gradient_checkpointing: bool = Field(False, description="Recompute each layer's activations in the backward pass: less memory, slower (17 % for gemma3-270m on CPU, bench/RESULTS_earlier.md).")
    group_by_length: bool = Field(True, description="Batch examples of similar length together (less padding); off: random order, as a plain Trainer.")
    save_steps: int | None = Field(None, ge=1, description="Checkpoint every N optimizer steps; default: about 10 per run.")
    resume: bool = Field(False, description="Continue an unfinished run of the same config from its last checkpoint.")
    overwrite: bool = Field(False, description="Replace a different run that already occupies `out`.")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub (off unless asked).")
    data_dir: Path | None = Field(None, description="Data directory for released supervision names.")
    quiet: bool = Field(False, description="No progress bar.")

    def identity(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude=_NOT_IDENTITY)


class TrainResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    out: Path
    n_examples: int
    truncated: int
    dropped: int
    steps: int
    final_loss: float | None
    train_loss: float | None
    tokens: int
    seconds: float = Field(description="Wall-clock of this session: loading, training, saving.")
    train_seconds: float = Field(0.0, description="Wall-clock of the training loop alone (this session).")
    tokens_per_s: float = Field(description="Non-padding tokens per second of the training loop (this session).")
    already_done: bool = False


# ----------------------------------------------------------------------------- data


def load_pairs(source: str, data_dir: Path | None, limit: int | None) -> tuple[list[tuple[str, str]], str]:
    """(question, rationale) pairs of a released name or JSONL file, and a description of it."""
    from cotdistill.data import load_supervision

    sup = load_supervision(source, data_dir)
    rows = sup.rows[:limit] if limit else sup.rows
    if not rows:
        raise CotdistillError(f"training data {source!r} holds no examples")
    pairs = []
    for i, r in enumerate(rows):
        if not str(r.question).strip() or not str(r.rationale).strip():
            raise CotdistillError(f"training data {source!r}: example {i} ({r.id}) has an empty question or rationale")
        pairs.append((str(r.question), str(r.rationale)))
    return pairs, getattr(sup, "name", str(source))


def tokenize_pairs(tokenizer: Any, pairs: list[tuple[str, str]], max_length: int) -> tuple[list[dict], int, int]:
    """Examples {input_ids, labels} with labels -100 on the prompt; (examples, truncated, dropped)."""
    examples, truncated, dropped = [], 0, 0
    for question, rationale in pairs:
        prompt = students.encode_prompt(tokenizer, question)
        response = students.encode_response(tokenizer, rationale)
        if len(prompt) >= max_length - 1:  # no room for any response token
            dropped += 1
            continue
        if len(prompt) + len(response) > max_length:
            response = response[: max_length - len(prompt)]
            truncated += 1
        examples.append({"input_ids": prompt + response, "labels": [-100] * len(prompt) + response})
    return examples, truncated, dropped


class PackCollator:
    """Concatenate a batch into one row with position ids restarting at 0 for each example (padding-free).

    No attention mask is passed: transformers then reads the example boundaries from the position ids
    (masking_utils.find_packed_sequence_indices) and gives SDPA/eager/flex a block-diagonal causal
    mask, flash attention its varlen boundaries, so no token attends across examples. The last token
    of one example would predict the first (prompt) token of the next: labels there are -100 already,
    and the first label of every example is set to -100 so that holds for any data.
    """

    def __call__(self, batch: list[dict]) -> dict[str, Any]:
        import torch

        ids, labels, pos, bounds = [], [], [], [0]
        for b in batch:
            n = len(b["input_ids"])
            ids += b["input_ids"]
            labels += [-100] + list(b["labels"][1:])
            pos += range(n)
            bounds.append(bounds[-1] + n)
        longest = max(b - a for a, b in zip(bounds[:-1], bounds[1:]))
        cu = torch.tensor(bounds, dtype=torch.int32)
        # the boundaries under transformers' own flash-attention names, so no kernel has to find them on the GPU
        return {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([pos]), "labels": torch.tensor([labels]),
                "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


PACKING_KEYS = ("position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


class PadCollator:
    """Right-pad a batch to its own longest sequence (dynamic padding)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict]) -> dict[str, Any]:
        import torch

        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# ----------------------------------------------------------------------------- loss


def response_loss(model: Any, head: ResponseOnlyHead, inputs: dict, num_items: Any | None) -> Any:
    """Summed next-token cross-entropy over response tokens / number of response tokens."""
    import torch
    import torch.nn.functional as F

    labels = inputs["labels"]
    target = labels[:, 1:]
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = target != -100  # position t predicts token t+1
    sink: list = []  # a fresh one per call: nothing from an earlier step can land in it
    head.mask, head.sink = mask, sink
    try:
        # padded batches carry an attention mask; packed rows (PackCollator) position ids instead
        shape = {k: inputs[k] for k in PACKING_KEYS + ("attention_mask",) if k in inputs}
        if "attention_mask" in shape and _right_padded_on_cpu(shape["attention_mask"]):
            # Causal attention: padding only at the end of each row is never attended by a real token, so the
            # mask changes nothing that is scored; without it SDPA runs its causal kernel (~8 % of a bf16 step).
            del shape["attention_mask"]
        out = model(input_ids=inputs["input_ids"], use_cache=False, **shape)
        hidden, head.hidden = head.hidden, None
    finally:
        head.mask, head.sink = None, None
    if head.fused and head.kernel == "liger":
        loss = liger_linear_cross_entropy(hidden, head.head, target[target != -100], head.softcap)
    elif head.fused:
        loss = chunked_linear_cross_entropy(hidden, head.head, target[target != -100], head.softcap, sink=sink)
    else:
        loss = F.cross_entropy(out.logits.float(), target[target != -100], reduction="sum")
    denom = num_items if num_items is not None else max(int(mask.sum()), 1)
    return loss / denom


# Default `max_forward_tokens` on a CPU: stored activations of 512 positions keep peak RSS under TRL's
# SFTTrainer (which recomputes them) at no measurable speed cost; 256 rows per forward cost ~30 % (bench/RESULTS.md).
CPU_FORWARD_POSITIONS = 512


def row_slices(inputs: dict, max_positions: int) -> list[dict]:
    """A right-padded batch as row slices of at most `max_positions` positions each (rows x own padded width).

    Rows go longest first into the current slice while it stays under the budget (a row longer than the
    budget goes alone); each slice is cut to its own longest row. Activation memory grows with the
    positions one forward holds, and length-grouped batching puts the longest examples together: one
    such batch padded to its longest row set the training peak (bench/RESULTS.md). The summed loss and
    its gradients are those of the whole batch, up to float rounding order.
    """
    lengths = inputs["attention_mask"].sum(1)
    if len(lengths) * int(lengths.max()) <= max_positions:
        return [inputs]
    order = lengths.argsort(descending=True, stable=True).tolist()
    groups: list[list[int]] = []
    for i in order:  # descending: a slice's width is its first row's length
        if groups and (len(groups[-1]) + 1) * int(lengths[groups[-1][0]]) <= max_positions:
            groups[-1].append(i)
        else:
            groups.append([i])
    slices = []
    for g in groups:
        width = int(lengths[g[0]])
        slices.append({k: (v[g, :width] if k in ("input_ids", "attention_mask", "labels") else v)
                       for k, v in inputs.items()})
    return slices


def _right_padded_on_cpu(mask: Any) -> bool:
    """A CPU batch whose padding is only at the end of each row (as PadCollator makes it)."""
    return mask.device.type == "cpu" and bool((mask[:, 1:] <= mask[:, :-1]).all())


def _make_trainer_class():
    from transformers import Trainer

    class ResponseOnlyTrainer(Trainer):
        """Trainer whose loss computes logits only at response positions."""

        loss_is_scaled_for_ga = True  # response_loss divides by the whole accumulated batch's count
        max_forward_positions: int | None = None  # set by train(): padded batches wider than this run as row slices

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.checkpoint_writer = checkpoints.BackgroundWrite()
            self.add_callback(checkpoints.wait_callback(self.checkpoint_writer))

        def _save_checkpoint(self, model, trial):
            self.checkpoint_writer.wait()
            if self.state.global_step >= self.state.max_steps:
                return  # train() saves the final model next and then deletes the checkpoints: 1.5 GB for nothing
            if (not checkpoints.ENABLED or self.args.device.type != "cpu" or self.args.world_size > 1
                    or self.is_fsdp_enabled or self.is_deepspeed_enabled):
                return super()._save_checkpoint(model, trial)  # the Trainer's own saving (collective where sharded)
            checkpoints.save_in_background(self, trial, self.checkpoint_writer)

        def training_step(self, model, inputs, num_items_in_batch=None):
            budget = self.max_forward_positions
            if budget is None or "attention_mask" not in inputs:  # packed rows are left whole
                return super().training_step(model, inputs, num_items_in_batch)
            parts = row_slices(inputs, budget)
            if len(parts) == 1:
                return super().training_step(model, inputs, num_items_in_batch)
            if num_items_in_batch is None:  # each slice must divide by the whole batch's count, not its own
                num_items_in_batch = int((inputs["labels"][:, 1:] != -100).sum())
            loss = 0
            for i, part in enumerate(parts):  # DDP all-reduces once, after the last slice's backward
                sync = contextlib.nullcontext() if i == len(parts) - 1 else self.accelerator.no_sync(model)
                with sync:
                    loss = loss + super().training_step(model, part, num_items_in_batch)
            return loss

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = response_loss(model, self._head, inputs, num_items_in_batch)
            if num_items_in_batch is not None and self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes  # DDP averages grads; the count was global
            return (loss, None) if return_outputs else loss

    return ResponseOnlyTrainer


# ----------------------------------------------------------------------------- run folder


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def last_complete_checkpoint(ckpt_dir: Path) -> Path | None:
    """Newest checkpoint whose trainer_state.json (written last by Trainer) parses."""
    best, best_step = None, -1
    for p in ckpt_dir.glob("checkpoint-*") if ckpt_dir.is_dir() else []:
        try:
            step = int(p.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if step > best_step and _read_json(p / "trainer_state.json") is not None:
            best, best_step = p, step
    return best


def _remove_incomplete_checkpoints(ckpt_dir: Path, keep: Path | None) -> None:
    for p in ckpt_dir.glob("checkpoint-*") if ckpt_dir.is_dir() else []:
        if p != keep and _read_json(p / "trainer_state.json") is None:
            shutil.rmtree(p, ignore_errors=True)


def prepare_out(cfg: TrainConfig) -> tuple[str, Path | None]:
    """Decide what to do with the run folder: ("done", None), ("fresh", None) or ("resume", ckpt).

    Only a folder this tool made (it holds run.json) is ever removed, and a different run only with
    --overwrite, unless it never got as far as a checkpoint (a failed first try of a command)."""
    from cotdistill.checks import check_out_dir

    out = check_out_dir(cfg.out)
    run = _read_json(out / "run.json")
    occupied = out.is_dir() and any(out.iterdir())
    same = run is not None and run.get("identity") == cfg.identity()
    if occupied and run is None:
        raise CotdistillError(f"--out {out} holds files not made by cotdistill train (no run.json); "
                              "choose another folder (--overwrite replaces only a training run)")
    if occupied and not same:
        if not cfg.overwrite and _holds_work(out):
            raise CotdistillError(f"--out {out} already holds a different training run; "
                                  "pass --overwrite to replace it or choose another folder")
        shutil.rmtree(out)
        occupied = False
    elif occupied and cfg.overwrite and not cfg.resume:
        shutil.rmtree(out)
        occupied = False
    if occupied:
        prov = _read_json(out / "provenance.json")
        if prov is not None and prov.get("status") == "done":
            return "done", None
        ckpt = last_complete_checkpoint(out / "checkpoints")
        if not cfg.resume:
            raise CotdistillError(
                f"--out {out} holds an unfinished run of this config; pass --resume to continue it "
                "or --overwrite to start over"
            )
        _remove_incomplete_checkpoints(out / "checkpoints", ckpt)
        return "resume", ckpt
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "run.json", json.dumps({"identity": cfg.identity()}, indent=2) + "\n")
    return "fresh", None


def _holds_work(out: Path) -> bool:
    """A finished model or a complete checkpoint: what replacing a run would lose."""
    return (out / "provenance.json").is_file() or last_complete_checkpoint(out / "checkpoints") is not None


def _check_disk(out: Path, n_params: int) -> None:
    """Refuse up front when a checkpoint (weights + 2 Adam moments) plus the final model cannot fit."""
    need = n_params * 4 * 4 + (256 << 20)
    free = shutil.disk_usage(out).free
    if free < need:
        raise CotdistillError(
            f"not enough disk space in {out}: {free / 2**30:.1f} GiB free, about {need / 2**30:.1f} GiB needed for checkpoints"
        )


# ----------------------------------------------------------------------------- progress, curve


def _progress_callback(progress: ProgressFn | None, quiet: bool):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """tqdm bar (or a caller's callback) with loss, tokens/s and ETA; logs kept in state."""

        def on_train_begin(self, args, state, control, **kw):
            self.t0, self.tok0, self.step0 = time.monotonic(), state.num_input_tokens_seen, state.global_step
            self.bar = None
            if progress is None and not quiet and state.is_world_process_zero:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step",
                                dynamic_ncols=True, file=sys.stderr)

        def on_log(self, args, state, control, logs=None, **kw):
            if not state.is_world_process_zero or not logs or "loss" not in logs:
                return
            dt = max(time.monotonic() - self.t0, 1e-9)
            tps = (state.num_input_tokens_seen - self.tok0) / dt
            info = {"loss": logs["loss"], "tokens_per_s": tps, "epoch": state.epoch}
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{logs['loss']:.4f}", tok_s=f"{tps:.0f}")
                self.bar.update(state.global_step - self.bar.n)
            elif progress is not None:
                progress(state.global_step, state.max_steps, info)

        def on_train_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)
                self.bar.close()

    return Progress()


def loss_curve(log_history: list[dict]) -> list[dict]:
    keys = ("step", "epoch", "loss", "learning_rate", "grad_norm", "num_input_tokens_seen")
    return [{k: h[k] for k in keys if k in h} for h in log_history if "loss" in h]


def write_loss_curve(out: Path, curve: list[dict]) -> None:
    """loss_curve.jsonl and loss_curve.png (matplotlib Agg: no display needed)."""
    atomic_write_text(out / "loss_curve.jsonl", "".join(json.dumps(r) + "\n" for r in curve))
    if not curve:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in curve], [r["loss"] for r in curve], marker=".")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (response tokens)")
    ax.set_title(out.name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = out / ".loss_curve.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out / "loss_curve.png")


# ----------------------------------------------------------------------------- main entry


def _checkpointing_arg(args_cls: type) -> str:
    names = {f.name for f in dataclasses.fields(args_cls)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def batch_shape(batch_size: int, world: int, cap: int, grad_accum: int | None) -> tuple[int, int]:
    """(per-device batch, accumulation steps) for an effective batch: accumulate only what `cap` rows cannot hold."""
    accum = grad_accum or max(1, math.ceil(batch_size / (cap * world)))
    return max(1, batch_size // (accum * world)), accum


def largest_fitting(fits: Callable[[int], bool], start: int) -> int | None:
    """The first of start, start/2, start/4, ... 1 for which `fits` holds (None: not even 1)."""
    n = start
    while n >= 1:
        if fits(n):
            return n
        n //= 2
    return None


def resolve_loss_kernel(choice: str, device: str) -> str:
    """"chunked" or "liger" for `TrainConfig.loss_kernel` on this device."""
    if choice == "liger" and not device.startswith("cuda"):
        raise CotdistillError(f"--loss-kernel liger runs on CUDA only (Triton), not on --device {device}; use chunked")
    if choice == "liger" and not liger_available():
        raise CotdistillError("--loss-kernel liger: liger-kernel is not installed (pip install 'cotdistill[gpu]')")
    return "liger" if choice == "liger" or (choice == "auto" and device.startswith("cuda") and liger_available()) \
        else "chunked"


def _cuda_fits(model: Any, examples: list[dict], collate: Any, dtype: str, kernel: str) -> Callable[[int], bool]:
    """fits(n): whether a forward+backward of the n longest examples, plus Adam's two fp32 moments
    (allocated at the first optimizer step), stays under 90 % of the GPU's memory."""
    import torch

    device = next(model.parameters()).device
    longest = sorted(examples, key=lambda e: len(e["input_ids"]), reverse=True)
    total = torch.cuda.get_device_properties(device).total_memory
    moments = 8 * sum(p.numel() for p in model.parameters() if p.requires_grad)

    def fits(n: int) -> bool:
        head = ResponseOnlyHead(model, kernel=kernel)
        peak = None
        try:
            batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in collate(longest[:n]).items()}
            torch.cuda.reset_peak_memory_stats(device)
            with torch.autocast("cuda", dtype=getattr(torch, dtype), enabled=dtype != "float32"):
                loss = response_loss(model, head, batch, None)
            loss.backward()
            peak = torch.cuda.max_memory_allocated(device)
        except torch.cuda.OutOfMemoryError:
            pass
        finally:
            head.remove()
            model.zero_grad(set_to_none=True)
            batch = loss = None
            torch.cuda.empty_cache()
        return peak is not None and peak + moments <= 0.9 * total

    return fits


def _per_device_cap(cfg: TrainConfig, device: str, dtype: str, model: Any, examples: list[dict], collate: Any,
                    kernel: str, world: int) -> int:
    """Most examples per device per forward: the config's, 8 on a CPU (larger batches gain nothing
    there, bench/RESULTS_earlier.md), on CUDA the largest that fits (probed on the longest examples)."""
    if cfg.per_device_batch or cfg.grad_accum:
        return cfg.per_device_batch or 8
    if not device.startswith("cuda"):
        return 8
    import torch

    index = int(os.environ.get("LOCAL_RANK", "0")) if device == "cuda" else torch.device(device).index or 0
    model.to(torch.device("cuda", index))
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    n = largest_fitting(_cuda_fits(model, examples, collate, dtype, kernel), max(1, math.ceil(cfg.batch_size / world)))
    if world > 1:  # every rank must use the same shape: the smallest any rank found
        from accelerate import PartialState

        PartialState()  # initialises the process group
        t = torch.tensor([n or 0], device=next(model.parameters()).device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        n = int(t.item()) or None
    if n is None:
        longest = max(len(e["input_ids"]) for e in examples)
        raise CotdistillError(
            f"one training example of {longest} tokens does not fit in the memory of GPU {device} with student "
            f"{cfg.student!r}; lower --max-length, or pass --lora or --gradient-checkpointing, or shard it with FSDP")
    return n


def default_save_steps(total_steps: int) -> int:
    """Checkpoint interval when --save-steps is not given: about 10 checkpoints per run."""
    return max(1, math.ceil(total_steps / 10))


def _training_args(cfg: TrainConfig, device: str, dtype: str, n_examples: int, ckpt_dir: Path, per_device: int,
                   accum: int, packed: bool):
    from transformers import TrainingArguments

    world = int(os.environ.get("WORLD_SIZE", "1"))
    steps_per_epoch = max(1, math.ceil(n_examples / (per_device * accum * world)))
    total = max(1, math.ceil(steps_per_epoch * cfg.epochs))
    save_steps = cfg.save_steps or default_save_steps(total)
    return TrainingArguments(
        output_dir=str(ckpt_dir),
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.lr,
        lr_scheduler_type="cosine",
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accum,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=dtype == "bfloat16",
        fp16=dtype == "float16",
        use_cpu=device == "cpu",
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        # newer transformers renamed it (the old name warns on every run); older releases know only the old one
        **{_checkpointing_arg(TrainingArguments): cfg.gradient_checkpointing},
        torch_compile=cfg.compile,
        logging_steps=1,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=1,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        # a packed row has no padding (and no attention mask to count by): every token counts
        include_num_input_tokens_seen="all" if packed else "non_padding",
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # every parameter gets a gradient: no extra graph walk per step
    )


def _load_for_training(cfg: TrainConfig, device: str):
    import torch

    # Weights stay fp32 (master copy); bf16 is applied as autocast by the Trainer.
    model, tok = students.load_student(cfg.student, dtype="float32", device="cpu",
                                       trust_remote_code=cfg.trust_remote_code)  # the Trainer moves it
    model.config.use_cache = False
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(cfg.seed)
        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.05,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    return model, tok


def _save_final(model: Any, tok: Any, out: Path, lora: bool) -> None:
    """Save a plain transformers model into `out` (merged when LoRA), via a temp folder."""
    tmp = out / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if lora:
        model = model.merge_and_unload()
    model.config.use_cache = True
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    for p in tmp.iterdir():
        os.replace(p, out / p.name)
    tmp.rmdir()


def train(cfg: TrainConfig, progress: ProgressFn | None = None) -> TrainResult:
    """Fine-tune `cfg.student` on `cfg.data` into `cfg.out` (idempotent; resumable with cfg.resume)."""
    device = students.resolve_device(cfg.device)
    dtype = students.resolve_dtype(cfg.dtype, device)
    cfg = cfg.model_copy(update={"dtype": dtype})  # the resolved precision is part of the run's identity
    pairs, source_name = load_pairs(cfg.data, cfg.data_dir, cfg.limit)  # bad data fails before touching out
    students.check_student(cfg.student)  # and so does a missing or truncated model
    world = int(os.environ.get("WORLD_SIZE", "1"))
    state, ckpt = _prepare_out_on_main(cfg, device, world)
    if state == "done":
        return _result_from_provenance(cfg.out)

    t0 = time.monotonic()
    model, tok = _load_for_training(cfg, device)
    max_length = cfg.max_length or min(students.context_window(model), 2048)
    examples, truncated, dropped = tokenize_pairs(tok, pairs, max_length)
    if not examples:
        raise CotdistillError(f"training data {cfg.data!r}: every prompt is longer than --max-length {max_length}")
    if truncated or dropped:
        print(f"warning: {truncated} rationale(s) truncated to --max-length {max_length} tokens"
              f" (they lose their end token), {dropped} example(s) dropped (prompt alone too long)", file=sys.stderr)
    n_params = sum(p.numel() for p in model.parameters())
    _check_disk(cfg.out, n_params)

    ckpt_dir = cfg.out / "checkpoints"
    packed = device.startswith("cuda") if cfg.padding_free is None else cfg.padding_free
    collate = PackCollator() if packed else PadCollator(tok.pad_token_id)
    # packed rows: attention inside each example without an [N x N] mask (kernels/attention.py)
    attn_before = attention.use_for_training(model) if packed else None
    kernel = resolve_loss_kernel(cfg.loss_kernel, device)
    try:
        cap = _per_device_cap(cfg, device, dtype, model, examples, collate, kernel, world)
        per_device, accum = batch_shape(cfg.batch_size, world, cap, cfg.grad_accum)
        args = _training_args(cfg, device, dtype, len(examples), ckpt_dir, per_device, accum, packed)
        trainer = _make_trainer_class()(
            model=model, args=args, train_dataset=examples, data_collator=collate, processing_class=tok,
        )
        if trainer.is_fsdp_enabled and not getattr(trainer.model, "_no_split_modules", None):
            raise CotdistillError(f"student {cfg.student!r} ({type(trainer.model).__name__}) names no layer class "
                                  "FSDP can shard by (_no_split_modules); train it with DDP (one copy per GPU) or --lora")
    except CotdistillError:
        if state == "fresh" and _is_main():  # nothing of this run exists yet: leave no half-made folder behind
            shutil.rmtree(cfg.out, ignore_errors=True)
        raise
    trainer._head = ResponseOnlyHead(trainer.model, fused=not trainer.is_fsdp_enabled, kernel=kernel)
    if not packed:
        trainer.max_forward_positions = cfg.max_forward_tokens or (CPU_FORWARD_POSITIONS if device == "cpu" else None)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(_progress_callback(progress, cfg.quiet))
    t_loop = time.monotonic()
    # on a CPU, bf16 autocast keeps no bf16 weight copies for the backward (kernels/recast.py)
    recast = recast_linears(trainer.model, skip=trainer._head.head) if device == "cpu" else contextlib.nullcontext()
    try:
        with recast:
            output = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):  # a checkpoint being written is finished, not torn
            trainer.checkpoint_writer.wait(run_then=False)
        last = last_complete_checkpoint(ckpt_dir)
        print(f"\ninterrupted; last complete checkpoint: {last.name if last else 'none'}; "
              "re-run with --resume to continue", file=sys.stderr)
        raise
    except OSError as e:
        if e.errno == 28:
            raise CotdistillError(f"no space left on device while writing {cfg.out}; free space and re-run with --resume") from e
        raise
    trainer._head.remove()
    attention.restore(model, attn_before)
    loop_seconds = time.monotonic() - t_loop
    seconds = time.monotonic() - t0

    curve = loss_curve(trainer.state.log_history)
    tokens = int(trainer.state.num_input_tokens_seen)
    session_tokens = tokens - int(getattr(trainer, "_initial_num_input_tokens_seen", 0) or 0)
    result = TrainResult(
        out=cfg.out, n_examples=len(examples), truncated=truncated, dropped=dropped,
        steps=trainer.state.global_step, final_loss=curve[-1]["loss"] if curve else None,
        train_loss=output.training_loss, tokens=tokens, seconds=round(seconds, 2),
        train_seconds=round(loop_seconds, 2), tokens_per_s=round(session_tokens / max(loop_seconds, 1e-9), 1),
    )
    if trainer.is_world_process_zero():  # one process writes the run folder; provenance.json last
        write_loss_curve(cfg.out, curve)
        _save_final(trainer.model, tok, cfg.out, cfg.lora)
        write_provenance(
            cfg.out / "provenance.json", cfg, status="done", data_source=source_name, device=device, dtype=dtype,
            per_device_batch=per_device, grad_accum=accum, world_size=world, padding_free=packed, loss_kernel=kernel,
            attention=attention.NAME if attn_before is not None else getattr(model.config, "_attn_implementation", None),
            max_length=max_length, n_params=n_params,
            result=result.model_dump(mode="json"),
        )
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # the run is complete; checkpoints are GBs
    return result


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _prepare_out_on_main(cfg: TrainConfig, device: str, world: int) -> tuple[str, Path | None]:
    """`prepare_out` on the main process only; the others (torchrun/accelerate) get its answer, or its error."""
    if world == 1:
        return prepare_out(cfg)
    import torch.distributed as dist
    from accelerate import PartialState

    PartialState(cpu=device == "cpu")  # initialises the process group (gloo on CPUs, NCCL on GPUs)
    msg: list = [None]
    if _is_main():
        try:
            state, ckpt = prepare_out(cfg)
            msg = [(state, None if ckpt is None else str(ckpt), None)]
        except CotdistillError as e:
            msg = [(None, None, str(e))]
    dist.broadcast_object_list(msg, src=0)
    state, ckpt, error = msg[0]
    if error:
        raise CotdistillError(error)
    return state, None if ckpt is None else Path(ckpt)


def _result_from_provenance(out: Path) -> TrainResult:
    prov = _read_json(out / "provenance.json") or {}
    result = dict(prov.get("result", {}), out=out, already_done=True)
    return TrainResult(**result)
