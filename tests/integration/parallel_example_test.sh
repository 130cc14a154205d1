#!/usr/bin/env bash
# A model-parallel example end to end through the real programs, as a user runs it.
#   parallel_example_test.sh MIMO_COORDINATOR MIMO_WORKER MIMOCTL SOURCE_DIR EXAMPLE LAYOUT
# A copy of examples/EXAMPLE (whose language module's parallelism line must start with LAYOUT,
# e.g. "{tp: 2, dp: 2, ep: 2") with 20 steps and its output_dir in a temporary folder, run on
# `mimo-coordinator --cpu-workers 8` with `mimoctl submit --wait`: the job must succeed,
# output_dir/metrics.csv have a row for its last step, and the loss of the last step be below the
# first's. Every exit path stops what the test started.
set -euo pipefail

if [[ $# -ne 6 ]]; then
  echo "usage: $0 MIMO_COORDINATOR MIMO_WORKER MIMOCTL SOURCE_DIR EXAMPLE LAYOUT" >&2
  exit 2
fi
coordinator_bin=$1 worker_bin=$2 mimoctl_bin=$3 source_dir=$4 layout=$6
example=$source_dir/examples/$5
name=$(basename "$5" .yaml)
readonly steps=20

tmp=$(mktemp -d -t mimo-parallel-example.XXXXXX)
# shellcheck source=job_lib.sh
source "$(dirname "$0")/job_lib.sh"
start_watchdog 90
coordinator_pid=""

log() { echo "[$name $(date +%T)] $*" >&2; }
cleanup() { embedded_cleanup; }
trap_cleanup

ctl() { "$mimoctl_bin" "$@"; }

grep -qF "parallelism: $layout" "$example" || fail "$example has no parallelism: $layout"
spec=$tmp/$name.yaml
sed -e "s|^name: .*|name: $name-test|" \
  -e "s|^  steps: .*|  steps: $steps|" \
  -e "s|^    warmup_steps: .*|    warmup_steps: 5|" \
  -e "s|^    decay_steps: .*|    decay_steps: $((steps - 5))|" \
  -e "s|^  log_interval: .*|  log_interval: 1|" \
  -e "s|^output_dir: .*|output_dir: $tmp/output|" "$example" >"$spec"
for want in "steps: $steps" "output_dir: $tmp/output"; do
  grep -qF -- "$want" "$spec" || fail "the test's spec $spec has no '$want'"
done
workers=$(ctl plan "$spec" | sed -n '1s/^world_size \([0-9]*\),.*/\1/p')
[[ $workers == 8 ]] || fail "mimoctl plan $spec printed world_size '${workers}', expected 8"

start_embedded_coordinator "$workers"
ctl validate "$spec" >/dev/null || fail "the test's spec $spec does not validate"
status=0
timeout 60 "$mimoctl_bin" submit "$spec" --wait >"$tmp/submit.out" 2>&1 || status=$?
job=$(grep -o 'j-[0-9]\{8\}-[0-9]\{6\}' "$tmp/submit.out" | head -n 1) || true
[[ $status -eq 0 ]] || {
  cat "$tmp/submit.out" >&2
  [[ -n $job ]] && ctl logs "$job" --tail 60 >&2
  fail "mimoctl submit --wait exited $status (job ${job:-none}), expected 0"
}
[[ -n $job ]] || fail "no job id in the output of mimoctl submit"
state=$(job_state "$job")
[[ $state == JOB_STATE_SUCCEEDED ]] || fail "job $job is $state, expected JOB_STATE_SUCCEEDED"
csv=$tmp/output/metrics.csv
[[ -s $csv ]] || fail "job $job wrote no $csv"
grep -q "^$steps," "$csv" || {
  cat "$csv" >&2
  fail "$csv has no row for step $steps"
}
# The loss column by its header name; the last step's below the first's.
column=$(head -n 1 "$csv" | tr ',' '\n' | grep -n '^loss$' | cut -d: -f1)
[[ -n $column ]] || fail "$csv has no loss column: $(head -n 1 "$csv")"
first=$(sed -n '2p' "$csv" | cut -d, -f"$column")
last=$(grep "^$steps," "$csv" | cut -d, -f"$column")
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a) }' ||
  fail "the loss went from $first (first row) to $last (step $steps): it did not fall"
log "job $job SUCCEEDED with language $layout}; loss $first -> $last"
echo "$name: PASSED"
