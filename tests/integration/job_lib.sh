# Shared by the integration tests (sourced): following a job through mimoctl. The caller defines
# ctl (mimoctl with its server) and fail (print and exit 1).

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
