#!/bin/bash
# The scale-out check on one GPU (H100/H200): 8 real SVAMP cells of smollm2-135m (ChatGPT levels
# 1-6, human, answer-only; paper hyper-parameters, the full 300 test questions), run
#   (1) sequentially: --executor local (one job at a time on the GPU), then
#   (2) 4 jobs packed on the GPU at once: --executor ray, each job asking for gpus: 0.25,
# and the wall-clock ratio (1)/(2). The two studies' accuracies are printed side by side.
# Usage (repo root, cotdistill and ray importable by python3): bash bench/gpu_pack_check.sh [OUT_DIR]
set -u
OUT=${1:-runs/gpu_pack}; mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/machine.txt" 2>&1
study() {  # $1: resources line
  cat <<YAML
# Run: cotdistill study $OUT/study.yaml --out $OUT/run
datasets: [svamp]
students: [smollm2-135m]
supervision: [svamp/chatgpt/level{1..6}, svamp/human, svamp/answer-only]
seeds: [100]
train: {device: cuda}
eval: {device: cuda, batch_size: 100}
$1
YAML
}
study "resources: {train: {gpus: 1, cpus: 4}, eval: {gpus: 1, cpus: 4}}" > "$OUT/sequential.yaml"
study "resources: {train: {gpus: 0.25, cpus: 3}, eval: {gpus: 0.25, cpus: 3}}" > "$OUT/packed.yaml"
t() { local name=$1; shift; local s=$SECONDS; "$@" > "$OUT/$name.log" 2>&1; local rc=$?; echo "$name rc=$rc seconds=$((SECONDS - s))" | tee -a "$OUT/times.txt"; }
t sequential python3 -m cotdistill study "$OUT/sequential.yaml" --out "$OUT/sequential" --plain --executor local
t packed python3 -m cotdistill study "$OUT/packed.yaml" --out "$OUT/packed" --plain --executor ray --max-parallel 4
python3 - "$OUT" <<'PY'
import csv, re, sys
out = sys.argv[1]
secs = dict(re.findall(r"(\w+) rc=\d+ seconds=(\d+)", open(f"{out}/times.txt").read()))
acc = {k: {r["supervision"]: r["accuracy"] for r in csv.DictReader(open(f"{out}/{k}/results.csv"))} for k in secs}
print(f"sequential {secs['sequential']} s, packed (4 at once, Ray) {secs['packed']} s, ratio {int(secs['sequential']) / int(secs['packed']):.2f}x")
for s in acc["sequential"]:
    print(f"  {s:28s} {acc['sequential'][s]:>8s} {acc['packed'].get(s, '-'):>8s}")
PY
