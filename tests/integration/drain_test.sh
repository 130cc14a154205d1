#!/usr/bin/env bash
# A drained worker (SIGTERM: a node drain, a preemption) through the real programs: the main
# example (8 CPU workers of an embedded coordinator, checkpointing only at the end) runs; one
# mimo-worker gets SIGTERM mid-run; every rank saves after the same step and stops, the job
# restarts as attempt 2 (a preemption, not one of its max_restarts: the spec allows none) on the
# workers the coordinator has (it starts the drained one again), resumes from that checkpoint and
# succeeds, metrics.csv holding every step once.
#   drain_test.sh MIMO_COORDINATOR MIMO_WORKER MIMOCTL SOURCE_DIR
set -euo pipefail

if [[ $# -ne 4 ]]; then
  echo "usage: $0 MIMO_COORDINATOR MIMO_WORKER MIMOCTL SOURCE_DIR" >&2
  exit 2
fi
# shellcheck disable=SC2034  # job_lib.sh's start_embedded_coordinator runs them
coordinator_bin=$1 worker_bin=$2 mimoctl_bin=$3 source_dir=$4
name=drain
steps=30

tmp=$(mktemp -d -t mimo-drain.XXXXXX)
# shellcheck source=job_lib.sh
source "$(dirname "$0")/job_lib.sh"
start_watchdog 150
coordinator_pid=""

log() { echo "[$name $(date +%T)] $*" >&2; }
cleanup() { embedded_cleanup; }
trap_cleanup
ctl() { "$mimoctl_bin" "$@"; }

sed -e "s|^  steps: .*|  steps: $steps|" -e "s|^  log_interval: .*|  log_interval: 1|" \
  -e "s|^max_restarts: .*|max_restarts: 0|" -e "s|^output_dir: .*|output_dir: $tmp/out|" \
  "$source_dir/examples/mimo-cpu-8.yaml" >"$tmp/spec.yaml"
printf 'checkpointing:\n  dir: %s\n' "$tmp/ckpt" >>"$tmp/spec.yaml"
grep -qF "steps: $steps" "$tmp/spec.yaml" || fail "the spec has no 'steps: $steps'"
grep -qF "max_restarts: 0" "$tmp/spec.yaml" || fail "the spec has no 'max_restarts: 0'"

start_embedded_coordinator 8
job=$(ctl submit "$tmp/spec.yaml" -o json | sed -n 's/^ *"id": "\(j-[^"]*\)".*/\1/p' | head -n 1)
[[ -n $job ]] || fail "the submission failed"
wait_state "$job" JOB_STATE_RUNNING 60 >/dev/null
step=$(wait_step "$job" 2)
victim=""
for pid in $(children_of "$coordinator_pid"); do
  if is_worker "$pid"; then victim=$pid; break; fi
done
[[ -n $victim ]] || fail "no mimo-worker child of the coordinator"
log "job $job at step $step: SIGTERM to worker pid $victim"
kill -TERM "$victim"
wait_state "$job" JOB_STATE_SUCCEEDED 90 >/dev/null
ctl get "$job" -o json >"$tmp/job.json"
grep -q '"attempt": 2,' "$tmp/job.json" || fail "job $job did not end in attempt 2: $(cat "$tmp/job.json")"
grep -q '"preemptions": 1' "$tmp/job.json" || fail "job $job counts no preemption: $(cat "$tmp/job.json")"
ctl events "$job" >"$tmp/events.txt"
grep -q "attempt 1 ended for a drained worker (stopped after saving checkpoint $tmp/ckpt/iter_" \
  "$tmp/events.txt" || fail "job $job's events name no drain: $(cat "$tmp/events.txt")"
saved=$(sed -n "s|.*ended for a drained worker (stopped after saving checkpoint $tmp/ckpt/iter_0*\([0-9]*\) .*|\1|p" \
  "$tmp/events.txt" | head -n 1)
((saved >= step && saved < steps)) || fail "the drain's checkpoint is of iteration '$saved'"
ctl logs "$job" >"$tmp/job.log"
grep -q "the worker received SIGTERM: job $job saves a checkpoint after its current step" \
  "$tmp/coordinator.log" || fail "the drained worker did not say it drains"
grep -q "resumed from $tmp/ckpt/iter_$(printf '%07d' "$saved") after iteration $saved" \
  "$tmp/job.log" || fail "attempt 2 did not resume from iteration $saved"
rows=$(job_losses out | cut -d' ' -f1 | tr '\n' ' ')
[[ $rows == "$(seq -s ' ' 1 "$steps") " ]] || fail "metrics.csv has the steps $rows"
log "job $job saved iteration $saved when drained and finished as attempt 2"
echo "$name: PASSED"
