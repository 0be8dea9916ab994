#!/bin/bash
# The GPU check (one H100/H200): the issue-3 real check plus a small SVAMP granularity grid on CUDA.
# Usage (repo root, cotdistill importable by python3): bash bench/gpu_check.sh [OUT_DIR]
#   STUDENT=path/to/SmolLM2-135M-Instruct.Q4_1.gguf (default: the smollm2-135m alias)
# Results of the run on 2026-11-26 (one H200): docs/gpu_h200_svamp.md.
set -u
OUT=${1:-runs/gpu}; mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1 PYTHONUNBUFFERED=1
G=${STUDENT:-smollm2-135m}
C="python3 -m cotdistill"
t() { local name=$1; shift; local s=$SECONDS; "$@" > "$OUT/$name.log" 2>&1; local rc=$?; echo "$name rc=$rc seconds=$((SECONDS - s))" | tee -a "$OUT/times.txt"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/machine.txt" 2>&1
# Paper hyper-parameters (full FT, lr 5e-5, 3 epochs, cosine, batch 64, seed 100), all ~700 rationales.
t eval_zero $C eval --model "$G" --dataset svamp --split test --out "$OUT/eval_zero" --device cuda --batch-size 100 --quiet
for s in level1 level3 level6 answer-only; do
  src=svamp/chatgpt/$s; [ $s = answer-only ] && src=svamp/answer-only
  t train_$s $C train --student "$G" --data $src --out "$OUT/$s" --device cuda --quiet
  t eval_$s  $C eval --model "$OUT/$s" --dataset svamp --split test --out "$OUT/eval_$s" --device cuda --batch-size 100 --quiet
done
grep -h "accuracy" "$OUT"/eval_*.log
