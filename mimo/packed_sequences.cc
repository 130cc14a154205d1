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
  if (lengths.empty()) return absl::InvalidArgumentError("packed sequences: no sequences");
  PackedSequences s;
  s.host_cu_seqlens_.reserve(lengths.size() + 1);
  s.host_cu_seqlens_.push_back(0);
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
    s.host_cu_seqlens_.push_back(static_cast<int32_t>(total));
    s.max_seqlen_ = std::max<int64_t>(s.max_seqlen_, lengths[i]);
  }
  if (total == 0) return absl::InvalidArgumentError("packed sequences: no tokens");
  std::vector<int32_t> positions;
  positions.reserve(total);
  for (int32_t length : lengths) {
    for (int32_t p = 0; p < length; ++p) positions.push_back(p);
  }
  kernels::Allocator& allocator = ops.allocator();
  MIMO_ASSIGN_OR_RETURN(
      s.cu_seqlens_, Tensor::Empty({static_cast<int64_t>(s.host_cu_seqlens_.size())}, DType::kI32,
                                   allocator, ops.stream()));
  MIMO_ASSIGN_OR_RETURN(s.positions_, Tensor::Empty({total}, DType::kI32, allocator, ops.stream()));
  MIMO_RETURN_IF_ERROR(
      ops.CopyFromHost(s.cu_seqlens_.data(), s.host_cu_seqlens_.data(), s.cu_seqlens_.nbytes()));
  MIMO_RETURN_IF_ERROR(
      ops.CopyFromHost(s.positions_.data(), positions.data(), s.positions_.nbytes()));
  return s;
}

}  // namespace mimo
