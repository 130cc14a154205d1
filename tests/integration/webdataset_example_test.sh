#!/usr/bin/env bash
# The WebDataset example end to end through the real programs, as a user runs it.
#   webdataset_example_test.sh MIMO_COORDINATOR MIMO_WORKER MIMOCTL MIMO_MAKE_SHARDS SOURCE_DIR
# Runs the mimo-make-shards command in examples/mimo-cpu-8-webdataset.yaml's header (its flags
# checked against the spec's encoders) into a temporary folder, and a copy of the example with its
# shards and output_dir there and 20 steps on `mimo-coordinator --cpu-workers 8` with `mimoctl
# submit --wait`: the job must succeed and output_dir/metrics.csv have a row for its last step.
# Also: mimo-make-shards refuses to overwrite the shards without --force. Every exit path stops
# what the test started.
set -euo pipefail

if [[ $# -ne 5 ]]; then
  echo "usage: $0 MIMO_COORDINATOR MIMO_WORKER MIMOCTL MIMO_MAKE_SHARDS SOURCE_DIR" >&2
  exit 2
fi
coordinator_bin=$1 worker_bin=$2 mimoctl_bin=$3 make_shards_bin=$4 source_dir=$5
example=$source_dir/examples/mimo-cpu-8-webdataset.yaml
readonly steps=20

tmp=$(mktemp -d -t mimo-webdataset-example.XXXXXX)
# shellcheck source=job_lib.sh
source "$(dirname "$0")/job_lib.sh"
# A deadline of its own, below ctest's TIMEOUT.
start_watchdog 90
coordinator_pid=""

name=webdataset_example
log() { echo "[$name $(date +%T)] $*" >&2; }
cleanup() { embedded_cleanup; }
trap_cleanup

ctl() { "$mimoctl_bin" "$@"; }

# The first value of FIELD in the example ("  num_mel_bins: 40" -> 40).
spec_value() { sed -n "s/^ *$1: *\([^ #]*\).*/\1/p" "$example" | head -n 1; }

# --- 1. The shards, with the command the example's header gives, into $tmp/shards.
command=$(sed -n 's/^#   build\/bin\/mimo-make-shards //p' "$example" | head -n 1)
[[ -n $command ]] || fail "no '#   build/bin/mimo-make-shards ...' line in $example"
read -ra args <<<"$command"
example_dir=${args[0]}
args[0]=$tmp/shards
# Its flags are the spec's audio encoder's fields; the images are the tool's default size unless
# it says otherwise.
declare -A flag_of=([num_mel_bins]=--mel-bins [frames_per_token]=--frames-per-token
  [max_frames]=--max-frames [image_size]=--image-size)
declare -A given=([--image-size]=32)
for ((i = 1; i + 1 < ${#args[@]}; i++)); do given[${args[i]}]=${args[i + 1]}; done
for field in "${!flag_of[@]}"; do
  [[ ${given[${flag_of[$field]}]:-} == "$(spec_value "$field")" ]] ||
    fail "the example's mimo-make-shards ${flag_of[$field]} is '${given[${flag_of[$field]}]:-}'," \
      "its $field $(spec_value "$field")"
done
log "mimo-make-shards ${args[*]}"
pattern=$("$make_shards_bin" "${args[@]}" 2>"$tmp/make-shards.err") ||
  fail "mimo-make-shards exited $?: $(cat "$tmp/make-shards.err")"
example_pattern=$(sed -n 's/^ *webdataset: {shards: \["\([^"]*\)"\]}.*/\1/p' "$example")
[[ $pattern == "${example_pattern/#$example_dir/$tmp/shards}" ]] ||
  fail "mimo-make-shards printed '$pattern'; the example reads '$example_pattern' from $example_dir"
status=0
"$make_shards_bin" "${args[@]}" >/dev/null 2>"$tmp/again.err" || status=$?
if [[ $status -ne 1 ]] || ! grep -q -- '--force' "$tmp/again.err"; then
  fail "mimo-make-shards over its own shards exited $status, expected 1 naming --force:" \
    "$(cat "$tmp/again.err")"
fi
"$make_shards_bin" "${args[@]}" --force >/dev/null 2>"$tmp/force.err" ||
  fail "mimo-make-shards --force failed: $(cat "$tmp/force.err")"

# --- 2. The example, made small: its shards and output in $tmp, fewer steps.
spec=$tmp/webdataset.yaml
sed -e "s|^name: .*|name: webdataset-example-test|" \
  -e "s|^  steps: .*|  steps: $steps|" \
  -e "s|^    warmup_steps: .*|    warmup_steps: 5|" \
  -e "s|^    decay_steps: .*|    decay_steps: $((steps - 5))|" \
  -e "s|\"$example_pattern\"|\"$pattern\"|" \
  -e "s|^output_dir: .*|output_dir: $tmp/output|" "$example" >"$spec"
for want in "steps: $steps" "\"$pattern\"" "output_dir: $tmp/output"; do
  grep -qF -- "$want" "$spec" || fail "the test's spec $spec has no '$want'"
done
workers=$(ctl plan "$spec" | sed -n '1s/^world_size \([0-9]*\),.*/\1/p')
[[ -n $workers ]] || fail "mimoctl plan $spec printed no world_size"

# --- 3. A coordinator with its own CPU workers runs it.
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
log "job $job SUCCEEDED on the shards; $csv has $(($(wc -l <"$csv") - 1)) rows"
echo "webdataset_example: PASSED"
