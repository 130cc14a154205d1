// Packed sequences: boundaries and positions computed on the host, copied to the device once.
#include "mimo/packed_sequences.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace mimo {

using kernels::DType;
using kernels::Tensor;

absl::StatusOr<PackedSequences> PackedSequences::Create(kernels::Ops& ops,
                                                        absl::Span<const int32_t> lengths) {
  return CreateSplit(ops, lengths, 1, 0);
}

absl::StatusOr<PackedSequences> PackedSequences::CreateSplit(kernels::Ops& ops,
                                                             absl::Span<const int32_t> lengths,
                                                             int context_size, int context_rank) {
  if (lengths.empty()) return absl::InvalidArgumentError("packed sequences: no sequences");
  int64_t total = 0;
  for (size_t i = 0; i < lengths.size(); ++i) {
    if (lengths[i] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("packed sequences: sequence ", i, " has length ", lengths[i]));
    }
    total += lengths[i];
    if (total >= (int64_t{1} << 31)) {
      return absl::InvalidArgumentError("packed sequences: 2^31 tokens or more");
    }
  }
  if (total == 0) return absl::InvalidArgumentError("packed sequences: no tokens");
  PackedSequences s;
  MIMO_ASSIGN_OR_RETURN(s.runs_, parallel::ContextSplitRuns(lengths, context_size, context_rank));
  s.context_size_ = context_size;
  s.context_rank_ = context_rank;
  s.host_cu_seqlens_.reserve(s.runs_.size() + 1);
  s.host_cu_seqlens_.push_back(0);
  std::vector<int32_t> positions;
  for (const parallel::TokenRun& r : s.runs_) {
    s.host_cu_seqlens_.push_back(static_cast<int32_t>(r.local + r.length));
    s.max_seqlen_ = std::max(s.max_seqlen_, r.length);
    for (int64_t p = 0; p < r.length; ++p)
      positions.push_back(static_cast<int32_t>(r.position + p));
  }
  kernels::Allocator& allocator = ops.allocator();
  MIMO_ASSIGN_OR_RETURN(
      s.cu_seqlens_, Tensor::Empty({static_cast<int64_t>(s.host_cu_seqlens_.size())}, DType::kI32,
                                   allocator, ops.stream()));
  MIMO_ASSIGN_OR_RETURN(s.positions_, Tensor::Empty({static_cast<int64_t>(positions.size())},
                                                    DType::kI32, allocator, ops.stream()));
  MIMO_RETURN_IF_ERROR(
      ops.CopyFromHost(s.cu_seqlens_.data(), s.host_cu_seqlens_.data(), s.cu_seqlens_.nbytes()));
  if (!positions.empty()) {
    MIMO_RETURN_IF_ERROR(
        ops.CopyFromHost(s.positions_.data(), positions.data(), s.positions_.nbytes()));
  }
  return s;
}

}  // namespace mimo
