"""The GPU benchmark (issue 12): one run, <= 8 minutes on one H100/H200, prints every figure at once.

1. peak: the card's measured bf16 matmul rate (8192^3 products; MFU is quoted against it).
2. training tokens/s and MFU, ours (`cotdistill.train.train`: bf16 autocast over fp32 master weights,
   padding-free rows, the largest per-device batch that fits, Liger's loss where installed) against
   TRL's `SFTTrainer` with its documented fast settings (bf16, padding_free, Liger where it runs, the
   model in its checkpoint dtype), on the same tokenised examples, the same effective batch (64) and
   per-device batch, for three random-init shapes built from configs (throughput needs no trained
   weights): smollm2-135m, gemma3-270m and a 1B Llama (Llama-3.2-1B's shape).
3. evaluation generated tokens/s on the 300 SVAMP test questions: the hf engine (pruned loop;
   transformers' continuous batching; static-cache `generate`, compiled on CUDA) against plain batched
   `model.generate` (and the same with a static cache, compiled), greedy, max 320 new tokens; the
   extracted answers of every generator compared with the first one's.
4. one whole SVAMP cell, wall-clock: `train` (3 epochs, ~700 rationales) + `eval` (300 questions),
   model loading included.

Model for 3 and 4: --student (a folder or .gguf; the real SmolLM2 for realistic answer lengths), else
the random-init smollm2 shape (it never stops by itself: every row runs 320 tokens).

On a CPU, `--device cpu --tiny` runs every part on tiny models and a few questions (smoke test).

GPU machine (`device` tool, see /work/.library/device/README.md): torch, transformers, accelerate are
there; carry the rest as wheels in an ignored folder `.whl` (pip download --no-deps --only-binary=:all:
--python-version 3.12 ... -d .whl NAME==VERSION, as the README says), and install them first:
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5   (cotdistill)
    math-verify==0.9.0 latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2          (cotdistill.grade)
    trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19                            (TRL baseline)
    liger-kernel==0.8.5                                                                        (--loss-kernel liger)
    gguf==0.19.0                                                      (--student FILE.gguf; pyarrow, pandas on the image)
and carry in ignored folders the data (`.gpu/data`: benchmarks/svamp and every cot/*SVAMP* file of the shared
data dir) and the tokenizer (`.gpu/tokenizer`: `python bench/gpu_bench.py --save-tokenizer .gpu/tokenizer`).
The real SmolLM2 GGUF (98 MB) is over one call's 64 MiB: `split -b 52000000 -d FILE.gguf .gpu/part`, carry
part00 in a first call that copies it to /tmp (and may run `--sections train`, which needs no real model), and
part01 in a second call made at once (the machine stays warm ~30 s), which joins them. Without it, evaluation
and the cell use the random-init smollm2 shape, whose rows never stop before the cap. Each call begins with
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
and runs, e.g. (2026-11-27, docs/gpu_bench.md: 475 s on an H200)
    COTDISTILL_DATA=.gpu/data PYTHONUNBUFFERED=1 python3 bench/gpu_bench.py --tokenizer .gpu/tokenizer \
        --student /tmp/smol.gguf --sections eval generate cell train continuous static --json $OUT/all.json
Every row is written to --json as it finishes; a row that fails is printed and recorded, and the rest go on.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

DATA = "svamp/chatgpt/level3"


RESULTS: list[dict] = []  # every figure, also written as JSON (--json) after each row: a cut-off run keeps them
JSON_PATH: Path | None = None


def log(*a) -> None:
    print(*a, flush=True)


def record(**row) -> None:
    RESULTS.append(row)
    if JSON_PATH is not None:
        JSON_PATH.write_text(json.dumps(RESULTS, indent=1))


def guarded(label: str, fn, *args, **kw):
    """Run one measurement; a failure is printed and recorded, and the bench goes on with the next."""
    try:
        return fn(*args, **kw)
    except Exception as e:  # noqa: BLE001 - one broken row must not lose the others
        import traceback

        msg = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        log(f"{label}: FAILED {msg}")
        traceback.print_exc(limit=4)
        record(section="error", label=label, error=msg)
        free()
        return None


class StepClock:
    """Wall-clock time at the end of every optimizer step: steady-state tokens/s leaves out the first step
    (CUDA context, cuBLAS heuristics, Triton JIT of the Liger kernels), which a 10-step run would be dominated by."""

    def __init__(self):
        self.times: list[float] = []

    def tick(self, *_a, **_k) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def steady(self, tokens: int) -> float | None:
        n = len(self.times)
        if n < 3:
            return None
        return tokens * (n - 1) / n / (self.times[-1] - self.times[0])


# ----------------------------------------------------------------------------- models from configs


def shape_configs(tiny: bool, vocab: int) -> dict:
    """name -> config of a random-init model (no weights needed for throughput)."""
    from transformers import Gemma3TextConfig, LlamaConfig

    if tiny:  # one shape: the smoke test checks the code paths, Gemma-3's are tested in tests/test_train*.py
        return {
            "tiny-llama": LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
        }
    return {
        "smollm2-135m": LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                                    rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True),
        "gemma3-270m": Gemma3TextConfig(vocab_size=262144, hidden_size=640, intermediate_size=2048,
                                        num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1,
                                        head_dim=256, sliding_window=512, max_position_embeddings=32768,
                                        query_pre_attn_scalar=256, rope_theta=1000000.0,
                                        layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 3),
        "llama-1b": LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                                rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True),
    }


def build(config, tok, folder: Path, dtype: str) -> Path:
    """A random-init causal LM of `config` saved with `tok` into `folder` (a run folder `train` accepts)."""
    import torch
    from transformers import AutoModelForCausalLM

    config.pad_token_id, config.eos_token_id = tok.pad_token_id, tok.eos_token_id
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = tok.eos_token_id, tok.pad_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- measurements


def bf16_peak_tflops(device: str, n: int) -> float:
    """Measured bf16 matmul TFLOP/s (mean of 10 products after 3 warm-ups; CPU: for the smoke test only)."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    sync()
    return 2 * n**3 * 10 / (time.perf_counter() - t0) / 1e12


def ours_train(folder: Path, out: Path, a, epochs: float, limit: int | None) -> dict:
    from cotdistill.train import TrainConfig, train

    cfg = TrainConfig(student=str(folder), data=DATA, out=out, epochs=epochs, limit=limit, device=a.device,
                      quiet=True, overwrite=True, save_steps=10**6, max_length=a.max_length)
    clock = StepClock()
    r = train(cfg, progress=clock.tick)
    prov = json.loads((out / "provenance.json").read_text())
    return {"tokens": r.tokens, "seconds": r.train_seconds, "tokens_per_s": r.tokens_per_s,
            "steady_tokens_per_s": clock.steady(r.tokens), "steps": len(clock.times),
            "final_loss": r.final_loss, "per_device": prov["per_device_batch"], "accum": prov["grad_accum"],
            "loss_kernel": prov.get("loss_kernel"), "padding_free": prov.get("padding_free"),
            "attention": prov.get("attention")}


def in_child(fn, *args):
    """fn(*args) in a fresh process: TRL's `use_liger_kernel` patches transformers' model classes for the whole
    process (Llama's RMSNorm, MLP, rotary), which would leak Liger's kernels into every later row."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def trl_train(folder: Path, out: Path, a, examples: list[dict], per_device: int, accum: int, epochs: float,
              attention: str | None = None) -> dict:
    """TRL's SFTTrainer on our tokenised examples (labels -100 on the prompt), the same batch shape, its fast
    settings: bf16, padding_free, Liger where it runs, no gradient checkpointing (SFTConfig turns it on by
    default to save memory; it recomputes every layer). attention: None = the model's default (SDPA, which
    transformers gives a packed row as a dense block-diagonal mask), or an implementation name."""
    import torch
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import InMemoryTable
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from cotdistill.kernels import attention as A
    from cotdistill.kernels.loss import liger_available

    cuda = a.device.startswith("cuda")
    liger = cuda and liger_available()
    init = {}
    if attention:
        A.register()
        init["attn_implementation"] = attention
    args = SFTConfig(output_dir=str(out), num_train_epochs=epochs, learning_rate=5e-5, lr_scheduler_type="cosine",
                     per_device_train_batch_size=per_device, gradient_accumulation_steps=accum, seed=100,
                     bf16=cuda, use_cpu=not cuda, padding_free=True, use_liger_kernel=liger,
                     gradient_checkpointing=False, model_init_kwargs=init or None,
                     max_length=None, save_strategy="no", report_to="none", logging_steps=10**6,
                     disable_tqdm=True, dataloader_num_workers=0,
                     dataset_kwargs={"skip_prepare_dataset": True})  # already tokenised; the collator packs
    rows = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples]
    # built from an Arrow table with a fingerprint given: datasets' own hashing (dill) fails on some pyarrow builds
    data = Dataset(InMemoryTable(pa.Table.from_pylist(rows)), fingerprint="gpu-bench")
    clock = StepClock()

    class Clock(TrainerCallback):
        def on_step_end(self, *_a, **_k):
            clock.tick()

    trainer = SFTTrainer(model=str(folder), args=args, train_dataset=data,  # the checkpoint's dtype (TRL default)
                         callbacks=[Clock()])
    dtype = str(next(trainer.model.parameters()).dtype).replace("torch.", "")
    t0 = time.perf_counter()
    out_ = trainer.train()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tokens = int(sum(len(e["input_ids"]) for e in examples) * epochs)
    del trainer
    free()
    return {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
            "steady_tokens_per_s": clock.steady(tokens), "steps": len(clock.times),
            "final_loss": out_.training_loss, "liger": liger, "weights": dtype,
            "attention": attention or "sdpa (default)"}


def train_section(a, tok, work: Path, peak: float) -> None:
    from bench_train import config_flops_per_token

    from cotdistill import train as T

    pairs, _ = T.load_pairs(DATA, None, a.limit)
    examples = T.tokenize_pairs(tok, pairs, a.max_length or 2048)[0]
    mean_len = sum(len(e["input_ids"]) for e in examples) / len(examples)
    log(f"\n== training: {len(examples)} examples of {DATA}, mean {mean_len:.0f} tokens, effective batch 64, "
        f"{a.train_epochs} epoch(s)")
    try:
        import trl  # noqa: F401
        have_trl = True
    except ImportError:
        have_trl = False
        log("   TRL not installed: its rows are skipped")
    from cotdistill.kernels import attention as A

    for name, config in shape_configs(a.tiny, len(tok)).items():
        if a.shapes and name not in a.shapes:
            continue
        folder = guarded(f"{name} build", build, config, tok, work / name, "float32" if a.tiny else "bfloat16")
        if folder is None:
            continue
        flops = config_flops_per_token(config, mean_len)

        def show(who: str, r: dict, ratio_to: dict | None = None) -> None:
            mfu = 100 * r["tokens_per_s"] * flops / (peak * 1e12)
            st = r.get("steady_tokens_per_s")
            smfu = 100 * st * flops / (peak * 1e12) if st else None
            extra = (f"  -> ours/this {ratio_to['tokens_per_s'] / r['tokens_per_s']:.2f}x"
                     + (f" (steady {ratio_to['steady_tokens_per_s'] / st:.2f}x)"
                        if st and ratio_to.get("steady_tokens_per_s") else "")) if ratio_to else ""
            log(f"{name:14s} {who:12s}: {r['tokens_per_s']:>10,.0f} tok/s  MFU {mfu:5.1f} %"
                + (f" | steady {st:>10,.0f} tok/s MFU {smfu:5.1f} %" if st else "")
                + f"  loss {r['final_loss']:.3f}{extra}\n{'':16s}{json.dumps({k: v for k, v in r.items() if k not in ('final_loss',)})}")
            record(section="train", shape=name, who=who, mfu=round(mfu, 2), steady_mfu=smfu and round(smfu, 2),
                   flops_per_token=flops, peak_tflops=round(peak, 1), **r)

        # Rounds, each side in turn: Triton compiles a kernel variant the first time a process meets its shapes
        # and caches it on disk, so whoever runs first pays every compile inside its timed steps (the first
        # H200 run, one round, had ours first). Earlier rounds are warm-ups on the first 256 examples
        # (4 steps: every side meets its kernels); the last round, on all examples, is the comparison.
        for rnd in range(1, a.rounds + 1):
            last = rnd == a.rounds
            n = None if last else a.warmup_examples
            limit = a.limit if last else min(a.limit or n, n)
            ours = guarded(f"{name} ours", ours_train, folder, work / f"ours-{name}", a, a.train_epochs, limit)
            free()
            if ours:
                show(f"ours r{rnd}", ours | {"round": rnd, "warmup": not last})
            if have_trl and ours:
                for who, attn in (("TRL", None), ("TRL+varlen", A.NAME)):  # TRL as shipped; with our attention
                    theirs = guarded(f"{name} {who}", in_child, trl_train, folder, work / f"trl-{name}", a,
                                     examples[:limit], ours["per_device"], ours["accum"], a.train_epochs, attn)
                    if theirs:
                        show(f"{who} r{rnd}", theirs | {"round": rnd, "warmup": not last}, ours)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(work / f"ours-{name}", ignore_errors=True)
        shutil.rmtree(work / f"trl-{name}", ignore_errors=True)


# ----------------------------------------------------------------------------- evaluation


def plain_generate(model, tok, prompts: list[list[int]], max_new: int, batch: int,
                   **gen) -> tuple[int, float, list[str]]:
    """Plain batched `model.generate` (left padded, greedy, stops at the end tokens): (generated tokens, s, texts)."""
    import torch

    from cotdistill import students
    from cotdistill.engines.hf import _left_pad

    stops = students.stop_token_ids(tok)
    tokens, texts, t0 = 0, [], time.perf_counter()
    for s in range(0, len(prompts), batch):
        part = prompts[s : s + batch]
        w = max(map(len, part))
        ids, mask, _ = _left_pad(part, w, tok.pad_token_id, model.device)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                                 eos_token_id=stops, pad_token_id=tok.pad_token_id, **gen)
        for row in out[:, w:].tolist():
            cut = next((k for k, t in enumerate(row) if t in stops), None)
            row = row if cut is None else row[: cut + 1]
            tokens += len(row)
            texts.append(tok.decode(row, skip_special_tokens=True))
    return tokens, time.perf_counter() - t0, texts


def _answers(texts: list[str]) -> list:
    from cotdistill.grade import extract_answer

    return [extract_answer(t, "number")[0] for t in texts]


class EvalState:
    """The SVAMP test prompts and one loaded hf engine, shared by the evaluation sections in the order asked."""

    def __init__(self, a, student: str):
        from cotdistill.benchmarks import load_benchmark
        from cotdistill.engines.base import Request
        from cotdistill.engines.hf import HFEngine

        self.qs = load_benchmark("svamp", "test", None, a.questions)
        self.requests = [Request.question(e.question) for e in self.qs]
        log(f"\n== evaluation: {len(self.qs)} SVAMP test questions, greedy, max {a.max_new} new tokens, model {student}")
        t0 = time.perf_counter()
        self.engine = HFEngine.load(student, device=a.device, batch_size=len(self.qs))
        log(f"   engine load {time.perf_counter() - t0:.1f} s, dtype {next(self.engine.model.parameters()).dtype}")
        self.prompts = [self.engine.encode(r.messages) for r in self.requests]
        self.answers: dict[str, list] = {}
        self.texts: dict[str, list[str]] = {}

    def agreement(self) -> None:
        """Answers of every generator against the first one's; where they differ, whether the two texts part
        at a floating-point tie (the issue: "identical ... floating-point ties aside; count them")."""
        names = list(self.answers)
        for x in names[1:]:
            same = sum(p == q for p, q in zip(self.answers[names[0]], self.answers[x]))
            differ = [i for i, (p, q) in enumerate(zip(self.answers[names[0]], self.answers[x])) if p != q]
            ties = sum(parts_at_a_tie(self.engine.model, self.engine.tokenizer, self.prompts[i],
                                      self.texts[names[0]][i], self.texts[x][i]) for i in differ)
            log(f"   extracted answers {names[0]} vs {x}: identical on {same}/{len(self.qs)}; of the {len(differ)} "
                f"that differ, {ties} part at a near-tie (top-2 logits within 2 {self.dtype} steps)")
            record(section="eval-agreement", a=names[0], b=x, identical=same, questions=len(self.qs),
                   differ=len(differ), near_ties=ties)

    @property
    def dtype(self) -> str:
        return str(next(self.engine.model.parameters()).dtype).replace("torch.", "")


def parts_at_a_tie(model, tok, prompt: list[int], a: str, b: str) -> bool:
    """Whether texts a and b (two greedy generations of one prompt) first differ where the model's two best
    next tokens after the common part are within 2 steps of its dtype's rounding: a tie greedy decoding breaks
    by the arithmetic's order. The texts are re-tokenised (decode then encode may split differently)."""
    import torch

    ta = tok(a, add_special_tokens=False)["input_ids"]
    tb = tok(b, add_special_tokens=False)["input_ids"]
    k = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
    ids = torch.tensor([prompt + ta[:k]], device=model.device)
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, -1].float()
    top = logits.topk(2).values
    finfo = torch.finfo(next(model.parameters()).dtype)
    step = top[0].abs().clamp(min=finfo.tiny) * finfo.eps  # one unit of rounding at the top logit's size
    return bool(top[0] - top[1] <= 2 * step)


def engine_section(a, ev: EvalState, mode: str) -> None:
    """Our hf engine, batching `mode` (pruned: our decode loop; continuous: transformers' continuous batching;
    static: `generate` over a static cache, compiled on CUDA)."""
    engine = ev.engine
    engine.batching = mode
    engine.generate(ev.requests[:4], max_new_tokens=8)  # warm-up (kernels, graphs)
    t0 = time.perf_counter()
    done = engine.generate(ev.requests, max_new_tokens=a.max_new)
    dt = time.perf_counter() - t0
    n = sum(c.completion_tokens for c in done)
    ev.answers[f"hf-{mode}"] = _answers([c.text for c in done])
    ev.texts[f"hf-{mode}"] = [c.text for c in done]
    log(f"hf engine {mode:10s}: {n / dt:>10,.0f} generated tok/s  ({n} tokens, {dt:.1f} s)")
    record(section="eval", who=f"hf-{mode}", tokens=n, seconds=round(dt, 2), tokens_per_s=round(n / dt, 1),
           questions=len(ev.qs))


def generate_section(a, ev: EvalState, static: bool) -> None:
    """Plain batched `model.generate` (batch 64), or with a static cache, which transformers
    compiles (CUDA graphs) — the whole set as one batch, so one shape and one compile (timed as a warm-up)."""
    who, batch, gen = ("generate-static-compiled", len(ev.prompts), {"cache_implementation": "static"}) if static \
        else ("generate", a.generate_batch, {})
    model, tok = ev.engine.model, ev.engine.tokenizer
    t0 = time.perf_counter()
    plain_generate(model, tok, ev.prompts[:batch], 8, batch, **gen)  # warm-up (for static: the compile)
    warm = time.perf_counter() - t0
    n, dt, texts = plain_generate(model, tok, ev.prompts, a.max_new, batch, **gen)
    ev.answers[who] = _answers(texts)
    ev.texts[who] = texts
    log(f"{who} (batch {batch}): {n / dt:>10,.0f} generated tok/s  ({n} tokens, {dt:.1f} s, warm-up {warm:.1f} s;"
        " no answer stop: rows run to their end token)")
    record(section="eval", who=who, batch=batch, tokens=n, seconds=round(dt, 2), tokens_per_s=round(n / dt, 1),
           warmup_seconds=round(warm, 1), questions=len(ev.qs))


def cell_section(a, student: str, work: Path) -> None:
    from cotdistill.evaluate import EvalConfig, evaluate
    from cotdistill.train import TrainConfig, train

    log(f"\n== one SVAMP cell: train {DATA} ({a.cell_epochs} epochs) + eval 300 test questions, loads included")
    t0 = time.perf_counter()
    r = train(TrainConfig(student=student, data=DATA, out=work / "cell", epochs=a.cell_epochs, limit=a.limit,
                          device=a.device, quiet=True, overwrite=True))
    t1 = time.perf_counter()
    s = evaluate(EvalConfig(model=str(work / "cell"), dataset="svamp", out=work / "cell-eval", device=a.device,
                            limit=a.questions, batch_size=a.questions or 300, max_new_tokens=a.max_new, quiet=True,
                            overwrite=True))
    t2 = time.perf_counter()
    log(f"cell: {t2 - t0:.1f} s wall (train {t1 - t0:.1f} s: {r.tokens_per_s:,.0f} tok/s, loss {r.final_loss:.3f}; "
        f"eval {t2 - t1:.1f} s: accuracy {100 * s.accuracy:.1f} %, {s.tokens_per_s:,.0f} tok/s)")
    record(section="cell", seconds=round(t2 - t0, 1), train_seconds=round(t1 - t0, 1), eval_seconds=round(t2 - t1, 1),
           train_tokens_per_s=r.tokens_per_s, final_loss=r.final_loss, accuracy=s.accuracy,
           eval_tokens_per_s=s.tokens_per_s)


def to_folder(student: str, work: Path) -> str:
    """A GGUF student de-quantised once into a safetensors folder (bf16), as a GPU user would hold it."""
    if not student.endswith(".gguf"):
        return student
    from cotdistill import students

    t0 = time.perf_counter()
    model, tok = students.load_student(student, dtype="bfloat16", device="cpu")
    folder = work / "student"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    log(f"student {student} de-quantised to {folder} in {time.perf_counter() - t0:.1f} s (not part of any figure)")
    return str(folder)


# ----------------------------------------------------------------------------- driver


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny models, few examples and questions (CPU smoke test)")
    ap.add_argument("--student", help="model for evaluation and the cell (folder or .gguf); default: random-init "
                                      "smollm2 shape")
    ap.add_argument("--tokenizer", help="tokenizer folder (default: the student's, or the smollm2-135m alias's)")
    ap.add_argument("--save-tokenizer", type=Path, help="write the tokenizer to this folder and exit")
    ap.add_argument("--sections", nargs="*",
                    default=["train", "eval", "generate", "cell", "continuous", "static", "engine-static"],
                    choices=["train", "eval", "generate", "cell", "continuous", "static", "engine-static"],
                    help="what to run, in this order: train (3 shapes, ours vs TRL), eval (our hf engine, pruned "
                         "loop), generate (plain batched generate), cell (one whole SVAMP cell), continuous (our "
                         "engine through transformers' continuous batching), static (generate with a static cache, "
                         "compiled; CUDA only), engine-static (our engine, batching=static: the same generate "
                         "with the answer stop applied)")
    ap.add_argument("--shapes", nargs="*", help="training shapes to run (default: all)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="training rounds per shape, sides in turn (default 2 on a GPU: a warm-up on 256 examples "
                         "that pays Triton's compiles, then the timed one; 1 with --tiny)")
    ap.add_argument("--json", type=Path, help="write every figure here as JSON, after each row")
    a = ap.parse_args()
    global JSON_PATH
    JSON_PATH = a.json
    from cotdistill import students
    from cotdistill.testing import make_tiny_tokenizer

    if a.save_tokenizer:
        students.load_tokenizer(a.tokenizer or a.student or "smollm2-135m").save_pretrained(a.save_tokenizer)
        return
    a.device = students.resolve_device(a.device)
    a.limit, a.questions = (8, 4) if a.tiny else (None, None)
    a.train_epochs, a.cell_epochs = (1.0, 1.0) if a.tiny else (1.0, 3.0)
    a.max_new, a.generate_batch = (8, 4) if a.tiny else (320, 64)
    a.max_length = 128 if a.tiny else None
    a.rounds = a.rounds or (1 if a.tiny else 2)
    a.warmup_examples = 4 if a.tiny else 256
    if a.tokenizer and not (Path(a.tokenizer) / "config.json").exists():  # a tokenizer folder (--save-tokenizer)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(a.tokenizer)
        tok.pad_token = tok.pad_token or tok.eos_token
    elif a.tiny and not (a.tokenizer or a.student):
        tok = make_tiny_tokenizer(chat_template=True)
    else:
        tok = students.load_tokenizer(a.tokenizer or a.student or "smollm2-135m")
    peak = bf16_peak_tflops(a.device, 256 if a.tiny else 8192)
    import torch
    import transformers

    gpu = torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"
    log(f"device {a.device} ({gpu}); torch {torch.__version__}, transformers {transformers.__version__}; "
        f"measured bf16 matmul peak {peak:.3g} TFLOP/s")
    record(section="machine", device=a.device, name=gpu, torch=torch.__version__, transformers=transformers.__version__,
           peak_bf16_tflops=round(peak, 1))
    work = Path(tempfile.mkdtemp(prefix="gpu_bench_"))
    t0 = time.perf_counter()
    try:
        if "train" in a.sections:
            guarded("train", train_section, a, tok, work, peak)
        student = a.student
        needs_student = set(a.sections) - {"train"}
        if student is not None and student.endswith(".gguf") and needs_student:
            student = guarded("de-quantise", to_folder, student, work)
        if student is None and needs_student:
            name, config = next(iter(shape_configs(a.tiny, len(tok)).items()))
            student = str(build(config, tok, work / f"eval-{name}", "float32" if a.tiny else "bfloat16"))
            log(f"student: random-init {name} shape (it never stops by itself: every row runs to the cap)")
        ev = None
        for section in a.sections:
            if section in ("eval", "continuous", "generate", "static", "engine-static") and ev is None:
                ev = guarded("engine load", EvalState, a, student)
            if section == "eval" and ev:
                guarded("hf engine pruned", engine_section, a, ev, "pruned")
            elif section == "continuous" and ev:
                guarded("hf engine continuous", engine_section, a, ev, "continuous")
            elif section == "engine-static" and ev:
                guarded("hf engine static", engine_section, a, ev, "static")
            elif section == "generate" and ev:
                guarded("generate", generate_section, a, ev, False)
            elif section == "static" and ev and a.device.startswith("cuda"):
                guarded("generate static", generate_section, a, ev, True)
            elif section == "cell":
                guarded("cell", cell_section, a, student, work)
        if ev is not None:
            ev.agreement()
            ev.engine.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"\nbench wall-clock {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
