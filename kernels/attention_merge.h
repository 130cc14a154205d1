// Merges attention outputs over disjoint key sets by their log-sum-exp (context parallelism's
// ring: each block of keys gives a partial softmax, folded into a running fp32 result).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/allocator.h"
#include "kernels/dtype.h"

namespace mimo::kernels {

// For each token t and head h, with l = lse[h, t] and p = part_lse[h, t] (natural-log
// log-sum-exps of the scaled scores over two disjoint key sets, as AttentionParams::lse):
//   lse[h, t] = log(exp(l) + exp(p)),
//   out[t, h, :] = out[t, h, :] * exp(l - lse[h, t]) + part_out[t, h, :] * exp(p - lse[h, t]),
// the attention over the union of the key sets. A row with no keys in either set (both -inf)
// keeps its out and lse. With `first`, out and lse are the part's (their contents are not read).
struct AttentionMergeParams {
  DType dtype = DType::kF32;        // part_out's: bf16 or f32.
  float* out = nullptr;             // (tokens, heads, head_dim) fp32, the running output.
  float* lse = nullptr;             // (heads, tokens) fp32, the running log-sum-exp.
  const void* part_out = nullptr;   // (tokens, heads, head_dim) in dtype.
  const float* part_lse = nullptr;  // (heads, tokens) fp32.
  int64_t tokens = 0;
  int64_t heads = 0;
  int64_t head_dim = 0;
  bool first = false;
};

// InvalidArgument for a dtype other than bf16/f32, negative tokens, non-positive heads or
// head_dim, or a null buffer when tokens > 0.
absl::Status CheckAttentionMerge(const AttentionMergeParams& p);

// CPU twin: host memory; the weights and sums in double, rounded once to fp32.
absl::Status AttentionMergeCpu(const AttentionMergeParams& p);

// CUDA: device memory, enqueued on `stream` (a cudaStream_t); fp32 arithmetic (within a few
// ulps of the CPU twin).
absl::Status LaunchAttentionMerge(const AttentionMergeParams& p, StreamHandle stream);

}  // namespace mimo::kernels
