// Chunked softmax cross-entropy: the CUDA kernels, one block per token for the chunk's max, sum
// and target logit, and for its gradient.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/cross_entropy.h"
#include "kernels/cuda_block_reduce.cuh"
#include "kernels/cuda_elements.cuh"
#include "kernels/cuda_launch.h"
#include "kernels/cuda_status.h"
#include "kernels/op_checks.h"

namespace mimo::kernels {
namespace {

constexpr int kThreads = 256;

__global__ void InitKernel(float* max, float* sum, float* target_logit, int64_t tokens) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < tokens;
       t += stride) {
    max[t] = -INFINITY;
    sum[t] = 0.0f;
    target_logit[t] = 0.0f;
  }
}

template <typename T>
__global__ void ChunkKernel(const T* __restrict__ logits, const int32_t* __restrict__ targets,
                            int64_t chunk, int64_t vocab_offset, float* __restrict__ max_io,
                            float* __restrict__ sum_io, float* __restrict__ target_logit) {
  __shared__ float scratch[kThreads / 32];
  const int64_t t = blockIdx.x;
  const T* row = logits + t * chunk;
  float m = -INFINITY;
  for (int64_t c = threadIdx.x; c < chunk; c += blockDim.x) m = fmaxf(m, ToFloat(row[c]));
  const float old_max = max_io[t];
  const float new_max = fmaxf(old_max, BlockMax(m, scratch));
  float sum = 0.0f;
  for (int64_t c = threadIdx.x; c < chunk; c += blockDim.x) sum += expf(ToFloat(row[c]) - new_max);
  sum = BlockSum(sum, scratch);
  if (threadIdx.x == 0) {
    sum_io[t] = sum_io[t] * expf(old_max - new_max) + sum;
    max_io[t] = new_max;
    const int64_t target = targets[t];
    if (target >= vocab_offset && target < vocab_offset + chunk) {
      target_logit[t] = ToFloat(row[target - vocab_offset]);
    }
  }
}

__global__ void FinishKernel(const int32_t* __restrict__ targets, const float* __restrict__ max,
                             const float* __restrict__ sum, const float* __restrict__ target_logit,
                             float* __restrict__ loss, float* __restrict__ lse_out,
                             int64_t tokens) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < tokens;
       t += stride) {
    const float lse = logf(sum[t]) + max[t];
    lse_out[t] = lse;
    loss[t] = targets[t] < 0 ? 0.0f : lse - target_logit[t];
  }
}

template <typename T>
__global__ void BackwardKernel(const T* logits, const int32_t* __restrict__ targets,
                               const float* __restrict__ lse, const float* __restrict__ dloss,
                               T* dlogits, int64_t chunk, int64_t vocab_offset) {
  const int64_t t = blockIdx.x;
  const int64_t target = targets[t];
  const float scale = target < 0 ? 0.0f : dloss[t];
  const float l = lse[t];
  for (int64_t c = threadIdx.x; c < chunk; c += blockDim.x) {
    const float prob = expf(ToFloat(logits[t * chunk + c]) - l);
    const float onehot = target == vocab_offset + c ? 1.0f : 0.0f;
    Put(&dlogits[t * chunk + c], scale * (prob - onehot));
  }
}

}  // namespace

absl::Status LaunchCrossEntropyInit(const CrossEntropyState& s, int64_t tokens,
                                    StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckBuffers(
      "CrossEntropyInit", tokens > 0,
      {{s.max, "state.max"}, {s.sum, "state.sum"}, {s.target_logit, "state.target_logit"}}));
  if (tokens <= 0) return absl::OkStatus();
  InitKernel<<<GridStrideBlocks(tokens), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      s.max, s.sum, s.target_logit, tokens);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status LaunchCrossEntropyChunk(const CrossEntropyChunkParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckCrossEntropyChunk(p));
  MIMO_RETURN_IF_ERROR(CheckRowsFitTheGrid("CrossEntropyChunk", p.tokens));
  if (p.tokens == 0 || p.chunk == 0) return absl::OkStatus();
  const auto s = static_cast<cudaStream_t>(stream);
  const auto grid = static_cast<unsigned>(p.tokens);
  if (p.dtype == DType::kF32) {
    ChunkKernel<float><<<grid, kThreads, 0, s>>>(static_cast<const float*>(p.logits), p.targets,
                                                 p.chunk, p.vocab_offset, p.state.max, p.state.sum,
                                                 p.state.target_logit);
  } else {
    ChunkKernel<__nv_bfloat16>
        <<<grid, kThreads, 0, s>>>(static_cast<const __nv_bfloat16*>(p.logits), p.targets, p.chunk,
                                   p.vocab_offset, p.state.max, p.state.sum, p.state.target_logit);
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status LaunchCrossEntropyFinish(const CrossEntropyFinishParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckBuffers("CrossEntropyFinish", p.tokens > 0,
                                    {{p.state.max, "state.max"},
                                     {p.state.sum, "state.sum"},
                                     {p.state.target_logit, "state.target_logit"},
                                     {p.targets, "targets"},
                                     {p.loss, "loss"},
                                     {p.lse, "lse"}}));
  if (p.tokens <= 0) return absl::OkStatus();
  FinishKernel<<<GridStrideBlocks(p.tokens), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      p.targets, p.state.max, p.state.sum, p.state.target_logit, p.loss, p.lse, p.tokens);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status LaunchCrossEntropyBackward(const CrossEntropyBackwardParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckCrossEntropyBackward(p));
  MIMO_RETURN_IF_ERROR(CheckRowsFitTheGrid("CrossEntropyBackward", p.tokens));
  if (p.tokens == 0 || p.chunk == 0) return absl::OkStatus();
  const auto s = static_cast<cudaStream_t>(stream);
  const auto grid = static_cast<unsigned>(p.tokens);
  if (p.dtype == DType::kF32) {
    BackwardKernel<float><<<grid, kThreads, 0, s>>>(static_cast<const float*>(p.logits), p.targets,
                                                    p.lse, p.dloss, static_cast<float*>(p.dlogits),
                                                    p.chunk, p.vocab_offset);
  } else {
    BackwardKernel<__nv_bfloat16><<<grid, kThreads, 0, s>>>(
        static_cast<const __nv_bfloat16*>(p.logits), p.targets, p.lse, p.dloss,
        static_cast<__nv_bfloat16*>(p.dlogits), p.chunk, p.vocab_offset);
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace mimo::kernels
