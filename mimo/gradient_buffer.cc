// GradientBuffer: the bucket plan, the parameters' gradients moved into it, in-place all-reduce.
#include "mimo/gradient_buffer.h"

#include <algorithm>
#include <numeric>

#include "absl/container/flat_hash_set.h"
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

absl::StatusOr<std::unique_ptr<GradientBuffer>> GradientBuffer::Create(
    kernels::Ops& ops, std::vector<Parameter*> params, int64_t bucket_elements, int pad_multiple) {
  if (bucket_elements < 1 || pad_multiple < 1) {
    return absl::InvalidArgumentError(absl::StrCat("GradientBuffer: bucket_elements ",
                                                   bucket_elements, " and pad_multiple ",
                                                   pad_multiple, " must be >= 1"));
  }
  absl::flat_hash_set<const Parameter*> seen;
  for (const Parameter* p : params) {
    if (!seen.insert(p).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("GradientBuffer: parameter ", p->name(), " is given twice"));
    }
  }
  std::vector<GradientBucket> buckets;
  int64_t total = 0;
  const int64_t multiple = std::lcm<int64_t>(pad_multiple, kAlignElements);
  for (std::vector<Parameter*>& group : PlanBuckets(params, bucket_elements)) {
    GradientBucket b{.params = std::move(group), .begin = total};
    int64_t elements = 0;
    for (const Parameter* p : b.params) {
      b.offsets.push_back(elements);
      elements += (p->numel() + kAlignElements - 1) / kAlignElements * kAlignElements;
    }
    b.padded = (elements + multiple - 1) / multiple * multiple;
    total += b.padded;
    buckets.push_back(std::move(b));
  }
  kernels::Tensor buffer;
  if (total > 0) {
    MIMO_ASSIGN_OR_RETURN(buffer, kernels::Tensor::Empty({total}, kernels::DType::kF32,
                                                         ops.allocator(), ops.stream()));
    MIMO_RETURN_IF_ERROR(ops.SetZero(buffer.data(), buffer.nbytes()));
  }
  for (const GradientBucket& b : buckets) {
    for (size_t i = 0; i < b.params.size(); ++i) {
      Parameter& p = *b.params[i];
      MIMO_ASSIGN_OR_RETURN(
          kernels::Tensor place,
          buffer.Slice(0, b.begin + b.offsets[i], b.begin + b.offsets[i] + p.numel()));
      MIMO_RETURN_IF_ERROR(p.MoveGradTo(ops, std::move(place)));
    }
  }
  return std::unique_ptr<GradientBuffer>(new GradientBuffer(std::move(buckets), buffer));
}

absl::Status GradientBuffer::Reset(kernels::Ops& ops) const {
  if (!buffer_.defined()) return absl::OkStatus();  // No parameters.
  bool whole = true;
  for (const GradientBucket& b : buckets_) {
    for (const Parameter* p : b.params) whole = whole && p->backward_writes_whole_grad();
  }
  for (const GradientBucket& b : buckets_) {
    for (Parameter* p : b.params) {
      if (whole) {
        MIMO_RETURN_IF_ERROR(p->ResetGrad(ops));
      } else {
        p->TakeStaleGrad();  // The memset below writes it.
      }
    }
  }
  return whole ? absl::OkStatus() : ops.SetZero(buffer_.data(), buffer_.nbytes());
}

absl::Status GradientBuffer::AllReduce(kernels::Ops& ops, comm::Communicator* group) const {
  if (group == nullptr || group->size() == 1) return absl::OkStatus();
  MIMO_RETURN_IF_ERROR(ops.Synchronize());
  for (size_t i = 0; i < buckets_.size(); ++i) MIMO_RETURN_IF_ERROR(AllReduceBucket(i, group));
  return absl::OkStatus();
}

absl::Status GradientBuffer::AllReduceBucket(size_t index, comm::Communicator* group) const {
  if (group == nullptr || group->size() == 1) return absl::OkStatus();
  const GradientBucket& b = buckets_.at(index);
  return group->AllReduce(data(b), b.padded, comm::DataType::kFloat32, comm::ReduceOp::kSum);
}

}  // namespace mimo
