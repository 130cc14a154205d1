// Device-side glue between the packed attention layout and cuDNN's fused attention.
#include <cuda_runtime_api.h>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/attention_cudnn_layout.h"
#include "kernels/cuda_launch.h"
#include "kernels/cuda_status.h"

namespace mimo::kernels {
namespace {

__global__ void VarlenKernel(const int32_t* __restrict__ cu, int64_t num_seqs, int64_t padded_seqs,
                             int64_t max_seqlen, int64_t q_row, int64_t kv_row,
                             int32_t* __restrict__ seq_len, int32_t* __restrict__ q_offsets,
                             int32_t* __restrict__ kv_offsets) {
  for (int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; s <= padded_seqs;
       s += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t start = cu[s < num_seqs ? s : num_seqs];
    if (s < padded_seqs) {
      const int64_t len = s < num_seqs ? cu[s + 1] - start : 0;
      seq_len[s] = static_cast<int32_t>(len < max_seqlen ? len : max_seqlen);
    }
    q_offsets[s] = static_cast<int32_t>(start * q_row);
    kv_offsets[s] = static_cast<int32_t>(start * kv_row);
  }
}

// One thread per (sequence, head, padded position).
__global__ void StatsKernel(const int32_t* __restrict__ cu, int64_t num_seqs, int64_t padded_seqs,
                            int64_t heads, int64_t total_tokens, int64_t max_seqlen,
                            float* __restrict__ lse, float* __restrict__ stats, bool to_stats) {
  const int64_t n = padded_seqs * heads * max_seqlen;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t pos = i % max_seqlen, h = (i / max_seqlen) % heads, s = i / (max_seqlen * heads);
    const int64_t start = s < num_seqs ? cu[s] : 0, len = s < num_seqs ? cu[s + 1] - start : 0;
    if (pos < len) {
      float* packed = lse + h * total_tokens + start + pos;
      if (to_stats) {
        stats[i] = *packed;
      } else {
        *packed = stats[i];
      }
    } else if (to_stats) {
      stats[i] = 0.0f;
    }
  }
}

}  // namespace

absl::Status LaunchCudnnVarlen(const CudnnVarlenParams& p, StreamHandle stream) {
  if (p.num_seqs < 1 || p.padded_seqs < p.num_seqs || p.max_seqlen < 1 || p.heads < 1 ||
      p.kv_heads < 1 || p.head_dim < 1) {
    return absl::InvalidArgumentError(absl::StrCat("CudnnVarlen: bad sizes: num_seqs ", p.num_seqs,
                                                   ", padded_seqs ", p.padded_seqs, ", max_seqlen ",
                                                   p.max_seqlen, ", heads ", p.heads, ", kv_heads ",
                                                   p.kv_heads, ", head_dim ", p.head_dim));
  }
  if (p.cu_seqlens == nullptr || p.seq_len == nullptr || p.q_offsets == nullptr ||
      p.kv_offsets == nullptr) {
    return absl::InvalidArgumentError("CudnnVarlen: null buffer");
  }
  VarlenKernel<<<GridStrideBlocks(p.padded_seqs + 1), kThreadsPerBlock, 0,
                 static_cast<cudaStream_t>(stream)>>>(
      p.cu_seqlens, p.num_seqs, p.padded_seqs, p.max_seqlen, p.heads * p.head_dim,
      p.kv_heads * p.head_dim, p.seq_len, p.q_offsets, p.kv_offsets);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status LaunchCudnnStats(const CudnnStatsParams& p, StreamHandle stream) {
  if (p.num_seqs < 0 || p.padded_seqs < p.num_seqs || p.heads < 1 || p.total_tokens < 0 ||
      p.max_seqlen < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CudnnStats: bad sizes: num_seqs ", p.num_seqs, ", padded_seqs ", p.padded_seqs, ", heads ",
        p.heads, ", total_tokens ", p.total_tokens, ", max_seqlen ", p.max_seqlen));
  }
  const int64_t n = p.padded_seqs * p.heads * p.max_seqlen;
  if (n == 0) return absl::OkStatus();
  if (p.cu_seqlens == nullptr || p.lse == nullptr || p.stats == nullptr) {
    return absl::InvalidArgumentError("CudnnStats: null buffer");
  }
  StatsKernel<<<GridStrideBlocks(n), kThreadsPerBlock, 0, static_cast<cudaStream_t>(stream)>>>(
      p.cu_seqlens, p.num_seqs, p.padded_seqs, p.heads, p.total_tokens, p.max_seqlen, p.lse,
      p.stats, p.to_stats);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace mimo::kernels
