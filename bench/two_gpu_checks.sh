#!/bin/bash
# Everything issues 6, 7 and 8 ask of a host with two NVLink GPUs, in one go and one log: the
# multi-GPU tests, then the figures for bench/RESULTS.md (parallel_bench's DP/TP/PP step times
# with the communication share and the pipeline bubble, the MoE dispatcher's EP=2 dispatch +
# combine against NCCL's all-to-all, NCCL through the communicator at 256 MiB).
#   bench/two_gpu_checks.sh RUNNER
# RUNNER is put before each program's name: ".gpu/run" for a folder made by
# ../shared/tools/gpu-bundle (".gpu/run worker_trainer_nccl_test"), or "env PATH=build/bin" for a
# build tree. Prints to stdout; each program has a time limit, so a hung one cannot eat the
# session. Keep NCCL_NVLS_ENABLE=0 as the GPU hosts set it.
set -uo pipefail
run=$1
spec=$(dirname "$0")/specs/mimo-moe-1b.yaml
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE-unset}"
for test in worker_trainer_nccl_test worker_trainer_model_parallel_nccl_test \
    mimo_moe_expert_parallel_cuda_test mimo_context_attention_nccl_test; do
  log=$(mktemp)
  timeout 300 $run $test > "$log" 2>&1
  echo "== $test rc=$? $(grep -E '^\[  (PASSED|SKIPPED|FAILED) +\]( [0-9]+ tests?[,.]|  [0-9])' "$log" | tr '\n' ' ')"
  grep -E "Failure|Expected|Which is|Value of|Actual|error" "$log" | head -20
  grep -m1 -E "^needs [0-9]+ CUDA devices" "$log"  # Why it skipped, if it did.
  rm -f "$log"
done
for extra in "" "--language-only"; do
  echo "== parallel_bench $spec --device cuda $extra"
  timeout 300 $run parallel_bench "$spec" --device cuda $extra 2>&1 | tail -20
done
for extra in "" "--zipf 1.2"; do
  echo "== ep_dispatch_bench $extra"
  timeout 200 $run ep_dispatch_bench $extra 2>&1 | tail -6
done
echo "== comm_bench at 256 MiB"
timeout 200 $run comm_bench --min-bytes 268435456 --max-bytes 268435456 2>&1 | tail -6
