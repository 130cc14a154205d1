#!/usr/bin/env bash
# Resharding throughput on local disk against a plain copy of the same bytes (bench/RESULTS.md).
# Random weights of a spec's model (convert_bench_export) are imported into the spec's layout
# (bench/specs/convert-380m.yaml: vision dp 2 on ranks 0-1, language tp 2 x dp 4 with ep 2 on
# 2-9), then resharded to another (language tp 1 x dp 8 with ep 4 on ranks 0-7, vision moved to
# 8-9); then the source checkpoint folder is copied with cp and synced. Each step is timed
# alone with the page cache as the previous step left it (every file was just written).
#   bench/convert_bench.sh BUILD_BIN_DIR [SPEC] [WORK_DIR]
set -euo pipefail
bin=$1
spec=${2:-$(dirname "$0")/specs/convert-380m.yaml}
work=${3:-$(mktemp -d -t mimo-convert-bench.XXXXXX)}
trap 'rm -rf "$work"' EXIT

seconds() { local s=$EPOCHREALTIME; "$@" >/dev/null; echo "$EPOCHREALTIME - $s" | awk '{ printf "%.2f", $1 - $3 }'; }
rate() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.2f GB/s", b / s / 1e9 }'; }

"$bin/convert_bench_export" "$spec" "$work/export"
t_import=$(seconds "$bin/mimo-convert" import --from "$work/export" --to "$work/a" --spec "$spec")
bytes=$(du -sb "$work/a/iter_0000000" | cut -f1)
sync
t_reshard=$(seconds "$bin/mimo-convert" reshard --from "$work/a" --to "$work/b" \
  --component vision=dp=2,rank_offset=8 --component language=tp=1,dp=8,ep=4,rank_offset=0)
out_bytes=$(du -sb "$work/b/iter_0000000" | cut -f1)
sync
t_copy=$(seconds bash -c "cp -r '$work/a/iter_0000000' '$work/copy' && sync")
"$bin/mimo-convert" verify "$work/a/iter_0000000" "$work/b/iter_0000000" >/dev/null
echo "checkpoint: $bytes bytes in $(find "$work/a/iter_0000000" -name '*.safetensors' | wc -l) files"
echo "import (whole tensors -> spec's layout): ${t_import} s, $(rate "$bytes" "$t_import")"
echo "reshard (tp 2 -> 1, ep 2 -> 4, encoders moved; $out_bytes bytes written): ${t_reshard} s, $(rate "$out_bytes" "$t_reshard")"
echo "cp -r + sync of the source checkpoint: ${t_copy} s, $(rate "$bytes" "$t_copy")"
