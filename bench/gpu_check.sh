#!/bin/bash
# One short GPU check (H100/H200): the full real check + the benchmark on CUDA. No code changes needed.
# Usage (repo root): bash bench/gpu_check.sh [OUT_DIR]   -- writes logs + JSON into OUT_DIR (default runs/gpu)
set -u
OUT=${1:-runs/gpu}; mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
C=.venv/bin/cotdistill; PY=.venv/bin/python
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/machine.txt" 2>&1
t() { local name=$1; shift; local s=$(date +%s); "$@" > "$OUT/$name.log" 2>&1; echo "$name rc=$? seconds=$(( $(date +%s) - s ))" | tee -a "$OUT/times.txt"; }
# Real check: paper hyper-parameters (full FT, lr 5e-5, 3 epochs, cosine, batch 64, seed 100), all 700 rationales.
t train_ft  $C train --student smollm2-135m --data svamp/chatgpt/level1 --out "$OUT/ft" --device cuda --quiet --resume
t eval_ft   $C eval --model "$OUT/ft" --dataset svamp --split test --out "$OUT/eval_ft" --device cuda --batch-size 64 --quiet
t eval_zero $C eval --model smollm2-135m --dataset svamp --split test --out "$OUT/eval_zeroshot" --device cuda --batch-size 64 --quiet
cp "$OUT/eval_ft/summary.json" "$OUT/summary_ft.json"; cp "$OUT/eval_zeroshot/summary.json" "$OUT/summary_zeroshot.json"
# Benchmark on CUDA (bf16 autocast for ours, fp32 for the baseline).
t bench_smollm2 $PY bench/bench_train.py --student smollm2-135m --n 256 --batch-size 64 --device cuda --eval-n 64 --eval-batch 64 --max-new-tokens 128
t bench_gemma3  $PY bench/bench_train.py --student gemma3-270m --n 256 --batch-size 64 --device cuda --eval-n 64 --eval-batch 64 --max-new-tokens 128
