# shellcheck shell=bash
# Shared by the integration tests (sourced): fail, their watchdog and traps, the coordinator's
# port, stopping an embedded-mode coordinator and its workers, following a job through mimoctl.
# The caller defines ctl (mimoctl with its server), log, and cleanup for trap_cleanup.

# The job's state, from `mimoctl get JOB -o json` ("JOB_STATE_...").
job_state() {
  ctl get "$1" -o json | sed -n 's/^ *"state": "\(JOB_STATE_[A-Z]*\)".*/\1/p' | head -n 1
}

# Waits until JOB is in STATE, for at most SECONDS; prints how long it took (ms). Fails at once
# when the job ends in another state.
wait_state() {
  local job=$1 want=$2 seconds=$3 state="" start now
  start=$(date +%s%N)
  while :; do
    state=$(job_state "$job") || true
    now=$(date +%s%N)
    [[ $state == "$want" ]] && { echo $(((now - start) / 1000000)); return 0; }
    case $state in
      JOB_STATE_SUCCEEDED | JOB_STATE_FAILED | JOB_STATE_CANCELLED)
        ctl get "$job" >&2 || true
        fail "job $job ended $state while waiting for $want" ;;
    esac
    ((now - start < seconds * 1000000000)) || {
      ctl get "$job" >&2 || true
      fail "job $job still ${state:-in an unknown state} after ${seconds}s, expected $want"
    }
    sleep 0.1
  done
}

# Waits until JOB has reported step STEP or a later one, for at most 60 s; prints the step.
wait_step() {
  local job=$1 want=$2 step=0
  for _ in $(seq 600); do
    step=$(ctl get "$job" -o json | sed -n 's/^ *"step": "\([0-9]*\)".*/\1/p' | head -n 1)
    ((${step:-0} >= want)) && { echo "$step"; return 0; }
    sleep 0.1
  done
  fail "job $job did not reach step $want in 60 s"
}

# Starts the watchdog: after SECONDS it SIGTERMs this script, whose EXIT trap then cleans up (a
# deadline below ctest's TIMEOUT, whose SIGKILL would leave everything behind). Sets watchdog_pid;
# the trap stops it with `kill "$watchdog_pid"`.
start_watchdog() {
  local seconds=$1
  exec 3>&2 # the watchdog's message; nothing of it holds ctest's output pipe open
  (
    sleep "$seconds" &
    # shellcheck disable=SC2064  # $! now: the sleep to stop with the watchdog.
    trap "kill $! 2>/dev/null; exit 0" TERM
    wait $! && echo "FAIL: the test ran past its ${seconds} s deadline" >&3 && kill -TERM $$
  ) >/dev/null 2>&1 &
  # shellcheck disable=SC2034  # the caller's trap stops it
  watchdog_pid=$!
}

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# The first thing a cleanup does: stop the watchdog (start_watchdog).
stop_watchdog() {
  kill "$watchdog_pid" 2>/dev/null || true
  wait "$watchdog_pid" 2>/dev/null || true
}

# Makes the caller's `cleanup` the EXIT trap, SIGINT and SIGTERM exiting through it (130, 143).
trap_cleanup() {
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# The end of a cleanup: exits STATUS, removing $tmp, or keeping it with a FAILED line naming the
# test NAME unless STATUS is 0 or SKIP (a skip code).
end_test() {
  local name=$1 status=$2 skip=${3:-0}
  # shellcheck disable=SC2154  # the caller's temporary folder
  if [[ $status -ne 0 && $status -ne $skip ]]; then
    echo "$name: FAILED (exit $status); files kept in $tmp" >&2
  else
    rm -rf "$tmp"
  fi
  exit "$status"
}

# Prints the port of the coordinator PID from its LOG ("mimo-coordinator: serving on port N"),
# waiting 20 s at most; fails when it exits first.
coordinator_port() {
  local log=$1 pid=$2 port=""
  for _ in $(seq 200); do
    port=$(sed -n 's/^mimo-coordinator: serving on port \([0-9]*\).*/\1/p' "$log")
    [[ -n $port ]] && { echo "$port"; return 0; }
    kill -0 "$pid" 2>/dev/null || fail "mimo-coordinator exited before serving"
    sleep 0.1
  done
  fail "mimo-coordinator did not print its port within 20 s"
}

# The pids whose parent is PID, from /proc (no procps needed).
children_of() {
  local f stat ppid
  for f in /proc/[0-9]*/stat; do
    { stat=$(<"$f"); } 2>/dev/null || continue
    read -r _ ppid _ <<<"${stat##*) }" # after "PID (COMM) ": state, ppid, ...
    if [[ $ppid == "$1" ]]; then
      f=${f#/proc/}
      echo "${f%/stat}"
    fi
  done
}

# True while PID runs the program mimo-worker (not a reused pid).
is_worker() { [[ $(tr "\0" " " 2>/dev/null <"/proc/$1/cmdline") == *mimo-worker* ]]; }

# Starts $coordinator_bin with WORKERS CPU workers of its own ($worker_bin; embedded mode), its
# database and log (with the workers' stderr) in $tmp; sets coordinator_pid and exports
# MIMO_SERVER once it serves.
start_embedded_coordinator() {
  log "starting mimo-coordinator with $1 CPU workers"
  # shellcheck disable=SC2154  # the caller's programs and temporary folder
  "$coordinator_bin" --listen 127.0.0.1:0 --db "$tmp/mimo.db" --metrics-listen "" \
    --cpu-workers "$1" --worker-binary "$worker_bin" >"$tmp/coordinator.log" 2>&1 &
  coordinator_pid=$!
  local port
  port=$(coordinator_port "$tmp/coordinator.log" "$coordinator_pid")
  export MIMO_SERVER=127.0.0.1:$port
  log "coordinator pid $coordinator_pid serving on $MIMO_SERVER"
}

# For an embedded-mode coordinator ($coordinator_pid, started with --cpu-workers): SIGTERM, 10 s
# to exit, then SIGKILL; then SIGKILL any of its mimo-worker children, and of the PIDS given,
# still there (they die with the coordinator, PDEATHSIG: these are only the ones that did not).
# Clears coordinator_pid.
stop_embedded_coordinator() {
  local pid children=("$@")
  if [[ -n $coordinator_pid ]] && kill -0 "$coordinator_pid" 2>/dev/null; then
    mapfile -t -O "${#children[@]}" children < <(children_of "$coordinator_pid")
    kill -TERM "$coordinator_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$coordinator_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$coordinator_pid" 2>/dev/null || true
    wait "$coordinator_pid" 2>/dev/null || true
  fi
  coordinator_pid=""
  for pid in "${children[@]}"; do
    if is_worker "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
}

# The cleanup of a test on an embedded coordinator (start_embedded_coordinator; the caller's
# $name and $tmp): stops the watchdog, on failure shows the end of the coordinator's log (its
# workers' stderr included), stops the coordinator and its workers, then end_test. Call it first
# thing in the caller's `cleanup`, so that it sees the exit status.
embedded_cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop_watchdog
  if [[ $status -ne 0 && -s $tmp/coordinator.log ]]; then
    echo "---- coordinator log with its workers' stderr (last 60 lines): $tmp/coordinator.log" >&2
    tail -n 60 "$tmp/coordinator.log" >&2
  fi
  # shellcheck disable=SC2119  # no pids of its own to add
  stop_embedded_coordinator
  end_test "$name" "$status"
}

# run_job SPEC EXPECTED_STATE: submits SPEC with $mimoctl_bin and waits for its end (submit --wait
# can return between attempts, a failed one restarting); fails unless the job ends in
# EXPECTED_STATE; prints the job id.
run_job() {
  local out=$tmp/$(basename "$1" .yaml).submit status=0 job state
  timeout 90 "$mimoctl_bin" submit "$1" --wait >"$out" 2>&1 || status=$?
  job=$(grep -o 'j-[0-9]\{8\}-[0-9]\{6\}' "$out" | head -n 1) || true
  [[ -n $job ]] || { cat "$out" >&2; fail "no job id in the output of mimoctl submit $1"; }
  state=$(job_state "$job")
  if [[ $state != JOB_STATE_SUCCEEDED && $state != JOB_STATE_FAILED &&
    $state != JOB_STATE_CANCELLED ]]; then
    wait_state "$job" "$2" 60 >/dev/null
    state=$(job_state "$job")
  fi
  if [[ $state != "$2" ]]; then
    cat "$out" >&2
    "$mimoctl_bin" logs "$job" --tail 40 >&2 || true
    fail "job $job ($1) is $state, expected $2"
  fi
  echo "$job"
}

# job_losses RUN: the "step loss" lines of $tmp/RUN/metrics.csv.
job_losses() {
  local csv=$tmp/$1/metrics.csv column
  [[ -s $csv ]] || fail "$csv is missing"
  column=$(head -n 1 "$csv" | tr ',' '\n' | grep -n '^loss$' | cut -d: -f1)
  tail -n +2 "$csv" | cut -d, -f1,"$column" | tr ',' ' '
}
