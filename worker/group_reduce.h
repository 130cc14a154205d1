// Host values reduced over a process group through a buffer of the ops' memory (what the
// communicator reads: host memory for Gloo, device memory for NCCL).
#pragma once

#include <cstdint>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "comm/communicator.h"
#include "common/status_macros.h"
#include "kernels/ops.h"
#include "kernels/tensor.h"

namespace mimo::worker {

// `values` (int64 or float) reduced with `op` over `group`, in place; collective over the group.
template <typename T>
absl::Status ReduceOverGroup(kernels::Ops& ops, comm::Communicator& group, absl::Span<T> values,
                             comm::ReduceOp op) {
  constexpr bool kInt = std::is_same_v<T, int64_t>;
  static_assert(kInt || std::is_same_v<T, float>);
  if (values.empty()) return absl::OkStatus();
  const size_t bytes = sizeof(T) * values.size();
  MIMO_ASSIGN_OR_RETURN(kernels::Tensor buffer,
                        kernels::Tensor::Empty({static_cast<int64_t>(values.size())},
                                               kInt ? kernels::DType::kI64 : kernels::DType::kF32,
                                               ops.allocator(), ops.stream()));
  MIMO_RETURN_IF_ERROR(ops.CopyFromHost(buffer.data(), values.data(), bytes));
  MIMO_RETURN_IF_ERROR(ops.Synchronize());
  MIMO_RETURN_IF_ERROR(group.AllReduce(
      buffer.data(), values.size(), kInt ? comm::DataType::kInt64 : comm::DataType::kFloat32, op));
  return ops.CopyToHost(values.data(), buffer.data(), bytes);
}

// ReduceOverGroup with the sum.
template <typename T>
absl::Status SumOverGroup(kernels::Ops& ops, comm::Communicator& group, absl::Span<T> values) {
  return ReduceOverGroup(ops, group, values, comm::ReduceOp::kSum);
}
template <typename T, size_t N>
absl::Status SumOverGroup(kernels::Ops& ops, comm::Communicator& group, T (&values)[N]) {
  return SumOverGroup(ops, group, absl::MakeSpan(values));
}

}  // namespace mimo::worker
