// GradientBuckets: pack, all-reduce, unpack per bucket.
#include "mimo/gradient_buckets.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace mimo {

absl::StatusOr<std::unique_ptr<GradientBuckets>> GradientBuckets::Create(
    kernels::Ops& ops, std::vector<Parameter*> params, int64_t bucket_elements) {
  if (bucket_elements < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("GradientBuckets: bucket_elements ", bucket_elements, " < 1"));
  }
  std::vector<Bucket> buckets;
  Bucket open;
  auto close = [&] {
    if (!open.params.empty()) buckets.push_back(std::move(open));
    open = Bucket{};
  };
  for (Parameter* p : params) {
    if (p->numel() > bucket_elements) {
      close();
      buckets.push_back({.params = {p}, .elements = p->numel(), .staged = false});
      continue;
    }
    if (open.elements + p->numel() > bucket_elements) close();
    open.params.push_back(p);
    open.elements += p->numel();
  }
  close();
  int64_t staging = 0;
  for (const Bucket& b : buckets) {
    if (b.staged) staging = std::max(staging, b.elements);
  }
  kernels::Tensor buffer;
  if (staging > 0) {
    MIMO_ASSIGN_OR_RETURN(buffer, kernels::Tensor::Empty({staging}, kernels::DType::kF32,
                                                         ops.allocator(), ops.stream()));
  }
  return std::unique_ptr<GradientBuckets>(new GradientBuckets(std::move(buckets), buffer));
}

absl::Status GradientBuckets::AllReduce(kernels::Ops& ops, comm::Communicator* group) {
  if (group == nullptr || group->size() == 1) return absl::OkStatus();
  for (const Bucket& b : buckets_) {
    if (!b.staged) {
      Parameter& p = *b.params[0];
      MIMO_RETURN_IF_ERROR(ops.Synchronize());
      MIMO_RETURN_IF_ERROR(group->AllReduce(p.grad().data(), p.numel(), comm::DataType::kFloat32,
                                            comm::ReduceOp::kSum));
      continue;
    }
    auto* staging = staging_.data<float>();
    int64_t at = 0;
    for (Parameter* p : b.params) {
      MIMO_RETURN_IF_ERROR(ops.Copy(staging + at, p->grad().data(), 4 * p->numel()));
      at += p->numel();
    }
    MIMO_RETURN_IF_ERROR(ops.Synchronize());
    MIMO_RETURN_IF_ERROR(
        group->AllReduce(staging, b.elements, comm::DataType::kFloat32, comm::ReduceOp::kSum));
    at = 0;
    for (Parameter* p : b.params) {
      MIMO_RETURN_IF_ERROR(ops.Copy(p->grad().data(), staging + at, 4 * p->numel()));
      at += p->numel();
    }
  }
  return absl::OkStatus();
}

}  // namespace mimo
