#!/bin/bash
# Runs bench/kernel_bench and its PyTorch twin on this GPU and prints the side-by-side table.
#   bench/kernels_vs_torch.sh KERNEL_BENCH [FILTER]   (KERNEL_BENCH: the program, or a runner
#   command such as ".gpu/run kernel_bench"; writes cases/ours/torch .jsonl to $OUT or /tmp)
set -euo pipefail
bench=$1
filter=${2:-}
dir=${OUT:-/tmp}
here=$(dirname "$0")
$bench --list --filter "$filter" > "$dir/cases.jsonl"
$bench --filter "$filter" | tee "$dir/ours.jsonl"
python3 "$here/torch_kernels.py" --cases "$dir/cases.jsonl" | tee "$dir/torch.jsonl"
python3 "$here/torch_kernels.py" --cases "$dir/cases.jsonl" --ours "$dir/ours.jsonl" \
  --torch "$dir/torch.jsonl"
