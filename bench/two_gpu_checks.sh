#!/bin/bash
# Everything issues 6, 7 and 8 ask of a host with two NVLink GPUs: the multi-GPU tests, then the
# figures for bench/RESULTS.md (parallel_bench's DP/TP/PP step times with the communication share
# and the pipeline bubble, the MoE dispatcher's EP=2 dispatch + combine against NCCL's
# all-to-all, NCCL through the communicator at 256 MiB), and the reference parity of DP and EP
# (issue 7: reference_dump's dp2 and ep2 runs of examples/mimo-cpu-8.yaml on the two GPUs, 200
# steps, against bench/reference/mimo_reference.py, which needs python3 with PyTorch).
#   bench/two_gpu_checks.sh RUNNER [tests|benches|parity|all]
# RUNNER is put before each program's name: ".gpu/run" for a folder made by
# ../shared/tools/gpu-bundle (".gpu/run worker_trainer_nccl_test"; strip the binaries first,
# `strip --strip-debug .gpu/bin/*`, or the folder outgrows a device call's carry), or
# "env PATH=build/bin" for a build tree. Prints a summary (each program's exit status, test
# counts, failing cases with their messages, the benchmarks' tables) and appends every program's
# whole output to $OUT/two-gpu.log (/tmp without $OUT). Every program runs, whatever the others
# did, each under its own time limit, and all of them within BUDGET seconds (default 540, under
# the device's 600 s a call): what would start past it is listed as skipped. The exit status is
# the number of programs that failed or were skipped. Keep NCCL_NVLS_ENABLE=0 as the GPU hosts
# set it.
set -uo pipefail
run=$1
stage=${2:-all}
case $stage in
  tests | benches | parity | all) ;;
  *) echo "stage: tests, benches, parity or all" >&2; exit 2 ;;
esac
spec=$(dirname "$0")/specs/mimo-moe-1b.yaml
log=${OUT:-/tmp}/two-gpu.log
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
deadline=$((SECONDS + ${BUDGET:-540}))
bad=0

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE-unset}; whole output in $log"

# check LIMIT NAME ARGS...: runs $run NAME ARGS ($CHECK_RUNNER NAME ARGS when that is set) under
# min(LIMIT, time left), appending its output to $log and leaving it in $out; returns its exit
# status (124: cut by the limit).
check() {
  local limit=$1 left=$((deadline - SECONDS))
  shift
  echo "== $*"
  out=""
  if ((left < 30)); then
    echo "skipped: ${left}s left of the budget"
    return 125
  fi
  ((limit > left - 5)) && limit=$((left - 5))
  echo "==== $* (limit ${limit}s)" >> "$log"
  # Into the log as it comes (a device call cut short keeps what was written); pipefail gives
  # timeout's status.
  out=$(timeout -k 10 "$limit" ${CHECK_RUNNER-$run} "$@" 2>&1 | tee -a "$log")
  local rc=$?
  echo "==== rc=$rc" >> "$log"
  echo "rc=$rc$( ((rc == 124 || rc == 137)) && echo " (cut at ${limit}s)")"
  return $rc
}

if [[ $stage == tests || $stage == all ]]; then
  for test in worker_trainer_nccl_test worker_trainer_model_parallel_nccl_test \
      mimo_moe_expert_parallel_cuda_test mimo_context_attention_nccl_test; do
    check 150 "$test" || bad=$((bad + 1))
    # A skip (fewer than two GPUs) checked nothing: it counts as a failure here.
    grep -q -E '^\[  SKIPPED \] [0-9]+ tests?' <<< "$out" && bad=$((bad + 1))
    # Counts, then each failing case and the lines that say why, then a skip's reason.
    grep -E '^\[  (PASSED|SKIPPED|FAILED) +\] [0-9]+ tests?' <<< "$out"
    grep -E -A4 'Failure$' <<< "$out" | head -40
    grep -E '^\[  FAILED  \] [A-Za-z]' <<< "$out"
    grep -m1 -E '^needs [0-9]+ CUDA devices' <<< "$out"
  done
fi
if [[ $stage == benches || $stage == all ]]; then
  for extra in "" "--language-only"; do
    check 180 parallel_bench "$spec" --device cuda $extra || bad=$((bad + 1))
    grep -v -E '^(NCCL|[a-z0-9-]+:[0-9]+:[0-9]+ \[)' <<< "$out" | tail -20
  done
  for extra in "" "--zipf 1.2"; do
    check 90 ep_dispatch_bench $extra || bad=$((bad + 1))
    grep -E '^(#|\||ep_dispatch_bench:)' <<< "$out"
  done
  check 60 comm_bench --min-bytes 268435456 --max-bytes 268435456 || bad=$((bad + 1))
  grep -E '^(#|\||comm_bench:)' <<< "$out"
fi
if [[ $stage == parity || $stage == all ]]; then
  reference=$(dirname "$0")/reference/mimo_reference.py
  for layout in dp2 ep2; do
    dump=$(mktemp -d)
    check 150 reference_dump "$(dirname "$0")/../examples/mimo-cpu-8.yaml" --out "$dump" \
      --steps 200 --device cuda --layout "$layout" || bad=$((bad + 1))
    grep -E '^(step|dp2|ep2|error)' <<< "$out"
    [[ -s $dump/losses_$layout.json ]] || continue
    # The reference against the two-rank run; then against the one-rank run of the same dump.
    for losses in "losses_$layout.json" losses.json; do
      CHECK_RUNNER= check 150 python3 "$reference" "$dump" --losses "$losses" || bad=$((bad + 1))
      tail -3 <<< "$out"
    done
  done
fi
echo "== $bad program(s) failed or skipped"
exit "$bad"
