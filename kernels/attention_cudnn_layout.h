// Device-side glue between the packed attention layout (kernels/attention.h) and cuDNN's fused
// attention: sequence lengths, ragged offsets, and the log-sum-exps in both layouts.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/allocator.h"

namespace mimo::kernels {

// From cu_seqlens (num_seqs + 1,) on the device, for a batch of padded_seqs >= num_seqs sequences
// whose extra ones are empty: seq_len[s] = min(cu_seqlens[s + 1] - cu_seqlens[s], max_seqlen)
// (0 for the extra ones) (padded_seqs,), and the ragged offsets, in elements, of the query-shaped
// tensors (q_offsets[s] = cu_seqlens[s] * heads * head_dim; the extra ones at the end) and of the
// key/value-shaped ones (kv_offsets, with kv_heads), each (padded_seqs + 1,) int32 (the caller
// checks that they fit). InvalidArgument for a null buffer, num_seqs < 1 or padded_seqs below it.
struct CudnnVarlenParams {
  const int32_t* cu_seqlens = nullptr;  // (num_seqs + 1,)
  int64_t num_seqs = 0;
  int64_t padded_seqs = 0;
  int64_t max_seqlen = 0;  // The padded length: longer sequences are cut to it.
  int64_t heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int32_t* seq_len = nullptr;     // (padded_seqs,)
  int32_t* q_offsets = nullptr;   // (padded_seqs + 1,)
  int32_t* kv_offsets = nullptr;  // (padded_seqs + 1,)
};
absl::Status LaunchCudnnVarlen(const CudnnVarlenParams& p, StreamHandle stream);

// Moves log-sum-exps between the packed layout lse (heads, total_tokens) and cuDNN's padded stats
// (padded_seqs, heads, max_seqlen): to_stats also writes 0 to the padding rows (positions past
// the sequence's length, and every row of the extra empty sequences), which cuDNN may read but
// never uses; from stats only real rows within max_seqlen are copied.
struct CudnnStatsParams {
  const int32_t* cu_seqlens = nullptr;  // (num_seqs + 1,) on the device.
  int64_t num_seqs = 0;
  int64_t padded_seqs = 0;  // At least num_seqs.
  int64_t heads = 0;
  int64_t total_tokens = 0;
  int64_t max_seqlen = 0;  // The padded length of stats.
  float* lse = nullptr;    // (heads, total_tokens)
  float* stats = nullptr;  // (padded_seqs, heads, max_seqlen)
  bool to_stats = false;   // lse -> stats when true, stats -> lse otherwise.
};
absl::Status LaunchCudnnStats(const CudnnStatsParams& p, StreamHandle stream);

}  // namespace mimo::kernels
