"""Benchmark the student engine against named baselines, on the same data and seed, in one run.

(a) training tokens/s: ours (cotdistill.train.train) vs a plain transformers Trainer in fp32 that
    pads each batch to its longest sequence, samples in random order and computes full-vocabulary
    logits at every position (the model's own loss); plus the final training loss of both
    (mean response-token loss of the final model over the training examples, same function);
(b) peak RSS of the same runs (each run is its own subprocess, so peak RSS is clean);
(c) evaluation generated tokens/s: ours (the hf engine, cotdistill/engines/hf.py: left padded, sorted,
    finished rows leave the batch) vs a loop calling `generate` one question at a time with the
    same stops (end token, or the answer stated); answers compared;
(d) achieved training FLOP/s (6*N*tokens + attention) as a share of a matmul peak measured here.

Runs alternate baseline/ours so machine contention hits both. Usage:
    .venv/bin/python bench/bench_train.py --student smollm2-135m --n 32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ----------------------------------------------------------------------------- workers (subprocesses)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_gpu_mib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def _examples(a, tok):
    """The first a.n examples of a.data, tokenised as training tokenises them."""
    from cotdistill import train as T

    pairs, _ = T.load_pairs(a.data, None, a.n)
    return T.tokenize_pairs(tok, pairs, 2048)[0]


def _final_loss(model, examples, pad_id) -> float:
    """Mean next-token loss over all response tokens of the training examples (full logits, fp32)."""
    import torch

    from cotdistill.train import PadCollator

    model.eval()
    collate = PadCollator(pad_id)
    total, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(examples), 8):
            b = collate(examples[i : i + 8])
            b = {k: v.to(model.device) for k, v in b.items()}
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
            tgt = b["labels"][:, 1:]
            lp = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), tgt, reduction="sum",
                                                   ignore_index=-100)
            total += lp.item()
            count += int((tgt != -100).sum())
    return total / count


def worker_ours(a, group_by_length: bool = True) -> dict:
    from transformers import AutoModelForCausalLM

    from cotdistill import students
    from cotdistill import train as T

    out = Path(tempfile.mkdtemp(prefix="bench-ours-"))
    cfg = T.TrainConfig(student=a.student, data=a.data, out=out / "run", limit=a.n, epochs=a.epochs,
                        batch_size=a.batch_size, grad_accum=a.grad_accum, seed=a.seed, save_steps=10**6,
                        quiet=True, device=a.device, dtype=a.dtype, overwrite=True,
                        gradient_checkpointing=a.gradient_checkpointing, group_by_length=group_by_length)
    r = T.train(cfg)
    rss = _peak_rss_mib()  # before re-loading the model for the loss check
    gpu = _peak_gpu_mib()
    model = AutoModelForCausalLM.from_pretrained(out / "run").to(students.resolve_device(a.device))
    tok = students.load_tokenizer(a.student)
    examples = _examples(a, tok)
    shutil.rmtree(out, ignore_errors=True)  # the saved model is GBs
    return {"tokens": r.tokens, "seconds": r.train_seconds, "tokens_per_s": r.tokens / r.train_seconds,
            "peak_rss_mib": rss, "peak_gpu_mib": gpu, "trainer_mean_loss": r.train_loss, "last_step_loss": r.final_loss,
            "final_train_loss": _final_loss(model, examples, tok.pad_token_id), "steps": r.steps}


def worker_baseline(a, data_seed: int | None = None) -> dict:
    """Plain Trainer, fp32, random order, pad-to-longest, full-vocabulary logits (model's own loss)."""
    import torch
    from transformers import Trainer, TrainingArguments

    from cotdistill import students
    from cotdistill.train import PadCollator

    model, tok = students.load_student(a.student, dtype="float32", device="cpu")
    examples = _examples(a, tok)
    model.config.use_cache = False
    accum = a.grad_accum or max(1, -(-a.batch_size // 8))
    out = tempfile.mkdtemp(prefix="bench-base-")
    args = TrainingArguments(
        output_dir=out, num_train_epochs=a.epochs, learning_rate=5e-5, lr_scheduler_type="cosine",
        per_device_train_batch_size=max(1, a.batch_size // accum), gradient_accumulation_steps=accum,
        seed=a.seed, data_seed=a.seed if data_seed is None else data_seed, logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True,
        remove_unused_columns=False, use_cpu=a.device in ("cpu", "auto") and not torch.cuda.is_available(),
        include_num_input_tokens_seen="non_padding",
    )
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=PadCollator(tok.pad_token_id))
    t0 = time.monotonic()
    output = trainer.train()
    seconds = time.monotonic() - t0
    shutil.rmtree(out, ignore_errors=True)
    rss = _peak_rss_mib()
    gpu = _peak_gpu_mib()
    tokens = int(trainer.state.num_input_tokens_seen)
    last = [h["loss"] for h in trainer.state.log_history if "loss" in h][-1]
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "peak_rss_mib": rss,
            "peak_gpu_mib": gpu,
            "trainer_mean_loss": output.training_loss, "last_step_loss": last,
            "final_train_loss": _final_loss(trainer.model, examples, tok.pad_token_id),
            "steps": trainer.state.global_step}


def worker_eval(a) -> dict:
    """Batched generation (ours) vs one question at a time; same greedy decoding."""
    import torch

    from cotdistill.benchmarks import load_benchmark
    from cotdistill.engines import Request
    from cotdistill.engines import hf as H
    from cotdistill.grade import extract_answer

    engine = H.HFEngine.load(a.student, dtype=a.dtype, device=a.device, batch_size=a.eval_batch)
    model, tok = engine.model, engine.tokenizer
    qs = load_benchmark("svamp", "test", None, a.eval_n)
    requests = [Request.question(q.question) for q in qs]
    prompts = [engine.encode(r.messages) for r in requests]

    from transformers import StoppingCriteriaList

    t0 = time.monotonic()
    single = []
    with torch.inference_mode():
        for p in prompts:  # plain `generate`, same stops: end token, or the answer stated
            ids = torch.tensor([p], device=model.device)
            o = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=a.max_new_tokens,
                               do_sample=False, eos_token_id=engine.stops, pad_token_id=tok.pad_token_id,
                               stopping_criteria=StoppingCriteriaList([H._answer_stop_criteria(tok, len(p))]),
                               top_p=None, top_k=None, temperature=None)
            c = engine._completion(p, o[0, len(p):].tolist(), True, [])
            single.append((c.text, c.completion_tokens))
    t_single = time.monotonic() - t0

    t0 = time.monotonic()
    ours = [(c.text, c.completion_tokens) for c in engine.generate(requests, max_new_tokens=a.max_new_tokens)]
    t_ours = time.monotonic() - t0

    def ans(r):
        return extract_answer(r[0], "number")[0]

    same = sum(ans(x) == ans(y) for x, y in zip(single, ours))
    tok_single, tok_ours = sum(r[1] for r in single), sum(r[1] for r in ours)
    return {"n": len(prompts), "single_tokens": tok_single, "single_seconds": t_single,
            "single_tokens_per_s": tok_single / t_single, "ours_tokens": tok_ours, "ours_seconds": t_ours,
            "ours_tokens_per_s": tok_ours / t_ours, "same_answer_share": same / len(prompts),
            "questions_per_s_ratio": t_single / t_ours}


# ----------------------------------------------------------------------------- driver


def matmul_peak_gflops(seconds: float = 3.0, n: int = 2048) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    k, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        a @ b
        k += 1
    return 2 * n**3 * k / (time.monotonic() - t0) / 1e9


def model_flops_per_token(student: str, mean_len: float) -> float:
    """6*N (N = all matmul parameters, tied embedding counted once as lm_head) + attention (fwd+bwd)."""
    from transformers import AutoConfig

    from cotdistill import students

    return config_flops_per_token(AutoConfig.from_pretrained(students.resolve_student(student)), mean_len)


def config_flops_per_token(c, mean_len: float) -> float:
    """`model_flops_per_token` of a transformers config."""
    c = getattr(c, "text_config", c)
    h, L, V, inter = c.hidden_size, c.num_hidden_layers, c.vocab_size, c.intermediate_size
    hd = getattr(c, "head_dim", None) or h // c.num_attention_heads
    q, kv = c.num_attention_heads * hd, c.num_key_value_heads * hd
    n = L * (h * q + 2 * h * kv + q * h + 3 * h * inter) + h * V
    attn = 12 * L * q * mean_len / 2  # causal QK^T and AV, fwd+bwd, mean context = half the length
    return 6 * n + attn


def run_worker(kind: str, a) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind] + [x for x in sys.argv[1:] if x not in ("--worker",)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"worker {kind} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="smollm2-135m")
    ap.add_argument("--data", default="svamp/chatgpt/level1")
    ap.add_argument("--n", type=int, default=32, help="training examples")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--grad-accum", type=int, default=None)
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=1, help="baseline/ours pairs, alternating")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--eval-n", type=int, default=16)
    ap.add_argument("--eval-batch", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=320, help="eval: the `cotdistill eval` default")
    ap.add_argument("--gradient-checkpointing", action="store_true", help="ours recomputes layer activations")
    ap.add_argument("--same-order-check", action="store_true",
                    help="also train ours in the baseline's random order: its final loss must match the baseline's")
    ap.add_argument("--order-noise", action="store_true",
                    help="also train the baseline with another data order (data seed + 1): how far order alone moves the final loss")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-eval", action="store_true")
    ap.add_argument("--worker", choices=["ours", "ours_random", "baseline", "baseline_reordered", "eval"],
                    help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        fn = {"ours": worker_ours, "ours_random": lambda a: worker_ours(a, group_by_length=False),
              "baseline": worker_baseline, "baseline_reordered": lambda a: worker_baseline(a, data_seed=a.seed + 1),
              "eval": worker_eval}[a.worker]
        print(json.dumps(fn(a)))
        return

    import torch

    from cotdistill import students

    students.resolve_student(a.student)  # convert/cache the GGUF once, outside the timed runs
    print(f"command: {' '.join([Path(sys.executable).name, 'bench/bench_train.py'] + sys.argv[1:])}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"cuda={torch.cuda.is_available()}, load average before: {os.getloadavg()[0]:.1f}")
    res: dict = {"args": vars(a)}
    if not a.skip_train:
        base, ours = [], []
        for _ in range(a.rounds):
            base.append(run_worker("baseline", a))
            ours.append(run_worker("ours", a))
        b, o = min(base, key=lambda r: r["seconds"]), min(ours, key=lambda r: r["seconds"])
        peak = matmul_peak_gflops()
        mean_len = b["tokens"] / (a.n * a.epochs)
        fpt = model_flops_per_token(a.student, mean_len)
        res.update(baseline=base, ours=ours, matmul_peak_gflops=peak, flops_per_token=fpt)
        print(f"(a) training tokens/s: ours {o['tokens_per_s']:.1f} vs baseline {b['tokens_per_s']:.1f} "
              f"-> {o['tokens_per_s'] / b['tokens_per_s']:.2f}x")
        print(f"    final train loss: ours {o['final_train_loss']:.4f} vs baseline {b['final_train_loss']:.4f} "
              f"({100 * (o['final_train_loss'] / b['final_train_loss'] - 1):+.2f} %); "
              f"Trainer mean loss {o['trainer_mean_loss']:.4f} vs {b['trainer_mean_loss']:.4f}")
        extra = [("ours_random", "ours_random_order", "same-order check (ours in the baseline's random order)")] * \
            a.same_order_check + [("baseline_reordered", "baseline_reordered", f"order noise (baseline, data seed {a.seed + 1})")] * \
            a.order_noise
        for worker, key, label in extra:
            r = res[key] = run_worker(worker, a)
            print(f"    {label}: final train loss {r['final_train_loss']:.6f} vs baseline {b['final_train_loss']:.6f} "
                  f"({100 * (r['final_train_loss'] / b['final_train_loss'] - 1):+.3f} %)")
        print(f"(b) peak RSS: ours {o['peak_rss_mib']:.0f} MiB vs baseline {b['peak_rss_mib']:.0f} MiB "
              f"-> {o['peak_rss_mib'] / b['peak_rss_mib']:.2f}x")
        if o.get("peak_gpu_mib"):
            print(f"    peak GPU memory: ours {o['peak_gpu_mib']:.0f} MiB vs baseline {b['peak_gpu_mib']:.0f} MiB "
                  f"-> {o['peak_gpu_mib'] / b['peak_gpu_mib']:.2f}x")
        for name, r in (("ours", o), ("baseline", b)):
            achieved = fpt * r["tokens_per_s"] / 1e9
            print(f"(d) {name}: {achieved:.2f} GFLOP/s achieved = {100 * achieved / peak:.0f} % of the "
                  f"{peak:.1f} GFLOP/s fp32 matmul peak measured now")
    if not a.skip_eval:
        e = run_worker("eval", a)
        res["eval"] = e
        print(f"(c) eval generated tokens/s: ours {e['ours_tokens_per_s']:.1f} vs one-at-a-time "
              f"{e['single_tokens_per_s']:.1f} -> {e['ours_tokens_per_s'] / e['single_tokens_per_s']:.2f}x; "
              f"wall-clock for the {e['n']} questions {e['questions_per_s_ratio']:.2f}x; "
              f"same answer on {100 * e['same_answer_share']:.0f} %")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print("json:", json.dumps(res))


if __name__ == "__main__":
    main()


def trl_train_run(a, extra_callbacks=(), mark=lambda s: None, save_steps: int | None = None) -> dict:
    """TRL's SFTTrainer: completion-only loss (our prompt-masked labels), padding-free, bf16 where native."""
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import InMemoryTable
    from trl import SFTConfig, SFTTrainer

    from cotdistill import students
    from cotdistill import train as T

    folder = students.resolve_student(a.student)
    dtype = students.resolve_dtype(a.dtype, "cpu")
    tok = students.load_tokenizer(folder)
    pairs, _ = T.load_pairs(a.data, None, a.n)
    examples = T.tokenize_pairs(tok, pairs, 2048)[0]
    out = tempfile.mkdtemp(prefix="bench-trl-")
    per_device, accum = T.batch_shape(a.batch_size, 1, 8, None)
    steps = -(-len(examples) // (per_device * accum))
    args = SFTConfig(output_dir=out, num_train_epochs=a.epochs, learning_rate=5e-5, lr_scheduler_type="cosine",
                     per_device_train_batch_size=per_device, gradient_accumulation_steps=accum, seed=100,
                     bf16=dtype == "bfloat16", use_cpu=True, padding_free=True, max_length=None,
                     save_strategy="steps", save_steps=save_steps or max(1, -(-steps // 10)), save_total_limit=1,
                     report_to="none", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
                     dataset_kwargs={"skip_prepare_dataset": True})
    rows = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples]
    data = Dataset(InMemoryTable(pa.Table.from_pylist(rows)), fingerprint="bench-trl")
    mark("trl init")
    trainer = SFTTrainer(model=folder, args=args, train_dataset=data, processing_class=tok,
                         callbacks=list(extra_callbacks))
    mark("trl ready")
    t0 = time.monotonic()
    output = trainer.train()
    seconds = time.monotonic() - t0
    shutil.rmtree(out, ignore_errors=True)
    tokens = sum(len(e["input_ids"]) for e in examples) * a.epochs
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "trainer_mean_loss": output.training_loss, "steps": trainer.state.global_step,
            "weights": str(next(trainer.model.parameters()).dtype)}
