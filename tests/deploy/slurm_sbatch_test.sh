#!/usr/bin/env bash
# deploy/slurm/mimo.sbatch on this host, Slurm played by two stand-ins (srun starts its tasks here
# with SLURM_LOCALID set and without a container; scontrol names this host): the script starts
# the coordinator and 8 CPU workers and runs examples/mimo-cpu-8.yaml (400 steps, checkpointing).
# `mimoctl checkpoint` makes the job save after a step and go on; then the time-limit signal
# (SIGUSR1, as --signal=B:USR1@300 sends it) makes it save after its next step and stop: the
# script exits 0 saying so, and the job is CANCELLED with the checkpoint as its reason. Run again
# with the spec ending 2 steps later, the script resumes from that checkpoint and the job
# succeeds.
#   slurm_sbatch_test.sh BIN_DIR SOURCE_DIR
set -euo pipefail
bin=$1 source_dir=$2
name=slurm-sbatch
tmp=$(mktemp -d -t mimo-slurm-test.XXXXXX)
# shellcheck source=../integration/job_lib.sh
source "$source_dir/tests/integration/job_lib.sh"
start_watchdog 150
script_pid="" coordinator_pid=""
log() { echo "[$name $(date +%T)] $*" >&2; }
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop_watchdog
  [[ $status -ne 0 ]] && tail -n 30 "$tmp"/*.out "$tmp"/state/*.log >&2
  # The script's EXIT trap stops what it started; KILL after 10 s.
  if [[ -n $script_pid ]] && kill -0 "$script_pid" 2>/dev/null; then
    kill -TERM "$script_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$script_pid" 2>/dev/null || break; sleep 0.1; done
  fi
  # Anything left of them: the programs whose command line names the coordinator's port.
  local f
  for f in /proc/[0-9]*/cmdline; do
    if [[ -n ${port:-} && $(tr "\0" " " 2>/dev/null <"$f") == *":$port "* ]]; then
      f=${f#/proc/}
      kill -KILL "${f%/cmdline}" 2>/dev/null || true
    fi
  done
  if [[ -n $coordinator_pid ]]; then kill -KILL "$coordinator_pid" 2>/dev/null || true; fi
  end_test "$name" "$status"
}
trap_cleanup

# Slurm's stand-ins.
mkdir -p "$tmp/slurm"
cat >"$tmp/slurm/scontrol" <<'SH'
#!/usr/bin/env bash
[[ $1 == show && $2 == hostnames ]] && echo 127.0.0.1
SH
cat >"$tmp/slurm/srun" <<'SH'
#!/usr/bin/env bash
# srun's options end at the first word that is not one; --ntasks[-per-node]=N tasks run here.
tasks=1
while [[ $# -gt 0 && $1 == --* ]]; do
  case $1 in --ntasks=* | --ntasks-per-node=*) tasks=${1#*=} ;; esac
  shift
done
pids=()
for ((i = 0; i < tasks; i++)); do SLURM_LOCALID=$i SLURM_PROCID=$i "$@" & pids+=($!); done
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM INT
status=0
for pid in "${pids[@]}"; do
  while :; do
    wait "$pid" && break
    status=$?
    kill -0 "$pid" 2>/dev/null || break
  done
done
exit "$status"
SH
chmod +x "$tmp/slurm/srun" "$tmp/slurm/scontrol"
export PATH=$tmp/slurm:$bin:$PATH

# The spec: the example for STEPS steps, logging every step, checkpoints only when asked and at
# the end.
spec() {
  sed -e "s|^  steps: .*|  steps: $1|" -e "s|^  log_interval: .*|  log_interval: 1|" \
    -e "s|^output_dir: .*|output_dir: $tmp/out|" "$source_dir/examples/mimo-cpu-8.yaml" \
    >"$tmp/spec.yaml"
  printf 'checkpointing:\n  dir: %s\n' "$tmp/ckpt" >>"$tmp/spec.yaml"
  grep -qF "steps: $1" "$tmp/spec.yaml" || fail "the spec has no 'steps: $1'"
}
port=$((20000 + RANDOM % 20000))
export MIMO_SPEC=$tmp/spec.yaml MIMO_STATE=$tmp/state MIMO_DEVICE=cpu MIMO_PORT=$port \
  MIMO_METRICS_PORT=$((port + 1)) SLURM_JOB_NODELIST=node1 SLURM_NTASKS_PER_NODE=8 \
  SLURM_JOB_NUM_NODES=1
export MIMO_SERVER=127.0.0.1:$port
ctl() { "$bin/mimoctl" "$@"; }

# sbatch ID: runs the script as Slurm job ID in the background ($tmp/ID.out).
sbatch() {
  SLURM_JOB_ID=$1 bash "$source_dir/deploy/slurm/mimo.sbatch" >"$tmp/$1.out" 2>&1 &
  script_pid=$!
}
# The job's state and reason in the database Slurm job ID left, through a coordinator of its own.
ended_job() {
  "$bin/mimo-coordinator" --listen 127.0.0.1:0 --db "$tmp/state/mimo-$1.db" --metrics-listen "" \
    >"$tmp/reader-$1.log" 2>&1 &
  coordinator_pid=$!
  MIMO_SERVER=127.0.0.1:$(coordinator_port "$tmp/reader-$1.log" "$coordinator_pid")
  ctl get "$2"
  ctl logs "$2" >"$tmp/$1.logs"
  kill -TERM "$coordinator_pid"
  wait "$coordinator_pid" || true
  coordinator_pid=""
}
# Waits up to 60 s for the script to end; sets status to its exit status.
wait_script() {
  for _ in $(seq 600); do kill -0 "$script_pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$script_pid" 2>/dev/null && fail "mimo.sbatch did not end within 60 s"
  status=0
  wait "$script_pid" || status=$?
  script_pid=""
}

spec 400
sbatch 4001
job=""
for _ in $(seq 600); do
  job=$(sed -n 's/^mimo.sbatch: job \(j-[0-9-]*\) on .*/\1/p' "$tmp/4001.out")
  [[ -n $job ]] && break
  sleep 0.1
done
[[ -n $job ]] || fail "mimo.sbatch named no job: $(cat "$tmp/4001.out")"
log "job $job; waiting for step 2"
step=$(wait_step "$job" 2)
# A save off the schedule first: the job saves after a step and goes on.
ctl checkpoint "$job" --reason "a test" >/dev/null
for _ in $(seq 600); do
  [[ -s $tmp/ckpt/latest_checkpointed_iteration.txt ]] && break
  sleep 0.1
done
first=$(cat "$tmp/ckpt/latest_checkpointed_iteration.txt" 2>/dev/null) ||
  fail "job $job saved no checkpoint within 60 s of mimoctl checkpoint"
[[ $(job_state "$job") == JOB_STATE_RUNNING ]] || fail "job $job stopped after a plain checkpoint"
step=$first
log "job $job saved iteration $first on request and runs on"
log "the time limit nears (SIGUSR1) at step $step"
kill -USR1 "$script_pid"
wait_script
[[ $status == 0 ]] || fail "mimo.sbatch exited $status after the time-limit signal"
grep -q "saved a checkpoint and stopped before the time limit" "$tmp/4001.out" ||
  fail "mimo.sbatch did not say the job stopped after a checkpoint"
saved=$(cat "$tmp/ckpt/latest_checkpointed_iteration.txt")
((saved > first && saved < 400)) ||
  fail "the checkpoint is of iteration $saved (the one asked for first: $first)"
iter=$(printf 'iter_%07d' "$saved")
ended_job 4001 "$job" >"$tmp/4001.job"
grep -q "CANCELLED" "$tmp/4001.job" || fail "job $job did not end CANCELLED: $(cat "$tmp/4001.job")"
grep -q "reason: stopped after saving checkpoint $tmp/ckpt/$iter as requested: Slurm job 4001 reaches its time limit" \
  "$tmp/4001.job" || fail "job $job's reason names no checkpoint: $(cat "$tmp/4001.job")"
log "job $job saved $iter and stopped"

spec $((saved + 2))
sbatch 4002
wait_script
[[ $status == 0 ]] || fail "the second mimo.sbatch exited $status"
job=$(sed -n 's/^mimo.sbatch: job \(j-[0-9-]*\) on .*/\1/p' "$tmp/4002.out")
ended_job 4002 "$job" >"$tmp/4002.job"
grep -q "SUCCEEDED" "$tmp/4002.job" || fail "job $job did not succeed: $(cat "$tmp/4002.job")"
grep -q "resumed from $tmp/ckpt/$iter after iteration $saved" "$tmp/4002.logs" ||
  fail "job $job did not resume from $iter"
echo "$name: PASSED"
