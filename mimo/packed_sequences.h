// The token layout of a micro-batch: sequences packed back to back (THD), their boundaries and
// each token's position within its sequence, in the memory of the ops' device.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/ops.h"
#include "kernels/tensor.h"

namespace mimo {

class PackedSequences {
 public:
  // From the sequences' lengths (each >= 0, at least one token in all). InvalidArgument
  // otherwise, or when the total reaches 2^31.
  static absl::StatusOr<PackedSequences> Create(kernels::Ops& ops,
                                                absl::Span<const int32_t> lengths);

  int64_t tokens() const { return host_cu_seqlens_.back(); }
  int64_t num_seqs() const { return static_cast<int64_t>(host_cu_seqlens_.size()) - 1; }
  int64_t max_seqlen() const { return max_seqlen_; }
  // (num_seqs + 1,): 0, then the running sum of the lengths.
  const std::vector<int32_t>& host_cu_seqlens() const { return host_cu_seqlens_; }
  // The same in device memory, as attention reads it.
  const int32_t* cu_seqlens() const { return cu_seqlens_.data<int32_t>(); }
  // (tokens,): each token's index within its sequence, as RoPE reads it.
  const int32_t* positions() const { return positions_.data<int32_t>(); }

 private:
  std::vector<int32_t> host_cu_seqlens_;
  int64_t max_seqlen_ = 0;
  kernels::Tensor cu_seqlens_;  // (num_seqs + 1,) int32
  kernels::Tensor positions_;   // (tokens,) int32
};

}  // namespace mimo
