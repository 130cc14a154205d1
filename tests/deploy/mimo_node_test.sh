#!/usr/bin/env bash
# deploy/docker/mimo-node, the containers' entrypoint, on this host: a coordinator in cluster
# mode, then `mimo-node` with MIMO_DEVICE=cpu MIMO_WORKERS=8 (the programs on PATH, as in the
# image) whose workers register and run examples/selftest-cpu.yaml to success, each with the
# torch-style RANK and LOCAL_RANK it was given; SIGTERM to mimo-node stops every worker and
# mimo-node exits 143 (a pod stopped so is replaced); a missing MIMO_COORDINATOR is a clear error.
#   mimo_node_test.sh BIN_DIR SOURCE_DIR
set -euo pipefail
bin=$1 source_dir=$2
name=mimo-node
tmp=$(mktemp -d -t mimo-node-test.XXXXXX)
# shellcheck source=../integration/job_lib.sh
source "$source_dir/tests/integration/job_lib.sh"
start_watchdog 60
coordinator_pid="" node_pid=""
log() { echo "[$name $(date +%T)] $*" >&2; }
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop_watchdog
  [[ $status -ne 0 ]] && tail -n 30 "$tmp"/*.log >&2
  if [[ -n $node_pid ]]; then kill -KILL "$node_pid" 2>/dev/null; fi
  if [[ -n $coordinator_pid ]]; then
    kill -KILL "$coordinator_pid" 2>/dev/null
    wait "$coordinator_pid" 2>/dev/null || true
  fi
  for pid in $workers; do if is_worker "$pid"; then kill -KILL "$pid" 2>/dev/null; fi; done
  end_test "$name" "$status"
}
port="" workers=""
trap_cleanup
export PATH=$bin:$PATH

status=0
out=$(env -u MIMO_COORDINATOR "$source_dir/deploy/docker/mimo-node" 2>&1) || status=$?
[[ $status -ne 0 && $out == *"set MIMO_COORDINATOR"* ]] ||
  fail "mimo-node without MIMO_COORDINATOR: exit $status, '$out'"

"$bin/mimo-coordinator" --listen 127.0.0.1:0 --db "$tmp/mimo.db" --metrics-listen "" \
  >"$tmp/coordinator.log" 2>&1 &
coordinator_pid=$!
port=$(coordinator_port "$tmp/coordinator.log" "$coordinator_pid")
export MIMO_SERVER=127.0.0.1:$port
MIMO_COORDINATOR=$MIMO_SERVER MIMO_DEVICE=cpu MIMO_WORKERS=8 MIMO_HOST=node-0 \
  MIMO_LISTEN_ADDRESS=127.0.0.1 NODE_RANK=1 "$source_dir/deploy/docker/mimo-node" \
  >"$tmp/node.log" 2>&1 &
node_pid=$!
timeout 40 "$bin/mimoctl" submit "$source_dir/examples/selftest-cpu.yaml" --wait >"$tmp/submit.log" 2>&1 ||
  fail "the selftest on mimo-node's workers did not succeed: $(tail -n 5 "$tmp/submit.log")"
log "selftest SUCCEEDED on mimo-node's 8 workers"
workers=$(children_of "$node_pid")
# Each worker got RANK = NODE_RANK * 8 + LOCAL_RANK.
for pid in $(children_of "$node_pid"); do
  is_worker "$pid" || continue
  env=$(tr '\0' '\n' <"/proc/$pid/environ")
  local_rank=$(sed -n 's/^LOCAL_RANK=//p' <<<"$env")
  rank=$(sed -n 's/^RANK=//p' <<<"$env")
  [[ -n $local_rank && $rank == $((8 + local_rank)) ]] ||
    fail "worker $pid has RANK '$rank' and LOCAL_RANK '$local_rank'"
done
kill -TERM "$node_pid"
for _ in $(seq 100); do kill -0 "$node_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$node_pid" 2>/dev/null && fail "mimo-node did not exit within 10 s of SIGTERM"
wait "$node_pid" && code=0 || code=$?
node_pid=""
[[ $code -eq 143 ]] || fail "mimo-node exited $code after SIGTERM, expected 143"
for pid in $workers; do
  ! is_worker "$pid" || fail "worker $pid outlived mimo-node"
done
log "SIGTERM: mimo-node and its workers stopped, exit 143"
echo "$name: PASSED"
