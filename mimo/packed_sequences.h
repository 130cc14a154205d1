// The token layout of a micro-batch: sequences packed back to back (THD), their boundaries and
// each token's position within its sequence, in the memory of the ops' device; with context
// parallelism, the part of them one member of the cp group holds.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/ops.h"
#include "kernels/tensor.h"
#include "parallel/context_split.h"

namespace mimo {

class PackedSequences {
 public:
  // From the sequences' lengths (each >= 0, at least one token in all). InvalidArgument
  // otherwise, or when the total reaches 2^31.
  static absl::StatusOr<PackedSequences> Create(kernels::Ops& ops,
                                                absl::Span<const int32_t> lengths);
  // The rows member `context_rank` of a context-parallel group of `context_size` holds of those
  // sequences (parallel::ContextSplitRuns: each length a multiple of 2 context_size; 1 is
  // Create).
  static absl::StatusOr<PackedSequences> CreateSplit(kernels::Ops& ops,
                                                     absl::Span<const int32_t> lengths,
                                                     int context_size, int context_rank);

  // This rank's tokens (rows).
  int64_t tokens() const { return host_cu_seqlens_.back(); }
  // The runs of rows that attend as sequences: the sequences themselves, or, split, each
  // sequence's two chunks (num_seqs() = 2 x the sequences: all first chunks, then all second).
  int64_t num_seqs() const { return static_cast<int64_t>(host_cu_seqlens_.size()) - 1; }
  int64_t max_seqlen() const { return max_seqlen_; }
  // (num_seqs + 1,): 0, then the running sum of the runs' lengths. Split, its first
  // num_seqs / 2 + 1 entries bound the chunks of either region (rows [0, T / 2) and [T / 2, T)),
  // counted from the region's first row: the two regions have the same chunk lengths.
  const std::vector<int32_t>& host_cu_seqlens() const { return host_cu_seqlens_; }
  // The same in device memory, as attention reads it.
  const int32_t* cu_seqlens() const { return cu_seqlens_.data<int32_t>(); }
  // (tokens,): each token's index within its (whole) sequence, as RoPE reads it.
  const int32_t* positions() const { return positions_.data<int32_t>(); }

  // The context-parallel group's size (1: not split) and this rank's member index.
  int context_size() const { return context_size_; }
  int context_rank() const { return context_rank_; }
  // Where this rank's rows are in the whole micro-batch (one run per sequence when not split).
  const std::vector<parallel::TokenRun>& runs() const { return runs_; }

 private:
  std::vector<int32_t> host_cu_seqlens_;
  int64_t max_seqlen_ = 0;
  int context_size_ = 1;
  int context_rank_ = 0;
  std::vector<parallel::TokenRun> runs_;
  kernels::Tensor cu_seqlens_;  // (num_seqs + 1,) int32
  kernels::Tensor positions_;   // (tokens,) int32
};

}  // namespace mimo
