// Scaled dot-product attention over packed variable-length sequences, forward and backward.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/allocator.h"
#include "kernels/dtype.h"

namespace mimo::kernels {

// out = softmax(scale * q k^T) v per sequence and query head, in the packed "THD" layout: the
// tokens of sequence s are rows cu_seqlens[s] .. cu_seqlens[s + 1] of q, k, v and out, and attend
// only to tokens of their own sequence (causal: to tokens at or before their own position).
// Grouped-query attention: query head h reads kv head h / (heads / kv_heads). q, k, v and out
// share `dtype` (bf16 or f32); arithmetic and accumulation are fp32.
struct AttentionParams {
  DType dtype = DType::kF32;
  const void* q = nullptr;              // (total_tokens, heads, head_dim)
  const void* k = nullptr;              // (total_tokens, kv_heads, head_dim)
  const void* v = nullptr;              // (total_tokens, kv_heads, head_dim)
  void* out = nullptr;                  // (total_tokens, heads, head_dim); may not alias q, k, v.
  float* lse = nullptr;                 // (heads, total_tokens) fp32: the natural-log logsumexp
                                        // of each query row's scaled scores, for the backward.
  const int32_t* cu_seqlens = nullptr;  // (num_seqs + 1,): 0, nondecreasing, ending at
                                        // total_tokens. Host memory for the CPU twin, device
                                        // memory for CUDA.
  int64_t num_seqs = 0;
  int64_t total_tokens = 0;
  int64_t heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  // The longest sequence (at least): sizes the CUDA grid, and rows of longer sequences would be
  // left unwritten. The CPU twin checks it against cu_seqlens when it is not 0.
  int64_t max_seqlen = 0;
  float scale = 1.0f;  // Usually 1 / sqrt(head_dim).
  bool causal = false;
};

// With P = softmax(scale * q k^T) rebuilt from lse and D = rowsum(dout * out):
// dv = P^T dout, dS = P * (dout v^T - D), dq = scale * dS k, dk = scale * dS^T q; dk and dv of a
// kv head sum over the query heads of its group. dq, dk and dv are overwritten (not added to).
struct AttentionBackwardParams {
  DType dtype = DType::kF32;
  const void* dout = nullptr;           // (total_tokens, heads, head_dim)
  const void* q = nullptr;              // (total_tokens, heads, head_dim)
  const void* k = nullptr;              // (total_tokens, kv_heads, head_dim)
  const void* v = nullptr;              // (total_tokens, kv_heads, head_dim)
  const void* out = nullptr;            // (total_tokens, heads, head_dim) from the forward.
  const float* lse = nullptr;           // (heads, total_tokens) from the forward.
  void* dq = nullptr;                   // (total_tokens, heads, head_dim)
  void* dk = nullptr;                   // (total_tokens, kv_heads, head_dim)
  void* dv = nullptr;                   // (total_tokens, kv_heads, head_dim)
  const int32_t* cu_seqlens = nullptr;  // (num_seqs + 1,) as in AttentionParams.
  int64_t num_seqs = 0;
  int64_t total_tokens = 0;
  int64_t heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_seqlen = 0;  // As in AttentionParams.
  float scale = 1.0f;
  bool causal = false;
  // CUDA only: dq summed over the key tiles in a fixed order (each tile's block waits for the
  // tiles before it) instead of with atomics, so that a repeated call gives the same bits; slower.
  // The CPU twin is deterministic either way.
  bool deterministic = false;
  // CUDA only: scratch of at least AttentionBackwardWorkspaceBytes(total_tokens, heads, head_dim)
  // device bytes (fp32 dq accumulators, the row sums D and the deterministic mode's turns).
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// InvalidArgument for a dtype other than bf16/f32, negative sizes, non-positive heads, kv_heads
// or head_dim, heads not a multiple of kv_heads, sequences without a cu_seqlens entry for the
// tokens, a non-finite scale, or a null buffer where elements are to be read or written.
absl::Status CheckAttention(const AttentionParams& p);
absl::Status CheckAttentionBackward(const AttentionBackwardParams& p);

// CPU twins: host memory; they also check the contents of cu_seqlens (and max_seqlen, when not
// 0). Dot products and sums accumulate in double.
absl::Status AttentionCpu(const AttentionParams& p);
absl::Status AttentionBackwardCpu(const AttentionBackwardParams& p);

// CUDA: device memory, enqueued on `stream` (a cudaStream_t). Tiled with an online softmax, so no
// (seqlen, seqlen) matrix exists; tensor cores for bf16, fp32 FMA for f32. InvalidArgument, before
// anything is enqueued, for a head_dim other than a multiple of 8 up to 256, a tensor not 16-byte
// aligned, or a grid too large for max_seqlen. cu_seqlens is not read on the host.
absl::Status LaunchAttention(const AttentionParams& p, StreamHandle stream);
// The device scratch LaunchAttentionBackward needs.
size_t AttentionBackwardWorkspaceBytes(int64_t total_tokens, int64_t heads, int64_t head_dim);
// InvalidArgument (before anything is enqueued) when the workspace is missing or too small.
// dq is accumulated with atomics, so it is not bitwise reproducible; dk and dv are.
absl::Status LaunchAttentionBackward(const AttentionBackwardParams& p, StreamHandle stream);

}  // namespace mimo::kernels
