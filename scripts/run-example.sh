#!/usr/bin/env bash
# The main job: installs what is missing, builds, starts a local coordinator that runs its own
# workers (embedded mode), submits a job spec, follows it to its end (progress, loss, throughput),
# prints its history, and stops the coordinator. Exits 0 only if the job succeeded. The default
# spec trains the bundled MIMO example on the synthetic data: examples/mimo-gpu-2.yaml on two GPU
# workers when the machine has two NVIDIA GPUs or more, else examples/mimo-cpu-8.yaml on eight CPU
# workers (about a minute on two cores).
#   scripts/run-example.sh [SPEC]
# The coordinator's log (with the workers' stderr) is kept in a temporary folder, printed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh >&2
bin=${MIMO_BUILD_DIR:-build}/bin
gpus=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU ' || true)
default=examples/mimo-cpu-8.yaml
[[ ${gpus:-0} -ge 2 ]] && default=examples/mimo-gpu-2.yaml
spec=${1:-$default}

# Workers: one per rank of the spec's layout, on the device kind it asks for.
workers=$("$bin/mimoctl" plan "$spec" | sed -n '1s/^world_size \([0-9]*\),.*/\1/p')
device_flag=--cpu-workers
grep -q 'DEVICE_KIND_CUDA' "$spec" && device_flag=--gpu-workers

work=$(mktemp -d -t mimo-example.XXXXXX)
"$bin/mimo-coordinator" --listen 127.0.0.1:0 --db "$work/mimo.db" --metrics-listen "" \
  "$device_flag" "$workers" 2>"$work/coordinator.log" &
coordinator=$!
stop() {
  kill -TERM "$coordinator" 2>/dev/null && wait "$coordinator" || true
  echo "coordinator log: $work/coordinator.log" >&2
}
trap stop EXIT

port=""
for _ in $(seq 100); do
  port=$(sed -n 's/^mimo-coordinator: serving on port \([0-9]*\).*/\1/p' "$work/coordinator.log")
  [[ -n $port ]] && break
  kill -0 "$coordinator" 2>/dev/null || { cat "$work/coordinator.log" >&2; exit 1; }
  sleep 0.1
done
[[ -n $port ]] || { echo "the coordinator did not start" >&2; exit 1; }
export MIMO_SERVER=127.0.0.1:$port

status=0
"$bin/mimoctl" submit "$spec" --wait --request-id "run-example" || status=$?
job=$("$bin/mimoctl" list -o json | sed -n 's/.*"id": "\(j-[0-9-]*\)".*/\1/p' | head -1)
if [[ -n $job ]]; then
  "$bin/mimoctl" events "$job"
  [[ $status -ne 0 ]] && "$bin/mimoctl" logs "$job" --tail 40 >&2
fi
exit $status
