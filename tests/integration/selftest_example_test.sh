#!/usr/bin/env bash
# The CPU self-test example end to end through the real programs, as a user runs it.
#   selftest_example_test.sh MIMO_COORDINATOR MIMO_WORKER MIMOCTL SOURCE_DIR
# Starts `mimo-coordinator --cpu-workers 8`, runs examples/selftest-cpu.yaml with `mimoctl submit
# --wait` and checks its state and every rank's "selftest: passed" line; submits a long soak
# (selftest.iterations huge), cancels it while RUNNING and requires CANCELLED within 10 s; runs
# the example again (the workers are free again); then SIGTERMs the coordinator and requires exit
# 0 with none of its mimo-worker children left. Every exit path stops what the test started.
set -euo pipefail

if [[ $# -ne 4 ]]; then
  echo "usage: $0 MIMO_COORDINATOR MIMO_WORKER MIMOCTL SOURCE_DIR" >&2
  exit 2
fi
coordinator_bin=$1 worker_bin=$2 mimoctl_bin=$3 source_dir=$4
spec=$source_dir/examples/selftest-cpu.yaml
readonly workers=8 cancel_limit_s=10

tmp=$(mktemp -d -t mimo-selftest-example.XXXXXX)
# shellcheck source=job_lib.sh
source "$(dirname "$0")/job_lib.sh"
# A deadline of its own, below ctest's TIMEOUT.
start_watchdog 90
coordinator_pid=""
worker_pids=()

log() { echo "[selftest_example $(date +%T)] $*" >&2; }

# Prints what explains a failure: the coordinator's log (with the embedded workers' stderr).
# Per-group, per-seed and per-round lines of the workers, left out of failure output.
readonly chatter='selftest: \(group\|seeds over\) .* ok$\|selftest: collectives round'
dump() {
  if [[ -s $tmp/coordinator.log ]]; then
    echo "---- coordinator log with its workers' stderr, without per-group and per-round lines" \
      "(last 80 lines): $tmp/coordinator.log" >&2
    grep -v "$chatter" "$tmp/coordinator.log" | tail -n 80 >&2
  fi
  local f
  for f in "$tmp"/*.out; do
    [[ -s $f ]] || continue
    echo "---- $(basename "$f") (last 40 lines)" >&2
    tail -n 40 "$f" >&2
  done
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop_watchdog
  # The logs as they were at the failure, before stopping adds to them.
  [[ $status -eq 0 ]] || dump
  stop_embedded_coordinator "${worker_pids[@]}"
  end_test selftest_example "$status"
}
trap_cleanup

ctl() { "$mimoctl_bin" "$@"; }

# Runs the example with `submit --wait`; checks exit 0, SUCCEEDED and every rank's passed line.
run_example() {
  local what=$1 job status=0
  timeout 45 "$mimoctl_bin" submit "$spec" --wait >"$tmp/$what.out" 2>&1 || status=$?
  job=$(grep -o 'j-[0-9]\{8\}-[0-9]\{6\}' "$tmp/$what.out" | head -n 1) || true
  [[ $status -eq 0 ]] || {
    [[ -n $job ]] && ctl logs "$job" --tail 60 >&2
    fail "$what: mimoctl submit --wait exited $status (job ${job:-none}), expected 0"
  }
  [[ -n $job ]] || fail "$what: no job id in the output of mimoctl submit"
  local state
  state=$(job_state "$job")
  [[ $state == JOB_STATE_SUCCEEDED ]] ||
    fail "$what: job $job is $state, expected JOB_STATE_SUCCEEDED"
  ctl logs "$job" >"$tmp/$what.logs"
  local rank
  for ((rank = 0; rank < workers; rank++)); do
    grep -q "^\[rank $rank\] selftest: passed" "$tmp/$what.logs" || {
      grep "^\[rank $rank\]" "$tmp/$what.logs" | tail -n 20 >&2
      fail "$what: job $job has no 'selftest: passed' line for rank $rank"
    }
  done
  log "$what: job $job SUCCEEDED, all $workers ranks passed"
}

# --- Start the coordinator with its own CPU workers (embedded mode).
start_embedded_coordinator "$workers"

# --- 1. The example, as a user runs it.
run_example first

# --- 2. A long soak, cancelled while RUNNING.
long_spec=$tmp/selftest-long.yaml
sed -e 's/^name: selftest-cpu$/name: selftest-cpu-long/' "$spec" >"$long_spec"
printf 'selftest: {iterations: 1000000000}\n' >>"$long_spec"
ctl validate "$long_spec" >/dev/null || fail "the soak spec $long_spec does not validate"
ctl submit "$long_spec" >"$tmp/long.out" 2>&1 ||
  fail "submitting the soak spec failed: $(cat "$tmp/long.out")"
long_job=$(grep -o 'j-[0-9]\{8\}-[0-9]\{6\}' "$tmp/long.out" | head -n 1) || true
[[ -n $long_job ]] || fail "no job id in the output of mimoctl submit: $(cat "$tmp/long.out")"
ms=$(wait_state "$long_job" JOB_STATE_RUNNING 30)
log "soak job $long_job RUNNING after ${ms} ms"
# Let every rank get into its collectives rounds before cancelling.
for _ in $(seq 100); do
  ctl logs "$long_job" | grep -q 'selftest: collectives round 2 of' && break
  sleep 0.1
done
ctl cancel "$long_job" --reason "selftest_example_test" >/dev/null
ms=$(wait_state "$long_job" JOB_STATE_CANCELLED "$cancel_limit_s")
log "soak job $long_job CANCELLED ${ms} ms after the cancel"

# --- 3. The example again: every worker is free again.
run_example third

# --- 4. Shutdown: SIGTERM, exit 0, no mimo-worker left behind.
mapfile -t worker_pids < <(children_of "$coordinator_pid")
for pid in "${worker_pids[@]}"; do
  is_worker "$pid" || fail "child $pid of the coordinator is not a mimo-worker"
done
[[ ${#worker_pids[@]} -eq $workers ]] ||
  fail "the coordinator has ${#worker_pids[@]} worker children, expected $workers"
kill -TERM "$coordinator_pid"
status=0
timeout_at=$((SECONDS + 20))
while kill -0 "$coordinator_pid" 2>/dev/null && ((SECONDS < timeout_at)); do sleep 0.1; done
kill -0 "$coordinator_pid" 2>/dev/null && fail "mimo-coordinator still runs 20 s after SIGTERM"
wait "$coordinator_pid" || status=$?
coordinator_pid=""
[[ $status -eq 0 ]] || fail "mimo-coordinator exited $status after SIGTERM, expected 0"
grep -q '^mimo-coordinator: stopped' "$tmp/coordinator.log" ||
  fail "the coordinator log has no 'mimo-coordinator: stopped' line"
left=()
for pid in "${worker_pids[@]}"; do is_worker "$pid" && left+=("$pid"); done
[[ ${#left[@]} -eq 0 ]] ||
  fail "mimo-worker processes left after the coordinator stopped: ${left[*]}"
log "coordinator stopped with exit 0, its ${#worker_pids[@]} workers gone"
echo "selftest_example: PASSED"
