"""Training checkpoints written while the next step computes.

A checkpoint of a full fine-tune is large (a 135M student: 0.5 GB of fp32 weights and 1 GB of Adam
moments); on two Zen 4 cores writing one took 3.5-4 s, against ~6 s for a step of 8 SVAMP rationales
(0.8-0.9 s the weights, 2.7-3.0 s the optimizer state). Its large parts are written by a
thread while the next step's forward and backward run: nothing they hold changes before the next
optimizer step, and that step waits for the write (`WaitForCheckpoint.on_pre_optimizer_step`), so the
files hold exactly what the Trainer would have written. No tensor is copied: the thread reads the live
weights and moments.

The small parts (scheduler, RNG, training args, tokenizer) change in the next step, so they are written
at once. `trainer_state.json` is written last, after the large parts: it marks the checkpoint complete
(`train.last_complete_checkpoint`). Older checkpoints are removed only once the new one is complete, so an
interruption mid-write leaves the previous one to resume from.

Only a single CPU process writes this way. Sharded and multi-process runs keep the Trainer's own
(collective) saving; so do GPUs, where a step is far shorter than a checkpoint's write (one step of
overlap would hide little) and where this path has not been measured.
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Callable
from typing import Any


# Tests turn it off to compare with the Trainer's own synchronous saving.
ENABLED = True


class BackgroundWrite:
    """At most one write in flight; `wait` joins it, raises its error, then runs its follow-up."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._then: Callable[[], None] | None = None

    def start(self, write: Callable[[], None], then: Callable[[], None]) -> None:
        self.wait()

        def run() -> None:
            try:
                write()
            except BaseException as e:  # re-raised in the training thread by wait()
                self._error = e

        self._then = then
        # not a daemon: an interrupted run still finishes the file it is writing
        self._thread = threading.Thread(target=run, name="cotdistill-checkpoint")
        self._thread.start()

    def wait(self, run_then: bool = True) -> None:
        if self._thread is None:
            return
        self._thread.join()
        error, then = self._error, self._then
        self._thread, self._error, self._then = None, None, None
        if error is not None:
            raise error
        if run_then and then is not None:
            then()


def save_in_background(trainer: Any, trial: Any, writer: BackgroundWrite) -> None:
    """What `Trainer._save_checkpoint` writes (one process, no FSDP/DeepSpeed), the large parts by `writer`."""
    import torch
    from transformers.trainer import (OPTIMIZER_NAME, PREFIX_CHECKPOINT_DIR, SCHEDULER_NAME, TRAINER_STATE_NAME,
                                      TRAINING_ARGS_NAME)
    from transformers.trainer_callback import ExportableState

    writer.wait()
    run_dir = trainer._get_output_dir(trial=trial)
    out = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}")
    trainer.store_flos()
    os.makedirs(out, exist_ok=True)

    model = trainer.model  # one process: the model itself (what `Trainer._save` saves), not a wrapper
    optimizer_state = trainer.optimizer.state_dict()  # references to the live moments, no copies
    torch.save(trainer.lr_scheduler.state_dict(), os.path.join(out, SCHEDULER_NAME))
    if hasattr(trainer, "_save_scaler"):  # newer transformers (fp16 grad scaler state)
        trainer._save_scaler(out)
    trainer._save_rng_state(out)
    if trainer.processing_class is not None:
        trainer.processing_class.save_pretrained(out)
    torch.save(trainer.args, os.path.join(out, TRAINING_ARGS_NAME))
    for cb in [c for c in trainer.callback_handler.callbacks + [trainer.control] if isinstance(c, ExportableState)]:
        name = cb.__class__.__name__
        if isinstance(trainer.state.stateful_callbacks.get(name), list):
            trainer.state.stateful_callbacks[name].append(cb.state())
        else:
            trainer.state.stateful_callbacks[name] = cb.state()
    state = copy.deepcopy(trainer.state)  # as of this step; the next step's logs must not leak in

    def write() -> None:
        model.save_pretrained(out)  # safetensors straight from the live weights
        torch.save(optimizer_state, os.path.join(out, OPTIMIZER_NAME))
        state.save_to_json(os.path.join(out, TRAINER_STATE_NAME))  # last: the checkpoint is complete

    def rotate() -> None:
        _rotate(trainer, run_dir)

    writer.start(write, then=rotate)


def _rotate(trainer: Any, run_dir: str) -> None:
    """The Trainer's own rule (keep `save_total_limit` newest), applied once the new checkpoint is complete."""
    try:
        from transformers.trainer_utils import rotate_checkpoints
    except ImportError:  # transformers < 5 has it as a method
        trainer._rotate_checkpoints(use_mtime=True, output_dir=run_dir)
        return
    rotate_checkpoints(output_dir=run_dir, save_total_limit=trainer.args.save_total_limit,
                       best_model_checkpoint=trainer.state.best_model_checkpoint, use_mtime=True)


def wait_callback(writer: BackgroundWrite):
    from transformers import TrainerCallback

    class WaitForCheckpoint(TrainerCallback):
        """The optimizer step changes what a checkpoint in flight is writing: it waits; so does the end."""

        def on_pre_optimizer_step(self, args, state, control, **kw):
            writer.wait()

        def on_train_end(self, args, state, control, **kw):
            writer.wait()

    return WaitForCheckpoint()
