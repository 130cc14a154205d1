#!/usr/bin/env bash
# Cluster mode across hosts: coordinator and two nodes of 4 workers in network namespaces.
#   multihost_test.sh MIMO_COORDINATOR MIMO_WORKER MIMOCTL SOURCE_DIR
# Namespaces <prefix>-coord (10.213.N.1: the coordinator, mimoctl), <prefix>-a (10.213.N.2: workers
# node-a 0..3), <prefix>-b (10.213.N.3: workers node-b 0..3), each with a veth pair whose other end
# is a port of a bridge in <prefix>-br, so the rendezvous and the Gloo connections cross real
# interfaces. Runs examples/selftest-cpu.yaml and checks: it succeeds, ranks 0-3 ran on node-a and
# 4-7 on node-b in local-index order, and the veth byte counters grew (to and from the coordinator,
# and between node-a and node-b: the encoder-language links). Trains the main example
# (examples/mimo-cpu-8.yaml, 5 steps) across the nodes to completion. Then it kills (-9) the worker of
# rank 5 (node-b slot 1; coordinator --heartbeat-timeout 3s): mid-job, the job must fail within the
# heartbeat timeout and the coordinator drop the worker; just before a submit, the job must fail
# with HEARTBEAT_TIMEOUT naming rank 5. Needs root and `ip netns`: exits 77 (skipped) otherwise.
# Every exit path stops the processes and deletes the namespaces (and their veths) it created.
set -euo pipefail

if [[ $# -ne 4 ]]; then
  echo "usage: $0 MIMO_COORDINATOR MIMO_WORKER MIMOCTL SOURCE_DIR" >&2
  exit 2
fi
coordinator_bin=$1 worker_bin=$2 mimoctl_bin=$3 source_dir=$4
spec=$source_dir/examples/selftest-cpu.yaml
readonly workers_per_node=4 heartbeat_timeout_s=3
readonly min_node_bytes=$((100 * 1024)) min_cross_bytes=$((64 * 1024))
readonly skip_code=77

log() { echo "[multihost $(date +%T)] $*" >&2; }
skip() {
  echo "SKIPPED: multihost_test: $*" >&2
  exit "$skip_code"
}

# --- Preconditions: root, iproute2, network namespaces.
[[ $(id -u) -eq 0 ]] || skip "needs root to create network namespaces (running as uid $(id -u))"
command -v ip >/dev/null || skip "needs the 'ip' command (iproute2)"

# Unique per run: concurrent runs (and leftovers of a killed one) do not collide. Interface names
# live inside the namespaces, so they need no prefix.
prefix=mimo$$
ns_coord=$prefix-coord ns_a=$prefix-a ns_b=$prefix-b ns_br=$prefix-br
# Inside isolated namespaces an address can clash with nothing; the third octet just varies.
net=10.213.$(($$ % 250))
addr_coord=$net.1 addr_a=$net.2 addr_b=$net.3

tmp=$(mktemp -d -t mimo-multihost.XXXXXX)
# shellcheck source=job_lib.sh
source "$(dirname "$0")/job_lib.sh"
# A deadline of its own, below ctest's TIMEOUT.
start_watchdog 90
created_ns=()
pids=()            # every process this test started, by pid
coordinator_pid=""
declare -A worker_pid # "a0".."b3" -> pid

# Per-group, per-seed and per-round lines of the workers, left out of failure output.
readonly chatter='selftest: \(group\|seeds over\) .* ok$\|selftest: collectives round'
dump() {
  echo "---- coordinator log (last 60 lines): $tmp/coordinator.log" >&2
  tail -n 60 "$tmp/coordinator.log" >&2 2>/dev/null || true
  local f
  for f in "$tmp"/worker-*.log "$tmp"/*.out; do
    [[ -s $f ]] || continue
    echo "---- $(basename "$f") (last 25 lines, without per-group and per-round lines)" >&2
    grep -v "$chatter" "$f" | tail -n 25 >&2
  done
}

cleanup() {
  local status=$? pid ns
  trap - EXIT INT TERM
  stop_watchdog
  set +e
  # The logs as they were at the failure, before stopping adds to them.
  if [[ $status -ne 0 && $status -ne $skip_code ]]; then dump; fi
  # SIGTERM everything we started, then SIGKILL what is left after 5 s.
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for _ in $(seq 50); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
  # Anything still inside our namespaces is ours too; then the veths, then the namespaces.
  for ns in "${created_ns[@]}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
  done
  for ns in "${created_ns[@]}"; do
    for dev in veth0 br-coord br-a br-b br0; do
      ip -n "$ns" link del "$dev" 2>/dev/null
    done
    ip netns del "$ns" 2>/dev/null || echo "warning: could not delete namespace $ns" >&2
  done
  local left
  left=$(ip netns list 2>/dev/null | grep -c "^$prefix-" || true)
  [[ $left -eq 0 ]] || echo "warning: $left namespaces $prefix-* left behind" >&2
  end_test multihost "$status" "$skip_code"
}
trap_cleanup

# --- The network: a bridge in ns br, one veth pair per node namespace, enslaved to it.
add_ns() {
  local err
  if ! err=$(ip netns add "$1" 2>&1); then
    # The first one tells whether namespaces can be made here at all; a later one is an error.
    [[ ${#created_ns[@]} -eq 0 ]] && skip "'ip netns add $1' failed: $err"
    fail "'ip netns add $1' failed: $err"
  fi
  created_ns+=("$1")
  ip -n "$1" link set lo up
}
add_ns "$ns_br"
add_ns "$ns_coord"
add_ns "$ns_a"
add_ns "$ns_b"
ip -n "$ns_br" link add br0 type bridge
ip -n "$ns_br" link set br0 up
# Node namespace, its bridge port, its address.
for node in "$ns_coord br-coord $addr_coord" "$ns_a br-a $addr_a" "$ns_b br-b $addr_b"; do
  read -r ns port addr <<<"$node"
  ip -n "$ns_br" link add "$port" type veth peer name veth0 netns "$ns"
  ip -n "$ns_br" link set "$port" master br0
  ip -n "$ns_br" link set "$port" up
  ip -n "$ns" addr add "$addr/24" dev veth0
  ip -n "$ns" link set veth0 up
done
log "namespaces $ns_coord ($addr_coord), $ns_a ($addr_a), $ns_b ($addr_b) bridged in $ns_br"

in_ns() {
  local ns=$1
  shift
  ip netns exec "$ns" "$@"
}
ctl() { in_ns "$ns_coord" "$mimoctl_bin" "$@"; }

# Bytes received + sent on veth0 of a namespace (`ip netns exec` mounts the namespace's /sys).
veth_bytes() {
  local rx tx
  rx=$(in_ns "$1" cat /sys/class/net/veth0/statistics/rx_bytes)
  tx=$(in_ns "$1" cat /sys/class/net/veth0/statistics/tx_bytes)
  echo $((rx + tx))
}

# --- The coordinator (cluster mode) in ns coord.
# `ip netns exec` execs the program: $! is its pid (a shell function here would be a subshell's).
ip netns exec "$ns_coord" "$coordinator_bin" --listen "$addr_coord:0" --db "$tmp/mimo.db" \
  --metrics-listen "$addr_coord:0" --heartbeat-timeout "${heartbeat_timeout_s}s" \
  >"$tmp/coordinator.log" 2>&1 &
coordinator_pid=$!
pids+=("$coordinator_pid")
port=$(coordinator_port "$tmp/coordinator.log" "$coordinator_pid")
metrics_port=$(sed -n 's/^mimo-coordinator: serving on .*, metrics on port \([0-9]*\).*/\1/p' \
  "$tmp/coordinator.log")
[[ -n $metrics_port ]] || fail "mimo-coordinator printed no metrics port"
export MIMO_SERVER=$addr_coord:$port
log "coordinator pid $coordinator_pid serving on $MIMO_SERVER"

# --- 4 workers per node namespace, registering across the bridge.
# start_worker a|b INDEX: starts worker node-a/node-b INDEX in its namespace.
start_worker() {
  local name=$1 i=$2 ns addr
  if [[ $name == a ]]; then ns=$ns_a addr=$addr_a; else ns=$ns_b addr=$addr_b; fi
  ip netns exec "$ns" "$worker_bin" --coordinator "$MIMO_SERVER" --host "node-$name" \
    --local-index "$i" --listen-address "$addr" --connect-timeout 20 \
    >>"$tmp/worker-$name$i.log" 2>&1 &
  worker_pid[$name$i]=$!
  pids+=("$!")
}
for name in a b; do
  for ((i = 0; i < workers_per_node; i++)); do start_worker "$name" "$i"; done
done
for key in "${!worker_pid[@]}"; do
  for _ in $(seq 200); do
    grep -q 'registered with the coordinator' "$tmp/worker-$key.log" && break
    kill -0 "${worker_pid[$key]}" 2>/dev/null || fail "worker $key exited before registering"
    sleep 0.1
  done
  grep -q 'registered with the coordinator' "$tmp/worker-$key.log" ||
    fail "worker $key did not register within 20 s"
done
log "8 workers registered: node-a pids ${worker_pid[a0]} ${worker_pid[a1]} ${worker_pid[a2]}" \
  "${worker_pid[a3]}, node-b pids ${worker_pid[b0]} ${worker_pid[b1]} ${worker_pid[b2]}" \
  "${worker_pid[b3]}"

# --- 1. The example across the two nodes.
declare -A before
for ns in "$ns_coord" "$ns_a" "$ns_b"; do before[$ns]=$(veth_bytes "$ns"); done
status=0
timeout 45 ip netns exec "$ns_coord" "$mimoctl_bin" submit "$spec" --wait \
  >"$tmp/example.out" 2>&1 || status=$?
job=$(grep -o 'j-[0-9]\{8\}-[0-9]\{6\}' "$tmp/example.out" | head -n 1) || true
if [[ $status -ne 0 ]]; then
  [[ -n $job ]] && ctl logs "$job" --tail 60 >&2
  fail "mimoctl submit --wait exited $status (job ${job:-none}), expected 0"
fi
[[ -n $job ]] || fail "no job id in the output of mimoctl submit"
state=$(job_state "$job")
[[ $state == JOB_STATE_SUCCEEDED ]] || fail "job $job is $state, expected JOB_STATE_SUCCEEDED"
declare -A grew
for ns in "$ns_coord" "$ns_a" "$ns_b"; do grew[$ns]=$(($(veth_bytes "$ns") - before[$ns])); done
log "job $job SUCCEEDED; veth0 bytes (rx+tx) during it: coord ${grew[$ns_coord]}," \
  "node-a ${grew[$ns_a]}, node-b ${grew[$ns_b]}"

# Placement: each rank's first line says where it runs:
#   [rank R] job J attempt 1: rank R of 8 (module M) on worker W (HOST, slot I)
ctl logs "$job" >"$tmp/example.logs"
for ((rank = 0; rank < 2 * workers_per_node; rank++)); do
  if ((rank < workers_per_node)); then
    want="node-a, slot $rank"
  else
    want="node-b, slot $((rank - workers_per_node))"
  fi
  line=$(grep "^\[rank $rank\] job $job attempt 1: rank $rank of 8 " "$tmp/example.logs" |
    head -n 1) || true
  [[ -n $line ]] || fail "job $job has no placement line for rank $rank"
  [[ $line == *"($want)" ]] || fail "rank $rank should run on ($want): $line"
  grep -q "^\[rank $rank\] selftest: passed" "$tmp/example.logs" ||
    fail "job $job has no 'selftest: passed' line for rank $rank"
done
log "ranks 0-3 ran on node-a slots 0-3, ranks 4-7 on node-b slots 0-3, each passed"

# Traffic: both nodes exchanged a meaningful amount over their veth. node-a <-> node-b bytes are
# counted on both of their veths, node <-> coordinator bytes on the coordinator's and one node's:
# (a + b - coord) / 2 is what went between the nodes (the Gloo links between modules).
for ns in "$ns_a" "$ns_b"; do
  ((grew[$ns] > min_node_bytes)) ||
    fail "only ${grew[$ns]} bytes crossed veth0 of $ns during the job, expected > $min_node_bytes"
done
cross=$(((grew[$ns_a] + grew[$ns_b] - grew[$ns_coord]) / 2))
((cross > min_cross_bytes)) ||
  fail "only $cross bytes went between node-a and node-b (Gloo), expected > $min_cross_bytes"
log "traffic ok: ${cross} bytes between node-a and node-b," \
  "${grew[$ns_coord]} to and from the coordinator"

# --- 1b. The main example (the MIMO model: vision and audio encoders on node-a, the MoE language
# model dp 4 x ep 2 on node-b) trains 5 steps across the two nodes to completion.
train_spec=$tmp/mimo-cpu-8-multihost.yaml
sed -e 's/^name: .*/name: mimo-cpu-8-multihost/' -e 's/^  steps: .*/  steps: 5/' \
  -e 's/^  log_interval: .*/  log_interval: 1/' -e "s|^output_dir: .*|output_dir: $tmp/train|" \
  "$source_dir/examples/mimo-cpu-8.yaml" >"$train_spec"
grep -q '^  steps: 5$' "$train_spec" || fail "$train_spec: steps not set to 5"
status=0
timeout 60 ip netns exec "$ns_coord" "$mimoctl_bin" submit "$train_spec" --wait \
  >"$tmp/train.out" 2>&1 || status=$?
job=$(grep -o 'j-[0-9]\{8\}-[0-9]\{6\}' "$tmp/train.out" | head -n 1) || true
if [[ $status -ne 0 ]]; then
  [[ -n $job ]] && ctl logs "$job" --tail 60 >&2
  fail "the training job: mimoctl submit --wait exited $status (job ${job:-none}), expected 0"
fi
state=$(job_state "$job")
[[ $state == JOB_STATE_SUCCEEDED ]] || fail "training job $job is $state, expected SUCCEEDED"
ctl logs "$job" >"$tmp/train.logs"
grep -q "iteration        5/       5 .* lm loss: " "$tmp/train.logs" ||
  fail "training job $job logged no 5th iteration with a loss"
[[ $(grep -c "job succeeded" "$tmp/train.logs") -eq 8 ]] ||
  fail "not every rank of training job $job logged its success"
log "training job $job SUCCEEDED across the nodes:" \
  "$(grep -o 'iteration        5/.*lm loss: [^ ]*' "$tmp/train.logs" | sed 's/ |.*lm loss:/, loss/')"

# --- 2. A worker dies (kill -9) mid-job.
long_spec=$tmp/selftest-long.yaml
sed -e 's/^name: selftest-cpu$/name: selftest-cpu-long/' "$spec" >"$long_spec"
printf 'selftest: {iterations: 1000000000}\n' >>"$long_spec"

# The failure of JOB as "REASON|RANK|MESSAGE", from `mimoctl get -o json`.
job_failure() {
  ctl get "$1" -o json | sed -n '/^ *"failure": {/,/^ *}/p' >"$tmp/failure.json"
  local reason rank message
  reason=$(sed -n 's/^ *"reason": "\(.*\)",\{0,1\}$/\1/p' "$tmp/failure.json")
  rank=$(sed -n 's/^ *"rank": \(-\{0,1\}[0-9]*\),\{0,1\}$/\1/p' "$tmp/failure.json")
  message=$(sed -n 's/^ *"message": "\(.*\)",\{0,1\}$/\1/p' "$tmp/failure.json")
  echo "$reason|$rank|$message"
}

# kill -9 the worker of node-b slot 1 (rank 5 of the next or running job); sets killed_at (ns).
kill_victim() {
  local pid=${worker_pid[b1]}
  local cmdline
  cmdline=$(tr "\0" " " 2>/dev/null <"/proc/$pid/cmdline") || true
  [[ $cmdline == *mimo-worker*"--host node-b --local-index 1 "* ]] ||
    fail "pid $pid is not the worker node-b slot 1: $cmdline"
  kill -KILL "$pid"
  killed_at=$(date +%s%N)
  wait "$pid" 2>/dev/null || true # reaped here, without the shell's "Killed" notice
}

# The coordinator's mimo_workers gauge (registered live workers), from its /metrics (bash's
# /dev/tcp: no HTTP client needed).
live_workers() {
  # shellcheck disable=SC2016  # $0 and $1 expand in the inner bash.
  ip netns exec "$ns_coord" bash -c 'exec 3<>"/dev/tcp/$0/$1" &&
    printf "GET /metrics HTTP/1.0\r\nHost: $0\r\n\r\n" >&3 && cat <&3' \
    "$addr_coord" "$metrics_port" | sed -n 's/^mimo_workers \([0-9]*\).*/\1/p'
}

# 2a. Mid-run: the job fails at once (a peer sees the connection drop), and the coordinator drops
# the silent worker within the heartbeat timeout.
ctl submit "$long_spec" >"$tmp/long.out" 2>&1 || fail "submitting the long self-test failed"
long_job=$(grep -o 'j-[0-9]\{8\}-[0-9]\{6\}' "$tmp/long.out" | head -n 1) || true
[[ -n $long_job ]] || fail "no job id in the output of mimoctl submit"
wait_state "$long_job" JOB_STATE_RUNNING 30 >/dev/null
for _ in $(seq 100); do
  ctl logs "$long_job" --rank 5 | grep -q 'selftest: collectives round 2 of' && break
  sleep 0.1
done
ctl logs "$long_job" --rank 5 | grep -q "rank 5 of 8 .*(node-b, slot 1)" ||
  fail "rank 5 of job $long_job is not on node-b slot 1"
[[ $(live_workers) == 8 ]] || fail "the coordinator counts $(live_workers) live workers, expected 8"
log "job $long_job RUNNING; kill -9 worker node-b slot 1 (pid ${worker_pid[b1]}, rank 5)"
kill_victim
ms=$(wait_state "$long_job" JOB_STATE_FAILED $((heartbeat_timeout_s + 2)))
IFS='|' read -r reason failed_rank message <<<"$(job_failure "$long_job")"
log "job $long_job FAILED ${ms} ms after the kill: $reason, rank $failed_rank: $message"
((ms <= heartbeat_timeout_s * 1000 + 1000)) ||
  fail "job $long_job failed ${ms} ms after the kill, expected within the" \
    "${heartbeat_timeout_s}s heartbeat timeout (+1 s)"
[[ $reason == WORKER_FAILED || $reason == HEARTBEAT_TIMEOUT ]] ||
  fail "job $long_job failed with reason '$reason', expected WORKER_FAILED or" \
    "HEARTBEAT_TIMEOUT"
until [[ $(live_workers) == 7 ]]; do
  (($(date +%s%N) - killed_at < (heartbeat_timeout_s + 2) * 1000000000)) ||
    fail "the coordinator still counts $(live_workers) live workers" \
      "$((heartbeat_timeout_s + 2)) s after the kill, expected 7"
  sleep 0.1
done
log "the coordinator dropped the dead worker" \
  "$((($(date +%s%N) - killed_at) / 1000000)) ms after the kill"
# The first survivor to see the dead peer's connection close fails the attempt; once the dead
# worker's heartbeat times out, the coordinator names rank 5 as the cause (the failure and a note).
IFS='|' read -r reason failed_rank message <<<"$(job_failure "$long_job")"
ctl events "$long_job" >"$tmp/long.events"
[[ $failed_rank == 5 ]] ||
  fail "job $long_job names rank $failed_rank, not the dead rank 5 ($reason: $message)"
grep -q 'rank 5 (worker .*node-b' "$tmp/long.events" ||
  fail "the events of job $long_job do not name rank 5: $(cat "$tmp/long.events")"
log "the failure of job $long_job names the dead rank 5: $reason: $message"

# 2b. Between jobs: a worker killed just before a submit is assigned rank 5, never starts it, and
# the job fails with HEARTBEAT_TIMEOUT naming rank 5, within the heartbeat timeout.
start_worker b 1
for _ in $(seq 100); do [[ $(live_workers) == 8 ]] && break; sleep 0.1; done
[[ $(live_workers) == 8 ]] || fail "the restarted worker node-b slot 1 did not register"
# The survivors of job $long_job are idle again once they logged its end (and then reported it).
for key in a0 a1 a2 a3 b0 b2 b3; do
  for _ in $(seq 100); do
    grep -q "^\[$long_job/1 rank [0-9]*\] job \(stopped\|failed\)" "$tmp/worker-$key.log" && break
    sleep 0.1
  done
  grep -q "^\[$long_job/1 rank [0-9]*\] job \(stopped\|failed\)" "$tmp/worker-$key.log" ||
    fail "worker $key did not end its rank of job $long_job within 10 s"
done
sleep 0.5
kill_victim
ctl submit "$long_spec" >"$tmp/next.out" 2>&1 || fail "submitting the long self-test again failed"
next_job=$(grep -o 'j-[0-9]\{8\}-[0-9]\{6\}' "$tmp/next.out" | head -n 1) || true
[[ -n $next_job ]] || fail "no job id in the output of mimoctl submit"
wait_state "$next_job" JOB_STATE_FAILED $((heartbeat_timeout_s + 2)) >/dev/null
ms=$((($(date +%s%N) - killed_at) / 1000000))
IFS='|' read -r reason failed_rank message <<<"$(job_failure "$next_job")"
log "job $next_job FAILED ${ms} ms after the kill: $reason, rank $failed_rank: $message"
((ms <= heartbeat_timeout_s * 1000 + 1000)) ||
  fail "job $next_job failed ${ms} ms after the kill, expected within the" \
    "${heartbeat_timeout_s}s heartbeat timeout (+1 s)"
[[ $reason == HEARTBEAT_TIMEOUT ]] ||
  fail "job $next_job failed with reason '$reason', expected HEARTBEAT_TIMEOUT"
[[ $failed_rank == 5 ]] ||
  fail "job $next_job failed naming rank $failed_rank, expected the dead rank 5"
[[ $message == *"rank 5 "*"node-b"* ]] ||
  fail "the failure message of job $next_job does not name rank 5 on node-b: $message"
echo "multihost: PASSED"
