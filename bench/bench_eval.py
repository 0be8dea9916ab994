"""Evaluation benchmark: our engine (`HFEngine`, what `cotdistill eval` runs) against plain batched `generate`.

Primary peer: `model.generate` on the same batches (the same questions, sorted by prompt length and cut
into --batch rows as ours cuts them, left padded), greedy, the same stop rule (the end-of-turn token, or
the answer stated: the same `StoppingCriteria`), the same post-processing of each row. Secondary
(--single): `generate` one question at a time (one round only: it is slow). Student: SmolLM2-135M
zero-shot on the first --n SVAMP test questions, in the evaluation's numerics (fp32 on a CPU), at
each --caps value of max new tokens (320 = the `cotdistill eval` default).

Each run is its own process (load not timed). `--rounds` alternate the sides (ABBA); the summary gives
each side's median and range and the median and range of the per-round speed-ups. Answers of ours and
of batched `generate` are compared (extracted answer, and the whole text). One more run of ours per
cap times its parts: tokenising the prompts, the prefill, the decode steps' forwards, the answer-stop
check, and the rest (Python, sampling, row pruning), at the smallest cap. Usage:
    python bench/bench_eval.py --rounds 3
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import machine, matmul_peak_gflops, now, paired, peak_rss_mib, run_worker, spread, write_raw  # noqa: E402

# ----------------------------------------------------------------------------- workers (each its own process)


def _setup(a):
    from cotdistill.benchmarks import load_benchmark
    from cotdistill.engines import Request
    from cotdistill.engines import hf as H

    engine = H.HFEngine.load(a.student, dtype=a.dtype, device="cpu", batch_size=a.batch)
    requests = [Request.question(q.question) for q in load_benchmark("svamp", "test", None, a.n)]
    return engine, requests


def _rows(engine, completions: list, seconds: float) -> dict:
    from cotdistill.grade import extract_answer

    return {"seconds": seconds, "tokens": sum(c.completion_tokens for c in completions),
            "tokens_per_s": sum(c.completion_tokens for c in completions) / seconds,
            "texts": [c.text for c in completions], "answers": [extract_answer(c.text, "number")[0] for c in completions],
            "dtype": str(engine.model.dtype).replace("torch.", ""), "peak_rss_mib": peak_rss_mib()}


def worker_ours(a, cap: int) -> dict:
    engine, requests = _setup(a)
    t0 = time.monotonic()
    completions = engine.generate(requests, max_new_tokens=cap)
    return _rows(engine, completions, time.monotonic() - t0)


def _generate(engine, prompts: list[list[int]], cap: int) -> list:
    """Plain `model.generate` on left-padded prompts with the engine's stops; completions as the engine makes them."""
    import torch
    from transformers import StoppingCriteriaList

    from cotdistill.engines import hf as H

    model, tok = engine.model, engine.tokenizer
    width = max(map(len, prompts))
    ids, mask, _ = H._left_pad(prompts, width, tok.pad_token_id, model.device)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=cap, do_sample=False,
                             eos_token_id=engine.stops, pad_token_id=tok.pad_token_id,
                             stopping_criteria=StoppingCriteriaList([H._answer_stop_criteria(tok, width)]),
                             top_p=None, top_k=None, temperature=None)
    return [engine._completion(p, row[width:].tolist(), True, []) for p, row in zip(prompts, out)]


def worker_generate(a, cap: int) -> dict:
    """The same batches as ours (prompts sorted longest first, cut into a.batch rows), plain `generate`."""
    engine, requests = _setup(a)
    t0 = time.monotonic()
    prompts = [engine.encode(r.messages) for r in requests]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    completions: list = [None] * len(prompts)
    for s in range(0, len(order), a.batch):
        rows = order[s : s + a.batch]
        for i, c in zip(rows, _generate(engine, [prompts[i] for i in rows], cap)):
            completions[i] = c
    return _rows(engine, completions, time.monotonic() - t0)


def worker_single(a, cap: int) -> dict:
    engine, requests = _setup(a)
    t0 = time.monotonic()
    completions = [_generate(engine, [engine.encode(r.messages)], cap)[0] for r in requests]
    return _rows(engine, completions, time.monotonic() - t0)


def worker_breakdown(a, cap: int) -> dict:
    """Ours once more with timers: tokenising, prefill, decode-step forwards, answer-stop check, the rest."""
    from cotdistill.engines import hf as H

    engine, requests = _setup(a)
    t = {"tokenize": 0.0, "prefill": 0.0, "decode_forward": 0.0, "answer_check": 0.0, "steps": 0, "step_rows": 0}

    def timed(key, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                t[key] += time.perf_counter() - t0
        return wrapper

    H._prefill = timed("prefill", H._prefill)
    H._answers_stated = timed("answer_check", H._answers_stated)
    engine.encode = timed("tokenize", engine.encode)
    forward = engine.model.forward

    def step_forward(*args, **kw):
        ids = kw.get("input_ids")
        if ids is None or ids.shape[1] != 1:  # prefill (already timed as a whole)
            return forward(*args, **kw)
        t["steps"] += 1
        t["step_rows"] += ids.shape[0]
        return timed("decode_forward", forward)(*args, **kw)

    engine.model.forward = step_forward
    t0 = time.monotonic()
    completions = engine.generate(requests, max_new_tokens=cap)
    row = _rows(engine, completions, time.monotonic() - t0)
    t["rest"] = row["seconds"] - t["tokenize"] - t["prefill"] - t["decode_forward"] - t["answer_check"]
    t["prompt_tokens"] = sum(c.prompt_tokens for c in completions)
    # prefill work: generate runs every row to the batch's longest prompt; ours skips padding and runs the
    # prefix all prompts of a batch share once
    prompts = sorted((engine.encode.__wrapped__(r.messages) for r in requests), key=len, reverse=True)
    batches = [prompts[s : s + a.batch] for s in range(0, len(prompts), a.batch)]
    t["prefill_positions_generate"] = sum(len(b) * len(b[0]) for b in batches)
    t["prefill_positions_ours"] = sum(sum(map(len, b)) - (len(b) - 1) * H._common_prefix(b) for b in batches)
    return row | {"parts": t}


WORKERS = {"ours": worker_ours, "generate": worker_generate, "single": worker_single, "breakdown": worker_breakdown}


# ----------------------------------------------------------------------------- driver


def compare(ours: dict, peer: dict) -> dict:
    n = len(ours["answers"])
    return {"same_answer": sum(x == y for x, y in zip(ours["answers"], peer["answers"])),
            "same_text": sum(x == y for x, y in zip(ours["texts"], peer["texts"])), "n": n}


def summarize(res: dict) -> list[str]:
    lines = []
    for cap in res["caps"]:
        runs = [r for r in res["runs"] if r["cap"] == cap]
        for side in res["sides"]:
            mine = [r for r in runs if r["side"] == side]
            s = spread([r["seconds"] for r in mine])
            lines.append(f"cap {cap:4d} {side:9s} {s['median']:7.1f} s [{s['min']:.1f}-{s['max']:.1f}]  "
                         f"{spread([r['tokens_per_s'] for r in mine])['median']:6.1f} tokens/s")
        for peer in res["sides"][1:]:
            s = spread([p["seconds"] / o["seconds"] for o, p in paired(runs, peer)])
            same = res["agreement"][str(cap)].get(peer)
            lines.append(f"cap {cap:4d} ours vs {peer:9s} {s['median']:.2f}x [{s['min']:.2f}-{s['max']:.2f}]; "
                         f"same answer {same['same_answer']}/{same['n']}, same text {same['same_text']}/{same['n']}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=32, help="SVAMP test questions (the first N; 64 fills one batch of `cotdistill eval`)")
    ap.add_argument("--batch", type=int, default=64, help="rows per batch (`cotdistill eval`'s default 64)")
    ap.add_argument("--caps", default="320,64", help="max new tokens, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dtype", default="auto", help="auto = the evaluation default (fp32 on a CPU)")
    ap.add_argument("--single", action="store_true", help="also one question at a time (secondary, one round)")
    ap.add_argument("--worker", nargs=2, metavar=("SIDE", "CAP"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        r = WORKERS[a.worker[0]](a, int(a.worker[1]))
        print(json.dumps(r))
        return

    from cotdistill import students

    students.resolve_student(a.student)  # convert/cache the GGUF once, outside the timed runs
    caps = [int(c) for c in a.caps.split(",")]
    sides = ["ours", "generate"]
    res: dict = {"kind": "eval", "command": " ".join(["python", "bench/bench_eval.py", *sys.argv[1:]]),
                 "machine": machine(), "started": now(), "load_before": os.getloadavg()[0], "args": vars(a),
                 "sides": sides + ["single"] * a.single, "caps": caps, "runs": [], "agreement": {}, "breakdown": {},
                 "matmul_peak_gflops": {"float32": matmul_peak_gflops("float32")}}
    print(f"{res['command']}\n{res['machine']['cpu']} {res['machine']['flags']}, load {res['load_before']:.1f}")
    args = sys.argv[1:]
    for cap in caps:
        first: dict = {}
        for rnd in range(a.rounds):
            order = sides if rnd % 2 == 0 else sides[::-1]
            if a.single and rnd == 0:
                order = order + ["single"]
            for side in order:
                r = run_worker(__file__, args + ["--worker", side, str(cap)])
                first.setdefault(side, r)
                res["runs"].append({k: v for k, v in r.items() if k not in ("texts", "answers")}
                                   | {"round": rnd, "side": side, "cap": cap})
                print(f"cap {cap} round {rnd} {side:9s} {r['seconds']:7.1f} s  {r['tokens']} tokens  "
                      f"{r['tokens_per_s']:6.1f} tokens/s  ({r['dtype']})", flush=True)
        res["agreement"][str(cap)] = {peer: compare(first["ours"], first[peer]) for peer in first if peer != "ours"}
        if cap != min(caps):  # the short-generation case is the one to explain
            continue
        b = run_worker(__file__, args + ["--worker", "breakdown", str(cap)])
        res["breakdown"][str(cap)] = {"seconds": b["seconds"], "tokens": b["tokens"], **b["parts"]}
        print(f"cap {cap} ours, timed parts: " + ", ".join(f"{k} {v:.2f}" for k, v in b["parts"].items()), flush=True)
    res |= {"ended": now(), "load_after": os.getloadavg()[0]}
    print("\n".join(summarize(res)))
    print(f"raw: {write_raw('eval', res)}")


if __name__ == "__main__":
    main()
