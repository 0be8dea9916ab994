#!/usr/bin/env bash
# `cotdistill train` at an older commit against this working tree, on the same data and settings, in
# interleaved rounds (ABBA), each run its own process. Prints tokens/s (the provenance's train-loop figure),
# loop seconds and mean train loss per run. Usage (from the repository root, set up with `make setup`):
#     bench/compare_commits.sh 841039d [bf16|fp32] [examples] [rounds]
# The older commit is checked out into a temporary git worktree (removed at the end); the same .venv runs
# both, so only the code differs. Nothing else should run on the machine meanwhile.
set -euo pipefail
old=${1:?usage: bench/compare_commits.sh COMMIT [bf16|fp32] [examples] [rounds]}
dtype=${2:-bf16}
n=${3:-16}
rounds=${4:-3}
root=$(git rev-parse --show-toplevel)
py=$root/.venv/bin/python
export HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
export COTDISTILL_DATA=${COTDISTILL_DATA:-$(cd "$root/../shared/data" && pwd)}
work=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$work/old" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git -C "$root" worktree add -q --detach "$work/old" "$old"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(grep -o -w -E 'avx512_bf16|avx512f|avx2' /proc/cpuinfo | sort -u | xargs)"
echo "old = $old ($(git -C "$root" log -1 --format=%cs "$old")), new = working tree at $(git -C "$root" rev-parse --short HEAD)"
for ((r = 0; r < rounds; r++)); do
  if ((r % 2 == 0)); then sides="old new"; else sides="new old"; fi
  for side in $sides; do
    tree=$root; [[ $side == old ]] && tree=$work/old
    out=$work/run-$side
    rm -rf "$out"
    (cd "$work" && PYTHONPATH=$tree "$py" -m cotdistill train --student smollm2-135m --data svamp/chatgpt/level1 \
      --limit "$n" --batch-size 8 --epochs 1 --out "$out" --dtype "$dtype" --device cpu --quiet >/dev/null 2>&1)
    "$py" -c "import json; r = json.load(open('$out/provenance.json'))['result']; \
print(f\"round $r $dtype $side: {r['tokens_per_s']:.1f} tokens/s, loop {r['train_seconds']:.2f} s, loss {r['train_loss']:.4f}\")"
  done
done
