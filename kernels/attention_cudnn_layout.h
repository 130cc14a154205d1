// Device-side glue between the packed attention layout (kernels/attention.h) and cuDNN's fused
// attention: sequence lengths, ragged offsets, and the log-sum-exps in both layouts.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/allocator.h"

namespace mimo::kernels {

// From cu_seqlens (num_seqs + 1,) on the device: seq_len[s] = cu_seqlens[s + 1] - cu_seqlens[s]
// (num_seqs,), and the ragged offsets, in elements, of the query-shaped tensors
// (q_offsets[s] = cu_seqlens[s] * heads * head_dim) and of the key/value-shaped ones (kv_offsets
// with kv_heads), each (num_seqs + 1,) int32 (the caller checks that they fit). InvalidArgument
// for a null buffer or num_seqs < 1.
struct CudnnVarlenParams {
  const int32_t* cu_seqlens = nullptr;  // (num_seqs + 1,)
  int64_t num_seqs = 0;
  int64_t heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int32_t* seq_len = nullptr;     // (num_seqs,)
  int32_t* q_offsets = nullptr;   // (num_seqs + 1,)
  int32_t* kv_offsets = nullptr;  // (num_seqs + 1,)
};
absl::Status LaunchCudnnVarlen(const CudnnVarlenParams& p, StreamHandle stream);

// Moves log-sum-exps between the packed layout lse (heads, total_tokens) and cuDNN's padded stats
// (num_seqs, heads, max_seqlen): to_stats also writes 0 to the padding rows (s >= the
// sequence's length), which cuDNN may read but never uses; from stats only real rows are copied.
struct CudnnStatsParams {
  const int32_t* cu_seqlens = nullptr;  // (num_seqs + 1,) on the device.
  int64_t num_seqs = 0;
  int64_t heads = 0;
  int64_t total_tokens = 0;
  int64_t max_seqlen = 0;  // The padded length of stats; every sequence fits in it.
  float* lse = nullptr;    // (heads, total_tokens)
  float* stats = nullptr;  // (num_seqs, heads, max_seqlen)
  bool to_stats = false;   // lse -> stats when true, stats -> lse otherwise.
};
absl::Status LaunchCudnnStats(const CudnnStatsParams& p, StreamHandle stream);

}  // namespace mimo::kernels
