"""Where a decode step's time goes: ours (packed oneDNN linears, one-buffer KV cache) vs `generate`'s forward.

Prefills the first --n SVAMP test prompts, then profiles --steps decode steps with all rows live (the
short-generation case: nobody has finished yet) and prints torch.profiler's top ops per side. Usage:
    python bench/profile_decode.py --n 64 --steps 5
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args()
    import torch
    from torch.profiler import profile
    from transformers import DynamicCache

    from cotdistill.benchmarks import load_benchmark
    from cotdistill.engines import Request
    from cotdistill.engines import hf as H
    from cotdistill.kernels.linear import packed_linears

    engine = H.HFEngine.load(a.student, dtype="fp32", device="cpu", batch_size=a.n)
    model, tok = engine.model, engine.tokenizer
    prompts = [engine.encode(Request.question(q.question).messages) for q in load_benchmark("svamp", "test", None, a.n)]
    width = max(map(len, prompts))
    kw = {"use_cache": True, "logits_to_keep": 1}
    for side in ("ours", "generate"):
        with packed_linears(model) if side == "ours" else contextlib.nullcontext(), torch.inference_mode():
            if side == "ours":
                cache, mask, nxt = H._prefill(model, prompts, tok.pad_token_id, width + 3 * a.steps + 8, kw,
                                              "past_key_values")
                pos = torch.tensor([[len(p) - 1] for p in prompts])
            else:  # generate: one left-padded prefill, a DynamicCache that concatenates each step
                ids, mask, pos = H._left_pad(prompts, width, tok.pad_token_id, model.device)
                cache = DynamicCache(config=model.config)
                nxt = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                            **kw).logits[:, -1].argmax(-1)
                pos = pos[:, -1:]

            def step():
                nonlocal mask, pos, nxt
                mask = torch.cat([mask, mask.new_ones(len(prompts), 1)], -1)
                pos = pos + 1
                nxt = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, past_key_values=cache,
                            **kw).logits[:, -1].argmax(-1)

            step()
            t0 = time.perf_counter()
            with profile() as p:
                for _ in range(a.steps):
                    step()
            ms = (time.perf_counter() - t0) * 1000 / a.steps
            print(f"== {side}: {len(prompts)} rows, {ms:.0f} ms per step under the profiler")
            print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    main()
