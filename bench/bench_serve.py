"""Benchmark `cotdistill serve`: aggregate generated tokens/s with 1, 4 and 16 concurrent clients, in one run.

Starts `cotdistill serve` (its own process, dynamic batching on) over a student, then for each level
C sends the same N SVAMP test questions (greedy, the same max_tokens) from C client threads of the
official `openai` client, each thread taking the next question when its last answer arrives.
Aggregate tokens/s = completion tokens (the server's `usage`) / wall seconds of the level. The
server's /health batch statistics show how large the batches were. Usage:
    .venv/bin/python bench/bench_serve.py --model smollm2-135m --n 32 --max-tokens 48
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.request import urlopen

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def start_server(a) -> tuple[subprocess.Popen, str]:
    cli = Path(sys.executable).parent / "cotdistill"
    cmd = [str(cli), "serve", "--model", a.model, "--port", "0", "--name", "bench", "--quiet",
           "--max-batch", str(a.max_batch), "--batch-wait-ms", str(a.batch_wait_ms)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=os.environ | {"PYTHONPATH": str(ROOT)})
    for line in proc.stdout:
        m = re.search(r"ready at (http://\S+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, m.group(1)
    raise SystemExit(f"serve exited ({proc.wait()}) before it was ready")


def health(url: str) -> dict:
    with urlopen(url.removesuffix("/v1") + "/health", timeout=60) as r:
        return json.loads(r.read())


def run_level(client, questions: list[str], clients: int, max_tokens: int) -> tuple[int, float]:
    """(completion tokens, wall seconds) for all questions answered by `clients` concurrent threads."""
    def ask(q: str) -> int:
        r = client.chat.completions.create(model="bench", messages=[{"role": "user", "content": q}],
                                           max_tokens=max_tokens, temperature=0)
        return r.usage.completion_tokens

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        tokens = sum(pool.map(ask, questions))
    return tokens, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--n", type=int, default=32, help="SVAMP test questions per level (the same at every level)")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--levels", default="1,4,16", help="concurrent clients per level")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--batch-wait-ms", type=float, default=10.0)
    a = p.parse_args()

    import openai

    from cotdistill.benchmarks import load_benchmark

    questions = [ex.question for ex in load_benchmark("svamp", "test", limit=a.n)]
    levels = [int(x) for x in a.levels.split(",")]
    proc, url = start_server(a)
    rows = []
    try:
        client = openai.OpenAI(api_key="unused", base_url=url, max_retries=0, timeout=600)
        run_level(client, questions[:2], 1, a.max_tokens)  # warm-up: first-call packing, allocator
        for c in levels:
            before = health(url)
            tokens, secs = run_level(client, questions, c, a.max_tokens)
            after = health(url)
            batches = after["batches"] - before["batches"]
            rows.append({"clients": c, "tokens": tokens, "seconds": round(secs, 2), "tokens_per_s": round(tokens / secs, 2),
                         "batches": batches, "mean_batch_rows": round((after["rows"] - before["rows"]) / batches, 2)})
            print(f"  {c:>2} clients: {tokens} tokens in {secs:.1f} s", file=sys.stderr, flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    base = rows[0]["tokens_per_s"]
    print(f"\nserve over {a.model}: {a.n} SVAMP test questions per level, greedy, max_tokens {a.max_tokens}, "
          f"--max-batch {a.max_batch} --batch-wait-ms {a.batch_wait_ms}\n")
    print("| clients | completion tokens | seconds | tokens/s | vs 1 client | generate calls | mean rows per call |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clients']} | {r['tokens']} | {r['seconds']} | {r['tokens_per_s']} | {r['tokens_per_s'] / base:.2f}× "
              f"| {r['batches']} | {r['mean_batch_rows']} |")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print("json:", json.dumps({"model": a.model, "n": a.n, "max_tokens": a.max_tokens, "levels": rows,
                               "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
                               "load_avg_after": os.getloadavg()}))


if __name__ == "__main__":
    main()
