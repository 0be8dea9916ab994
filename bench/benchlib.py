"""What bench_train.py and bench_eval.py share: the machine's description, worker subprocesses,
median/range summaries and the raw-JSON files that make_results.py turns into RESULTS.md."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = Path(os.environ.get("COTDISTILL_BENCH_RUNS", ROOT / "runs" / "bench"))  # where raw JSON goes
# CPU flags that decide which numerics run natively (bf16 emulated without avx512_bf16/amx_bf16)
KEY_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def machine() -> dict:
    """CPU model name, family/model, key flags, cores, memory, GPU and library versions of this machine."""
    import torch
    import transformers

    info: dict = {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                  "transformers": transformers.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        first = text.split("\n\n")[0]
        fields = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        flags = set(fields.get("flags", "").split())
        info |= {"cpu": fields.get("model name", platform.processor()), "family": fields.get("cpu family"),
                 "model": fields.get("model"), "flags": [f for f in KEY_FLAGS if f in flags]}
        mem = Path("/proc/meminfo").read_text().split("\n")[0].split()
        info["mem_gib"] = round(int(mem[1]) / 2**20, 1)
    except OSError:
        info |= {"cpu": platform.processor() or platform.machine(), "family": None, "model": None, "flags": []}
    try:
        import trl

        info["trl"] = trl.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(script: str, args: list[str]) -> dict:
    """Run `script --worker ...` in its own process (clean memory and caches); its last stdout line is JSON."""
    p = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"worker {' '.join(args)} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> dict:
    """Median and range (not the best of either side)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def paired(runs: list[dict], peer: str) -> list[tuple[dict, dict]]:
    """(ours, peer) runs of the same round: ratios are taken within a round, never across."""
    return [(o, p) for o in runs if o["side"] == "ours" for p in runs if p["side"] == peer and p["round"] == o["round"]]


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def write_raw(kind: str, result: dict) -> Path:
    """runs/bench/<kind>-<UTC time>.json (make_results.py reads the newest of each kind)."""
    RUNS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = RUNS / f"{kind}-{stamp}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def matmul_peak_gflops(dtype: str = "float32", seconds: float = 2.0, n: int = 2048) -> float:
    """GFLOP/s of a 2048^2 matmul loop in `dtype` on this machine now."""
    import time

    import torch

    t = getattr(torch, dtype)
    a, b = torch.randn(n, n, dtype=t), torch.randn(n, n, dtype=t)
    a @ b
    k, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        a @ b
        k += 1
    return 2 * n**3 * k / (time.monotonic() - t0) / 1e9
