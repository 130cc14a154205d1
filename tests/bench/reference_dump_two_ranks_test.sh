#!/bin/bash
# reference_dump --layout dp2 and ep2 on two CPU ranks: every step's loss of the two-rank run
# (losses_LAYOUT.json) equals the one-rank run's (losses.json) within 1e-5, relative.
#   reference_dump_two_ranks_test.sh REFERENCE_DUMP SPEC
set -euo pipefail
bin=$1
spec=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for layout in dp2 ep2; do
  "$bin" "$spec" --out "$dir/$layout" --steps 3 --layout "$layout"
  paste <(grep '"loss"' "$dir/$layout/losses.json") \
    <(grep '"loss"' "$dir/$layout/losses_$layout.json") |
    awk -v layout="$layout" '
      { gsub(/,/, ""); a = $2; b = $4; d = a > b ? a - b : b - a; n++
        printf "%s step %d: one rank %s, two ranks %s\n", layout, n, a, b
        if (d > 1e-5 * (a < 0 ? -a : a)) bad = 1 }
      END { if (n != 3) { print layout ": " n " steps, not 3"; exit 1 } exit bad }'
done
