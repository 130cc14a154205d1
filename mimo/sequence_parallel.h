// Megatron's sequence-parallel regions over a tensor-parallel group: a packed batch's rows
// (tokens) split evenly over the members, gathered whole before a column-parallel linear and
// summed back into the members' row blocks after a row-parallel one. Each is the other's
// backward: the gradient of GatherRows is ReduceScatterRows of the gradient, and vice versa.
#pragma once

#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "kernels/ops.h"
#include "kernels/tensor.h"

namespace mimo {

// (R, C...) on every member -> (n R, C...): the members' rows in rank order, on every member.
// A null group or one of one member returns `local` itself. Contiguous bf16, f32, int32 or int64
// tensors of the ops' device; every member must hold the same shape. Collective over `group`.
absl::StatusOr<kernels::Tensor> GatherRows(kernels::Ops& ops, comm::Communicator* group,
                                           const kernels::Tensor& local);

// (n R, C...) on every member (its partial sums) -> (R, C...): on member r, row block r of the sum
// over the group. A null group or one of one member returns `full` itself; InvalidArgument when
// the rows do not divide by the group's size. Collective over `group`.
absl::StatusOr<kernels::Tensor> ReduceScatterRows(kernels::Ops& ops, comm::Communicator* group,
                                                  const kernels::Tensor& full);

}  // namespace mimo
