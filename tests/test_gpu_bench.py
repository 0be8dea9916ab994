"""bench/gpu_bench.py runs end to end on a CPU with tiny models (the GPU figures need a GPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_bench_smoke_runs_every_section_on_a_cpu(data_dir, tmp_path):
    env = os.environ | {"COTDISTILL_DATA": str(data_dir), "PYTHONPATH": str(ROOT)}
    out_json = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_bench.py"), "--device", "cpu", "--tiny",
                        "--json", str(out_json)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "FAILED" not in out, out
    for line in ("tiny-llama     ours", "hf engine pruned", "hf engine continuous", "generate (batch 4)",
                 "cell:", "bench wall-clock"):
        assert line in out, (line, out)
    rows = json.loads(out_json.read_text())
    sections = {r["section"] for r in rows}
    assert {"machine", "train", "eval", "cell", "eval-agreement"} <= sections
    ours = next(r for r in rows if r["section"] == "train" and r["who"].startswith("ours"))
    assert ours["tokens"] > 0 and ours["tokens_per_s"] > 0
    for agree in (r for r in rows if r["section"] == "eval-agreement"):  # fp32, tiny model: the same answers
        assert agree["identical"] == agree["questions"], agree
