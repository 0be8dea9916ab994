"""bench/bench_train.py, bench_eval.py and make_results.py run end to end on tiny models (figures need real ones)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def _run(script: str, *args: str, env: dict) -> str:
    r = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_benches_write_raw_json_that_make_results_renders(tiny_chat_student, data_dir, tmp_path):
    env = os.environ | {"COTDISTILL_DATA": str(data_dir), "PYTHONPATH": str(ROOT),
                        "COTDISTILL_BENCH_RUNS": str(tmp_path / "runs")}
    data = str(ROOT / "tests" / "assets" / "train" / "tiny.jsonl")
    out = _run("bench_train.py", "--student", str(tiny_chat_student), "--data", data, "--n", "8", "--batch-size", "4",
               "--rounds", "1", "--dtypes", "fp32", "--peers", "naive", env=env)
    assert "ours/naive" in out
    _run("bench_eval.py", "--student", str(tiny_chat_student), "--n", "3", "--caps", "4", "--rounds", "1", env=env)
    train = json.loads(next((tmp_path / "runs").glob("train-*.json")).read_text())
    assert [r["side"] for r in train["runs"]] == ["ours", "naive"] and train["machine"]["cpu"]
    ours, naive = train["runs"]
    assert ours["tokens"] == naive["tokens"] == train["flops"]["tokens"] and ours["peak_rss_mib"] > 0
    evaluation = json.loads(next((tmp_path / "runs").glob("eval-*.json")).read_text())
    assert evaluation["agreement"]["4"]["generate"]["n"] == 3 and evaluation["breakdown"]["4"]["steps"] >= 0
    _run("make_results.py", "--raw-dir", str(tmp_path / "raw"), "--out", str(tmp_path / "RESULTS.md"), "--memprobe",
         env=env)
    md = (tmp_path / "RESULTS.md").read_text()
    assert train["machine"]["cpu"] in md and "F_all = F + 6·H·V·(T − R)" in md and "batched `generate`" in md
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "raw").iterdir()) == ["eval", "train"]


def test_useful_flops_charge_the_head_only_at_response_positions():
    from types import SimpleNamespace

    from bench_train import useful_flops

    c = SimpleNamespace(hidden_size=8, num_hidden_layers=2, vocab_size=100, intermediate_size=16, num_attention_heads=2,
                        num_key_value_heads=1, head_dim=4)
    examples = [{"input_ids": [1] * 5, "labels": [-100] * 3 + [1] * 2}, {"input_ids": [1] * 3, "labels": [-100, 1, 1]}]
    f = useful_flops(c, examples, 1.0)
    body = 2 * (8 * 8 + 2 * 8 * 4 + 8 * 8 + 3 * 8 * 16)
    assert (f["tokens"], f["response_tokens"], f["n_body"]) == (8, 4, body)
    assert f["F"] == 6 * body * 8 + 6 * 8 * 100 * 4 + 6 * 2 * 8 * (5 * 6 + 3 * 4)
    assert f["F_all"] - f["F"] == 6 * 8 * 100 * (8 - 4)
