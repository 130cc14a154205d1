// GradientBuckets: pack, all-reduce, unpack per bucket.
#include "mimo/gradient_buckets.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace mimo {

std::vector<std::vector<Parameter*>> PlanBuckets(const std::vector<Parameter*>& params,
                                                 int64_t bucket_elements) {
  std::vector<std::vector<Parameter*>> buckets;
  std::vector<Parameter*> open;
  int64_t elements = 0;
  auto close = [&] {
    if (!open.empty()) buckets.push_back(std::move(open));
    open.clear();
    elements = 0;
  };
  for (Parameter* p : params) {
    if (p->numel() > bucket_elements) {
      close();
      buckets.push_back({p});
      continue;
    }
    if (elements + p->numel() > bucket_elements) close();
    open.push_back(p);
    elements += p->numel();
  }
  close();
  return buckets;
}

absl::StatusOr<std::unique_ptr<GradientBuckets>> GradientBuckets::Create(
    kernels::Ops& ops, std::vector<Parameter*> params, int64_t bucket_elements) {
  if (bucket_elements < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("GradientBuckets: bucket_elements ", bucket_elements, " < 1"));
  }
  std::vector<Bucket> buckets;
  for (std::vector<Parameter*>& group : PlanBuckets(params, bucket_elements)) {
    Bucket b{.params = std::move(group)};
    for (const Parameter* p : b.params) b.elements += p->numel();
    b.staged = b.elements <= bucket_elements;
    buckets.push_back(std::move(b));
  }
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
