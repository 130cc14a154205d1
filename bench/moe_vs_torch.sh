#!/bin/bash
# Runs bench/moe_bench and its PyTorch twin on this GPU, one after the other, same shapes.
#   bench/moe_vs_torch.sh MOE_BENCH [FILTER [SKEW]]   (MOE_BENCH: the program, or a runner command
#   such as ".gpu/run moe_bench"; SKEW > 0 also times both with routing skewed by the same
#   selection bias; writes cases/ours/torch .jsonl to $OUT or /tmp)
set -euo pipefail
bench=$1
filter=${2:-}
skew=${3:-0}
dir=${OUT:-/tmp}
here=$(dirname "$0")
$bench --list --filter "$filter" > "$dir/moe_cases.jsonl"
$bench --filter "$filter" --skew "$skew" | tee "$dir/moe_ours.jsonl"
python3 "$here/torch_moe.py" --cases "$dir/moe_cases.jsonl" --skew "$skew" | tee "$dir/moe_torch.jsonl"
