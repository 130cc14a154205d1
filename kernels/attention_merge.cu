// Attention merge on the GPU: one grid-stride pass over the output's elements (each recomputes
// its row's two weights from the unchanged log-sum-exps), then one over the log-sum-exps.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include "common/status_macros.h"
#include "kernels/attention_merge.h"
#include "kernels/cuda_elements.cuh"
#include "kernels/cuda_launch.h"
#include "kernels/cuda_status.h"

namespace mimo::kernels {
namespace {

template <typename T>
__global__ void MergeOutKernel(float* __restrict__ out, const float* __restrict__ lse,
                               const T* __restrict__ part, const float* __restrict__ part_lse,
                               int64_t tokens, int64_t heads, int64_t head_dim, bool first) {
  const int64_t n = tokens * heads * head_dim;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const float x = ToFloat(part[i]);
    if (first) {
      out[i] = x;
      continue;
    }
    const int64_t t = i / (heads * head_dim), h = (i / head_dim) % heads;
    const float l = lse[h * tokens + t], p = part_lse[h * tokens + t], m = fmaxf(l, p);
    if (m == -INFINITY) continue;  // No keys in either set.
    const float total = m + logf(expf(l - m) + expf(p - m));
    out[i] = out[i] * expf(l - total) + x * expf(p - total);
  }
}

__global__ void MergeLseKernel(float* __restrict__ lse, const float* __restrict__ part_lse,
                               int64_t n, bool first) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const float p = part_lse[i];
    if (first) {  // The running value is not read.
      lse[i] = p;
      continue;
    }
    const float l = lse[i], m = fmaxf(l, p);
    if (m != -INFINITY) lse[i] = m + logf(expf(l - m) + expf(p - m));
  }
}

}  // namespace

absl::Status LaunchAttentionMerge(const AttentionMergeParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckAttentionMerge(p));
  if (p.tokens == 0) return absl::OkStatus();
  const auto s = static_cast<cudaStream_t>(stream);
  const int64_t elements = p.tokens * p.heads * p.head_dim, rows = p.tokens * p.heads;
  if (p.dtype == DType::kF32) {
    MergeOutKernel<<<GridStrideBlocks(elements), kThreadsPerBlock, 0, s>>>(
        p.out, p.lse, static_cast<const float*>(p.part_out), p.part_lse, p.tokens, p.heads,
        p.head_dim, p.first);
  } else {
    MergeOutKernel<<<GridStrideBlocks(elements), kThreadsPerBlock, 0, s>>>(
        p.out, p.lse, static_cast<const __nv_bfloat16*>(p.part_out), p.part_lse, p.tokens, p.heads,
        p.head_dim, p.first);
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  // After every output element has read the old log-sum-exps.
  MergeLseKernel<<<GridStrideBlocks(rows), kThreadsPerBlock, 0, s>>>(p.lse, p.part_lse, rows,
                                                                     p.first);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace mimo::kernels
