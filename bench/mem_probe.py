"""Where a training run's peak RSS goes: sample /proc/self/status while ours or TRL trains, label phases.

Each side runs in its own process (this script re-invokes itself); a thread reads VmRSS every 20 ms and
Trainer callbacks mark phases (step begin/end, optimizer step, save). Prints the peak, the phase it fell
in, and the RSS at each event. Usage (TRL needs PYTHONPATH=$PWD:/tmp/trlsite):
    python bench/mem_probe.py --side ours --dtype bf16 --n 32 --batch-size 8
Found with it (issue 15): the peak fell in the backward of the first, longest length-grouped batch
(8 x 414 padded positions); see bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def malloc_mib() -> tuple[int, int]:
    """glibc's (bytes in use: heap chunks + mmapped blocks, heap arena size) in MiB."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    m = libc.mallinfo2()
    return (m.uordblks + m.hblkhd) >> 20, m.arena >> 20


class Sampler(threading.Thread):
    def __init__(self, every: float = 0.02):
        super().__init__(daemon=True)
        self.every, self.phase, self.peak, self.peak_phase, self.events = every, "start", 0, "start", []
        self.phase_peaks: dict[str, tuple] = {}
        self.t0 = time.monotonic()
        self.stop = False

    def mark(self, phase: str) -> None:
        rss = status_kib("VmRSS")
        self.events.append((round(time.monotonic() - self.t0, 2), phase, rss // 1024))
        self.phase = phase

    def run(self) -> None:
        while not self.stop:
            rss = status_kib("VmRSS")
            if rss > self.peak:
                self.peak, self.peak_phase = rss, self.phase
            if rss > self.phase_peaks.get(self.phase, (0,))[0]:
                self.phase_peaks[self.phase] = (rss, *malloc_mib(), status_kib("RssFile") >> 10)
            time.sleep(self.every)


def callback(s: Sampler):
    from transformers import TrainerCallback

    class Marks(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            s.mark(f"step {state.global_step + 1} begin")

        def on_substep_end(self, args, state, control, **kw):
            s.mark(f"step {state.global_step + 1} substep end")

        def on_pre_optimizer_step(self, args, state, control, **kw):
            s.mark(f"step {state.global_step + 1} pre-opt")

        def on_optimizer_step(self, args, state, control, **kw):
            s.mark(f"step {state.global_step + 1} post-opt")

        def on_step_end(self, args, state, control, **kw):
            s.mark(f"step {state.global_step} end")

        def on_save(self, args, state, control, **kw):
            s.mark(f"step {state.global_step} saved")

        def on_train_end(self, args, state, control, **kw):
            s.mark("train end")

    return Marks()


def model_marks(model, s: Sampler) -> None:
    """Mark the model's forward start/end (the backward follows the end)."""
    def pre(mod, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        s.mark(f"fwd {tuple(ids.shape) if ids is not None else ''}")

    model.register_forward_pre_hook(pre, with_kwargs=True)
    model.register_forward_hook(lambda *x: s.mark("fwd end -> loss/bwd"))


def trim_after(where: str) -> None:
    """Experiment: glibc's malloc_trim(0) after every optimizer step or every Trainer.training_step."""
    import ctypes

    import transformers

    libc = ctypes.CDLL("libc.so.6")
    if where == "slice":
        step = transformers.Trainer.training_step

        def trimmed(self, *args, **kw):
            out = step(self, *args, **kw)
            libc.malloc_trim(0)
            return out

        transformers.Trainer.training_step = trimmed
    elif where == "step":
        orig = transformers.Trainer.__init__

        class Trim(transformers.TrainerCallback):
            def on_step_end(self, *args, **kw):
                libc.malloc_trim(0)

        def init(self, *args, **kw):
            orig(self, *args, **kw)
            self.add_callback(Trim())

        transformers.Trainer.__init__ = init


def watch_trainers(s: Sampler) -> None:
    """Every Trainer (ours or TRL's SFTTrainer) built from now on gets the marks."""
    import transformers

    real_init = transformers.Trainer.__init__

    def init(self, *args, **kw):
        s.mark("trainer init")
        real_init(self, *args, **kw)
        self.add_callback(callback(s))
        model_marks(self.model, s)
        s.mark("trainer ready")

    transformers.Trainer.__init__ = init


def run_ours(a, s: Sampler) -> None:
    from cotdistill import train as T

    out = Path(tempfile.mkdtemp(prefix="memprobe-"))
    cfg = T.TrainConfig(student=a.student, data=a.data, out=out / "run", limit=a.n, epochs=a.epochs,
                        batch_size=a.batch_size, seed=100, quiet=True, dtype=a.dtype, overwrite=True,
                        save_steps=a.save_steps, max_forward_tokens=a.max_forward_tokens)
    s.mark("train()")
    r = T.train(cfg)
    s.mark("done")
    print("tokens/s", r.tokens_per_s, "loss", r.train_loss, file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", choices=["ours", "trl"], required=True)
    ap.add_argument("--student", default="smollm2-135m")
    ap.add_argument("--data", default="svamp/chatgpt/level1")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--trim", choices=["step", "slice"], default=None, help="experiment: malloc_trim(0) after each")
    ap.add_argument("--save-steps", type=int, default=None)
    ap.add_argument("--max-forward-tokens", type=int, default=None)
    a = ap.parse_args()
    s = Sampler()
    s.start()
    s.mark("imports")
    import torch  # noqa: F401

    s.mark("torch imported")
    if a.trim:
        trim_after(a.trim)
    watch_trainers(s)
    if a.side == "ours":
        run_ours(a, s)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_train import worker_trl

        from cotdistill.students import resolve_dtype

        print(worker_trl(a, resolve_dtype(a.dtype, "cpu")), file=sys.stderr)
    s.stop = True
    time.sleep(0.05)
    for ph, (rss, inuse, arena, file) in s.phase_peaks.items():
        print(f"  {ph:32s} peak RSS {rss >> 10:6d} MiB  malloc in use {inuse:6d}  heap arena {arena:6d}  file {file:5d}",
              file=sys.stderr)
    from benchlib import machine, now, write_raw

    res = {"kind": "memprobe", "command": " ".join(["python", "bench/mem_probe.py", *sys.argv[1:]]),
           "machine": machine(), "ended": now(), "args": vars(a), "side": a.side, "peak_mib": s.peak // 1024,
           "peak_phase": s.peak_phase, "vmhwm_mib": status_kib("VmHWM") // 1024, "events": s.events,
           "phases": [{"phase": ph, "rss_mib": rss >> 10, "malloc_in_use_mib": inuse, "heap_arena_mib": arena,
                       "file_mib": file} for ph, (rss, inuse, arena, file) in s.phase_peaks.items()]}
    print(f"raw: {write_raw('memprobe', res)}", file=sys.stderr)
    print(json.dumps({k: res[k] for k in ("side", "peak_mib", "peak_phase", "vmhwm_mib")}))


if __name__ == "__main__":
    main()
