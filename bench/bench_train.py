"""Training benchmark: ours (`cotdistill train` as the CLI runs it) against TRL's SFTTrainer, interleaved.

Primary peer: TRL's `SFTTrainer` with completion-only loss (our prompt-masked labels), padding-free
batches, bf16 autocast where the CPU runs bf16 natively, its other defaults (gradient checkpointing on).
Secondary (--peers): TRL without gradient checkpointing (`trl_nockpt`), and a plain `transformers.Trainer`
(`naive`: padded batches in random order, the model's own loss over full-vocabulary logits).
All sides: the same tokenised examples (the first --n of --data), effective batch, lr 5e-5 cosine, seed,
epochs, and the checkpoint schedule the CLI sets (every ceil(steps/10) optimizer steps, the last one kept),
saved inside the timed loop, each side its own way (the peers as the `Trainer` does, at once and at the last
step too; ours as `cotdistill train` does: written during the next step, none at the last step); each side
then saves its final model, as `cotdistill train` does.

Each run is its own process. Per run: tokens/s = all non-padding tokens (prompt + response) / seconds
of `trainer.train()`; peak RSS = the process's VmHWM at its end (loading, training, checkpoints, final save).
`--rounds` alternate the sides (ABBA order); the summary gives each side's median and range and the
median and range of the per-round ratios, never a side's best run.

Useful FLOPs (the work any correct implementation must do), per epoch:
    F = 6 * N_body * T + 6 * H * V * R + 6 * n_layers * d_q * sum_examples L * (L + 1)
T = tokens, R = response tokens (positions whose next token is scored), L = example length, N_body = the
layers' matmul weights, H * V = the LM head (a tied embedding counted once), d_q = query width; the last
term is causal attention (QK^T and AV) forward and backward. F_all charges the head at every position as
a plain implementation does: F + 6 * H * V * (T - R). Shares are F / seconds / the 2048^2 matmul peak
measured in the same dtype at the start of the run. Usage:
    python bench/bench_train.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import machine, matmul_peak_gflops, now, paired, peak_rss_mib, run_worker, spread, write_raw  # noqa: E402

SIDES = ("ours", "trl", "trl_nockpt", "naive")


# ----------------------------------------------------------------------------- workers (each its own process)


def _examples(a) -> tuple[list[dict], object]:
    """The first a.n examples of a.data, tokenised as `cotdistill train` tokenises them; and the tokenizer."""
    from cotdistill import students
    from cotdistill import train as T

    tok = students.load_tokenizer(a.student)
    pairs, _ = T.load_pairs(a.data, None, a.n)
    return T.tokenize_pairs(tok, pairs, 2048)[0], tok


def _shape(a, n_examples: int) -> tuple[int, int, int]:
    """(per-device batch, accumulation, save_steps) exactly as `cotdistill train` picks them on a CPU."""
    import math

    from cotdistill import train as T

    per_device, accum = T.batch_shape(a.batch_size, 1, 8, None)
    steps = max(1, math.ceil(math.ceil(n_examples / (per_device * accum)) * a.epochs))
    return per_device, accum, T.default_save_steps(steps)


def worker_ours(a, dtype: str) -> dict:
    from cotdistill import train as T

    out = Path(tempfile.mkdtemp(prefix="bench-ours-"))
    cfg = T.TrainConfig(student=a.student, data=a.data, out=out / "run", limit=a.n, epochs=a.epochs,
                        batch_size=a.batch_size, seed=a.seed, quiet=True, device="cpu", dtype=dtype, overwrite=True)
    r = T.train(cfg)  # the CLI's settings: checkpoints every ceil(steps/10) steps, final model saved
    prov = json.loads((out / "run" / "provenance.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {"tokens": r.tokens, "seconds": r.train_seconds, "tokens_per_s": r.tokens / r.train_seconds,
            "peak_rss_mib": peak_rss_mib(), "mean_loss": r.train_loss, "steps": r.steps,
            "per_device_batch": prov["per_device_batch"], "grad_accum": prov["grad_accum"]}


def _dataset(examples: list[dict]):
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import InMemoryTable

    rows = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples]
    # built from an Arrow table with a fingerprint: datasets' own hashing (dill) fails on some pyarrow builds
    return Dataset(InMemoryTable(pa.Table.from_pylist(rows)), fingerprint="bench")


def worker_trl(a, dtype: str, checkpointing: bool = True) -> dict:
    """TRL's SFTTrainer: completion-only loss (our labels), padding-free, bf16 autocast where native."""
    from trl import SFTConfig, SFTTrainer

    from cotdistill import students

    examples, tok = _examples(a)
    per_device, accum, save_steps = _shape(a, len(examples))
    out = tempfile.mkdtemp(prefix="bench-trl-")
    args = SFTConfig(output_dir=out, num_train_epochs=a.epochs, learning_rate=5e-5, lr_scheduler_type="cosine",
                     per_device_train_batch_size=per_device, gradient_accumulation_steps=accum, seed=a.seed,
                     bf16=dtype == "bfloat16", use_cpu=True, padding_free=True, max_length=None,
                     gradient_checkpointing=checkpointing, save_strategy="steps", save_steps=save_steps,
                     save_total_limit=1, report_to="none", logging_steps=1, disable_tqdm=True,
                     dataloader_num_workers=0, dataset_kwargs={"skip_prepare_dataset": True})
    # model given by path: TRL loads it in fp32 (its default), bf16 comes from autocast as in ours
    trainer = SFTTrainer(model=students.resolve_student(a.student), args=args, train_dataset=_dataset(examples),
                         processing_class=tok)
    t0 = time.monotonic()
    output = trainer.train()
    seconds = time.monotonic() - t0
    trainer.save_model(str(Path(out) / "final"))
    shutil.rmtree(out, ignore_errors=True)
    tokens = int(sum(len(e["input_ids"]) for e in examples) * a.epochs)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "peak_rss_mib": peak_rss_mib(),
            "mean_loss": output.training_loss, "steps": trainer.state.global_step,
            "per_device_batch": per_device, "grad_accum": accum}


def worker_naive(a, dtype: str) -> dict:
    """A plain Trainer: padded batches in random order, the model's own loss over full-vocabulary logits."""
    from transformers import Trainer, TrainingArguments

    from cotdistill import students
    from cotdistill.train import PadCollator

    examples, tok = _examples(a)
    per_device, accum, save_steps = _shape(a, len(examples))
    model, _ = students.load_student(a.student, dtype="float32", device="cpu")
    model.config.use_cache = False
    out = tempfile.mkdtemp(prefix="bench-naive-")
    args = TrainingArguments(output_dir=out, num_train_epochs=a.epochs, learning_rate=5e-5, lr_scheduler_type="cosine",
                             per_device_train_batch_size=per_device, gradient_accumulation_steps=accum, seed=a.seed,
                             bf16=dtype == "bfloat16", use_cpu=True, save_strategy="steps", save_steps=save_steps,
                             save_total_limit=1, report_to="none", logging_steps=1, disable_tqdm=True,
                             remove_unused_columns=False, include_num_input_tokens_seen="non_padding")
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=PadCollator(tok.pad_token_id))
    t0 = time.monotonic()
    output = trainer.train()
    seconds = time.monotonic() - t0
    trainer.save_model(str(Path(out) / "final"))
    shutil.rmtree(out, ignore_errors=True)
    tokens = int(trainer.state.num_input_tokens_seen)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "peak_rss_mib": peak_rss_mib(),
            "mean_loss": output.training_loss, "steps": trainer.state.global_step,
            "per_device_batch": per_device, "grad_accum": accum}


WORKERS = {"ours": worker_ours, "trl": worker_trl, "trl_nockpt": lambda a, d: worker_trl(a, d, checkpointing=False),
           "naive": worker_naive}


# ----------------------------------------------------------------------------- useful FLOPs


def config_flops_per_token(c, mean_len: float) -> float:
    """6*N (all matmul weights, a tied embedding counted once as the head) + causal attention, per token
    at a mean example length: the head charged at every position (bench/gpu_bench.py uses it)."""
    c = getattr(c, "text_config", c)
    h, L, V, inter = c.hidden_size, c.num_hidden_layers, c.vocab_size, c.intermediate_size
    hd = getattr(c, "head_dim", None) or h // c.num_attention_heads
    q, kv = c.num_attention_heads * hd, c.num_key_value_heads * hd
    n = L * (h * q + 2 * h * kv + q * h + 3 * h * inter) + h * V
    attn = 12 * L * q * mean_len / 2  # causal QK^T and AV, fwd+bwd, mean context = half the length
    return 6 * n + attn


def useful_flops(c, examples: list[dict], epochs: float) -> dict:
    """F (the head only where a response token is predicted) and F_all (the head at every position);
    the formula is in this module's docstring."""
    c = getattr(c, "text_config", c)
    h, n_layers, V, inter = c.hidden_size, c.num_hidden_layers, c.vocab_size, c.intermediate_size
    hd = getattr(c, "head_dim", None) or h // c.num_attention_heads
    q, kv = c.num_attention_heads * hd, c.num_key_value_heads * hd
    body = n_layers * (h * q + 2 * h * kv + q * h + 3 * h * inter)
    lengths = [len(e["input_ids"]) for e in examples]
    T = sum(lengths)
    R = sum(sum(1 for t in e["labels"] if t != -100) for e in examples)
    attention = 6 * n_layers * q * sum(n * (n + 1) for n in lengths)
    f = epochs * (6 * body * T + 6 * h * V * R + attention)
    return {"F": f, "F_all": f + epochs * 6 * h * V * (T - R), "tokens": T * epochs, "response_tokens": R * epochs,
            "n_body": body, "n_head": h * V, "attention": epochs * attention}


# ----------------------------------------------------------------------------- driver


def resolve_dtypes(spec: str) -> list[str]:
    from cotdistill import students

    if spec == "auto":  # bf16 where native, and fp32 always
        return (["bfloat16"] if students.resolve_dtype("auto", "cpu") == "bfloat16" else []) + ["float32"]
    return [students.resolve_dtype(d, "cpu") for d in spec.split(",")]


def summarize(res: dict) -> list[str]:
    """Lines: per dtype and side median [range] of tokens/s and peak RSS, and ours/peer ratios per round."""
    lines = []
    for dtype in res["dtypes"]:
        runs = [r for r in res["runs"] if r["dtype"] == dtype]
        for side in res["sides"]:
            mine = [r for r in runs if r["side"] == side]
            tps, rss = spread([r["tokens_per_s"] for r in mine]), spread([r["peak_rss_mib"] for r in mine])
            lines.append(f"{dtype:9s} {side:11s} tokens/s {tps['median']:7.1f} [{tps['min']:.1f}-{tps['max']:.1f}]  "
                         f"peak RSS {rss['median']:6.0f} MiB [{rss['min']:.0f}-{rss['max']:.0f}]")
        for peer in res["sides"][1:]:
            pairs = paired(runs, peer)
            sp = spread([o["tokens_per_s"] / p["tokens_per_s"] for o, p in pairs])
            mem = spread([o["peak_rss_mib"] / p["peak_rss_mib"] for o, p in pairs])
            lines.append(f"{dtype:9s} ours/{peer:11s} speed {sp['median']:.2f}x [{sp['min']:.2f}-{sp['max']:.2f}]  "
                         f"peak RSS {mem['median']:.2f}x [{mem['min']:.2f}-{mem['max']:.2f}]")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="smollm2-135m")
    ap.add_argument("--data", default="svamp/chatgpt/level1")
    ap.add_argument("--n", type=int, default=16, help="training examples (the first N)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=8, help="effective batch (per-device 8 on a CPU)")
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each side once per round and dtype)")
    ap.add_argument("--dtypes", default="auto", help="auto: bf16 where native, and fp32; or e.g. fp32")
    ap.add_argument("--peers", default="trl", help=f"comma-separated, of {', '.join(SIDES[1:])}")
    ap.add_argument("--worker", nargs=2, metavar=("SIDE", "DTYPE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(WORKERS[a.worker[0]](a, a.worker[1])))
        return

    from transformers import AutoConfig

    from cotdistill import students

    folder = students.resolve_student(a.student)  # convert/cache the GGUF once, outside the timed runs
    sides = ["ours"] + [p for p in a.peers.split(",") if p]
    if any(s not in SIDES for s in sides):
        raise SystemExit(f"--peers: unknown side; known: {', '.join(SIDES[1:])}")
    dtypes = resolve_dtypes(a.dtypes)
    res: dict = {"kind": "train", "command": " ".join(["python", "bench/bench_train.py", *sys.argv[1:]]),
                 "machine": machine(), "started": now(), "load_before": os.getloadavg()[0], "args": vars(a),
                 "sides": sides, "dtypes": dtypes, "runs": []}
    res["matmul_peak_gflops"] = {d: matmul_peak_gflops(d) for d in dtypes}
    examples, _ = _examples(a)
    res["flops"] = useful_flops(AutoConfig.from_pretrained(folder), examples, a.epochs)
    print(f"{res['command']}\n{res['machine']['cpu']} {res['machine']['flags']}, load {res['load_before']:.1f}")
    worker_args = [a2 for a2 in sys.argv[1:]]
    for rnd in range(a.rounds):
        for dtype in dtypes:
            for side in sides if rnd % 2 == 0 else sides[::-1]:  # ABBA: drift hits both sides alike
                r = run_worker(__file__, worker_args + ["--worker", side, dtype])
                r |= {"round": rnd, "side": side, "dtype": dtype,
                      "share_of_peak": res["flops"]["F"] / r["seconds"] / 1e9 / res["matmul_peak_gflops"][dtype],
                      "share_of_peak_all": res["flops"]["F_all"] / r["seconds"] / 1e9 / res["matmul_peak_gflops"][dtype]}
                res["runs"].append(r)
                print(f"round {rnd} {dtype:9s} {side:11s} {r['tokens_per_s']:7.1f} tokens/s  "
                      f"peak RSS {r['peak_rss_mib']:6.0f} MiB  loss {r['mean_loss']:.4f}", flush=True)
    res |= {"ended": now(), "load_after": os.getloadavg()[0]}
    print("\n".join(summarize(res)))
    print(f"raw: {write_raw('train', res)}")


if __name__ == "__main__":
    main()
