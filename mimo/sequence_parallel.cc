// GatherRows and ReduceScatterRows: an all-gather and a reduce-scatter of whole rows.
#include "mimo/sequence_parallel.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "mimo/comm_type.h"

namespace mimo {
namespace {

absl::Status CheckRows(const kernels::Tensor& t, const char* what) {
  if (!t.defined() || t.dim() < 1 || !t.is_contiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": needs a contiguous tensor of rows, got ",
                     t.defined() ? t.ToString() : std::string("an undefined tensor")));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<kernels::Tensor> GatherRows(kernels::Ops& ops, comm::Communicator* group,
                                           const kernels::Tensor& local) {
  MIMO_RETURN_IF_ERROR(CheckRows(local, "GatherRows"));
  if (group == nullptr || group->size() == 1) return local;
  MIMO_ASSIGN_OR_RETURN(const comm::DataType type, CommType(local.dtype()));
  kernels::Shape shape = local.shape();
  shape[0] *= group->size();
  MIMO_ASSIGN_OR_RETURN(
      kernels::Tensor full,
      kernels::Tensor::Empty(shape, local.dtype(), ops.allocator(), ops.stream()));
  // The communicator works on its own stream: the rows must be written first.
  MIMO_RETURN_IF_ERROR(ops.Synchronize());
  MIMO_RETURN_IF_ERROR(group->AllGather(local.data(), full.data(), local.numel(), type));
  return full;
}

absl::StatusOr<kernels::Tensor> ReduceScatterRows(kernels::Ops& ops, comm::Communicator* group,
                                                  const kernels::Tensor& full) {
  MIMO_RETURN_IF_ERROR(CheckRows(full, "ReduceScatterRows"));
  if (group == nullptr || group->size() == 1) return full;
  const int n = group->size();
  if (full.size(0) % n != 0) {
    return absl::InvalidArgumentError(absl::StrCat("ReduceScatterRows: ", full.size(0),
                                                   " rows do not split over ", n, " members"));
  }
  MIMO_ASSIGN_OR_RETURN(const comm::DataType type, CommType(full.dtype()));
  kernels::Shape shape = full.shape();
  shape[0] /= n;
  MIMO_ASSIGN_OR_RETURN(kernels::Tensor own,
                        kernels::Tensor::Empty(shape, full.dtype(), ops.allocator(), ops.stream()));
  MIMO_RETURN_IF_ERROR(ops.Synchronize());
  MIMO_RETURN_IF_ERROR(
      group->ReduceScatter(full.data(), own.data(), own.numel(), type, comm::ReduceOp::kSum));
  return own;
}

}  // namespace mimo
