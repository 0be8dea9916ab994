"""bench/gpu_bench.py runs end to end on a CPU with tiny models (the GPU figures need a GPU)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_bench_smoke_runs_every_section_on_a_cpu(data_dir):
    env = os.environ | {"COTDISTILL_DATA": str(data_dir), "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_bench.py"), "--device", "cpu", "--tiny"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    for line in ("tiny-llama     ours:", "hf engine pruned", "hf engine continuous",
                 "plain generate", "identical text on 4/4", "cell:", "bench wall-clock"):
        assert line in out, (line, out)
